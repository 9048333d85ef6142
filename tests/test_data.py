"""The raw NPZ contract: variants accepted, every malformed case refused in one line."""

import os

import numpy as np
import pytest
from typer.testing import CliRunner

from ptyparity.cli import app
from ptyparity.data import dataset_digest, load_npz, save_npz
from ptyparity.errors import PtyparityError
from ptyparity.simulate import SimConfig, simulate


@pytest.fixture(scope="module")
def good():
    train, _ = simulate(SimConfig(N=32, object_size_px=64, seed=2))
    return train


def write(tmp_path, arrays, name="d.npz"):
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


def arrays_of(data, **changes):
    arrays = data.to_arrays()
    for key, value in changes.items():
        if value is None:
            arrays.pop(key)
        else:
            arrays[key] = value
    return arrays


def test_round_trip(tmp_path, good):
    path = tmp_path / "x.npz"
    save_npz(path, good)
    back = load_npz(path)
    assert np.array_equal(back.diff3d, good.diff3d) and np.array_equal(back.obj, good.obj)
    assert back.extras["nphotons"] == good.extras["nphotons"]  # unknown keys kept
    assert dataset_digest(back) == dataset_digest(good)


def test_digest_changes_with_data(good):
    other = arrays_of(good, diff3d=good.diff3d * 1.0001)
    from ptyparity.data import validate_arrays
    assert dataset_digest(validate_arrays(other)) != dataset_digest(good)


def test_ptychopinn_variants(tmp_path, good):
    arrays = arrays_of(good, diff3d=None)
    arrays["diffraction"] = np.moveaxis(good.diff3d, 0, -1)  # (N, N, M) under the old name
    arrays["probeGuess"] = good.probe[None]  # (1, N, N)
    back = load_npz(write(tmp_path, arrays))
    assert np.array_equal(back.diff3d, good.diff3d)
    assert back.probe.shape == (32, 32)


def test_intensity_by_file_key_and_by_flag(tmp_path, good):
    intensity = good.diff3d.astype(np.float64) ** 2
    by_key = load_npz(write(tmp_path, arrays_of(good, diff3d=intensity, measurement=np.asarray("intensity"))))
    np.testing.assert_allclose(by_key.diff3d, good.diff3d, rtol=1e-6)
    assert by_key.measurement == "intensity"
    by_flag = load_npz(write(tmp_path, arrays_of(good, diff3d=intensity), "f.npz"), measurement="intensity")
    np.testing.assert_allclose(by_flag.diff3d, good.diff3d, rtol=1e-6)


def test_save_refuses_to_overwrite(tmp_path, good):
    path = tmp_path / "x.npz"
    save_npz(path, good)
    with pytest.raises(PtyparityError, match="already exists"):
        save_npz(path, good)


def _malformed(good, tmp_path):
    n = 32
    m = good.n_patterns
    bad = {
        "missing key": (arrays_of(good, diff3d=None), "key 'diff3d' is missing"),
        "missing probe": (arrays_of(good, probeGuess=None), "key 'probeGuess' is missing"),
        "wrong rank": (arrays_of(good, diff3d=good.diff3d.reshape(m, -1)), "key 'diff3d' must be 3-D"),
        "mismatched M": (arrays_of(good, xcoords=good.xcoords[:-1], ycoords=good.ycoords[:-1]),
                         f"diff3d has {m} patterns but xcoords/ycoords have {m - 1}"),
        "x/y mismatch": (arrays_of(good, ycoords=good.ycoords[:-1]), "xcoords has"),
        "non-finite": (arrays_of(good, diff3d=np.where(np.arange(n) == 3, np.nan, good.diff3d)),
                       "key 'diff3d' holds .* NaN/inf"),
        "negative": (arrays_of(good, diff3d=good.diff3d - 1.0), "diff3d holds .* negative"),
        "complex diffraction": (arrays_of(good, diff3d=good.diff3d.astype(np.complex64)),
                                "key 'diff3d' is complex"),
        "probe shape": (arrays_of(good, probeGuess=good.probe[:16, :16]),
                        r"probeGuess has shape \(16, 16\) but the patterns are 32x32"),
        "odd N": (arrays_of(good, diff3d=good.diff3d[:, :30, :30], probeGuess=good.probe[:30, :30]),
                  "N must be one of"),
        "object rank": (arrays_of(good, objectGuess=good.obj[None]), "key 'objectGuess' must be 2-D"),
        "string coords": (arrays_of(good, xcoords=np.array(["a"] * m)), "key 'xcoords' has dtype"),
    }
    cases = {name: (write(tmp_path, arrays, f"{i}.npz"), match) for i, (name, (arrays, match)) in
             enumerate(bad.items())}
    empty = tmp_path / "empty.npz"
    empty.write_bytes(b"")
    cases["empty file"] = (empty, "the file is empty")
    text = tmp_path / "notes.npz"
    text.write_text("not an archive")
    cases["not an NPZ"] = (text, "not an NPZ archive")
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, **good.to_arrays(), meta=np.array([{"a": 1}], dtype=object))
    cases["pickled object"] = (pickled, "holds Python objects, which are never unpickled")
    cases["no such file"] = (tmp_path / "nope.npz", "no such file")
    return cases


CASES = ["missing key", "missing probe", "wrong rank", "mismatched M", "x/y mismatch", "non-finite", "negative",
         "complex diffraction", "probe shape", "odd N", "object rank", "string coords", "empty file",
         "not an NPZ", "pickled object", "no such file"]


@pytest.mark.parametrize("case", CASES)
def test_malformed_npz_is_one_clear_line(tmp_path, good, case):
    path, match = _malformed(good, tmp_path)[case]
    with pytest.raises(PtyparityError, match=match) as info:
        load_npz(path)
    assert "\n" not in str(info.value)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("case", CASES)
def test_malformed_npz_from_the_cli_exits_2_without_traceback(tmp_path, good, case):
    path, match = _malformed(good, tmp_path)[case]
    result = CliRunner().invoke(app, ["inspect", os.fspath(path)])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output
    import re
    assert re.search(match, lines[0])
