"""The parity matrix (ptyparity/matrix.py, runs/matrix.py): the quick matrix is the regression
guard of both backends; negative controls prove it can fail, and fails where it should.

Each negative control breaks one backend in one known way (monkeypatched for one test) and
must fail exactly the cells whose configuration reaches the broken code, naming the first
divergent tap; every other cell must still pass.
"""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from ptyparity import matrix, names
from ptyparity.errors import PtyparityError

TRAIN_STEPS = 2


@pytest.fixture(scope="module")
def apis():
    return matrix.load_backends()


@pytest.fixture(scope="module")
def quick_forward_cells():
    return matrix.cell_grid(quick=True)


def run(cells, apis, train_steps=0):
    return {r.id: r for r in matrix.run_matrix(cells, train_steps=train_steps, apis=apis)}


# --- the grid, pure -------------------------------------------------------------------------


def test_default_grid_covers_every_axis_without_repeating_a_cell():
    forward = matrix.cell_grid()
    trained = matrix.cell_grid(train_steps=3)
    # object_big: 2 probe_big x 2 gridsize x 2 N x 2 merge x 2 trainable x 2 precision; without it
    # nothing is merged, so merge_weighting is not swept; loss_mode only with training steps
    assert len(forward) == 64 + 32 and len(trained) == 2 * len(forward)
    assert len({matrix.cell_id(c) for c in trained}) == len(trained)
    assert all("loss_mode" not in c for c in forward) and {c["loss_mode"] for c in trained} == {"poisson", "mae"}
    assert {c["merge_weighting"] for c in forward if not c["object_big"]} == {"support"}
    for name, values in matrix.AXES.items():
        assert {c[name] for c in trained} == set(values), name


def test_quick_subset_holds_every_value_of_every_axis():
    quick = matrix.cell_grid(quick=True, train_steps=1)
    for name, values in matrix.AXES.items():
        assert {c[name] for c in quick} == set(values), name
    assert len(quick) <= 12


def test_axes_text_fixes_the_axes_it_leaves_out():
    cells = matrix.cell_grid(matrix.parse_axes("gridsize, N=64, precision=float64"))
    assert [(c["gridsize"], c["N"], c["precision"]) for c in cells] == [(1, 64, "float64"), (2, 64, "float64")]
    assert all(c["object_big"] == matrix.FIXED["object_big"] for c in cells)


@pytest.mark.parametrize("text, words", [("gridsiz", "unknown matrix axis 'gridsiz'"),
                                         ("N=48", "matrix axis N takes 32, 64; got '48'"),
                                         ("N,N", "given twice")])
def test_bad_axes_are_one_line(text, words):
    with pytest.raises(PtyparityError, match=words) as err:
        matrix.parse_axes(text)
    assert "\n" not in str(err.value)


def test_tolerances_follow_the_precision_rules():
    assert matrix.tap_tolerance("object_canvas", "float32", "torch_vs_tensorflow") == 1e-4
    assert matrix.tap_tolerance("object_canvas", "float64", "torch_vs_tensorflow") == 1e-10
    assert matrix.tap_tolerance("amp_patches", "float64", "torch_vs_reference") == 1e-10
    # the reference's physics half is single precision: a float64 backend is held to 1e-4 there
    assert matrix.tap_tolerance("exit_wave", "float64", "torch_vs_reference") == 1e-4
    same = {"train_step_deviance": [1.0, 2.0], "train_step_loss": [3.0, 4.0]}
    moved = {"train_step_deviance": [1.0, 2.0 * (1 + 1e-5)], "train_step_loss": [3.0, 4.0]}
    check = matrix.trajectory_check({"torch": moved, "tensorflow": same}, "float32",
                                    {"torch": moved, "tensorflow": same})  # no drift: floor = 1 ulp
    assert check["floor"] == matrix.F32_EPS and not check["passed"]  # 1e-5 is far beyond 10 ulps
    assert matrix.trajectory_check({"torch": same, "tensorflow": same}, "float64")["passed"]


# --- the real backends ----------------------------------------------------------------------


