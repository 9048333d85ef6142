"""The public record API: any implementation's train and infer runs, under ptyparity's names.

Your own code (a Lightning port, a Keras model, …) opens a run with :func:`train_run` or
:func:`infer_run` and hands over *arrays*: the patches it predicted, its reconstruction, its
normalisation scalars, its losses. ptyparity computes every statistic, patch grid, debug dump
and ground-truth score from them itself (the judge computes; the implementation only reports
what it predicted) and records them under the names its own runs use (SPEC §6-7), so
``ptyparity compare`` and ``ptyparity check-run`` read your runs like its own. ptyparity's own
infer workflow records through this module, and its train workflow through
:class:`RunRecord` and :func:`dump_patches`.

Every run opened here carries the tags ``ptyparity.kind``, ``ptyparity.backend``,
``ptyparity.implementation`` and ``ptyparity.implementation_version``, ``ptyparity.dataset_digest``,
``ptyparity.config_hash``, ``ptyparity.pair_key`` and ``ptyparity.record_schema``
(:data:`SCHEMA_VERSION`), and the params ``N``, ``gridsize``, ``object_big``, ``probe_big`` and
``seed``. An exception inside the ``with`` block ends the run FAILED with the tag
``ptyparity.error``; a user mistake raises :class:`ptyparity.errors.PtyparityError`.

Example::

    from ptyparity import record

    with record.train_run("data/train.npz", implementation="my-ptychopinn", version="1.2",
                          backend="torch", gridsize=1, object_big=False, probe_big=False,
                          params={"n_groups": 512, "max_epochs": 8}) as run:
        run.log_scales(intensity_scale=s, input_norm=1 / s)
        run.log_patches("initial", amp, phase)          # (B, N, N, C) each, channel-last
        for epoch in range(8):
            ...
            run.log_epoch(epoch, train_loss=loss, val_loss=val)
        run.log_patches("final", amp, phase)
    with record.infer_run("data/test.npz", implementation="my-ptychopinn", version="1.2",
                          backend="torch", train_run_id=run.run_id) as inf:
        inf.log_scales(intensity_scale=s)
        inf.log_patches("infer", amp[:16], phase[:16], diffraction=d, encoder_input=x)
        inf.log_reconstruction(amp, phase, positions)  # ptyparity stitches and scores it
"""

from __future__ import annotations

import contextlib
import numbers
import os

from ptyparity import names, tracking
from ptyparity.errors import PtyparityError
from ptyparity.record_run import SCALE_NAMES, STAGES, RunRecord, dump_patches, gt_scores

__all__ = ["IMPLEMENTATION", "SCHEMA_VERSION", "SCALE_NAMES", "STAGES", "RunRecord", "dump_patches", "gt_scores",
           "implementation_tags", "infer_run", "train_run"]

SCHEMA_VERSION = names.RECORD_SCHEMA_VERSION
IMPLEMENTATION = "ptyparity"  # the implementation name of ptyparity's own runs
BACKENDS = ("torch", "tensorflow")  # compare pairs a torch side with a tensorflow side


def implementation_tags(implementation, version):
    """The tags naming who computed a run's arrays, and the record schema."""
    if not str(implementation or "").strip():
        raise PtyparityError("implementation must name your code, e.g. implementation='my-ptychopinn'")
    return {names.TAG_IMPLEMENTATION: str(implementation), names.TAG_IMPLEMENTATION_VERSION: str(version),
            names.TAG_RECORD_SCHEMA: str(SCHEMA_VERSION)}


def _first_line(exc):
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:5000]


def _load(data, data_path):
    """``(RawData, source path or None)`` from a path or a RawData."""
    from ptyparity.data import RawData, load_npz

    if isinstance(data, RawData):
        return data, (os.fspath(data_path) if data_path is not None else None)
    if isinstance(data, (str, os.PathLike)):
        return load_npz(data), os.fspath(data)
    raise PtyparityError(f"data must be an NPZ path or a ptyparity.data.RawData, got {type(data).__name__}; "
                         "load it with ptyparity.data.load_npz")


def _standard(kind, raw, *, backend, gridsize, object_big, probe_big, seed, params, config_hash):
    """The standard params and the config hash of a run."""
    from ptyparity.config import config_hash as hash_of

    if backend not in BACKENDS:
        raise PtyparityError(f"backend must be one of {', '.join(BACKENDS)} (the framework your {kind} ran on); "
                             f"got {backend!r}")
    if isinstance(gridsize, bool) or not isinstance(gridsize, numbers.Integral) or gridsize < 1:
        raise PtyparityError(f"gridsize must be an int >= 1, got {gridsize!r}")
    std = {"N": raw.N, "gridsize": int(gridsize), "object_big": bool(object_big), "probe_big": bool(probe_big),
           "seed": int(seed)}
    extra = dict(params or {})
    clash = [f"{k}={extra[k]!r} (the run has {v!r})" for k, v in std.items()
             if k in extra and tracking.param_text(extra[k]) != tracking.param_text(v)]
    if clash:
        raise PtyparityError(f"params contradict the run's own values: {', '.join(clash)}; drop them from params")
    all_params = {**extra, **std}
    return all_params, config_hash or hash_of(all_params)


