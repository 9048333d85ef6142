"""The raw NPZ data contract (SPEC §2): load, validate, save, summarise.

A raw dataset holds ``xcoords (M,)``, ``ycoords (M,)`` (float pixels, patch
centres), ``diff3d (M, N, N)`` measured amplitude (sqrt of photon counts),
``probeGuess (N, N)`` complex and optionally ``objectGuess (H, W)`` complex ground
truth and ``scan_index (M,)``. Other keys are kept and ignored.

Accepted variants: PtychoPINN files that call the stack ``diffraction`` or store it
as ``(N, N, M)``; intensity (photon counts) instead of amplitude when the file has
``measurement = "intensity"`` or the caller says so; a probe of shape ``(1, N, N)``.
Loading never unpickles (``allow_pickle=False``); every problem is reported as a
one-line :class:`PtyparityError` that names the key and the fix.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from dataclasses import dataclass, field

import numpy as np

from ptyparity.config import PATCH_SIZES
from ptyparity.counts import DataWarning, count_sanity  # noqa: F401 (part of this module's API)
from ptyparity.errors import PtyparityError

MEASUREMENTS = ("auto", "amplitude", "intensity")
CONTRACT_KEYS = ("xcoords", "ycoords", "diff3d", "probeGuess", "objectGuess", "scan_index")


@dataclass(frozen=True)
class RawData:
    """A validated raw dataset; arrays in the canonical dtypes.

    Attributes
    ----------
    xcoords, ycoords : ndarray, shape (M,), float64
        Scan positions (patch centres), pixels.
    diff3d : ndarray, shape (M, N, N), float32
        Measured amplitude, sqrt(photon counts).
    probe : ndarray, shape (N, N), complex64
    obj : ndarray, shape (H, W), complex64, or None
        Ground truth, when present.
    scan_index : ndarray, shape (M,), or None
    measurement : str
        What the file held: ``"amplitude"`` or ``"intensity"`` (converted).
    extras : dict of ndarray
        Unknown keys, kept as they were.
    """

    xcoords: np.ndarray
    ycoords: np.ndarray
    diff3d: np.ndarray
    probe: np.ndarray
    obj: np.ndarray | None = None
    scan_index: np.ndarray | None = None
    measurement: str = "amplitude"
    extras: dict = field(default_factory=dict)

    @property
    def positions(self):
        """Scan positions ``[x, y]``, shape (M, 2)."""
        return np.stack([self.xcoords, self.ycoords], axis=1)

    @property
    def n_patterns(self):
        return self.diff3d.shape[0]

    @property
    def N(self):
        return self.diff3d.shape[-1]

    @property
    def nphotons(self):
        """Mean photons per pattern, ``mean_m sum_xy diff3d**2``."""
        return float(np.mean(np.sum(self.diff3d.astype(np.float64) ** 2, axis=(1, 2))))

    def to_arrays(self):
        """The contract's key -> array mapping (as written by :func:`save_npz`)."""
        out = dict(self.extras)
        out.update(xcoords=self.xcoords, ycoords=self.ycoords, diff3d=self.diff3d, probeGuess=self.probe)
        if self.obj is not None:
            out["objectGuess"] = self.obj
        if self.scan_index is not None:
            out["scan_index"] = self.scan_index
        return out


def _fail(source, msg):
    raise PtyparityError(f"{source}: {msg}")


def _read_npz(path):
    source = os.fspath(path)
    if not os.path.exists(source):
        _fail(source, "no such file; check the path (ptyparity simulate writes train.npz and test.npz)")
    if os.path.getsize(source) == 0:
        _fail(source, "the file is empty; expected an NPZ archive written by numpy.savez")
    if not zipfile.is_zipfile(source):
        _fail(source, "not an NPZ archive; expected a file written by numpy.savez/savez_compressed")
    arrays = {}
    try:
        with np.load(source, allow_pickle=False) as npz:
            for key in npz.files:
                try:
                    arrays[key] = npz[key]
                except ValueError as exc:
                    if "pickle" in str(exc).lower():
                        _fail(source, f"key {key!r} holds Python objects, which are never unpickled; "
                                      "save plain numeric arrays instead")
                    raise
    except PtyparityError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        _fail(source, f"cannot read the NPZ archive ({exc}); re-export it with numpy.savez")
    if not arrays:
        _fail(source, "the NPZ archive holds no arrays; expected xcoords, ycoords, diff3d and probeGuess")
    return arrays


