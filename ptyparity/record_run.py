"""The arrays side of :mod:`ptyparity.record`: :class:`RunRecord`, which takes what an
implementation predicted and records what ptyparity computes from it (patch statistics, the
debug dump, the stitched canvas and its ground-truth scores), under the names of SPEC §6-7.

The functions here are also what ptyparity's own workflows record with (:func:`dump_patches`).
"""

from __future__ import annotations

import math

import numpy as np

from ptyparity import names, tracking
from ptyparity.errors import PtyparityError

STAGES = {"initial": names.DEBUG_DUMP_INITIAL, "final": names.DEBUG_DUMP_FINAL, "infer": names.DEBUG_DUMP}
STAGES_OF = {"train": ("initial", "final"), "infer": ("infer",)}
SCALE_NAMES = ("intensity_scale", "data_scale", "input_norm", "probe_norm", "nphotons")
# log_patches' optional arrays -> the tap name each is stored under in taps.npz.
TAP_OF = {"encoder_input": "encoder_input", "pred_amplitude": "pred_amplitude",
          "pred_amplitude_counts": "pred_amplitude_counts"}


def _patch_array(name, value, n, c):
    """A ``(B, N, N, C)`` float array, or a one-line error naming the expected shape."""
    arr = np.asarray(value)
    if arr.ndim == 3 and c == 1:
        arr = arr[..., None]  # (B, N, N) with gridsize 1
    if arr.ndim != 4 or arr.shape[1:] != (n, n, c):
        raise PtyparityError(f"{name} must have shape (B, {n}, {n}, {c}) (channel-last, C = gridsize**2), got "
                             f"{arr.shape}; move a torch (B, C, N, N) array's channels last")
    if np.iscomplexobj(arr) or not np.issubdtype(arr.dtype, np.number):
        raise PtyparityError(f"{name} must be real numbers, got dtype {arr.dtype}")
    bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
    if bad:
        raise PtyparityError(f"{name} holds {bad} NaN/inf value(s); the model diverged or an input is broken")
    return arr


def dump_patches(taps, raw, support, prefix, *, log_dump):
    """Patch statistics of a batch of taps, and with ``log_dump`` their debug dump under ``prefix``.

    Parameters
    ----------
    taps : dict of ndarray
        ``amp_patches`` and ``phase_patches`` at least, ``(b, N, N, C)`` each; every tap given is
        kept in ``taps.npz``; see :func:`ptyparity.stats.tap_summary` for the scale factors.
    raw : ndarray, shape (b, N, N, C), or None
        Measured amplitudes of the same groups.
    support : ndarray, shape (N, N)
    prefix : str
        Artifact directory (:data:`STAGES` values).
    log_dump : bool
        Log ``patch_stats.json``, the two patch grids and ``taps.npz``.

    Returns
    -------
    metrics : dict of float
        ``patch.*`` aggregates and whichever of ``mean_input_scale``, ``mean_physics_scale``
        the taps allow.
    """
    from ptyparity import report
    from ptyparity.stats import tap_summary

    metrics, per_patch = tap_summary(taps, raw, support)
    if log_dump:
        tracking.log_dict({"aggregates": metrics, "per_patch": per_patch}, f"{prefix}/{names.PATCH_STATS_FILE}")
        tracking.log_image(report.patch_grid_image(taps["amp_patches"], normalise=True),
                           f"{prefix}/{names.PATCH_GRID_NORMALISED_FILE}")
        tracking.log_image(report.patch_grid_image(taps["amp_patches"], normalise=False),
                           f"{prefix}/{names.PATCH_GRID_SHARED_FILE}")
        tracking.log_npz(dict(taps), f"{prefix}/{names.TAPS_FILE}")
    return metrics


def gt_scores(canvas, count, obj):
    """``gt.*`` scores of a canvas against ``objectGuess`` beside the flat guess's (empty without one)."""
    from ptyparity import metrics as canvas_metrics

    if obj is None:
        return {}
    region = canvas_metrics.covered_region(count)
    scores = canvas_metrics.compare_canvases(canvas, obj, region)
    flat = canvas_metrics.flat_guess_scores(obj, region)
    return {**{f"{names.GT_PREFIX}{k}": v for k, v in scores.items()},
            **{f"{names.GT_PREFIX}{k}{names.FLAT_SUFFIX}": v for k, v in flat.items()}}


