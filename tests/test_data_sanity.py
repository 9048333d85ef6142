"""Data that cannot be photon counts is named for what it likely is: ``inspect`` warns,
``train`` refuses unless ``--force`` (and then tags the run with the warnings).

The cases are built from real data: the PtychoPINN fixture (its own ``diff3d`` is not whole
counts), that fixture turned into true counts (``round(diff3d**2)``) and then stored the
wrong way round, scaled to the ~1e-16 "photons" of a normalised export, or with dead frames;
and simulated Poisson data, which must pass clean.
"""

import os

import numpy as np
import pytest
from typer.testing import CliRunner

from ptyparity import names, tracking
from ptyparity.cli import app
from ptyparity.data import count_sanity, load_npz, save_npz, validate_arrays
from ptyparity.errors import PtyparityError
from ptyparity.simulate import SimConfig, simulate

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "ptychopinn", "tf_gs2_n64_f1", "data.npz")
TINY_TRAIN = ["--n-groups", "16", "--max-epochs", "1", "--n-filters-scale", "1", "--no-debug-dump", "--quiet"]


def codes(data):
    return [w.code for w in count_sanity(data)]


@pytest.fixture(scope="module")
def upstream():
    """The PtychoPINN fixture's arrays, as the file holds them."""
    with np.load(FIXTURE, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


@pytest.fixture(scope="module")
def counts(upstream):
    """Whole photon counts of the fixture's patterns, ``(M, N, N)`` float64."""
    return np.round(upstream["diff3d"].astype(np.float64) ** 2)


def with_diffraction(arrays, diff, measurement=None):
    out = {**arrays, "diff3d": np.asarray(diff, np.float32)}
    if measurement is not None:
        out["measurement"] = np.asarray(measurement)
    return out


@pytest.fixture(scope="module")
def simulated():
    train, _ = simulate(SimConfig(N=32, object_size_px=96, seed=4))
    return train


def normalised_export(data, photons=1e-16):
    """``data`` rescaled to ``photons`` mean "photons" per pattern, like a normalised export."""
    arrays = data.to_arrays()
    arrays["diff3d"] = (data.diff3d * np.sqrt(photons / data.nphotons)).astype(np.float32)
    return arrays


@pytest.mark.parametrize("nphotons", [1e2, 1e4, 1e6, 1e9])
def test_simulated_poisson_counts_pass_clean(nphotons):
    train, test = simulate(SimConfig(N=32, object_size_px=96, nphotons=nphotons, seed=1))
    assert codes(train) == [] and codes(test) == []


def test_true_counts_pass_clean_whether_stored_as_amplitude_or_intensity(upstream, counts):
    assert codes(validate_arrays(with_diffraction(upstream, np.sqrt(counts)))) == []
    assert codes(validate_arrays(with_diffraction(upstream, counts, "intensity"))) == []


def test_a_normalised_export_is_low_photons(upstream):
    scaled = upstream["diff3d"].astype(np.float64) * np.sqrt(1e-16 / 7108.67)
    (warning,) = count_sanity(validate_arrays(with_diffraction(upstream, scaled)))
    assert warning.code == "low_photons"
    assert "mean 1e-16 photons/pattern" in warning.message and "ptychodus" in warning.message


def test_the_ptychopinn_fixture_itself_is_not_whole_counts(upstream):
    (warning,) = count_sanity(validate_arrays(upstream))
    assert warning.code == "non_integer" and "not whole photon counts" in warning.message


def test_amplitudes_stored_as_intensity_are_named_and_the_flag_fixes_it(upstream, counts, tmp_path):
    path = tmp_path / "amp_as_intensity.npz"
    np.savez(path, **with_diffraction(upstream, np.sqrt(counts), "intensity"))
    (warning,) = count_sanity(load_npz(path))
    assert warning.code == "amplitude_read_as_intensity" and "--measurement amplitude" in warning.message
    assert codes(load_npz(path, measurement="amplitude")) == []


def test_intensities_stored_as_amplitude_are_named_and_the_flag_fixes_it(upstream, counts, tmp_path):
    path = tmp_path / "intensity_as_amp.npz"
    np.savez(path, **with_diffraction(upstream, counts))
    (warning,) = count_sanity(load_npz(path))
    assert warning.code == "intensity_read_as_amplitude" and "--measurement intensity" in warning.message
    assert codes(load_npz(path, measurement="intensity")) == []


def test_all_zero_patterns_are_counted(upstream, counts):
    diff = np.sqrt(counts)
    diff[[3, 10, 40]] = 0.0
    (warning,) = count_sanity(validate_arrays(with_diffraction(upstream, diff)))
    assert warning.code == "zero_patterns" and warning.message.startswith("3 of 64 patterns are all zero")
    with pytest.raises(PtyparityError, match="diff3d is all zeros"):  # nothing at all: refused on load
        validate_arrays(with_diffraction(upstream, np.zeros_like(diff)))


def test_a_few_repaired_pixels_do_not_warn_but_many_do(upstream, counts):
    rng = np.random.default_rng(0)
    bright = counts > 0
    for share, expected in ((0.02, []), (0.5, ["non_integer"])):
        noisy = counts.copy()
        pick = bright & (rng.random(counts.shape) < share)
        noisy[pick] += 0.4  # repaired / interpolated values between two counts
        assert codes(validate_arrays(with_diffraction(upstream, np.sqrt(noisy)))) == expected, share


@pytest.mark.parametrize("chunk", [1, 5, 64, 10_000])
def test_the_checks_do_not_depend_on_how_the_stack_is_split(upstream, counts, monkeypatch, chunk):
    """The checks run over blocks of patterns (ptyparity.counts.CHUNK_PATTERNS); the shares
    are whole-stack counts, equal to one pass over the whole stack."""
    from ptyparity import counts as count_checks

    noisy = counts.copy()
    noisy[(counts > 0) & (np.random.default_rng(1).random(counts.shape) < 0.3)] += 0.4
    amp = np.sqrt(noisy).astype(np.float32)
    values = amp.astype(np.float64) ** 2
    values = values[values > 0]
    tol = count_checks.COUNT_ABS_TOL + count_checks.COUNT_REL_TOL * values
    v, t = values[tol <= count_checks.COUNT_JUDGE_TOL], tol[tol <= count_checks.COUNT_JUDGE_TOL]
    whole_stack = np.count_nonzero((np.abs(v - np.round(v)) > t) | (np.round(v) == 0)) / v.size
    monkeypatch.setattr(count_checks, "CHUNK_PATTERNS", chunk)
    assert count_checks._off_integer_fraction(amp, 2) == whole_stack  # exact: integer counts over one total
    (warning,) = count_sanity(validate_arrays(with_diffraction(upstream, amp)))
    assert warning.code == "non_integer" and warning.message.startswith(f"{whole_stack:.0%} of the intensities")


def test_inspect_prints_the_warning_and_exits_0(simulated, tmp_path):
    path = tmp_path / "export.npz"
    np.savez(path, **normalised_export(simulated))
    result = CliRunner().invoke(app, ["inspect", str(path)])
    assert result.exit_code == 0, result.output
    assert "valid" in result.output
    assert "warning: mean 1e-16 photons/pattern" in result.output and "(low_photons)" in result.output
    assert "pass --force to train anyway" in result.output
    as_json = CliRunner().invoke(app, ["inspect", str(path), "--json"])
    import json

    assert [w["code"] for w in json.loads(as_json.output)["warnings"]] == ["low_photons"]
    clean = tmp_path / "clean.npz"
    save_npz(clean, simulated)
    result = CliRunner().invoke(app, ["inspect", str(clean)])
    assert result.exit_code == 0 and "warning" not in result.output


def test_train_refuses_in_one_line_and_opens_no_run(simulated, tracking_uri, tmp_path):
    path = tmp_path / "export.npz"
    np.savez(path, **normalised_export(simulated))
    result = CliRunner().invoke(app, ["train", "--train-data", str(path), *TINY_TRAIN])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert lines[0].startswith(f"error: {path}: the data cannot be photon counts: mean 1e-16 photons/pattern")
    assert "ptychodus" in lines[0] and lines[0].endswith("pass --force to train anyway")
    assert tracking.search_runs({names.TAG_KIND: "train"}) == []


def test_train_refusal_names_the_measurement_flag(upstream, counts, tracking_uri, tmp_path):
    path = tmp_path / "amp_as_intensity.npz"
    np.savez(path, **with_diffraction(upstream, np.sqrt(counts), "intensity"))
    result = CliRunner().invoke(app, ["train", "--train-data", str(path), *TINY_TRAIN])
    assert result.exit_code == 2 and "pass --measurement amplitude" in result.output, result.output


def test_train_with_force_trains_and_tags_the_warnings(simulated, tracking_uri, tmp_path):
    path = tmp_path / "export.npz"
    np.savez(path, **normalised_export(simulated))
    result = CliRunner().invoke(app, ["train", "--train-data", str(path), "--force", *TINY_TRAIN])
    assert result.exit_code == 0, result.output
    (run,) = tracking.search_runs({names.TAG_KIND: "train"})
    assert run.info.status == "FINISHED"
    assert tracking.run_tag(run, names.TAG_DATA_WARNINGS).startswith("low_photons: mean 1e-16 photons/pattern")