def _real_array(source, key, arr, ndim):
    if np.iscomplexobj(arr):
        _fail(source, f"key {key!r} is complex ({arr.dtype}) but must be real; "
                      "store measured amplitudes (or intensities), not complex wavefields")
    if arr.dtype.kind not in "fiu":
        _fail(source, f"key {key!r} has dtype {arr.dtype}; expected a numeric array")
    if arr.ndim != ndim:
        _fail(source, f"key {key!r} must be {ndim}-D, got shape {arr.shape}")
    arr = arr.astype(np.float64 if key in ("xcoords", "ycoords") else np.float32)
    if not np.all(np.isfinite(arr)):
        bad = int(np.sum(~np.isfinite(arr)))
        _fail(source, f"key {key!r} holds {bad} NaN/inf value(s); remove or repair those entries")
    return arr


def _complex_array(source, key, arr):
    if arr.dtype.kind not in "fciu":
        _fail(source, f"key {key!r} has dtype {arr.dtype}; expected a complex array")
    arr = arr.astype(np.complex64)
    if not np.all(np.isfinite(arr)):
        _fail(source, f"key {key!r} holds NaN/inf values; repair it before use")
    return arr


def validate_arrays(arrays, *, source="data", measurement="auto"):
    """Check a key -> array mapping against the contract and return :class:`RawData`.

    Parameters
    ----------
    arrays : mapping of str to ndarray
    source : str
        Name used in error messages (usually the file path).
    measurement : {"auto", "amplitude", "intensity"}
        ``auto`` trusts the file's ``measurement`` key and defaults to amplitude.

    Returns
    -------
    data : RawData
    """
    if measurement not in MEASUREMENTS:
        raise PtyparityError(f"measurement must be one of {', '.join(MEASUREMENTS)}; got {measurement!r}")
    arrays = dict(arrays)
    if "diff3d" not in arrays and "diffraction" in arrays:
        arrays["diff3d"] = arrays.pop("diffraction")
    for key, hint in (("xcoords", "scan x positions (M,) in pixels"),
                      ("ycoords", "scan y positions (M,) in pixels"),
                      ("diff3d", "diffraction amplitudes (M, N, N); PtychoPINN files may call it 'diffraction'"),
                      ("probeGuess", "the complex probe (N, N)")):
        if key not in arrays:
            _fail(source, f"key {key!r} is missing ({hint}); add it to the NPZ")

    x = _real_array(source, "xcoords", arrays.pop("xcoords"), 1)
    y = _real_array(source, "ycoords", arrays.pop("ycoords"), 1)
    if x.shape != y.shape:
        _fail(source, f"xcoords has {x.size} entries but ycoords has {y.size}; both need one per pattern")
    m = x.size
    if m == 0:
        _fail(source, "the dataset has no scan positions; xcoords and ycoords are empty")

    diff = _real_array(source, "diff3d", arrays.pop("diff3d"), 3)
    if diff.shape[0] != m and diff.shape[2] == m and diff.shape[0] == diff.shape[1]:
        diff = np.ascontiguousarray(np.moveaxis(diff, 2, 0))  # PtychoPINN (N, N, M) stacks
    if diff.shape[0] != m:
        _fail(source, f"diff3d has {diff.shape[0]} patterns but xcoords/ycoords have {m} positions; "
                      "they must match one to one")
    n = diff.shape[1]
    if diff.shape[2] != n:
        _fail(source, f"diff3d patterns must be square (M, N, N), got {diff.shape}")
    if n not in PATCH_SIZES:
        _fail(source, f"diff3d patterns are {n}x{n}; N must be one of {PATCH_SIZES} (crop or bin the data)")
    if np.any(diff < 0):
        _fail(source, f"diff3d holds {int(np.sum(diff < 0))} negative value(s); amplitudes and counts are "
                      "non-negative (clip background-subtracted data at 0)")

    file_measurement = "amplitude"
    if "measurement" in arrays:
        raw = arrays.pop("measurement")
        file_measurement = str(raw.item()) if raw.ndim == 0 else str(raw)
        if file_measurement not in ("amplitude", "intensity"):
            _fail(source, f"key 'measurement' is {file_measurement!r}; use 'amplitude' or 'intensity'")
    kind = file_measurement if measurement == "auto" else measurement
    if kind == "intensity":
        diff = np.sqrt(diff).astype(np.float32)
    if not np.any(diff > 0):
        _fail(source, "diff3d is all zeros; there is no signal to train on")

    probe = np.asarray(arrays.pop("probeGuess"))
    if probe.ndim == 3 and probe.shape[0] == 1:
        probe = probe[0]
    if probe.ndim != 2:
        _fail(source, f"key 'probeGuess' must be 2-D (N, N), got shape {probe.shape}")
    if probe.shape != (n, n):
        _fail(source, f"probeGuess has shape {probe.shape} but the patterns are {n}x{n}; "
                      "the probe must match the diffraction size")
    probe = _complex_array(source, "probeGuess", probe)
    if not np.any(probe != 0):
        _fail(source, "probeGuess is all zeros; supply the probe used for the measurement")

    obj = None
    if "objectGuess" in arrays:
        obj = np.asarray(arrays.pop("objectGuess"))
        if obj.ndim != 2:
            _fail(source, f"key 'objectGuess' must be 2-D (H, W), got shape {obj.shape}")
        obj = _complex_array(source, "objectGuess", obj)

    scan_index = None
    if "scan_index" in arrays:
        scan_index = np.asarray(arrays.pop("scan_index"))
        if scan_index.shape != (m,):
            _fail(source, f"key 'scan_index' has shape {scan_index.shape}; expected ({m},), one per pattern")

    return RawData(xcoords=x, ycoords=y, diff3d=diff, probe=probe, obj=obj, scan_index=scan_index,
                   measurement=kind, extras=arrays)


