"""Backend-neutral model bundles: ``weights.npz`` + ``bundle.json`` (SPEC §7).

``weights.npz`` holds the canonical weights (names from
:mod:`ptyparity.architecture`, HWIO kernels, ``log_scale``) as plain arrays.
``bundle.json`` holds the full config, the scalars inference must reuse unchanged
(``intensity_scale`` in effect at the end of training, ``data_scale``,
``input_norm``, ``probe_norm``), the probe, framework versions and two sha256
checksums: of the weights' content and of the config it carries. Loading verifies
both and refuses a bundle that was edited, so a hand-set ``intensity_scale = 1.0``
cannot slip into an inference run. Nothing is ever pickled.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import zipfile
from dataclasses import dataclass

import numpy as np

from ptyparity.architecture import LOG_SCALE, check_weights
from ptyparity.config import TrainConfig, model_config_from_dict
from ptyparity.errors import PtyparityError
from ptyparity.training import Scales

FORMAT = "ptyparity-bundle"
FORMAT_VERSION = 1
WEIGHTS_FILE = "weights.npz"
META_FILE = "bundle.json"


def weights_digest(weights):
    """sha256 over the weights' names, dtypes, shapes and bytes (sorted by name)."""
    h = hashlib.sha256()
    for name in sorted(weights):
        arr = np.ascontiguousarray(weights[name])
        h.update(f"{name}|{arr.dtype}|{arr.shape}|".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def _config_digest(meta):
    body = {k: v for k, v in meta.items() if k != "checksums"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@dataclass(frozen=True)
class Bundle:
    """A loaded, verified bundle.

    Attributes
    ----------
    model_cfg : ModelConfig
    train_cfg : dict
        The training config as logged (for the record and ``pair_key``).
    scales : Scales
    probe : ndarray, shape (N, N), complex64
        The model probe ``P`` (scaled, masked) exactly as trained.
    weights : dict of ndarray
        Canonical weights; ``log_scale`` equals ``log(scales.intensity_scale)``.
    meta : dict
        Everything in ``bundle.json``.
    """

    model_cfg: object
    train_cfg: dict
    scales: Scales
    probe: np.ndarray
    weights: dict
    meta: dict

    @property
    def backend(self):
        return self.meta.get("backend")


def save(directory, *, weights, model_cfg, train_cfg: TrainConfig, scales: Scales, probe, backend,
         versions=None, extra=None):
    """Write ``weights.npz`` and ``bundle.json`` into ``directory`` (created).

    ``weights[log_scale]`` must match ``scales.intensity_scale`` (float32 rounding).

    Returns
    -------
    directory : str
    """
    check_weights(model_cfg, weights)
    if not math.isclose(float(np.exp(np.float64(weights[LOG_SCALE]))), scales.intensity_scale, rel_tol=1e-6):
        raise ValueError("weights' log_scale and scales.intensity_scale disagree; pass the scale in effect")
    os.makedirs(directory, exist_ok=True)
    weights = {k: np.asarray(v, np.float32) for k, v in weights.items()}
    np.savez(os.path.join(directory, WEIGHTS_FILE), **weights)
    probe = np.asarray(probe, np.complex64)
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "backend": backend,
        "model_config": dataclasses.asdict(model_cfg),
        "train_config": dataclasses.asdict(train_cfg) if dataclasses.is_dataclass(train_cfg) else dict(train_cfg),
        **dataclasses.asdict(scales),
        "probe": {"real": probe.real.tolist(), "imag": probe.imag.tolist()},
        "versions": dict(versions or {}),
        **(extra or {}),
    }
    meta["checksums"] = {"weights_sha256": weights_digest(weights), "config_sha256": _config_digest(meta)}
    with open(os.path.join(directory, META_FILE), "w") as fh:
        json.dump(meta, fh, indent=1, sort_keys=True)
    return directory


def _find_bundle_dir(path):
    if os.path.isfile(os.path.join(path, META_FILE)):
        return path
    for root, _dirs, files in os.walk(path):
        if META_FILE in files and WEIGHTS_FILE in files:
            return root
    raise PtyparityError(f"{path}: no {META_FILE} + {WEIGHTS_FILE} found; point at a bundle directory, "
                         "a runs:/… or models:/… URI of a ptyparity model")


def resolve(uri):
    """Local directory of a bundle given a path, ``runs:/…`` or ``models:/…`` URI."""
    if uri.startswith(("models:/", "runs:/", "mlflow-artifacts:/", "s3://", "http://", "https://")):
        from ptyparity import tracking

        return _find_bundle_dir(tracking.download_model(uri))
    if not os.path.exists(uri):
        raise PtyparityError(f"{uri}: no such bundle; give a directory, runs:/<run_id>/model or "
                             "models:/ptyparity-<backend>/<version|@alias>")
    return _find_bundle_dir(uri)


def load_dir(directory, *, verify=True):
    """Load a bundle directory; with ``verify`` (default) refuse any edited file.

    ``verify=False`` exists for tests that must reproduce what an unverified
    loader would do with a tampered bundle; never use it for real work.
    """
    meta_path = os.path.join(directory, META_FILE)
    try:
        with open(meta_path) as fh:
            meta = json.load(fh)
    except (OSError, json.JSONDecodeError) as exc:
        raise PtyparityError(f"{meta_path}: unreadable bundle metadata ({exc}); re-export the bundle") from None
    if meta.get("format") != FORMAT:
        raise PtyparityError(f"{meta_path}: not a ptyparity bundle (format {meta.get('format')!r})")
    # Before anything else is read: a newer format may lay out its files and checksums differently,
    # so a checksum "mismatch" would send the user after an edit that never happened.
    version = meta.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise PtyparityError(f"{meta_path}: format_version {version!r} is not a bundle format (1 .. "
                             f"{FORMAT_VERSION}); re-export the bundle")
    if version > FORMAT_VERSION:
        raise PtyparityError(f"{meta_path}: written by a newer ptyparity (format {version} > {FORMAT_VERSION}); "
                             "upgrade ptyparity to load it")
    weights_path = os.path.join(directory, WEIGHTS_FILE)
    try:
        with np.load(weights_path, allow_pickle=False) as npz:
            weights = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise PtyparityError(f"{weights_path}: unreadable weights ({exc}); the bundle is corrupt") from None
    try:
        model_cfg = model_config_from_dict(meta["model_config"])
        scales = Scales(**{f.name: float(meta[f.name]) for f in dataclasses.fields(Scales)})
        probe = (np.asarray(meta["probe"]["real"]) + 1j * np.asarray(meta["probe"]["imag"])).astype(np.complex64)
    except (KeyError, TypeError, ValueError) as exc:
        raise PtyparityError(f"{meta_path}: incomplete bundle metadata ({exc}); re-export the bundle") from None
    if verify:
        sums = meta.get("checksums", {})
        if sums.get("config_sha256") != _config_digest(meta):
            raise PtyparityError(f"{meta_path}: config checksum mismatch — the bundle was edited after training "
                                 "(e.g. intensity_scale); use the original bundle or retrain")
        if sums.get("weights_sha256") != weights_digest(weights):
            raise PtyparityError(f"{weights_path}: weights checksum mismatch — the weights were modified or "
                                 "corrupted; use the original bundle or retrain")
        check_weights(model_cfg, weights)
        if not math.isclose(float(np.exp(np.float64(weights[LOG_SCALE]))), scales.intensity_scale, rel_tol=1e-6):
            raise PtyparityError(f"{meta_path}: intensity_scale does not match the weights' log_scale; "
                                 "the bundle is inconsistent, re-export it")
    else:
        # What an unverified loader does: trust bundle.json's scale for the model.
        weights = dict(weights)
        weights[LOG_SCALE] = np.asarray(math.log(scales.intensity_scale), np.float32)
    return Bundle(model_cfg=model_cfg, train_cfg=meta.get("train_config", {}), scales=scales, probe=probe,
                  weights=weights, meta=meta)


def load(uri, *, verify=True):
    """Load a bundle from a local path, ``runs:/…`` or ``models:/…`` URI.

    Returns
    -------
    reconstructor : ptyparity.inference.Reconstructor
        Runs the bundle on raw data with either backend.
    """
    from ptyparity.inference import Reconstructor

    return Reconstructor(load_dir(resolve(uri), verify=verify), source=uri)
