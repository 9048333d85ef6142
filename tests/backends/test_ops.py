"""Every backend op against the NumPy reference (SPEC §1, §3).

Parametrised over both backends through the ``backend_ops`` fixture: inputs are
built in NumPy, converted with ``ops.to_backend`` and the results compared with
``ops.to_numpy`` at the contract's tolerance ``max|a-b| <= 1e-5 max|ref|``.
"""

import numpy as np
import pytest

from ptyparity import physics
from ptyparity.backends import contract
from ptyparity.errors import PtyparityError
from tests.conftest import F64_RTOL, OP_RTOL, assert_close_rel

N = 32
GRIDSIZE = 2
C = GRIDSIZE**2
MAX_OFFSET = 6


def _run(ops, fn_name, *arrays, **kwargs):
    """Call ``ops.<fn_name>`` on backend copies of ``arrays`` and return NumPy."""
    out = getattr(ops, fn_name)(*[ops.to_backend(a) for a in arrays], **kwargs)
    return ops.to_numpy(out)


def _complex(rng, shape):
    return (rng.normal(size=shape) + 1j * rng.normal(size=shape)).astype(np.complex64)


def _probe(n):
    """A smoothed disk with a quadratic phase, like the simulation's probe."""
    yy, xx = np.mgrid[0:n, 0:n] - n / 2
    r2 = (xx**2 + yy**2) / (n / 4) ** 2
    return (np.exp(-r2**2) * np.exp(1j * 2.0 * r2)).astype(np.complex64)


def _group_rel(rng, b, c=C):
    """Realistic group offsets: integer scan positions minus their group mean, so
    multiples of 1/C px (float32, as the grouping hands them over)."""
    pos = rng.integers(0, MAX_OFFSET + 1, size=(b, c, 2)).astype(np.float64)
    rel = pos - pos.mean(axis=1, keepdims=True)
    assert np.all(np.abs(rel) <= MAX_OFFSET)
    assert np.any(rel != np.round(rel)), "offsets should include sub-pixel values"
    return rel.astype(np.float32)


# --- translate -------------------------------------------------------------------------


@pytest.mark.parametrize("shift", [0.0, 3.0, -2.0, 0.25, -1.75, 5.5, 2.3712])
def test_tent_matrix(backend_ops, shift):
    ref = physics.tent_matrix(N, np.float32(shift))
    out = backend_ops.to_numpy(backend_ops.tent_matrix(N, backend_ops.to_backend(np.float32(shift))))
    assert_close_rel(out, ref, OP_RTOL, "tent_matrix")


def test_translate_integer_shift_is_exact(backend_ops, rng):
    img = rng.normal(size=(N, N)).astype(np.float32)
    out = _run(backend_ops, "translate", img, np.array([3.0, -2.0], np.float32))
    expected = np.zeros_like(img)
    expected[:-2, 3:] = img[2:, :-3]  # content moves +3 in x (columns), -2 in y (rows)
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("shift", [[0.25, -0.75], [1.5, 2.25], [-3.125, 0.5], [2.3712, -4.0417]])
def test_translate_subpixel(backend_ops, rng, shift):
    img = rng.normal(size=(N, N)).astype(np.float32)
    shift = np.asarray(shift, np.float32)
    ref = physics.translate(img, shift)
    assert_close_rel(_run(backend_ops, "translate", img, shift), ref, OP_RTOL, "translate")


def test_translate_subpixel_half_is_neighbour_mean(backend_ops):
    img = np.zeros((8, 8), np.float32)
    img[4, 4] = 1.0
    out = _run(backend_ops, "translate", img, np.array([0.5, 0.0], np.float32))
    assert out[4, 4] == pytest.approx(0.5) and out[4, 5] == pytest.approx(0.5)
    assert out.sum() == pytest.approx(1.0)


def test_translate_batched_shifts(backend_ops, rng):
    img = rng.normal(size=(3, C, N, N)).astype(np.float32)
    shift = (rng.uniform(-5, 5, size=(3, C, 2))).astype(np.float32)
    ref = physics.translate(img, shift)
    assert_close_rel(_run(backend_ops, "translate", img, shift), ref, OP_RTOL, "translate batched")