def load_npz(path, *, measurement="auto"):
    """Load and validate a raw NPZ dataset (never unpickles).

    Parameters
    ----------
    path : str or PathLike
    measurement : {"auto", "amplitude", "intensity"}
        Override what the file says its diffraction holds.

    Returns
    -------
    data : RawData
    """
    return validate_arrays(_read_npz(path), source=os.fspath(path), measurement=measurement)


def save_npz(path, data, *, overwrite=False):
    """Write a :class:`RawData` (amplitude) as an NPZ; refuses to overwrite by default."""
    path = os.fspath(path)
    if os.path.exists(path) and not overwrite:
        raise PtyparityError(f"{path} already exists; choose another output directory or pass --overwrite")
    arrays = data.to_arrays()
    arrays["measurement"] = np.asarray("amplitude")
    tmp = path + ".tmp.npz"
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        np.savez(tmp, **arrays)
        os.replace(tmp, path)  # never leaves a half-written file under the real name
    except OSError as exc:  # a full disk, a read-only or vanished directory: the user's to fix
        if os.path.lexists(tmp):
            os.remove(tmp)
        raise PtyparityError(f"cannot write {path} ({exc.strerror}); free space or choose another directory") from None
    return path


def dataset_digest(data):
    """sha256 over the contract arrays (name, dtype, shape and bytes), hex."""
    h = hashlib.sha256()
    arrays = data.to_arrays()
    for key in CONTRACT_KEYS:
        if key in arrays:
            arr = np.ascontiguousarray(arrays[key])
            h.update(key.encode())
            h.update(str(arr.dtype).encode())
            h.update(str(arr.shape).encode())
            h.update(arr.tobytes())
    return h.hexdigest()


def summarize(data):
    """What a user needs to know before training, as a flat dict of plain values."""
    from ptyparity.grouping import scan_step

    pos = data.positions
    probe_power = np.abs(data.probe) ** 2
    summary = {
        "n_patterns": data.n_patterns,
        "N": data.N,
        "measurement": data.measurement,
        "photons_per_pattern_mean": data.nphotons,
        "photons_per_pattern_min": float(np.min(np.sum(data.diff3d.astype(np.float64) ** 2, axis=(1, 2)))),
        "scan_x_range_px": [float(pos[:, 0].min()), float(pos[:, 0].max())],
        "scan_y_range_px": [float(pos[:, 1].min()), float(pos[:, 1].max())],
        "scan_step_px": scan_step(pos) if data.n_patterns > 1 else float("nan"),
        "probe_shape": list(data.probe.shape),
        "probe_rms_radius_px": float(np.sqrt(np.sum(probe_power * _radius2(data.N)) / probe_power.sum())),
        "has_ground_truth": data.obj is not None,
        "object_shape": list(data.obj.shape) if data.obj is not None else None,
        "extra_keys": sorted(data.extras),
    }
    return summary


def _radius2(n):
    yy, xx = np.mgrid[0:n, 0:n]
    return (yy - n / 2) ** 2 + (xx - n / 2) ** 2