def test_quick_matrix_passes_on_both_backends(apis, record_property):
    """The regression guard: every quick cell, forward and K training steps, on both backends."""
    cells = matrix.cell_grid(quick=True, train_steps=TRAIN_STEPS)
    results = run(cells, apis, train_steps=TRAIN_STEPS)
    for r in results.values():
        print(r.id, r.status, f"{r.worst_ratio:.2e}", r.trajectory and f"{r.trajectory['error']:.1e}")
        record_property(r.id, r.worst_ratio)
    failed = {i: (r.first_divergent_tap, r.first_divergent_comparison, r.trajectory, r.error)
              for i, r in results.items() if r.status != "pass"}
    assert not failed
    for r in results.values():
        expected = [t for t in names.TAP_NAMES if r.cell["object_big"] or t != "object_canvas"]
        assert all(list(r.errors[c]) == expected for c in matrix.COMPARISONS)
        assert r.trajectory["steps"] == TRAIN_STEPS
        if r.cell["precision"] == "float64":  # held to the exact claim's bound, not the float32 one
            assert set(r.tolerances["torch_vs_tensorflow"].values()) == {matrix.F64_RTOL}
            assert r.trajectory["tolerance"] == matrix.F64_RTOL and r.trajectory["floor"] is None


def _flip_merge_shifts(monkeypatch):
    import ptyparity.backends.torch.ops as torch_ops

    original = torch_ops._window_tents  # the shifts of torch's merge and extraction
    monkeypatch.setattr(torch_ops, "_window_tents", lambda shift, n, size: original(-shift, n, size))


def _drop_support_weighting(monkeypatch):
    import torch

    import ptyparity.backends.torch.ops as torch_ops

    original = torch_ops.merge_weights

    def merge_weights(probe, *, probe_big=False, merge_weighting="support", precision="float32"):
        w = original(probe, probe_big=probe_big, merge_weighting=merge_weighting, precision=precision)
        return torch.ones_like(w) if merge_weighting == "support" else w

    monkeypatch.setattr(torch_ops, "merge_weights", merge_weights)


def _ignore_probe_big(monkeypatch):
    import ptyparity.backends.tensorflow.ops as tf_ops

    original = tf_ops.forward_physics
    monkeypatch.setattr(tf_ops, "forward_physics", lambda *a, **kw: original(*a, **{**kw, "probe_big": False}))


# (break one backend, the cells it must fail, the comparisons that see it). A gridsize-1 group
# has rel = 0, so a shift bug cannot show there; patches are zero outside the support
# without probe_big, so an unweighted merge changes only the counts where patches overlap
# (gridsize 2); probe_big reaches the physics only through the merge weights (object_big).
CONTROLS = {
    "torch merge shifts sign flipped": (_flip_merge_shifts, lambda c: c["object_big"] and c["gridsize"] > 1, "torch"),
    "torch merge without the support weighting": (
        _drop_support_weighting, lambda c: (c["object_big"] and not c["probe_big"] and c["gridsize"] > 1
                                            and c["merge_weighting"] == "support"), "torch"),
    "tensorflow ignores probe_big": (_ignore_probe_big, lambda c: c["object_big"] and c["probe_big"], "tensorflow"),
}


@pytest.mark.parametrize("control", sorted(CONTROLS))
def test_negative_control_fails_exactly_its_cells(control, apis, quick_forward_cells, monkeypatch):
    breaks, should_fail, broken = CONTROLS[control]
    breaks(monkeypatch)
    results = run(quick_forward_cells, apis)
    expected = {matrix.cell_id(c) for c in quick_forward_cells if should_fail(c)}
    assert 2 <= len(expected) < len(results)  # the control has both kinds of cell in the quick subset
    assert {i for i, r in results.items() if r.status == "fail"} == expected
    assert all(r.status == "pass" for i, r in results.items() if i not in expected)
    for i in expected:
        r = results[i]
        assert r.first_divergent_tap == "object_canvas", (i, r.first_divergent_tap)
        assert r.first_divergent_comparison == f"{broken}_vs_reference"
        assert r.errors["torch_vs_tensorflow"]["object_canvas"] > 1e-3  # far beyond any rounding
        other = "tensorflow" if broken == "torch" else "torch"
        assert all(e <= matrix.TAP_RTOL for e in r.errors[f"{other}_vs_reference"].values())


# --- the record -----------------------------------------------------------------------------


