"""Read a PtychoPINN TensorFlow checkpoint (``wts.h5.zip``) with zipfile, json and h5py only.

What is read, and from where:

- conv kernels (HWIO) and biases: ``autoencoder/model.keras`` (a zip) -> ``model.weights.h5``
  -> ``layers/<k>/vars/{0, 1}``; each ``vars`` group's ``name`` attribute is the layer's
  name in ``config.json``, whose graph gives it a role (:mod:`.keras_graph`). The h5
  group names (``conv2d_14``) follow yet another order and are never trusted;
- ``intensity_scale``: the ``intensity_scale`` attribute of ``autoencoder/model.h5``;
- N, gridsize, n_filters_scale, object_big, probe_big and the merge canvas size: the graph
  in ``config.json``; the user's training YAML (``config_yaml``), when given, wins where it
  says something and must agree with the graph.

The archive's ``*.dill`` members (the pickled config and custom objects) are never opened:
ptyparity never unpickles.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import zipfile
from dataclasses import dataclass

import numpy as np

from ptyparity import architecture
from ptyparity.config import PTYCHOPINN_CONVENTIONS, ModelConfig
from ptyparity.errors import PtyparityError
from ptyparity.ptychopinn.keras_graph import summarize_graph

AUTOENCODER = "autoencoder"
REQUIRED_MEMBERS = (f"{AUTOENCODER}/model.keras", f"{AUTOENCODER}/model.h5")
KERAS_MEMBERS = ("config.json", "model.weights.h5")
# YAML keys cross-checked against config.json, and those ptyparity can only import at one value.
YAML_GRAPH_KEYS = ("N", "gridsize", "n_filters_scale", "object_big", "probe_big")
YAML_FIXED = {"probe_mask": False, "pad_object": True, "model_type": "pinn", "architecture": "cnn",
              "amp_activation": "sigmoid", "gaussian_smoothing_sigma": 0.0}


@dataclass(frozen=True)
class Checkpoint:
    """A PtychoPINN checkpoint as ptyparity reads it.

    Attributes
    ----------
    path : str
    sha256 : str
        Of the archive file.
    model_cfg : ModelConfig
        With the upstream conventions (``config.PTYCHOPINN_CONVENTIONS``).
    weights : dict of ndarray
        Canonical weights (``architecture.weight_shapes`` names, HWIO, float32) including
        ``log_scale = log(intensity_scale)``.
    intensity_scale : float
        From ``autoencoder/model.h5``.
    layer_map : dict
        Canonical conv name -> upstream Keras layer name.
    keras_version : str
    config_yaml : dict or None
        The YAML ``model`` section, when one was given.
    """

    path: str
    sha256: str
    model_cfg: ModelConfig
    weights: dict
    intensity_scale: float
    layer_map: dict
    keras_version: str
    config_yaml: dict | None


def _fail(source, msg):
    raise PtyparityError(f"{source}: {msg}")


def _file_sha256(path):
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _read_member(archive, name, source):
    """Bytes of one named member (never a ``*.dill`` one: callers name only h5/json/keras)."""
    try:
        return archive.read(name)
    except KeyError:
        _fail(source, f"member {name!r} is missing; expected a wts.h5.zip written by PtychoPINN's model_manager.save")
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        _fail(source, f"member {name!r} is unreadable ({exc}); the archive is corrupt, copy it again")


def _open_zip(data, source, what):
    try:
        return zipfile.ZipFile(data if not isinstance(data, bytes) else io.BytesIO(data))
    except (zipfile.BadZipFile, OSError) as exc:
        _fail(source, f"{what} is not a zip archive ({exc}); expected PtychoPINN's wts.h5.zip")


def read_yaml(path):
    """The ``model`` section of a PtychoPINN training YAML (or the whole file if it has none)."""
    import yaml

    try:
        with open(path) as fh:
            doc = yaml.safe_load(fh)
    except OSError as exc:
        raise PtyparityError(f"{path}: cannot read the config YAML ({exc}); check the --config path") from None
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0]
        raise PtyparityError(f"{path}: not valid YAML ({first}); pass PtychoPINN's training config") from None
    if not isinstance(doc, dict):
        raise PtyparityError(f"{path}: the YAML is not a mapping; pass PtychoPINN's training config")
    section = doc.get("model", doc)
    if not isinstance(section, dict):
        raise PtyparityError(f"{path}: the YAML's 'model' section is not a mapping")
    return section


def _reconcile_yaml(graph_values, section, source):
    """The graph's values, with the YAML's where it gives them; contradictions and
    unsupported settings raise."""
    values = dict(graph_values)
    for key in YAML_GRAPH_KEYS:
        if key in section:
            given = section[key]
            if given != graph_values[key]:
                _fail(source, f"the config YAML says {key}={given!r} but the checkpoint's config.json graph has "
                              f"{key}={graph_values[key]!r}; pass the YAML this checkpoint was trained with")
            values[key] = given
    for key, only in YAML_FIXED.items():
        if key in section and section[key] != only:
            _fail(source, f"the config YAML sets {key}={section[key]!r}; ptyparity imports {key}={only!r} "
                          "checkpoints only")
    return values


def _read_conv_weights(h5_bytes, source):
    """Keras layer name -> (kernel, bias) of every 4-D-kernel layer in ``model.weights.h5``."""
    import h5py

    try:
        h5 = h5py.File(io.BytesIO(h5_bytes), "r")
    except OSError as exc:
        _fail(source, f"model.weights.h5 is not an HDF5 file ({exc}); the archive is corrupt")
    out = {}
    with h5:
        layers = h5.get("layers")
        if layers is None:
            _fail(source, "model.weights.h5 has no 'layers' group; not a Keras 3 weights file")
        for group_name, group in layers.items():
            vars_ = group.get("vars")
            if vars_ is None or "0" not in vars_ or len(vars_["0"].shape) != 4:
                continue
            name = vars_.attrs.get("name")
            if name is None:
                _fail(source, f"weights group layers/{group_name} has no layer name attribute; cannot map it")
            if "1" not in vars_:
                _fail(source, f"conv layer {name!r} (layers/{group_name}) has no bias; ptyparity's convs all have one")
            name = name.decode() if isinstance(name, bytes) else str(name)
            out[name] = (np.asarray(vars_["0"][()], np.float32), np.asarray(vars_["1"][()], np.float32),
                         f"layers/{group_name}")
    return out


def _intensity_scale(h5_bytes, source):
    import h5py

    try:
        with h5py.File(io.BytesIO(h5_bytes), "r") as h5:
            value = h5.attrs.get("intensity_scale")
    except OSError as exc:
        _fail(source, f"{AUTOENCODER}/model.h5 is not an HDF5 file ({exc}); the archive is corrupt")
    if value is None:
        _fail(source, f"{AUTOENCODER}/model.h5 has no intensity_scale attribute; re-save the model with PtychoPINN")
    value = float(np.asarray(value).reshape(()))
    if not (math.isfinite(value) and value > 0):
        _fail(source, f"intensity_scale in {AUTOENCODER}/model.h5 is {value}; it must be a positive number")
    return value


def read_checkpoint(path, *, config_yaml=None):
    """Read a PtychoPINN ``wts.h5.zip`` into canonical weights and a model config.

    Parameters
    ----------
    path : str or PathLike
        The archive ``model_manager.save`` wrote.
    config_yaml : str or PathLike, optional
        The training YAML; its ``model`` section wins where given and must agree with the
        checkpoint's graph.

    Returns
    -------
    checkpoint : Checkpoint
    """
    source = os.fspath(path)
    if not os.path.isfile(source):
        _fail(source, "no such file; give the wts.h5.zip PtychoPINN saved")
    if not zipfile.is_zipfile(source):
        _fail(source, "not a zip archive; expected the wts.h5.zip PtychoPINN's model_manager.save writes")
    sha = _file_sha256(source)
    with _open_zip(source, source, "the file") as archive:
        names = set(archive.namelist())  # the central directory only: no member is opened
        missing = [m for m in REQUIRED_MEMBERS if m not in names]
        if missing:
            _fail(source, f"missing member(s) {missing}; expected a wts.h5.zip written by PtychoPINN's "
                          "model_manager.save")
        keras_bytes = _read_member(archive, REQUIRED_MEMBERS[0], source)
        scale = _intensity_scale(_read_member(archive, REQUIRED_MEMBERS[1], source), source)
    with _open_zip(keras_bytes, source, REQUIRED_MEMBERS[0]) as keras_zip:
        inner = set(keras_zip.namelist())
        missing = [m for m in KERAS_MEMBERS if m not in inner]
        if missing:
            _fail(source, f"{REQUIRED_MEMBERS[0]} lacks {missing}; not a Keras 3 model archive")
        try:
            config = json.loads(_read_member(keras_zip, "config.json", source))
        except json.JSONDecodeError as exc:
            _fail(source, f"{REQUIRED_MEMBERS[0]}/config.json is not JSON ({exc}); the archive is corrupt")
        meta = json.loads(_read_member(keras_zip, "metadata.json", source)) if "metadata.json" in inner else {}
        h5_bytes = _read_member(keras_zip, "model.weights.h5", source)

    graph = summarize_graph(config, source)
    values = {"N": graph.N, "gridsize": graph.gridsize, "n_filters_scale": graph.n_filters_scale,
              "object_big": graph.object_big, "probe_big": graph.probe_big}
    section = None
    if config_yaml is not None:
        section = read_yaml(config_yaml)
        values = _reconcile_yaml(values, section, source)
    if not values["object_big"] and values["gridsize"] > 1:
        _fail(source, "object_big=false with gridsize > 1 (upstream then predicts one patch per group) is not "
                      "importable; ptyparity predicts one patch per channel")
    if values["probe_big"]:
        _fail(source, "probe_big=true checkpoints are not importable yet: no upstream probe_big checkpoint has been "
                      "checked against ptyparity's head_layout 'ptychopinn' branch; import a probe_big=false model")
    if (graph.padded_size - graph.N) % 2:
        _fail(source, f"merge canvas {graph.padded_size} minus N={graph.N} is odd; ptyparity's canvas is "
                      "N + 2*max_offset")
    cfg = ModelConfig(**values, probe_mask=False, merge_weighting="support",
                      max_offset=(graph.padded_size - graph.N) // 2 if graph.object_big else 0,
                      **PTYCHOPINN_CONVENTIONS)

    stored = _read_conv_weights(h5_bytes, source)
    role_of = {layer: canonical for canonical, layer in graph.convs.items()}
    unmapped = sorted(name for name in stored if name not in role_of)
    if unmapped:
        _fail(source, f"model.weights.h5 holds conv layer(s) {unmapped} that the config.json graph does not use; "
                      "ptyparity cannot place them (is this a different architecture?)")
    absent = sorted(name for name in role_of if name not in stored)
    if absent:
        _fail(source, f"model.weights.h5 lacks the weights of conv layer(s) {absent}; the archive is incomplete")
    weights = {}
    for layer, canonical in role_of.items():
        kernel, bias, where = stored[layer]
        weights[f"{canonical}.kernel"] = kernel
        weights[f"{canonical}.bias"] = bias
        expected = architecture.weight_shapes(cfg)[f"{canonical}.kernel"]
        if kernel.shape != expected or bias.shape != (expected[-1],):
            _fail(source, f"{where} ({layer}, {canonical}) has kernel {kernel.shape} and bias {bias.shape}, "
                          f"expected {expected}; the weights do not match the graph")
    weights[architecture.LOG_SCALE] = np.asarray(math.log(scale), np.float32)
    architecture.check_weights(cfg, weights)
    return Checkpoint(path=source, sha256=sha, model_cfg=cfg, weights=weights, intensity_scale=scale,
                      layer_map=dict(graph.convs), keras_version=str(meta.get("keras_version", "")),
                      config_yaml=dict(section) if section is not None else None)


def checkpoint_record(ckpt):
    """What a bundle's provenance keeps of a checkpoint (JSON-able)."""
    return {"file": os.path.basename(ckpt.path), "sha256": ckpt.sha256, "intensity_scale": ckpt.intensity_scale,
            "layer_map": dict(ckpt.layer_map), "keras_version": ckpt.keras_version,
            # JSON-able copy (a YAML date or set becomes its string)
            "config_yaml": None if ckpt.config_yaml is None else json.loads(json.dumps(ckpt.config_yaml, default=str))}
