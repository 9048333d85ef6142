"""The ``pipeline`` run: simulate -> train and infer torch -> train and infer tensorflow ->
compare, each step a nested child run, in three processes: simulate and compare in the
pipeline's own (no framework), each backend's train and infer in one child process of its
own (one framework per process, one child at a time).

Each step is the ``ptyparity`` CLI command, called with arguments built by :func:`cli_args`
from one dict of option values (:mod:`ptyparity.runs.pipeline_steps` runs them), and reports
the id of the run it opened through the file named by ``$PTYPARITY_RUN_ID_FILE`` (see
:func:`ptyparity.tracking.start_run`).
"""

from __future__ import annotations

import os

from ptyparity import console, descriptions, names, tracking, tracking_notes
from ptyparity.errors import PtyparityError
from ptyparity.runs import pipeline_steps
from ptyparity.runs.common import PipelineResult

PRESETS = {
    # Sized to finish within minutes on 2 CPU cores (f=1 trains ~3x faster than the default 2).
    "small": {"n": 32, "n_filters_scale": 1, "n_groups": 512, "max_epochs": 8, "gridsize": 2, "batch_size": 16},
    # The realistic size: a GPU job.
    "full": {"n": 64, "n_filters_scale": 2, "n_groups": 4096, "max_epochs": 50, "gridsize": 2, "batch_size": 16},
}
SIMULATE_SIZES = ("n",)  # the preset's sizes for `simulate`; the others are `train` options
BACKEND_STEPS = ("torch", "tensorflow")  # one child process each, in this order
STEPS = ("simulate", "train_torch", "train_tensorflow", "infer_torch", "infer_tensorflow", "compare")


def cli_args(command, options):
    """``[command, --option, value, …]`` for the ``ptyparity`` CLI.

    Parameters
    ----------
    command : str
    options : dict
        ``{option_name: value}`` with Python names (``n_groups`` -> ``--n-groups``);
        ``True``/``False`` give ``--flag``/``--no-flag``, ``None`` leaves the option out.
    """
    args = [command]
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is None:
            continue
        if isinstance(value, bool):
            args.append(flag if value else "--no-" + key.replace("_", "-"))
        else:
            args += [flag, os.fspath(value) if isinstance(value, os.PathLike) else str(value)]
    return args


def resolve_preset(preset, overrides=None):
    """The preset's sizes with ``overrides`` applied (a ``None`` or 0 override keeps the preset's)."""
    if preset not in PRESETS:
        raise PtyparityError(f"preset must be one of {', '.join(PRESETS)}; got {preset!r}")
    sizes = dict(PRESETS[preset])
    unknown = sorted(set(overrides or {}) - set(sizes))
    if unknown:
        raise PtyparityError(f"unknown pipeline overrides {unknown}; known: {', '.join(sizes)}")
    sizes.update({k: v for k, v in (overrides or {}).items() if v})
    return sizes


def child_env(uri, parent_run_id):
    """The backend processes' environment: ours, the store, and the frameworks' quiet defaults
    (:func:`ptyparity.console.framework_env`; a value the user set wins). torch's OpenMP wait
    defaults are the torch backend's own, set in the child when it imports that backend
    (:func:`ptyparity.backends.torch.openmp.environment_defaults`)."""
    env = console.framework_env(dict(os.environ, MLFLOW_TRACKING_URI=uri))
    env[names.PARENT_RUN_ID_ENV] = parent_run_id
    env.pop("MLFLOW_RUN_ID", None)  # set by `mlflow run` for the parent only; children open their own
    return env


