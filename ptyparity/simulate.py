"""Seeded offline simulator: the embedded default dataset (SPEC §2).

Objects come from a synthetic family (``lines``) or from scikit-image's bundled
images (``images``); the probe is a smoothed disk with a quadratic (defocus) phase;
positions are a raster with optional jitter; counts are Poisson with a mean of
``nphotons`` per pattern. Sizes scale with N (object ``8N`` wide, step ``N/8``,
edge phase ``N/8`` rad, fixed line density per probe area) so difficulty does not
change with N. ``train.npz`` and ``test.npz`` come from different objects of the
same family.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from ptyparity.config import PATCH_SIZES
from ptyparity.data import RawData, save_npz
from ptyparity.errors import PtyparityError
from ptyparity.physics import diffract
from ptyparity.stitching import extract_object_patches

OBJECT_FAMILIES = ("lines", "images")
# Grey-level images shipped inside scikit-image (no download): (amplitude, phase) pairs.
_IMAGE_PAIRS = (("camera", "moon"), ("brick", "coins"), ("grass", "clock"), ("gravel", "cell"))


@dataclass(frozen=True)
class SimConfig:
    """What to simulate. ``None`` sizes follow N (see module docstring)."""

    N: int = 32
    object_family: str = "lines"
    object_size_px: int | None = None  # default 8 N
    scan_step_px: float | None = None  # default N / 8
    jitter_px: float = 0.0
    nphotons: float = 1e6
    probe_edge_phase_rad: float | None = None  # default N / 8
    seed: int = 0

    def __post_init__(self):
        if self.N not in PATCH_SIZES:
            raise PtyparityError(f"N must be one of {PATCH_SIZES}; got {self.N}")
        if self.object_family not in OBJECT_FAMILIES:
            raise PtyparityError(f"object family must be one of {', '.join(OBJECT_FAMILIES)}; "
                                 f"got {self.object_family!r}")
        if self.object_size_px is not None and self.object_size_px < 2 * self.N:
            raise PtyparityError(f"object size must be >= 2N = {2 * self.N} px; got {self.object_size_px}")
        if self.scan_step_px is not None and not self.scan_step_px > 0:
            raise PtyparityError(f"scan step must be > 0 px; got {self.scan_step_px}")
        if self.jitter_px < 0:
            raise PtyparityError(f"jitter must be >= 0 px; got {self.jitter_px}")
        if not self.nphotons > 0:
            raise PtyparityError(f"nphotons must be > 0; got {self.nphotons}")

    @property
    def object_size(self):
        return self.object_size_px or 8 * self.N

    @property
    def scan_step(self):
        return self.scan_step_px or self.N / 8

    @property
    def edge_phase(self):
        return self.probe_edge_phase_rad if self.probe_edge_phase_rad is not None else self.N / 8


def make_probe(n, *, edge_phase_rad=None):
    """Smoothed disk of radius N/4 with a quadratic phase, max amplitude 1.

    Parameters
    ----------
    n : int
        Probe size N.
    edge_phase_rad : float, optional
        Phase at the disk edge (defocus); default N/8.

    Returns
    -------
    probe : ndarray, shape (N, N), complex64
    """
    edge = n / 8 if edge_phase_rad is None else edge_phase_rad
    yy, xx = np.mgrid[0:n, 0:n]
    r = np.hypot(yy - n / 2, xx - n / 2)
    radius = n / 4
    softness = max(n / 32, 0.5)
    amp = 0.5 * (1 - np.tanh((r - radius) / softness))
    phase = edge * (r / radius) ** 2
    return (amp / amp.max() * np.exp(1j * phase)).astype(np.complex64)


def _normalise(v):
    v = v - v.min()
    return v / v.max() if v.max() > 0 else v


def _lines_field(size, n, rng):
    from scipy.ndimage import gaussian_filter
    from skimage.draw import line_aa

    field = np.zeros((size, size))
    # Fixed density per probe area: two lines per (N/2)^2 pixels (a constant guess
    # then scores amplitude SSIM ~0.15, as for structured real objects).
    n_lines = max(4, int(round(2.0 * (size / (n / 2)) ** 2)))
    for _ in range(n_lines):
        r0, c0 = rng.integers(0, size, 2)
        length = rng.uniform(n / 4, n)
        angle = rng.uniform(0, np.pi)
        r1 = int(np.clip(r0 + length * np.sin(angle), 0, size - 1))
        c1 = int(np.clip(c0 + length * np.cos(angle), 0, size - 1))
        rr, cc, val = line_aa(int(r0), int(c0), r1, c1)
        field[rr, cc] = np.maximum(field[rr, cc], val)
    return _normalise(gaussian_filter(field, sigma=n / 32))


def _image_field(name, size, rng):
    import skimage.data
    from skimage.color import rgb2gray
    from skimage.transform import resize

    img = getattr(skimage.data, name)()
    if img.ndim == 3:
        img = rgb2gray(img[..., :3])
    img = resize(img.astype(np.float64), (size, size), anti_aliasing=True)
    if rng.random() < 0.5:
        img = img[:, ::-1]
    if rng.random() < 0.5:
        img = img[::-1]
    return _normalise(img)


def make_object(size, n, *, family="lines", rng, variant=0):
    """A complex object with amplitude in [0.5, 1] and phase in [0, pi/2].

    Parameters
    ----------
    size : int
        Side of the square object, pixels.
    n : int
        Patch size N (sets feature scale and density).
    family : {"lines", "images"}
    rng : numpy.random.Generator
    variant : int
        ``images`` only: which bundled image pair to use (train and test differ).

    Returns
    -------
    obj : ndarray, shape (size, size), complex64
    """
    if family == "lines":
        amp_v, phase_v = _lines_field(size, n, rng), _lines_field(size, n, rng)
    elif family == "images":
        amp_name, phase_name = _IMAGE_PAIRS[variant % len(_IMAGE_PAIRS)]
        amp_v, phase_v = _image_field(amp_name, size, rng), _image_field(phase_name, size, rng)
    else:
        raise PtyparityError(f"object family must be one of {', '.join(OBJECT_FAMILIES)}; got {family!r}")
    # Amplitude kept in [0.5, 1] so its peak stays below twice its RMS (the sigmoid's range).
    amp = 0.5 + 0.5 * amp_v
    phase = (np.pi / 2) * phase_v
    return (amp * np.exp(1j * phase)).astype(np.complex64)


def raster_positions(size, n, step, *, jitter_px=0.0, rng=None):
    """Raster scan whose patches stay inside a ``size``-wide object.

    Returns
    -------
    positions : ndarray, shape (M, 2), float64
        ``[x, y]`` patch centres from N/2 to ``size - N/2``.
    """
    axis = np.arange(n / 2, size - n / 2 + 1e-9, step)
    yy, xx = np.meshgrid(axis, axis, indexing="ij")
    pos = np.stack([xx.ravel(), yy.ravel()], axis=1)
    if jitter_px > 0:
        pos = pos + rng.uniform(-jitter_px, jitter_px, pos.shape)
        pos = np.clip(pos, n / 2, size - n / 2)
    return pos


def expected_counts(obj, probe, positions, *, nphotons):
    """Noise-free photon counts ``k**2 |diffract(P * patch(pos))|**2``.

    Returns
    -------
    counts : ndarray, shape (M, N, N), float64
        ``k`` is chosen so the counts average ``nphotons`` per pattern.
    """
    n = probe.shape[0]
    patches = extract_object_patches(obj, positions, n)  # (M, N, N)
    intensity = diffract((patches * probe)[..., None])[..., 0].astype(np.float64) ** 2
    k2 = nphotons / np.mean(np.sum(intensity, axis=(1, 2)))
    return k2 * intensity


def simulate_measurement(obj, probe, positions, *, nphotons, rng):
    """Poisson diffraction amplitudes of ``probe * patch(pos)``.

    Returns
    -------
    diff3d : ndarray, shape (M, N, N), float32
        ``sqrt(counts)`` with ``counts ~ Poisson(`` :func:`expected_counts` ``)``.
    """
    counts = rng.poisson(expected_counts(obj, probe, positions, nphotons=nphotons))
    return np.sqrt(counts).astype(np.float32)


def simulate_split(cfg, *, rng, variant):
    """One dataset (one object) for ``cfg``; ``variant`` distinguishes train/test."""
    n = cfg.N
    obj = make_object(cfg.object_size, n, family=cfg.object_family, rng=rng, variant=variant)
    probe = make_probe(n, edge_phase_rad=cfg.edge_phase)
    pos = raster_positions(cfg.object_size, n, cfg.scan_step, jitter_px=cfg.jitter_px, rng=rng)
    diff = simulate_measurement(obj, probe, pos, nphotons=cfg.nphotons, rng=rng)
    return RawData(xcoords=pos[:, 0].copy(), ycoords=pos[:, 1].copy(), diff3d=diff, probe=probe, obj=obj,
                   scan_index=np.arange(len(pos)), measurement="amplitude",
                   extras={"nphotons": np.asarray(float(cfg.nphotons))})


def simulate(cfg):
    """Simulate the train and test datasets of ``cfg`` (different objects).

    Returns
    -------
    train, test : RawData
    """
    rng = np.random.default_rng(cfg.seed)
    train = simulate_split(cfg, rng=rng, variant=2 * cfg.seed)
    test = simulate_split(cfg, rng=rng, variant=2 * cfg.seed + 1)
    return train, test


def write_dataset(cfg, out_dir, *, overwrite=False):
    """Simulate and write ``train.npz`` and ``test.npz`` into ``out_dir``.

    Refuses to overwrite existing files unless ``overwrite``; checks both paths
    before writing either, so a refusal leaves nothing half-written.

    Returns
    -------
    paths : dict
        ``{"train": path, "test": path}``
    data : dict
        ``{"train": RawData, "test": RawData}``
    """
    paths = check_out_dir(out_dir, overwrite=overwrite)
    train, test = simulate(cfg)
    data = {"train": train, "test": test}
    for split, path in paths.items():
        save_npz(path, data[split], overwrite=True)
    return paths, data


def check_out_dir(out_dir, *, overwrite=False):
    """Create ``out_dir`` if needed and make sure ``train.npz``/``test.npz`` can be written there
    (refusing existing ones unless ``overwrite``): the checks :func:`write_dataset` starts with.

    Returns
    -------
    paths : dict
        ``{"train": path, "test": path}``
    """
    import tempfile

    paths = {split: os.path.join(out_dir, f"{split}.npz") for split in ("train", "test")}
    if not overwrite:
        for path in paths.values():
            if os.path.exists(path):
                raise PtyparityError(f"{path} already exists; choose another --out-dir or pass --overwrite")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise PtyparityError(f"--out-dir {out_dir} is a file, not a directory; choose a directory")
    try:
        os.makedirs(out_dir, exist_ok=True)
        with tempfile.TemporaryFile(dir=out_dir):
            pass
    except OSError as exc:
        raise PtyparityError(f"cannot write into --out-dir {out_dir} ({exc.strerror}); choose a writable "
                             "directory") from None
    return paths
