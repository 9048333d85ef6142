"""Configuration dataclasses: one small, frozen, validated record per concern.

``ModelConfig`` is everything both backends need to build the same network and
physics; ``TrainConfig`` adds how it is trained. Both are logged with
``dataclasses.asdict``, overridden with ``dataclasses.replace`` and stored in the
bundle, from which :func:`model_config_from_dict` rebuilds them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass

from ptyparity.errors import PtyparityError

PATCH_SIZES = (32, 64, 128, 256)
LOSS_MODES = ("poisson", "mae")
MERGE_WEIGHTINGS = ("support", "probe")
INTENSITY_SCALE_MODES = ("dataset", "closed_form")
BACKENDS = ("torch", "tensorflow")
PRECISIONS = ("float32", "float64")  # float64: parity verification only (see TrainConfig.precision)

# Upstream conventions (SPEC §9): one ModelConfig field per way the real PtychoPINN differs
# from SPEC. The first value of each is the SPEC choice and the default.
HEAD_LAYOUTS = ("spec", "ptychopinn")
PROBE_NORMALIZATIONS = ("spec", "ptychopinn")
INPUT_NORMALIZATIONS = ("dataset", "per_set")
MERGE_NORMALIZATIONS = ("spec", "ptychopinn")
GROUP_OFFSETS = ("limited", "unlimited")
CONVENTION_CHOICES = {"head_layout": HEAD_LAYOUTS, "probe_normalization": PROBE_NORMALIZATIONS,
                      "input_normalization": INPUT_NORMALIZATIONS, "merge_normalization": MERGE_NORMALIZATIONS,
                      "group_offsets": GROUP_OFFSETS}
SPEC_CONVENTIONS = {name: choices[0] for name, choices in CONVENTION_CHOICES.items()}
# What a model imported from PtychoPINN (ptyparity.ptychopinn) carries.
PTYCHOPINN_CONVENTIONS = {name: choices[1] for name, choices in CONVENTION_CHOICES.items()}


def _check_choice(name, value, allowed):
    if value not in allowed:
        raise PtyparityError(f"{name} must be one of {', '.join(map(str, allowed))}; got {value!r}")


@dataclass(frozen=True)
class ModelConfig:
    """The network and its physics, identical in both backends (SPEC §3-4)."""

    N: int = 32
    gridsize: int = 2
    n_filters_scale: int = 2  # PtychoPINN's default; CPU presets use 1 (3x faster, no worse)
    object_big: bool = True
    probe_big: bool = False
    probe_mask: bool = False
    merge_weighting: str = "support"
    max_offset: int = 0  # canvas margin for object_big; resolved from the scan step at training
    intensity_scale_trainable: bool = False
    # --- upstream conventions (SPEC §9); the SPEC value is the default of each ---------------
    # "ptychopinn": each head's last conv reads the decoder's channels except the last
    # HEAD_BORDER_CHANNELS (= 4); with probe_big a second branch on those 4 channels,
    # conv(2048/N f)+ReLU, conv+ReLU, upsample2, conv to C, swish, times the border mask (zero on
    # the central N/2 window), is added to the zero-padded first branch. Shapes:
    # architecture.conv_layers; forward: reference_network.head.
    head_layout: str = "spec"
    # "ptychopinn": P = probeGuess / (4 mean|disk probeGuess|), disk = pixel centres within N/4 of
    # the array centre (normalization.ptychopinn_probe_norm) instead of SPEC §2's energy rule.
    probe_normalization: str = "spec"
    # "per_set": input_norm is recomputed on every set of groups the model is run on, so that the
    # mean over the set's (group, channel) patterns of sum X**2 is (N/2)**2
    # (normalization.set_input_norm); "dataset": fixed from the training data (SPEC §2).
    input_normalization: str = "dataset"
    # "ptychopinn": the merge sums the padded patches unweighted and divides by the merged centred
    # N/2 window + 1e-3 (physics.merge_weight_pair). It equals SPEC's support weighting unless
    # probe_big (where SPEC's support is all ones); needs merge_weighting "support".
    merge_normalization: str = "spec"
    # "unlimited": groups are never redrawn for offsets beyond max_offset; what falls outside the
    # canvas is cut off, as upstream does (its fixture's groups reach 11.6 px on a 7 px margin).
    # "limited": SPEC §2's redraw rule (grouping.group_positions, enforce_max_offset).
    group_offsets: str = "limited"

    def __post_init__(self):
        _check_choice("N", self.N, PATCH_SIZES)
        if self.gridsize < 1:
            raise PtyparityError(f"gridsize must be >= 1, got {self.gridsize}")
        if self.n_filters_scale < 1:
            raise PtyparityError(f"n_filters_scale must be >= 1, got {self.n_filters_scale}")
        _check_choice("merge_weighting", self.merge_weighting, MERGE_WEIGHTINGS)
        if self.max_offset < 0:
            raise PtyparityError(f"max_offset must be >= 0, got {self.max_offset}")
        for name, choices in CONVENTION_CHOICES.items():
            _check_choice(name, getattr(self, name), choices)
        if self.merge_normalization == "ptychopinn" and self.merge_weighting != "support":
            raise PtyparityError("merge_normalization 'ptychopinn' merges unweighted patches; "
                                 f"it needs merge_weighting 'support', got {self.merge_weighting!r}")

    @property
    def conventions(self):
        """The upstream-convention fields as a dict (``SPEC_CONVENTIONS`` by default)."""
        return {name: getattr(self, name) for name in CONVENTION_CHOICES}

    @property
    def channels(self):
        """``C = gridsize**2``."""
        return self.gridsize**2

    @property
    def n_stages(self):
        """Encoder stages ``L = log2(N) - 3``."""
        return int(math.log2(self.N)) - 3

    @property
    def canvas_size(self):
        """Side of the object_big canvas, ``N + 2 * max_offset``."""
        return self.N + 2 * self.max_offset


@dataclass(frozen=True)
class TrainConfig:
    """How a model is trained (SPEC §5); the data-dependent numbers are filled in
    by the training entry point before it logs the config."""

    model: ModelConfig = ModelConfig()
    n_groups: int = 512
    neighbor_count: int = 7
    batch_size: int = 16
    max_epochs: int = 8
    learning_rate: float = 1e-3
    loss_mode: str = "poisson"
    intensity_scale_mode: str = "dataset"
    intensity_scale: float | None = None  # explicit override of s
    val_fraction: float = 0.05
    seed: int = 0
    deterministic: bool = False
    patch_stats_limit: int = 16
    # "float64" trains in double precision (complex128 physics) for verifying that the
    # backends agree without float32 rounding noise, which Adam amplifies (slow; the
    # model's weights are float32 again after fit and bundles stay float32).
    precision: str = "float32"

    def __post_init__(self):
        for name in ("n_groups", "batch_size", "max_epochs", "patch_stats_limit"):
            if getattr(self, name) < 1:
                raise PtyparityError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.neighbor_count < 0:
            raise PtyparityError(f"neighbor_count must be >= 0, got {self.neighbor_count}")
        if not self.learning_rate > 0:
            raise PtyparityError(f"learning_rate must be > 0, got {self.learning_rate}")
        _check_choice("loss_mode", self.loss_mode, LOSS_MODES)
        _check_choice("intensity_scale_mode", self.intensity_scale_mode, INTENSITY_SCALE_MODES)
        _check_choice("precision", self.precision, PRECISIONS)
        if self.intensity_scale is not None and not self.intensity_scale > 0:
            raise PtyparityError(f"intensity_scale must be > 0, got {self.intensity_scale}")
        if not 0 <= self.val_fraction < 1:
            raise PtyparityError(f"val_fraction must be in [0, 1), got {self.val_fraction}")


def model_config_from_dict(values):
    """Rebuild a :class:`ModelConfig` from ``asdict`` output, rejecting unknown keys."""
    names = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise PtyparityError(f"unknown model config keys {unknown}; expected a subset of {sorted(names)}")
    return ModelConfig(**values)


def _without_default_conventions(values):
    """``values`` minus convention fields at their SPEC default, at the top level and in a
    nested ``model`` dict, so configs hashed before the fields existed keep their hash."""
    out = {k: v for k, v in values.items() if not (k in SPEC_CONVENTIONS and v == SPEC_CONVENTIONS[k])}
    if isinstance(out.get("model"), dict):
        out["model"] = _without_default_conventions(out["model"])
    return out


def config_hash(values):
    """Short sha256 of a JSON-able, backend-independent config dict.

    Convention fields (``CONVENTION_CHOICES``) at their SPEC default are left out, so the
    hash (and every ``pair_key``) of a SPEC config is what it was before they existed.
    """
    values = _without_default_conventions(dict(values))
    text = json.dumps(values, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
