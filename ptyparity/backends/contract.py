"""What every backend must provide, and the input checks they share.

A backend is a subpackage of :mod:`ptyparity.backends` whose ``api`` module
satisfies :class:`BackendAPI` (NumPy in, NumPy out, canonical channel-last layouts)
and whose ``ops`` module holds differentiable copies of the NumPy reference
:mod:`ptyparity.physics` under the names :data:`OP_NAMES`: each with the
reference's parameters plus a keyword-only ``precision="float32"`` (``"float64"``
is the parity-verification precision), so the precision is always an explicit
argument, never ambient state.

The checks below raise :class:`~ptyparity.errors.PtyparityError` with one line
naming the problem and the fix; both backends call them, so the same mistake gets
the same words in either. Importing this module imports no framework.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from ptyparity.config import LOSS_MODES, PRECISIONS
from ptyparity.errors import PtyparityError
from ptyparity.names import OPTIONAL_TAPS, TAP_NAMES

if TYPE_CHECKING:  # annotations only
    from ptyparity.config import ModelConfig
    from ptyparity.training import TrainHooks, TrainingSet

__all__ = ["BackendAPI", "OP_NAMES", "CONVERSIONS", "ACCELERATORS", "signature_mismatches", "tap_names",
           "check_precision", "check_loss_mode", "check_supported", "check_accelerator", "check_probe", "check_keep",
           "check_forward_inputs", "check_model_precision", "check_fit_model"]

# The ops of :mod:`ptyparity.physics` every backend's ``ops`` module mirrors.
OP_NAMES = ("tent_matrix", "translate", "pad_center", "crop_center", "merge_weights", "merge_patches",
            "extract_patches", "illuminate", "predicted_intensity", "diffract", "predicted_amplitude",
            "poisson_loss", "poisson_saturated", "poisson_deviance", "mae_loss", "forward_physics")
# ... and the converters and dtype helpers next to them (same signatures in every backend).
CONVERSIONS = ("to_backend", "to_numpy", "real_dtype", "complex_dtype")
ACCELERATORS = ("cpu", "gpu", "auto")
# Upstream conventions (SPEC §9) of a ModelConfig that the backends' networks do not run
# (none left: both run every convention; kept so a future option can be refused in one place).
UNSUPPORTED_CONVENTIONS: dict[str, tuple[str, ...]] = {}


@runtime_checkable
class BackendAPI(Protocol):
    """The ``api`` module of a backend (:func:`ptyparity.backends.load_backend`).

    A module satisfies it structurally: the functions below, with these parameters
    (names, kinds and defaults; :func:`signature_mismatches` checks them).
    """

    NAME: str  # "torch" or "tensorflow", as in ptyparity.config.BACKENDS

    def versions(self) -> dict[str, str]:
        """Framework versions, logged as run params (``<framework>_version`` keys)."""

    def build(self, cfg: ModelConfig, probe: np.ndarray, weights: dict[str, np.ndarray], *,
              device: Any = None, precision: str = "float32") -> Any:
        """A model in inference mode holding the canonical ``weights``.

        ``probe`` (N, N) complex is the model probe (scaled, masked when
        ``probe_mask``); ``device`` places it (framework default when None);
        ``precision`` is its parameter and compute precision."""

    def get_weights(self, model: Any) -> dict[str, np.ndarray]:
        """The canonical weights (names of :func:`ptyparity.architecture.weight_shapes`,
        HWIO kernels) as float32 arrays."""

    def forward(self, model: Any, scaled_diffraction: np.ndarray, rel: np.ndarray, keep: Any = None, *,
                precision: str | None = None) -> dict[str, np.ndarray]:
        """Taps of one batch without gradients: ``scaled_diffraction`` (B, N, N, C) in
        count units and ``rel`` (B, C, 2) in, the taps of :func:`tap_names` (or only
        ``keep``) out, in that order, in the model's precision."""

    def fit(self, model: Any, training_set: TrainingSet, hooks: TrainHooks | None = None, *,
            quiet: bool = False, accelerator: str = "cpu", devices: int = 1,
            deterministic: bool = False, resume: Any = None, checkpoint: Any = None) -> dict[str, list[float]]:
        """Train ``model`` in place (SPEC §5) and return the history:
        :data:`ptyparity.training.EPOCH_KEYS` per epoch and
        :data:`ptyparity.training.STEP_KEYS` per step, also reported to ``hooks``.
        ``resume`` (a :class:`ptyparity.checkpoint.TrainState`) continues a fit where it
        stopped; ``checkpoint(state)`` receives the state after every epoch."""


def _parameters(fn, drop_self):
    params = list(inspect.signature(fn).parameters.values())
    return [(p.name, p.kind, p.default) for p in params[1 if drop_self else 0 :]]


def signature_mismatches(module) -> list[str]:
    """How ``module`` differs from :class:`BackendAPI`: one line per missing member
    or per function whose parameters (names, kinds, defaults) differ; empty when it
    conforms."""
    problems = []
    if not isinstance(getattr(module, "NAME", None), str):
        problems.append("NAME is missing or not a str")
    for name in ("versions", "build", "get_weights", "forward", "fit"):
        fn = getattr(module, name, None)
        if not callable(fn):
            problems.append(f"{name} is missing")
            continue
        want, got = _parameters(getattr(BackendAPI, name), True), _parameters(fn, False)
        if want != got:
            problems.append(f"{name}{inspect.signature(fn)} differs from the contract's "
                            f"{name}{inspect.signature(getattr(BackendAPI, name))}")
    return problems