class RunRecord:
    """An open train or infer run that takes arrays and records what ptyparity computes from them.

    Made by :func:`train_run` / :func:`infer_run` (or, for a run opened with
    :func:`ptyparity.tracking.start_run`, directly). ``n``, ``gridsize`` and ``probe_big`` fix the
    patch shape ``(B, n, n, gridsize**2)`` and the support; ``data`` (RawData) is the ground truth
    of an infer run's canvas.
    """

    def __init__(self, run_id, kind, *, n, gridsize, probe_big, backend, data=None):
        from ptyparity.physics import support_mask

        if kind not in STAGES_OF:
            raise ValueError(f"kind must be 'train' or 'infer', got {kind!r}")
        self.run_id, self.kind, self.backend, self.data = run_id, kind, backend, data
        self.n, self.channels = int(n), int(gridsize) ** 2
        self.support = support_mask(self.n, probe_big=bool(probe_big))
        self.epochs_logged = 0
        self._scales = {}

    def log_params(self, params):
        """More params (``{name: value}``; booleans as ``true``/``false``)."""
        tracking.log_params(params)

    def log_scales(self, **scales):
        """The normalisation scalars in effect, as params (:data:`SCALE_NAMES`): ``intensity_scale``
        (at inference: the value the model loaded), ``data_scale``, ``input_norm``, ``probe_norm``,
        ``nphotons``. Each may be logged once; a second, different value is refused."""
        unknown = sorted(set(scales) - set(SCALE_NAMES))
        if unknown:
            raise PtyparityError(f"unknown scale(s) {', '.join(unknown)}; log_scales takes {', '.join(SCALE_NAMES)}")
        clean = {}
        for key, value in scales.items():
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) \
                    or not math.isfinite(float(value)) or float(value) <= 0:
                raise PtyparityError(f"{key} must be a finite positive number, got {value!r}")
            if key in self._scales and self._scales[key] != float(value):
                raise PtyparityError(f"{key} was already logged as {self._scales[key]!r}; a run has one {key}")
            clean[key] = float(value)
        self._scales.update(clean)
        tracking.log_params(clean)

    def log_epoch(self, epoch, metrics=None, **more):
        """One epoch's numbers at step ``epoch`` (0-based): ``train_loss``, ``val_loss`` and any of
        ``train_deviance``, ``val_deviance``, ``intensity_scale``, ``learning_rate`` (your own
        names are kept too). Non-finite values are left out (a store cannot chart them)."""
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
            raise PtyparityError(f"epoch must be an int >= 0, got {epoch!r}")
        values = {**(metrics or {}), **more}
        bad = [k for k, v in values.items() if isinstance(v, bool) or not isinstance(v, (int, float, np.number))]
        if bad:
            raise PtyparityError(f"log_epoch takes numbers; {', '.join(bad)} are not")
        tracking.log_metrics(values, step=int(epoch))
        self.epochs_logged = max(self.epochs_logged, int(epoch) + 1)

    def log_steps(self, series, *, start_step=0):
        """Per-step histories (``{"train_step_loss": [...], …}``), one value per optimiser step."""
        for key, values in series.items():
            tracking.log_series(key, values, start_step=start_step)

    def log_patches(self, stage, amp, phase, *, diffraction=None, encoder_input=None, pred_amplitude=None,
                    pred_amplitude_counts=None, taps=None, step=None, log_dump=True, patch_metrics=True,
                    scale_metrics=True):
        """Statistics and debug dump of predicted patches (SPEC §6), computed here.

        Parameters
        ----------
        stage : {"initial", "final"} on a train run, "infer" on an infer run
            Where the dump goes (``debug_dump/initial``, ``debug_dump/final``, ``debug_dump``).
        amp, phase : ndarray, shape (B, N, N, C), real
            Predicted amplitude and phase patches (the network's output, channel-last).
        diffraction, encoder_input : ndarray, shape (B, N, N, C), optional
            The measured amplitudes ``diff3d`` of those groups and what your network was fed;
            together they give ``mean_input_scale`` (compare checks it).
        pred_amplitude, pred_amplitude_counts : ndarray, shape (B, N, N, C), optional
            Your forward model's predicted diffraction amplitude in model units and in count
            units; together they give ``mean_physics_scale`` (compare checks it).
        taps : dict of ndarray, optional
            Further named tensors to keep in ``taps.npz``.
        step : int, optional
            Metric step; default 0 for "initial", the epochs logged for "final", none for "infer".
        log_dump : bool
            Log ``patch_stats.json``, the two patch grids and ``taps.npz``.
        patch_metrics, scale_metrics : bool
            Log the ``patch.*`` metrics / the scale-factor metrics.

        Returns
        -------
        metrics : dict of float
        """
        if stage not in STAGES_OF[self.kind]:
            raise PtyparityError(f"stage {stage!r} is not one of a {self.kind} run's: "
                                 f"{', '.join(STAGES_OF[self.kind])}")
        n, c = self.n, self.channels
        all_taps = dict(taps or {})
        all_taps["amp_patches"] = _patch_array("amp", amp, n, c)
        all_taps["phase_patches"] = _patch_array("phase", phase, n, c)
        given = {"encoder_input": encoder_input, "pred_amplitude": pred_amplitude,
                 "pred_amplitude_counts": pred_amplitude_counts}
        for key, value in given.items():
            if value is not None:
                all_taps[TAP_OF[key]] = _patch_array(key, value, n, c)
        b = len(all_taps["amp_patches"])
        for key in ("phase_patches", *(TAP_OF[k] for k, v in given.items() if v is not None)):
            if len(all_taps[key]) != b:
                raise PtyparityError(f"{key} has {len(all_taps[key])} groups but amp has {b}; give the same groups")
        raw = _patch_array("diffraction", diffraction, n, c) if diffraction is not None else None
        if raw is not None and len(raw) != b:
            raise PtyparityError(f"diffraction has {len(raw)} groups but amp has {b}; give the same groups")
        metrics = dump_patches(all_taps, raw, self.support, STAGES[stage], log_dump=log_dump)
        if step is None:
            step = {"initial": 0, "final": self.epochs_logged}.get(stage)
        logged = {k: v for k, v in metrics.items()
                  if (patch_metrics if k.startswith(names.PATCH_PREFIX) else scale_metrics)}
        tracking.log_metrics(logged, step=step)
        return metrics

    def log_canvas(self, canvas, count, *, positions=None, title=None):
        """A stitched reconstruction (``stitched/canvas.npz`` + PNG) and its ``gt.*`` scores.

        Parameters
        ----------
        canvas : ndarray, shape (H, W), complex
            On ``objectGuess``'s grid when the data has one (compare needs both sides on one grid).
        count : ndarray, shape (H, W)
            Overlap weight per pixel (pixels with count > 0.5 are scored).
        positions : ndarray, shape (..., 2), optional
            The patch centres stitched (kept in the npz as ``pos``).

        Returns
        -------
        scores : dict of float
            ``gt.*`` (empty without ground truth).
        """
        from ptyparity import report

        if self.kind != "infer":
            raise PtyparityError("log_canvas belongs to an infer run (record.infer_run)")
        canvas, count = np.asarray(canvas), np.asarray(count, np.float32)
        obj = self.data.obj if self.data is not None else None
        if canvas.ndim != 2 or count.shape != canvas.shape:
            raise PtyparityError(f"canvas {canvas.shape} and count {count.shape} must be 2-D arrays of one shape")
        if obj is not None and canvas.shape != obj.shape:
            raise PtyparityError(f"canvas is {canvas.shape} but objectGuess is {obj.shape}; stitch onto the "
                                 "object's grid (log_reconstruction does)")
        if not (np.isfinite(canvas).all() and np.isfinite(count).all()):
            raise PtyparityError("canvas or count holds NaN/inf; the reconstruction is broken")
        pos = np.zeros((0, 2), np.float32) if positions is None else np.asarray(positions, np.float32)
        tracking.log_npz({"canvas": canvas.astype(np.complex64), "count": count, "pos": pos}, names.CANVAS_NPZ)
        tracking.log_figure(report.canvas_figure(canvas, reference=obj, title=title or
                                                 f"{self.backend} reconstruction"), names.CANVAS_PNG)
        scores = gt_scores(canvas, count, obj)
        tracking.log_metrics(scores)
        return scores

    def log_reconstruction(self, amp, phase, positions, *, title=None):
        """Stitch predicted patches of the whole dataset (SPEC §3: the central ``N/2`` of each patch,
        averaged by overlap, on ``objectGuess``'s grid) and :meth:`log_canvas` the result.

        Parameters
        ----------
        amp, phase : ndarray, shape (B, N, N, C)
            Object amplitude and phase per (group, channel) patch.
        positions : ndarray, shape (B, C, 2) (or (B, 2) with gridsize 1)
            Absolute patch centres ``[x, y]`` in object pixels (the NPZ's ``xcoords``, ``ycoords``).
        """
        from ptyparity.stitching import stitch_patches

        amp = _patch_array("amp", amp, self.n, self.channels)
        phase = _patch_array("phase", phase, self.n, self.channels)
        pos = np.asarray(positions, np.float64)
        if pos.ndim == 2 and self.channels == 1:
            pos = pos[:, None, :]
        if pos.shape != (len(amp), self.channels, 2) or len(phase) != len(amp):
            raise PtyparityError(f"positions must have shape ({len(amp)}, {self.channels}, 2) for amp {amp.shape} "
                                 f"and phase {phase.shape} of one shape; got {pos.shape}")
        obj = self.data.obj if self.data is not None else None
        canvas, count = stitch_patches(amp * np.exp(1j * phase), pos,
                                       canvas_shape=obj.shape if obj is not None else None)
        return self.log_canvas(canvas, count, positions=pos, title=title)