def run_pipeline(*, preset="small", out_dir="data", seed=0, overwrite=False, experiment=names.DEFAULT_EXPERIMENT,
                 quiet=False, accelerator="cpu", devices=1, overrides=None, echo=print):
    """simulate -> train and infer torch -> train and infer tensorflow -> compare, as one
    ``pipeline`` run whose steps are nested child runs: simulate and compare in this
    process, each backend's two steps in one child process (see the module docstring).

    Parameters
    ----------
    preset : {"small", "full"}
        Sizes from :data:`PRESETS`.
    out_dir : path
        Where the simulated data goes (reused when present, unless ``overwrite``).
    overrides : dict, optional
        ``{size: value}`` replacing the preset's (None or 0: keep it).
    echo : callable
        Receives one progress line per step.

    Returns
    -------
    result : PipelineResult
        ``compare_exit_code`` 0 pass, 1 fail or inconclusive.
    """
    sizes = resolve_preset(preset, overrides)
    out_dir = os.fspath(out_dir)
    train_path, test_path = os.path.join(out_dir, "train.npz"), os.path.join(out_dir, "test.npz")
    _check_data(out_dir, train_path, test_path, overwrite)
    uri = tracking.tracking_uri()  # imports MLflow
    start_import = {"pipeline": pipeline_steps.process_age_seconds()}  # this process's start and imports
    tracking.init_store(experiment=experiment)  # create the store once, before any child opens it
    with tracking.start_run("pipeline", experiment=experiment, run_name=f"pipeline-{preset}") as parent:
        experiment = tracking.experiment_name(parent)  # `mlflow run` may have chosen it
        # Resolved sizes under their own names: `mlflow run` logs the entry point's raw
        # parameters (n_groups=0 meaning "the preset's") on this same run.
        params = {"preset": preset, "seed": seed, **{f"{names.RESOLVED_PREFIX}{k}": v for k, v in sizes.items()}}
        tracking.log_params(params)
        parent_id = parent.info.run_id
        env = child_env(uri, parent_id)
        common = {"experiment": experiment}
        usage = {}  # step -> {"seconds", "peak_rss_mb"}; in-process steps: the pipeline process's peak so far
        if overwrite or not (os.path.exists(train_path) and os.path.exists(test_path)):
            echo(f"[1/6] simulate N={sizes['n']} into {out_dir}")
            pipeline_steps.run_cli_step(
                cli_args("simulate", {"out_dir": out_dir, **{k: sizes[k] for k in SIMULATE_SIZES}, "seed": seed,
                                      "overwrite": True, **common, "run_name": "simulate"}),
                quiet=quiet, parent_run_id=parent_id, usage=usage.setdefault("simulate", {}))
        else:
            echo(f"[1/6] reusing {train_path} and {test_path} (pass --overwrite to simulate again)")
        train_sizes = {k: v for k, v in sizes.items() if k not in SIMULATE_SIZES}
        runs = {}
        for i, backend in enumerate(BACKEND_STEPS):  # one process each: train, then infer its version
            number = 2 + 2 * i  # [2/6] train torch, [3/6] infer torch, [4/6] train tensorflow, …

            def infer_started(step, args, number=number + 1, backend=backend):
                if step.startswith("infer"):
                    echo(f"[{number}/6] infer {backend} with {args[args.index('--model') + 1]}")

            echo(f"[{number}/6] train {backend}: {sizes['n_groups']} groups, {sizes['max_epochs']} epochs")
            spec = {"backend": backend,
                    "train": {"backend": backend, "train_data": train_path, "test_data": test_path, **train_sizes,
                              "seed": seed, "accelerator": accelerator, "devices": devices, "quiet": quiet,
                              **common, "run_name": f"train-{backend}"},
                    "infer": {"data": test_path, **common, "run_name": f"infer-{backend}"}}
            done_steps = pipeline_steps.run_backend(spec, env, quiet=quiet, on_start=infer_started)
            start_import[backend] = done_steps.pop("start_import_seconds")
            for step, done in done_steps.items():
                runs[step] = done["run_id"]
                usage[step] = {"seconds": done["seconds"], "peak_rss_mb": done["peak_rss_mb"]}
        echo("[6/6] compare")
        runs["compare"], code = pipeline_steps.run_cli_step(cli_args("compare", {
            "torch_run": runs["infer_torch"], "tf_run": runs["infer_tensorflow"], **common, "run_name": "compare"}),
            quiet=quiet, parent_run_id=parent_id, ok_codes=(0, 1), usage=usage.setdefault("compare", {}))
        runs = {step: runs[step] for step in STEPS[1:]}  # the tags and the result in one order
        compare = tracking.get_run(runs["compare"])
        verdict = tracking.run_tag(compare, names.PARITY_VERDICT) or "error"
        status = tracking.run_tag(compare, names.PARITY_STATUS) or "error"
        tags = {names.PARITY_STATUS: status, names.PARITY_VERDICT: verdict,
                **{f"{names.PIPELINE_TAG_PREFIX}{k}": v for k, v in runs.items()}}
        tracking.set_tags(tags)
        # Where the pipeline's time and memory go, per step and per process (scripts/bench.py reads these).
        tracking.log_metrics({f"{key}.{step}": value for step, used in usage.items() for key, value in
                              (("step_seconds", used["seconds"]), ("step_peak_rss_mb", used["peak_rss_mb"]))})
        tracking.log_metrics({f"start_import_seconds.{process}": seconds for process, seconds in start_import.items()})
        tracking_notes.describe_run(descriptions.pipeline_description({**params, **tags}))
        return PipelineResult(run_id=parent.info.run_id, verdict=verdict, parity_status=status, runs=runs,
                              compare_exit_code=code)


def _check_data(out_dir, train_path, test_path, overwrite):
    """Refuse, before the pipeline run opens, what a step would: reused datasets that do not load,
    or an ``out_dir`` the simulate step cannot write (one line here instead of a failed step)."""
    from ptyparity.data import load_npz
    from ptyparity.simulate import check_out_dir

    if overwrite or not (os.path.exists(train_path) and os.path.exists(test_path)):
        check_out_dir(out_dir, overwrite=True)
    else:
        for path in (train_path, test_path):
            load_npz(path)


def registered_model_uri(backend, train_run_id):
    """``models:/ptyparity-<backend>/<version>`` of the version ``train_run_id`` registered."""
    name = names.registered_model_name(backend)
    version = tracking.registered_version_of_run(name, train_run_id)
    if version is None:
        raise PtyparityError(f"train run {train_run_id} registered no version of {name}; check the registry "
                             "of the tracking server")
    return f"models:/{name}/{version}"
