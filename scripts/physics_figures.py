"""The foundation's headline physics numbers, measured: Parseval, integer-translate
exactness and end-to-end stitching of ground-truth patches (SSIM vs objectGuess).

    .venv/bin/python scripts/physics_figures.py
"""

import numpy as np
from skimage.metrics import structural_similarity

from ptyparity import grouping, physics
from ptyparity.simulate import SimConfig, simulate
from ptyparity.stitching import extract_object_patches, stitch_patches


def main():
    rng = np.random.default_rng(0)
    psi = (rng.normal(size=(64, 32, 32, 4)) + 1j * rng.normal(size=(64, 32, 32, 4))).astype(np.complex64)
    e_in = np.sum(np.abs(psi.astype(np.complex128)) ** 2, axis=(1, 2))
    e_out = np.sum(physics.diffract(psi).astype(np.float64) ** 2, axis=(1, 2))
    print(f"Parseval: max |E_out/E_in - 1| over 256 float32 planes = {np.max(np.abs(e_out / e_in - 1)):.2e}")
    img = rng.normal(size=(64, 48))
    shifted = physics.translate(img, [5, -3])
    exact = np.array_equal(shifted[0:61, 5:48], img[3:64, 0:43])
    print(f"integer translate exact: {exact}")
    for jitter in (0.0, 0.7):
        train, _ = simulate(SimConfig(N=32, jitter_px=jitter, seed=0))
        groups = grouping.inference_groups(train.positions, gridsize=2, seed=0)
        patches = np.moveaxis(extract_object_patches(train.obj, groups.pos, 32), 1, -1)
        canvas, count = stitch_patches(patches, groups.pos, canvas_shape=train.obj.shape)
        cov = count > 0.5
        r = np.flatnonzero(cov.any(1))
        c = np.flatnonzero(cov.any(0))
        region = (slice(r[0], r[-1] + 1), slice(c[0], c[-1] + 1))
        a, b = canvas[region], train.obj[region]
        s_amp = structural_similarity(np.abs(b), np.abs(a), data_range=float(np.ptp(np.abs(b))))
        s_ph = structural_similarity(np.angle(b), np.angle(a), data_range=float(np.ptp(np.angle(b))))
        err = np.abs(canvas[cov] - train.obj[cov]).max()
        print(f"stitch ground-truth patches (default dataset, jitter {jitter} px): SSIM amp {s_amp:.4f}, "
              f"phase {s_ph:.4f}, max |canvas - objectGuess| {err:.2e} over {cov.sum()} px")


if __name__ == "__main__":
    main()