def test_matrix_run_records_parent_children_and_artifacts(tracking_uri, apis, monkeypatch):
    import mlflow

    from ptyparity.runs.matrix import run_matrix

    _flip_merge_shifts(monkeypatch)  # so the record shows a failing cell next to a passing one
    lines = []
    result = run_matrix(axes="object_big", train_steps=1, apis=apis, echo=lines.append)
    assert result.exit_code == 1 and result.failed_cells == ["ob1-pb0-g2-N32-support-poisson-tr0-f32"]
    assert len(lines) == 2 and "first divergent: object_canvas (torch_vs_reference)" in lines[0]

    client = mlflow.MlflowClient()
    parent = client.get_run(result.run_id)
    assert parent.data.tags[names.TAG_KIND] == "matrix"
    assert parent.data.tags[names.PARITY_STATUS] == "fail"
    assert parent.data.tags[names.PARITY_FAILED_CELLS] == "ob1-pb0-g2-N32-support-poisson-tr0-f32"
    children = mlflow.search_runs(experiment_ids=[parent.info.experiment_id], output_format="list",
                                  filter_string=f"tags.`{names.MLFLOW_PARENT_RUN_ID}` = '{result.run_id}'")
    assert {c.info.run_id for c in children} == set(result.child_run_ids.values())
    by_cell = {c.data.tags[names.TAG_MATRIX_CELL]: c for c in children}
    assert {c.data.tags[names.TAG_KIND] for c in children} == {"matrix_cell"}
    bad, good = by_cell["ob1-pb0-g2-N32-support-poisson-tr0-f32"], by_cell["ob0-pb0-g2-N32-support-poisson-tr0-f32"]
    assert bad.data.tags[names.PARITY_STATUS] == "fail" and good.data.tags[names.PARITY_STATUS] == "pass"
    assert bad.data.tags[names.PARITY_FIRST_DIVERGENT_TAP] == "object_canvas"
    assert good.data.params == {"object_big": "false", "probe_big": "false", "gridsize": "2", "N": "32",
                                "merge_weighting": "support", "loss_mode": "poisson",
                                "intensity_scale_trainable": "false", "precision": "float32",
                                "train_steps": "1", "seed": "0"}
    assert bad.data.metrics["torch_vs_reference.object_canvas"] > 1e-3
    assert good.data.metrics["torch_vs_tensorflow.pred_amplitude"] <= matrix.TAP_RTOL
    assert good.data.metrics["trajectory.error"] <= good.data.metrics["trajectory.tolerance"]
    assert "torch_vs_reference.object_canvas" not in good.data.metrics  # no canvas without object_big

    local = mlflow.artifacts.download_artifacts(run_id=result.run_id, artifact_path="matrix")
    summary = json.loads(open(f"{local}/summary.json").read(), parse_constant=lambda c: pytest.fail(c))
    assert summary["status"] == "fail" and summary["n_cells"] == 2 and summary["failed_cells"] == result.failed_cells
    assert summary["child_run_ids"] == result.child_run_ids
    page = open(f"{local}/table.html").read()
    assert "http://" not in page and "https://" not in page and "<script>" in page  # self-contained, sortable
    assert all(cell in page for cell in by_cell) and "#f5a3a3" in page  # the failing tap is red
    assert open(f"{local}/heatmap.png", "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_cli_matrix_bad_axes_is_one_line_exit_2():
    from ptyparity.cli import app

    result = CliRunner().invoke(app, ["matrix", "--axes", "gridsize=3"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == ["error: matrix axis gridsize takes 1, 2; got '3'"]


def test_summary_is_strict_json_when_a_cell_errors(apis, monkeypatch):
    """A backend that raises fails its cell ("error"), and the record stays strict JSON."""
    from ptyparity.runs.matrix import _finite

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(apis["tensorflow"], "forward", broken)
    (result,) = matrix.run_matrix(matrix.cell_grid(matrix.parse_axes("object_big=true")), apis=apis)
    assert result.status == "error" and result.error == "RuntimeError: boom"
    record = matrix.summary([result], axes={}, train_steps=0, seed=0, seconds=1.0)
    assert record["failed_cells"] == [result.id]
    json.dumps(_finite(record), allow_nan=False)
    assert np.isinf(result.worst_ratio)
