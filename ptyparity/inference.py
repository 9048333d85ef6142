"""Running a model over raw data with either backend, and stitching the result.

Inference groups (every scan position seeds one group, SPEC §2) are computed once
in NumPy, batched identically for both backends, and stitched by
:mod:`ptyparity.stitching`. The scalars come from the bundle, never from the data.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from ptyparity import normalization, physics
from ptyparity.backends import load_backend
from ptyparity.config import TrainConfig
from ptyparity.names import STITCH_TAP
from ptyparity.stitching import stitch_patches
from ptyparity.training import group_batch, inference_set


def train_config_from_dict(values, model_cfg):
    """The :class:`TrainConfig` a bundle was trained with, from its ``train_config``.

    Keys the dict lacks (a bundle written before the field existed) take the
    dataclass default, the one place defaults live; keys this version does not know
    are ignored (they cannot change how this version runs the model).

    Parameters
    ----------
    values : dict
        ``dataclasses.asdict(TrainConfig)`` as stored in ``bundle.json``.
    model_cfg : ModelConfig
        The bundle's verified model config (used instead of ``values["model"]``).
    """
    known = {f.name for f in dataclasses.fields(TrainConfig)} - {"model"}
    return TrainConfig(model=model_cfg, **{k: v for k, v in values.items() if k in known})


def run_input_norm(diff3d, groups, scales, which=None, *, input_normalization="dataset"):
    """The ``input_norm`` a model runs groups ``which`` with.

    Parameters
    ----------
    diff3d : ndarray, shape (M, N, N)
    groups : Groups
    scales : Scales
        The bundle's scalars.
    which : ndarray of int, optional
        The set of groups being run (default all).
    input_normalization : {"dataset", "per_set"}
        The model config's choice: "dataset" is ``scales.input_norm`` (fixed at training,
        SPEC §2); "per_set" (upstream PtychoPINN) is recomputed on this set of groups with
        :func:`ptyparity.normalization.model_input_norm`, so it depends on which groups are run.

    Returns
    -------
    input_norm : float
    """
    if input_normalization == "dataset":
        return scales.input_norm
    which = np.arange(len(groups)) if which is None else np.asarray(which)
    return normalization.model_input_norm(raw_groups(diff3d, groups, which), input_normalization=input_normalization)


def forward_groups(api, model, diff3d, groups, scales, *, which=None, batch_size=64, keep=None,
                   input_normalization="dataset"):
    """Run ``model`` over ``groups`` in batches and gather taps.

    Parameters
    ----------
    api : module
        A backend API (:func:`ptyparity.backends.load_backend`).
    model : backend model
    diff3d : ndarray, shape (M, N, N)
    groups : Groups
    scales : Scales
    which : ndarray of int, optional
        Groups to run (default all, in order).
    batch_size : int
    keep : sequence of str, optional
        Taps to keep (default all).
    input_normalization : {"dataset", "per_set"}
        The model config's ``input_normalization``; "per_set" computes one factor over all
        of ``which`` (not per batch) with :func:`run_input_norm`, as upstream does for the
        set it is given.

    Returns
    -------
    taps : dict of ndarray
        Concatenated along the group axis, canonical layout.
    """
    which = np.arange(len(groups)) if which is None else np.asarray(which)
    norm = run_input_norm(diff3d, groups, scales, which, input_normalization=input_normalization)
    out = {}
    for start in range(0, len(which), batch_size):
        sel = which[start : start + batch_size]
        scaled, rel = group_batch(diff3d, groups, sel, input_norm=norm, data_scale=scales.data_scale)
        taps = api.forward(model, scaled, rel, keep=keep)
        for k, v in taps.items():
            out.setdefault(k, []).append(v)
    return {k: np.concatenate(v) for k, v in out.items()}


def raw_groups(diff3d, groups, which):
    """Measured amplitudes of groups ``which``, ``(b, N, N, C)``."""
    return np.moveaxis(diff3d[groups.indices[which]], 1, -1)


@dataclass(frozen=True)
class Reconstruction:
    """A stitched reconstruction.

    Attributes
    ----------
    canvas : ndarray, shape (H, W), complex64
    count : ndarray, shape (H, W), float32
    groups : Groups
    backend : str
    """

    canvas: np.ndarray
    count: np.ndarray
    groups: object
    backend: str


class Reconstructor:
    """A bundle ready to run on raw data with either backend.

    Parameters
    ----------
    bundle : ptyparity.bundle.Bundle
    source : str
        Where it was loaded from (path or URI), for the record.
    """

    def __init__(self, bundle, source=""):
        self.bundle = bundle
        self.source = source
        self._models = {}

    @property
    def model_cfg(self):
        return self.bundle.model_cfg

    @property
    def scales(self):
        return self.bundle.scales

    @property
    def train_cfg(self):
        """The bundle's :class:`TrainConfig` (see :func:`train_config_from_dict`)."""
        return train_config_from_dict(self.bundle.train_cfg, self.model_cfg)

    def backend_name(self, backend=None):
        return backend or self.bundle.backend or "torch"

    def model(self, backend=None):
        """The backend model built from the bundle's canonical weights (cached)."""
        name = self.backend_name(backend)
        if name not in self._models:
            api = load_backend(name)
            self._models[name] = (api, api.build(self.model_cfg, self.bundle.probe, self.bundle.weights))
        return self._models[name]

    def groups_for(self, data):
        """Inference groups for ``data`` with the bundle's grouping settings."""
        tc = self.train_cfg
        return inference_set(data, self.model_cfg, neighbor_count=tc.neighbor_count, seed=tc.seed)

    def check_data(self, data):
        from ptyparity.errors import PtyparityError

        if data.N != self.model_cfg.N:
            raise PtyparityError(f"the data's patterns are {data.N}x{data.N} but the model was trained on "
                                 f"N={self.model_cfg.N}; use data of the same size")

    def taps(self, data, *, backend=None, which=None, groups=None, keep=None, batch_size=64):
        """Taps of groups ``which`` (default all) of ``data``."""
        self.check_data(data)
        api, model = self.model(backend)
        groups = self.groups_for(data) if groups is None else groups
        return forward_groups(api, model, data.diff3d, groups, self.scales, which=which, keep=keep,
                              batch_size=batch_size, input_normalization=self.model_cfg.input_normalization)

    def input_norm(self, data, *, which=None, groups=None):
        """The ``input_norm`` :meth:`taps` runs groups ``which`` of ``data`` with: the bundle's
        for "dataset" models, recomputed on that set for "per_set" ones (:func:`run_input_norm`)."""
        groups = self.groups_for(data) if groups is None else groups
        return run_input_norm(data.diff3d, groups, self.scales, which,
                              input_normalization=self.model_cfg.input_normalization)

    def reconstruct(self, data, *, backend=None, batch_size=64):
        """Stitch the whole dataset.

        Returns
        -------
        reconstruction : Reconstruction
            On ``objectGuess``'s grid when the data has one.
        """
        groups = self.groups_for(data)
        taps = self.taps(data, backend=backend, groups=groups, keep=(STITCH_TAP,), batch_size=batch_size)
        shape = data.obj.shape if data.obj is not None else None
        canvas, count = stitch_patches(taps[STITCH_TAP], groups.pos, canvas_shape=shape)
        return Reconstruction(canvas=canvas, count=count, groups=groups, backend=self.backend_name(backend))

    def support(self):
        return physics.support_mask(self.model_cfg.N, probe_big=self.model_cfg.probe_big)
