"""A PtychoPINN checkpoint plus its dataset -> an ordinary ptyparity bundle.

The checkpoint gives the network (:mod:`.checkpoint`); the dataset gives what the archive
keeps only inside its pickles: the probe (``probeGuess``, normalised as upstream does) and
the input normalisation. The result is saved with :func:`ptyparity.bundle.save`, so it is
checksummed, carries the upstream conventions in its ``model_config`` and runs wherever a
ptyparity bundle runs.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass

import numpy as np

from ptyparity import bundle, normalization
from ptyparity.data import RawData, dataset_digest, load_npz
from ptyparity.errors import PtyparityError
from ptyparity.ptychopinn.checkpoint import Checkpoint, checkpoint_record
from ptyparity.training import Scales

SOURCE = "ptychopinn"
BUNDLE_BACKEND = "tensorflow"  # the framework the model was trained in


@dataclass(frozen=True)
class ImportedModel:
    """Everything a bundle needs, from a PtychoPINN checkpoint and its dataset.

    Attributes
    ----------
    model_cfg : ModelConfig
        Upstream conventions (``head_layout``, ``probe_normalization``, ``merge_normalization``
        "ptychopinn", ``input_normalization`` "per_set").
    weights : dict of ndarray
        Canonical weights, ``log_scale = log(intensity_scale)``.
    scales : Scales
        ``intensity_scale = data_scale`` from ``model.h5``; ``probe_norm`` upstream's
        ``1 / (4 mean|disk probeGuess|)``; ``input_norm`` the per_set factor of the whole
        import dataset (each pattern once; a per_set model recomputes it for every set it runs
        on); ``nphotons`` from the dataset's record, else measured.
    probe : ndarray, shape (N, N), complex64
        ``probe_norm * probeGuess``, upstream's ``probe_model``.
    train_config : dict
        What is known of the training: the model config and the fixed ``intensity_scale``.
    provenance : dict
        Source file name and sha256, upstream commit (when given), Keras version, layer map,
        conventions, the YAML section, the dataset digest.
    """

    model_cfg: object
    weights: dict
    scales: Scales
    probe: np.ndarray
    train_config: dict
    provenance: dict


def _nphotons(data):
    """Mean photons per pattern as the dataset records it (``nphotons`` key or the
    ``_metadata`` JSON PtychoPINN writes), else measured from ``diff3d``."""
    if "nphotons" in data.extras:
        return float(np.asarray(data.extras["nphotons"]).reshape(()))
    if "_metadata" in data.extras:
        try:
            meta = json.loads(str(np.asarray(data.extras["_metadata"]).reshape(())))
            return float(meta["physics_parameters"]["nphotons"])
        except (ValueError, KeyError, TypeError):
            pass  # unreadable metadata: fall back to the measured value
    return data.nphotons


def import_model(checkpoint: Checkpoint, data, *, upstream_commit=None):
    """Combine a read checkpoint with its dataset.

    Parameters
    ----------
    checkpoint : Checkpoint
        From :func:`ptyparity.ptychopinn.read_checkpoint`.
    data : RawData or str or PathLike
        The PtychoPINN-format dataset (a path is loaded with :func:`ptyparity.data.load_npz`,
        which accepts the ``diffraction`` key, intensities and legacy layouts).
    upstream_commit : str, optional
        The PtychoPINN commit the model was trained with, for the record.

    Returns
    -------
    imported : ImportedModel
    """
    if not isinstance(data, RawData):
        data = load_npz(data)
    cfg = checkpoint.model_cfg
    if data.N != cfg.N:
        raise PtyparityError(f"the dataset's patterns are {data.N}x{data.N} but the checkpoint's model has N={cfg.N}; "
                             "import with the dataset the model was trained on")
    try:
        probe_norm = normalization.model_probe_norm(data.probe, probe_normalization=cfg.probe_normalization)
        norm = normalization.input_norm(data.diff3d)
    except ValueError as exc:
        raise PtyparityError(f"the dataset cannot normalise the model ({exc}); check probeGuess and diff3d") from None
    s = checkpoint.intensity_scale
    scales = Scales(input_norm=norm, data_scale=s, intensity_scale=s, probe_norm=probe_norm, nphotons=_nphotons(data))
    probe = (probe_norm * data.probe.astype(np.complex128)).astype(np.complex64)
    provenance = {
        "source": SOURCE,
        **checkpoint_record(checkpoint),
        "upstream_commit": upstream_commit,
        "conventions": cfg.conventions,
        "dataset_digest": dataset_digest(data),
        "input_norm_note": "per_set: the factor of the whole import dataset; recomputed on every set a per_set "
                           "model runs on",
    }
    train_config = {"model": dataclasses.asdict(cfg), "intensity_scale": s, "origin": SOURCE}
    return ImportedModel(model_cfg=cfg, weights=dict(checkpoint.weights), scales=scales, probe=probe,
                         train_config=train_config, provenance=provenance)


def write_bundle(imported: ImportedModel, directory):
    """Save ``imported`` as an ordinary, checksummed ptyparity bundle in ``directory``.

    Returns
    -------
    directory : str
    """
    if os.path.exists(os.path.join(directory, bundle.META_FILE)):
        raise PtyparityError(f"{directory} already holds a bundle; choose another directory")
    if not math.isclose(math.exp(float(imported.weights["log_scale"])), imported.scales.intensity_scale,
                        rel_tol=1e-6):
        raise PtyparityError("the imported log_scale and intensity_scale disagree; re-read the checkpoint")
    versions = {"keras_version": imported.provenance.get("keras_version", "")}
    return bundle.save(directory, weights=imported.weights, model_cfg=imported.model_cfg,
                       train_cfg=imported.train_config, scales=imported.scales, probe=imported.probe,
                       backend=BUNDLE_BACKEND, versions=versions, extra={"provenance": imported.provenance})