# --- shared checks ----------------------------------------------------------------------


def tap_names(cfg: ModelConfig) -> tuple[str, ...]:
    """The taps a forward pass of a ``cfg`` model returns, in forward order
    (:data:`ptyparity.names.TAP_NAMES`; ``object_canvas`` only when ``object_big``)."""
    return tuple(name for name in TAP_NAMES if cfg.object_big or name not in OPTIONAL_TAPS)


def check_precision(precision):
    """``precision`` if it is one of ``PRECISIONS``, else a PtyparityError."""
    if precision not in PRECISIONS:
        raise PtyparityError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    return precision


def check_loss_mode(loss_mode):
    """``loss_mode`` if it is one of ``LOSS_MODES``, else a PtyparityError."""
    if loss_mode not in LOSS_MODES:
        raise PtyparityError(f"loss_mode must be one of {', '.join(LOSS_MODES)}; got {loss_mode!r}")
    return loss_mode


def check_supported(cfg: ModelConfig):
    """A network can be built for ``cfg`` (see :data:`UNSUPPORTED_CONVENTIONS`)."""
    for name, values in UNSUPPORTED_CONVENTIONS.items():
        value = getattr(cfg, name, None)
        if value in values:
            raise PtyparityError(f"{name}={value!r} is not implemented by the torch and tensorflow networks; "
                                 "only the NumPy reference (ptyparity.reference_network) runs it")


def check_accelerator(accelerator, devices):
    """The ``accelerator`` / ``devices`` request of ``fit`` (placement itself is the
    backend's)."""
    if accelerator not in ACCELERATORS:
        raise PtyparityError(f"accelerator must be one of {', '.join(ACCELERATORS)}; got {accelerator!r}")
    if isinstance(devices, bool) or not isinstance(devices, int) or (devices < 1 and devices != -1):
        raise PtyparityError(f"devices must be a positive integer or -1 (all GPUs); got {devices!r}")


def check_probe(cfg: ModelConfig, probe):
    """The model probe as an array, if it is complex (N, N)."""
    probe = np.asarray(probe)
    if probe.shape != (cfg.N, cfg.N) or not np.iscomplexobj(probe):
        raise PtyparityError(f"probe must be a complex ({cfg.N}, {cfg.N}) array, got {probe.dtype} {probe.shape}")
    return probe


def check_keep(keep, cfg: ModelConfig):
    """``keep`` as a tuple of tap names of a ``cfg`` model (``None`` stays ``None``)."""
    if keep is None:
        return None
    if isinstance(keep, str):
        raise PtyparityError(f"keep must be a sequence of tap names, not one string; use keep=({keep!r},)")
    keep = tuple(keep)
    available = tap_names(cfg)
    unknown = [name for name in keep if name not in available]
    if unknown:
        raise PtyparityError(f"unknown taps {unknown}; available: {', '.join(available)}")
    return keep


def check_forward_inputs(cfg: ModelConfig, scaled_diffraction, rel, precision):
    """``forward``'s inputs as C-ordered NumPy arrays in ``precision``, once their
    dtypes (real numbers) and shapes ((B, N, N, C) and (B, C, 2)) are checked."""
    dtype = np.float32 if check_precision(precision) == "float32" else np.float64
    arrays = {"scaled_diffraction": np.asarray(scaled_diffraction), "rel": np.asarray(rel)}
    for name, array in arrays.items():
        if array.dtype.kind not in "fiu":
            raise PtyparityError(f"{name} must hold real numbers, got dtype {array.dtype}")
    scaled, offsets = arrays["scaled_diffraction"], arrays["rel"]
    n, c = cfg.N, cfg.channels
    if scaled.ndim != 4 or scaled.shape[1:] != (n, n, c):
        raise PtyparityError(f"scaled_diffraction must have shape (B, {n}, {n}, {c}), got {scaled.shape}")
    b = scaled.shape[0]
    if offsets.shape != (b, c, 2):
        raise PtyparityError(f"rel must have shape ({b}, {c}, 2), got {offsets.shape}")
    return np.ascontiguousarray(scaled, dtype), np.ascontiguousarray(offsets, dtype)


def check_model_precision(model_precision, precision):
    """A ``forward(..., precision=...)`` request must match the model's own."""
    if precision is not None and check_precision(precision) != model_precision:
        raise PtyparityError(f"the model computes in {model_precision}, not {precision}; "
                             f"build it with precision={precision!r}")


def check_fit_model(model_cfg: ModelConfig, training_set: TrainingSet):
    """``fit`` needs a model built for the training set's model config."""
    wanted = training_set.cfg.model
    if model_cfg == wanted:
        return
    fields = [f.name for f in dataclasses.fields(wanted)]
    differ = [name for name in fields if getattr(model_cfg, name) != getattr(wanted, name)] or fields
    built = ", ".join(f"{name}={getattr(model_cfg, name)!r}" for name in differ)
    asked = ", ".join(f"{name}={getattr(wanted, name)!r}" for name in differ)
    raise PtyparityError(f"model was built for {built}, but the training set is for {asked}; "
                         "build it from training_set.cfg.model")