@contextlib.contextmanager
def _open(kind, raw, source, *, backend, implementation, version, all_params, chash, seed, tags, scales,
          experiment, run_name, run_tags=None):
    from ptyparity.data import dataset_digest
    from ptyparity.runs.common import pair_key

    digest = dataset_digest(raw)
    std_tags = {names.TAG_DATASET_DIGEST: digest, names.TAG_CONFIG_HASH: chash,
                names.TAG_PAIR_KEY: pair_key(digest, chash, seed), **implementation_tags(implementation, version)}
    with tracking.start_run(kind, backend=backend, experiment=experiment, run_name=run_name,
                            tags={**(tags or {}), **(run_tags or {}), **std_tags}) as run:
        try:
            rec = RunRecord(run.info.run_id, kind, n=raw.N, gridsize=all_params["gridsize"],
                            probe_big=all_params["probe_big"], backend=backend, data=raw)
            tracking.log_params(all_params)
            if source is not None:
                tracking.log_dataset(raw, name=kind, digest=digest, source=source,
                                     context="training" if kind == "train" else "inference")
            if scales:
                rec.log_scales(**scales)
            yield rec
        except BaseException as exc:
            with contextlib.suppress(Exception):  # never hide the real error behind a store error
                tracking.set_tags({names.TAG_ERROR: "interrupted" if isinstance(exc, KeyboardInterrupt)
                                   else _first_line(exc)})
            raise


@contextlib.contextmanager
def train_run(data, *, implementation, version, backend, gridsize, object_big, probe_big, seed=0, params=None,
              scales=None, config_hash=None, tags=None, data_path=None, experiment=names.DEFAULT_EXPERIMENT,
              run_name=None):
    """Open a ``train`` run for your implementation; yields a :class:`RunRecord`.

    Parameters
    ----------
    data : path or ptyparity.data.RawData
        The training NPZ (logged as the run's dataset input; its digest is the tag
        ``ptyparity.dataset_digest``). ``N`` comes from it.
    implementation, version : str
        Your code's name and version (tags ``ptyparity.implementation`` / ``_version``).
    backend : {"torch", "tensorflow"}
        The framework it ran on (compare pairs a torch run with a tensorflow run).
    gridsize, object_big, probe_big : int, bool, bool
        The network's layout (SPEC §3-4): patches are ``(B, N, N, gridsize**2)``; ``probe_big``
        False restricts the statistics to the central ``N/2`` support.
    seed : int
    params : dict, optional
        Your other params (``n_groups``, ``batch_size``, ``max_epochs``, ``learning_rate``, …).
    scales : dict, optional
        Passed to :meth:`RunRecord.log_scales` at the start.
    config_hash : str, optional
        Tag ``ptyparity.config_hash`` (default: a hash of all params); with the digest and the
        seed it makes ``ptyparity.pair_key``, which pairs runs of the same data and config.
    tags : dict, optional
        Extra tags (the standard ones above win).
    data_path : path, optional
        Where ``data`` (a RawData) came from, for the dataset input (none is logged without it).
    """
    raw, source = _load(data, data_path)
    all_params, chash = _standard("training", raw, backend=backend, gridsize=gridsize, object_big=object_big,
                                  probe_big=probe_big, seed=seed, params=params, config_hash=config_hash)
    with _open("train", raw, source, backend=backend, implementation=implementation, version=version,
               all_params=all_params, chash=chash, seed=seed, tags=tags, scales=scales, experiment=experiment,
               run_name=run_name) as rec:
        yield rec


@contextlib.contextmanager
def infer_run(data, *, implementation, version, backend, train_run_id=None, gridsize=None, object_big=None,
              probe_big=None, seed=None, model_uri=None, params=None, scales=None, config_hash=None, tags=None,
              data_path=None, experiment=names.DEFAULT_EXPERIMENT, run_name=None):
    """Open an ``infer`` run for your implementation; yields a :class:`RunRecord`.

    Parameters are those of :func:`train_run`, plus:

    train_run_id : str, optional
        The train run of the model (tag ``ptyparity.train_run_id``): compare then checks that
        training and inference used the same scales; without one those checks are reported
        ``skipped``. ``gridsize``, ``object_big``, ``probe_big``, ``seed`` and the config hash
        left at None are read from it.
    model_uri : str, optional
        Where the model came from (tag ``ptyparity.model_uri``).

    Hand over a few groups' patches with ``log_patches("infer", …)`` and the whole dataset's
    reconstruction with :meth:`RunRecord.log_reconstruction` (or :meth:`RunRecord.log_canvas`).
    """
    raw, source = _load(data, data_path)
    layout = {"gridsize": gridsize, "object_big": object_big, "probe_big": probe_big, "seed": seed}
    run_tags = {}
    if train_run_id:
        run_tags[names.TAG_TRAIN_RUN_ID] = train_run_id
        if None in layout.values() or config_hash is None:
            train = tracking.get_run(train_run_id)  # an unknown id: one line
            for key, value in layout.items():
                if value is None and key in train.data.params:
                    text = train.data.params[key]
                    layout[key] = text == "true" if text in ("true", "false") else int(text)
            config_hash = config_hash or tracking.run_tag(train, names.TAG_CONFIG_HASH)
    missing = [k for k in ("gridsize", "object_big", "probe_big") if layout[k] is None]
    if missing:
        raise PtyparityError(f"infer_run needs {', '.join(missing)} (or a train_run_id whose params have them)")
    layout["seed"] = 0 if layout["seed"] is None else layout["seed"]
    if model_uri:
        run_tags[names.TAG_MODEL_URI] = model_uri
    all_params, chash = _standard("inference", raw, backend=backend, params=params, config_hash=config_hash,
                                  **layout)
    with _open("infer", raw, source, backend=backend, implementation=implementation, version=version,
               all_params=all_params, chash=chash, seed=layout["seed"], tags=tags, scales=scales,
               experiment=experiment, run_name=run_name, run_tags=run_tags) as rec:
        yield rec