def test_translate_broadcasts_one_image_over_shifts(backend_ops, rng):
    img = rng.normal(size=(3, 1, N, N)).astype(np.float32)
    shift = (rng.integers(-20, 21, size=(3, C, 2)) / 4).astype(np.float32)
    ref = physics.translate(img, shift)
    out = _run(backend_ops, "translate", img, shift)
    assert out.shape == (3, C, N, N)
    assert_close_rel(out, ref, OP_RTOL, "translate broadcast")


def test_translate_complex(backend_ops, rng):
    img = _complex(rng, (2, C, N, N))
    shift = (rng.integers(-20, 21, size=(2, C, 2)) / 4).astype(np.float32)
    ref = physics.translate(img, shift)
    out = _run(backend_ops, "translate", img, shift)
    assert np.iscomplexobj(out)
    assert_close_rel(out, ref, OP_RTOL, "translate complex")


def test_translate_rejects_bad_shift(backend_ops, rng):
    img = backend_ops.to_backend(rng.normal(size=(N, N)).astype(np.float32))
    with pytest.raises(ValueError, match="shift"):
        backend_ops.translate(img, backend_ops.to_backend(np.zeros(3, np.float32)))


def test_pad_and_crop_center(backend_ops, rng):
    img = _complex(rng, (2, N, N))
    padded = _run(backend_ops, "pad_center", img, size=N + 2 * MAX_OFFSET + 1)
    np.testing.assert_array_equal(padded, physics.pad_center(img, N + 2 * MAX_OFFSET + 1))
    cropped = _run(backend_ops, "crop_center", img, size=N // 2)
    np.testing.assert_array_equal(cropped, physics.crop_center(img, N // 2))


# --- merge / extract -------------------------------------------------------------------


@pytest.mark.parametrize("merge_weighting", ["support", "probe"])
@pytest.mark.parametrize("probe_big", [False, True])
def test_merge_patches(backend_ops, rng, merge_weighting, probe_big):
    patches = _complex(rng, (3, N, N, C))
    rel = _group_rel(rng, 3)
    w = physics.merge_weights(_probe(N), probe_big=probe_big, merge_weighting=merge_weighting)
    ref = physics.merge_patches(patches, rel, w, MAX_OFFSET)
    out = _run(backend_ops, "merge_patches", patches, rel, w, max_offset=MAX_OFFSET)
    assert out.shape == (3, N + 2 * MAX_OFFSET, N + 2 * MAX_OFFSET)
    assert_close_rel(out, ref, OP_RTOL, "merge_patches")


def test_merge_patches_rejects_bad_rel(backend_ops, rng):
    patches = backend_ops.to_backend(_complex(rng, (3, N, N, C)))
    rel = backend_ops.to_backend(np.zeros((3, C + 1, 2), np.float32))
    w = backend_ops.to_backend(physics.support_mask(N))
    with pytest.raises(ValueError, match="rel"):
        backend_ops.merge_patches(patches, rel, w, MAX_OFFSET)


def test_extract_patches(backend_ops, rng):
    canvas = _complex(rng, (3, N + 2 * MAX_OFFSET, N + 2 * MAX_OFFSET))
    rel = _group_rel(rng, 3)
    ref = physics.extract_patches(canvas, rel, N)
    out = _run(backend_ops, "extract_patches", canvas, rel, n=N)
    assert out.shape == (3, N, N, C)
    assert_close_rel(out, ref, OP_RTOL, "extract_patches")


# --- far field -------------------------------------------------------------------------


def test_illuminate(backend_ops, rng):
    obj = _complex(rng, (2, N, N, C))
    probe = _probe(N)
    assert_close_rel(_run(backend_ops, "illuminate", obj, probe), physics.illuminate(obj, probe),
                     OP_RTOL, "illuminate")


def test_predicted_intensity(backend_ops, rng):
    psi = physics.illuminate(_complex(rng, (2, N, N, C)), _probe(N))
    ref = physics.predicted_intensity(psi)
    out = _run(backend_ops, "predicted_intensity", psi)
    assert out.dtype == np.float32
    assert_close_rel(out, ref, OP_RTOL, "predicted_intensity")


def test_predicted_intensity_is_channel_last(backend_ops, rng):
    """Known answer: a flat field in channel 1 only puts all its energy at the
    centre pixel (N/2, N/2) of channel 1; the other channels stay dark."""
    psi = np.zeros((1, N, N, C), np.complex64)
    psi[0, :, :, 1] = 1.0
    out = _run(backend_ops, "predicted_intensity", psi)
    assert out[0, N // 2, N // 2, 1] == pytest.approx(N**2, rel=OP_RTOL)  # |N**2|**2 / N**2 at DC
    assert out[..., [0, 2, 3]].max() == 0.0
    assert out[0, :, :, 1].sum() == pytest.approx(N**2, rel=OP_RTOL)  # energy preserved


def test_diffract(backend_ops, rng):
    psi = physics.illuminate(_complex(rng, (2, N, N, C)), _probe(N))
    assert_close_rel(_run(backend_ops, "diffract", psi), physics.diffract(psi), OP_RTOL, "diffract")


def test_predicted_amplitude(backend_ops, rng):
    inten = rng.exponential(10.0, size=(2, N, N, C)).astype(np.float32)
    inten[0, :4] = 0.0  # zero intensity gives sqrt(1e-12) = 1e-6, not 0
    ref = physics.predicted_amplitude(inten)
    out = _run(backend_ops, "predicted_amplitude", inten)
    assert_close_rel(out, ref, OP_RTOL, "predicted_amplitude")
    assert out[0, 0, 0, 0] == pytest.approx(1e-6, rel=1e-3)


# --- losses ----------------------------------------------------------------------------

LOG_SCALE = 0.37


def _loss_inputs(rng):
    inten = rng.exponential(3.0, size=(2, N, N, C)).astype(np.float32)
    target = np.sqrt(rng.poisson(6.0, size=(2, N, N, C))).astype(np.float32)  # count units
    return inten, target


@pytest.mark.parametrize("name", ["poisson_loss", "poisson_deviance"])
def test_poisson_losses(backend_ops, rng, name):
    inten, target = _loss_inputs(rng)
    ref = getattr(physics, name)(inten, target, LOG_SCALE)
    out = float(_run(backend_ops, name, inten, target, log_scale=LOG_SCALE))
    assert_close_rel(out, ref, OP_RTOL, name)


def test_poisson_loss_accepts_backend_scalar(backend_ops, rng):
    inten, target = _loss_inputs(rng)
    ls = backend_ops.to_backend(np.float32(LOG_SCALE))
    out = backend_ops.poisson_loss(backend_ops.to_backend(inten), backend_ops.to_backend(target), ls)
    assert_close_rel(float(backend_ops.to_numpy(out)), physics.poisson_loss(inten, target, LOG_SCALE),
                     OP_RTOL, "poisson_loss(tensor log_scale)")


def test_poisson_saturated_and_zero_deviance(backend_ops, rng):
    _, target = _loss_inputs(rng)
    out = float(_run(backend_ops, "poisson_saturated", target))
    assert_close_rel(out, physics.poisson_saturated(target), OP_RTOL, "poisson_saturated")
    # A perfect model (lam = y) has zero deviance.
    inten = (target.astype(np.float64) ** 2 / np.exp(2 * LOG_SCALE)).astype(np.float32)
    dev = float(_run(backend_ops, "poisson_deviance", inten, target, log_scale=LOG_SCALE))
    assert abs(dev) < 1e-5 * abs(physics.poisson_saturated(target))


def test_mae_loss(backend_ops, rng):
    inten, target = _loss_inputs(rng)
    amp = physics.predicted_amplitude(inten)
    ref = physics.mae_loss(amp, target, LOG_SCALE)
    out = float(_run(backend_ops, "mae_loss", amp, target, log_scale=LOG_SCALE))
    assert_close_rel(out, ref, OP_RTOL, "mae_loss")


# --- forward physics -------------------------------------------------------------------


@pytest.mark.parametrize("object_big,merge_weighting", [(False, "support"), (True, "support"), (True, "probe")])
@pytest.mark.parametrize("probe_big", [False, True])
def test_forward_physics(backend_ops, rng, object_big, merge_weighting, probe_big):
    b = 2
    amp = rng.uniform(0.05, 0.95, size=(b, N, N, C)).astype(np.float32)
    phase = rng.uniform(-np.pi, np.pi, size=(b, N, N, C)).astype(np.float32)
    if not probe_big:  # heads pad with zeros outside the support
        m = physics.support_mask(N)[None, :, :, None]
        amp, phase = amp * m, phase * m
    probe = _probe(N)
    rel = _group_rel(rng, b)
    kwargs = dict(object_big=object_big, max_offset=MAX_OFFSET, merge_weighting=merge_weighting,
                  probe_big=probe_big, log_scale=LOG_SCALE)
    ref = physics.forward_physics(amp, phase, probe, rel=rel, **kwargs)
    out = backend_ops.forward_physics(backend_ops.to_backend(amp), backend_ops.to_backend(phase),
                                      backend_ops.to_backend(probe), rel=backend_ops.to_backend(rel), **kwargs)
    assert set(out) == set(ref)
    assert ("object_canvas" in out) == object_big
    for name, r in ref.items():
        assert_close_rel(backend_ops.to_numpy(out[name]), r, OP_RTOL, name)


def test_forward_physics_object_big_needs_rel(backend_ops, rng):
    amp = backend_ops.to_backend(rng.uniform(size=(1, N, N, C)).astype(np.float32))
    with pytest.raises(ValueError, match="rel"):
        backend_ops.forward_physics(amp, amp, backend_ops.to_backend(_probe(N)), object_big=True,
                                    max_offset=MAX_OFFSET)


def test_forward_physics_rejects_unknown_merge_weighting(backend_ops, rng):
    amp = backend_ops.to_backend(rng.uniform(size=(1, N, N, C)).astype(np.float32))
    rel = backend_ops.to_backend(_group_rel(rng, 1))
    with pytest.raises(ValueError, match="merge_weighting"):
        backend_ops.forward_physics(amp, amp, backend_ops.to_backend(_probe(N)), rel=rel, object_big=True,
                                    max_offset=MAX_OFFSET, merge_weighting="uniform")


# --- conversion ------------------------------------------------------------------------


def test_to_backend_dtypes_and_round_trip(backend_ops, rng):
    for arr, expected in [(rng.normal(size=(3, 2)), np.float32),
                          (_complex(rng, (3, 2)).astype(np.complex128), np.complex64),
                          (np.arange(6, dtype=np.int64).reshape(3, 2), np.int64)]:
        back = backend_ops.to_numpy(backend_ops.to_backend(arr))
        assert back.dtype == expected and back.shape == arr.shape
        np.testing.assert_array_equal(back, arr.astype(expected))


# --- precision: an explicit argument, the same in both backends -------------------------


def _double_inputs(rng):
    """Arguments of every op in float64 / complex128 (name -> (args, kwargs))."""
    cplx = lambda shape: rng.normal(size=shape) + 1j * rng.normal(size=shape)  # noqa: E731
    probe = _probe(N).astype(np.complex128) * (1 + 1e-3 * rng.normal(size=(N, N)))
    rel = _group_rel(rng, 3).astype(np.float64)
    psi = cplx((2, N, N, C))
    inten = rng.exponential(3.0, size=(2, N, N, C))
    target = np.sqrt(rng.poisson(6.0, size=(2, N, N, C))).astype(np.float64)
    amp = rng.uniform(0.05, 0.95, size=(2, N, N, C))
    return {
        "tent_matrix": ((N, 2.3712345),), "translate": ((cplx((2, C, N, N)), rng.uniform(-5, 5, (2, C, 2))),),
        "pad_center": ((cplx((2, N, N)), N + 13),), "crop_center": ((cplx((2, N, N)), N // 2),),
        "merge_weights": ((probe,), {"merge_weighting": "probe"}),
        "merge_patches": ((cplx((3, N, N, C)), rel, physics.support_mask(N).astype(np.float64), MAX_OFFSET),),
        "extract_patches": ((cplx((3, N + 2 * MAX_OFFSET, N + 2 * MAX_OFFSET)), rel, N),),
        "illuminate": ((psi, probe),), "predicted_intensity": ((psi,),), "diffract": ((psi,),),
        "predicted_amplitude": ((inten,),), "poisson_loss": ((inten, target, LOG_SCALE),),
        "poisson_saturated": ((target,),), "poisson_deviance": ((inten, target, LOG_SCALE),),
        "mae_loss": ((amp, target, LOG_SCALE),),
        "forward_physics": ((amp, rng.uniform(-3, 3, size=amp.shape), probe),
                            {"rel": rel[:2], "object_big": True, "max_offset": MAX_OFFSET, "log_scale": LOG_SCALE}),
    }


def _single(x):
    """Float64 / complex128 arrays rounded to float32 / complex64 (anything else as is)."""
    table = {np.dtype(np.float64): np.float32, np.dtype(np.complex128): np.complex64}
    return x.astype(table[x.dtype]) if isinstance(x, np.ndarray) and x.dtype in table else x


def _merge_weights_float64(probe):
    p2 = np.abs(probe) ** 2
    return physics.support_mask(N) * p2 / p2.max()


@pytest.mark.parametrize("name", contract.OP_NAMES)
def test_every_op_computes_in_the_precision_it_is_given(backend_ops, rng, name):
    """``precision="float64"``: float64 / complex128 out, the reference's values to float64
    rounding; the default, float32: float32 / complex64 out of the same double inputs,
    the reference's values on those inputs rounded to float32 within SPEC §1's tolerance."""
    args, *rest = _double_inputs(rng)[name]
    kwargs = rest[0] if rest else {}
    double = backend_ops.to_numpy if name != "forward_physics" else lambda taps: {
        k: backend_ops.to_numpy(v) for k, v in taps.items()}
    out64 = double(getattr(backend_ops, name)(*args, precision="float64", **kwargs))
    out32 = double(getattr(backend_ops, name)(*args, **kwargs))
    if name == "forward_physics":  # the reference rounds its object patches to complex64
        reference = physics.forward_physics(*args, **kwargs)
        for tap, ref in reference.items():
            assert out64[tap].dtype == (np.complex128 if np.iscomplexobj(ref) else np.float64), tap
            assert out32[tap].dtype == (np.complex64 if np.iscomplexobj(ref) else np.float32), tap
            assert_close_rel(out64[tap], ref, OP_RTOL, tap)
        return
    reference = np.asarray(_merge_weights_float64(args[0]) if name == "merge_weights"
                           else getattr(physics, name)(*args, **kwargs))
    reference32 = np.asarray(_merge_weights_float64(_single(args[0])) if name == "merge_weights"
                             else getattr(physics, name)(*map(_single, args), **kwargs))
    assert out64.dtype == (np.complex128 if np.iscomplexobj(reference) else np.float64)
    assert out32.dtype == (np.complex64 if np.iscomplexobj(reference) else np.float32)
    assert_close_rel(out64, reference, F64_RTOL, f"{name} float64")
    assert_close_rel(out32, reference32, OP_RTOL, f"{name} float32")
    assert not np.array_equal(out32, out64)  # really two precisions


@pytest.mark.parametrize("name", [*contract.OP_NAMES, "to_backend"])
def test_an_unknown_precision_is_one_error(backend_ops, rng, name):
    args, *rest = _double_inputs(rng)[name] if name != "to_backend" else ((np.zeros(3),),)
    with pytest.raises(PtyparityError, match="precision must be one of float32, float64; got 'half'"):
        getattr(backend_ops, name)(*args, precision="half", **(rest[0] if rest else {}))


# --- torch's window tents (merge and extract share one pair per forward) -----------------


def test_torch_window_tents_are_the_padded_and_cropped_tents(rng):
    """The window tents of ``+rel`` are columns of ``T(rel)`` and, transposed, rows of
    ``T(-rel)``, bit for bit; the merge and extraction built on them match the reference."""
    from ptyparity.backends.torch import ops

    size, start = N + 2 * MAX_OFFSET, MAX_OFFSET
    rel = ops.to_backend(_group_rel(rng, 3))
    t_x, t_y = ops._window_tents(rel, N, size)
    full = ops.tent_matrix(size, rel.movedim(-1, 0))  # (2, B, C, Pd, Pd): x then y
    flipped = ops.tent_matrix(size, -rel.movedim(-1, 0))
    for i, t in enumerate((t_x, t_y)):
        assert np.array_equal(ops.to_numpy(t), ops.to_numpy(full[i][..., start : start + N]))
        assert np.array_equal(ops.to_numpy(t.mT), ops.to_numpy(flipped[i][..., start : start + N, :]))
    canvas = rng.normal(size=(3, size, size)).astype(np.float32)  # a real canvas too
    ref = physics.extract_patches(canvas, ops.to_numpy(rel), N)
    out = ops._extract(ops.to_backend(canvas)[:, :, None], (t_x, t_y))  # one real plane: (B, C, N, 1, N)
    assert_close_rel(ops.to_numpy(out[:, :, :, 0].permute(0, 2, 3, 1)), ref, OP_RTOL, "_extract")


def test_torch_translate_non_square(rng):
    from ptyparity.backends.torch import ops

    img = _complex(rng, (2, 20, 28))
    shift = rng.uniform(-4, 4, (2, 2)).astype(np.float32)
    ref = physics.translate(img, shift)
    assert_close_rel(_run(ops, "translate", img, shift), ref, OP_RTOL, "translate non-square")
