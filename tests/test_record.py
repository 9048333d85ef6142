"""The public record API on a real (temporary sqlite) MLflow store, with an implementation
made of plain arrays: the judge computes every statistic, canvas and score from what it is
handed, compare reads the runs like its own, and check-run names what a run lacks."""

import json

import mlflow
import numpy as np
import pytest
from typer.testing import CliRunner

from ptyparity import metrics as canvas_metrics
from ptyparity import record, tracking, tracking_record
from ptyparity.cli import app
from ptyparity.data import dataset_digest, load_npz
from ptyparity.errors import PtyparityError
from ptyparity.physics import support_mask
from ptyparity.runs import run_compare
from ptyparity.simulate import SimConfig
from ptyparity.stats import patch_stats
from ptyparity.stitching import extract_object_patches, stitch_patches
from tests.conftest import sqlite_store, write_simulated

N = 32
LAYOUT = dict(gridsize=1, object_big=False, probe_big=False)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("record_store")
    with sqlite_store(root):
        write_simulated(root, SimConfig(N=N, object_size_px=96, seed=0))
        yield root


def truth_patches(data):
    """A perfect implementation: the true object patches at every scan position, (M, N, N, 1)."""
    patches = extract_object_patches(data.obj, data.positions, N)[..., None]
    return np.abs(patches), np.angle(patches)


def scale_taps(data, b=16, input_scale=0.25, physics_scale=3.0):
    """What a network fed ``input_scale * diff3d`` and a forward model scaling by ``physics_scale``
    would hand over for ``b`` groups."""
    diffraction = data.diff3d[:b, ..., None]
    amplitude = np.full_like(diffraction, 2.0)
    return {"diffraction": diffraction, "encoder_input": input_scale * diffraction, "pred_amplitude": amplitude,
            "pred_amplitude_counts": physics_scale * amplitude}


def external_infer(root, backend, *, train_run_id=None, name="arrays-impl", run_name=None, **layout):
    data = load_npz(root / "test.npz")
    amp, phase = truth_patches(data)
    with record.infer_run(root / "test.npz", implementation=name, version="2.0", backend=backend,
                          train_run_id=train_run_id, run_name=run_name, **layout) as run:
        run.log_scales(intensity_scale=62.5)
        run.log_patches("infer", amp[:16], phase[:16], **scale_taps(data))
        scores = run.log_reconstruction(amp, phase, data.positions)
    return run.run_id, data, amp, phase, scores


def external_train(root, backend, name="arrays-impl"):
    data = load_npz(root / "train.npz")
    amp, phase = truth_patches(data)
    with record.train_run(root / "train.npz", implementation=name, version="2.0", backend=backend,
                          params={"n_groups": 16, "max_epochs": 2}, scales={"intensity_scale": 62.5}, **LAYOUT) as run:
        run.log_patches("initial", amp[:16] * 0.5, phase[:16], **scale_taps(data))
        for epoch, loss in enumerate((3.0, 2.0)):
            run.log_epoch(epoch, train_loss=loss, val_loss=loss + 0.5)
        run.log_patches("final", amp[:16], phase[:16], **scale_taps(data))
    return run.run_id


@pytest.fixture(scope="module")
def unlinked(store):
    """Infer runs of two implementations without train runs: {backend: (run_id, data, amp, phase, scores)}."""
    return {"torch": external_infer(store, "torch", **LAYOUT),
            "tensorflow": external_infer(store, "tensorflow", name="other-impl", **LAYOUT)}


@pytest.fixture(scope="module")
def linked(store):
    """Train runs and the infer runs that name them: {backend: (train_run_id, infer_run_id)}."""
    out = {}
    for backend in ("torch", "tensorflow"):
        train = external_train(store, backend)
        out[backend] = train, external_infer(store, backend, train_run_id=train)[0]  # layout from the train run
    return out


def test_the_judge_computes_everything_from_the_arrays(unlinked):
    run_id, data, amp, phase, scores = unlinked["torch"]
    run = mlflow.get_run(run_id)
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    assert run.info.status == "FINISHED"
    assert (tags["ptyparity.kind"], tags["ptyparity.backend"]) == ("infer", "torch")
    assert (tags["ptyparity.implementation"], tags["ptyparity.implementation_version"]) == ("arrays-impl", "2.0")
    assert tags["ptyparity.record_schema"] == str(record.SCHEMA_VERSION) == "1"
    digest = dataset_digest(data)
    assert tags["ptyparity.dataset_digest"] == digest
    assert tags["ptyparity.pair_key"] == f"{digest[:16]}-{tags['ptyparity.config_hash']}-s0"
    assert {k: params[k] for k in ("N", "gridsize", "object_big", "probe_big", "seed", "intensity_scale")} == \
        {"N": "32", "gridsize": "1", "object_big": "false", "probe_big": "false", "seed": "0", "intensity_scale": "62.5"}
    # patch statistics: ptyparity's own function over the handed arrays, on the central N/2 support
    _, agg = patch_stats(amp[:16], support_mask(N, probe_big=False), kind="amp")
    for key, value in agg.items():
        assert metrics[f"patch.amp.{key}"] == pytest.approx(value, rel=1e-12), key
    assert metrics["mean_input_scale"] == pytest.approx(0.25, rel=1e-6)
    assert metrics["mean_physics_scale"] == pytest.approx(3.0, rel=1e-6)
    # the canvas: ptyparity's stitching of the handed patches; gt scores against objectGuess
    canvas, count = stitch_patches(amp * np.exp(1j * phase), data.positions[:, None, :], canvas_shape=data.obj.shape)
    with np.load(tracking.download_artifact(run_id, "stitched/canvas.npz"), allow_pickle=False) as npz:
        np.testing.assert_array_equal(npz["canvas"], canvas)
        np.testing.assert_array_equal(npz["count"], count)
    expected = canvas_metrics.compare_canvases(canvas, data.obj, canvas_metrics.covered_region(count))
    assert scores["gt.amp.ssim"] == pytest.approx(expected["amp.ssim"]) and metrics["gt.amp.ssim"] > 0.95
    assert metrics["gt.amp.ssim"] > metrics["gt.amp.ssim_flat"] + 0.5  # the truth beats the flat guess
    with np.load(tracking.download_artifact(run_id, "debug_dump/taps.npz"), allow_pickle=False) as npz:
        assert set(npz.files) == {"amp_patches", "phase_patches", "encoder_input", "pred_amplitude",
                                  "pred_amplitude_counts"}
        np.testing.assert_array_equal(npz["amp_patches"], amp[:16])
    stats = json.load(open(tracking.download_artifact(run_id, "debug_dump/patch_stats.json")))
    assert len(stats["per_patch"]["amp"]["var"]) == 16
    assert {"debug_dump/patch_grid_normalised.png", "debug_dump/patch_grid_shared.png", "stitched/canvas.png",
            "debug_dump/patch_stats.json"} <= tracking_record.list_artifacts(run_id)
    assert [i.dataset.name for i in run.inputs.dataset_inputs] == ["infer"]


def test_a_train_run_records_epochs_and_both_dumps(linked):
    run_id = linked["tensorflow"][0]
    run = mlflow.get_run(run_id)
    assert run.data.params["max_epochs"] == "2" and run.data.params["n_groups"] == "16"
    client = mlflow.MlflowClient()
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "train_loss")] == [(0, 3.0), (1, 2.0)]
    # initial at step 0, final at the number of epochs logged
    assert tracking_record.metric_steps(run_id, "patch.amp.var_zero_mean") == [0, 2]
    assert {"debug_dump/initial/patch_stats.json", "debug_dump/final/taps.npz"} <= tracking_record.list_artifacts(run_id)
    out = CliRunner().invoke(app, ["check-run", run_id])
    assert out.exit_code == 0, out.output
    assert "complete" in out.output.splitlines()[-1]


def test_an_exception_ends_the_run_failed_with_the_reason(store):
    with pytest.raises(RuntimeError, match="out of memory"):
        with record.train_run(store / "train.npz", implementation="boom", version="0", backend="torch",
                              run_name="boom", **LAYOUT):
            raise RuntimeError("out of memory\nsecond line")
    (run,) = mlflow.search_runs(experiment_names=["ptyparity"], filter_string="attributes.run_name = 'boom'",
                                output_format="list")
    assert run.info.status == "FAILED" and run.data.tags["ptyparity.error"] == "out of memory"


def test_user_mistakes_are_one_line(store):
    data = load_npz(store / "train.npz")
    with pytest.raises(PtyparityError, match="backend must be one of torch, tensorflow"):
        with record.train_run(data, implementation="x", version="0", backend="jax", **LAYOUT):
            pass
    with pytest.raises(PtyparityError, match="contradict the run's own values: N=64"):
        with record.train_run(data, implementation="x", version="0", backend="torch", params={"N": 64}, **LAYOUT):
            pass
    with pytest.raises(PtyparityError, match="needs gridsize, object_big, probe_big"):
        with record.infer_run(data, implementation="x", version="0", backend="torch"):
            pass
    with pytest.raises(PtyparityError, match="run 'nope' not found"):
        with record.infer_run(data, implementation="x", version="0", backend="torch", train_run_id="nope"):
            pass
    torch_layout = np.zeros((4, 1, N, N))
    with pytest.raises(PtyparityError, match=r"amp must have shape \(B, 32, 32, 1\).*got \(4, 1, 32, 32\)"):
        with record.train_run(data, implementation="x", version="0", backend="torch", run_name="bad-shape",
                              **LAYOUT) as run:
            run.log_patches("initial", torch_layout, torch_layout)
    (bad,) = mlflow.search_runs(experiment_names=["ptyparity"], filter_string="attributes.run_name = 'bad-shape'",
                                output_format="list")
    assert bad.info.status == "FAILED" and bad.data.tags["ptyparity.error"].startswith("amp must have shape")
    with pytest.raises(PtyparityError, match="already logged as 62.5"):
        with record.train_run(data, implementation="x", version="0", backend="torch", **LAYOUT) as run:
            run.log_scales(intensity_scale=62.5)
            run.log_scales(intensity_scale=1.0)
    with pytest.raises(PtyparityError, match="stage 'infer' is not one of a train run's"):
        with record.train_run(data, implementation="x", version="0", backend="torch", **LAYOUT) as run:
            run.log_patches("infer", np.zeros((1, N, N, 1)), np.zeros((1, N, N, 1)))


def test_external_runs_without_train_runs_are_compared_with_those_checks_skipped(unlinked):
    t, f = unlinked["torch"][0], unlinked["tensorflow"][0]
    result = run_compare(torch_run_id=t, tf_run_id=f)
    consistency = {f"{b}.consistency.{k}" for b in ("torch", "tensorflow")
                   for k in ("mean_input_scale", "mean_physics_scale", "intensity_scale")}
    assert set(result.skipped_checks) == consistency
    for check in result.checks:
        if check.name in consistency:
            assert check.status == "skipped" and "no train run" in check.detail
        else:  # the same arrays on both sides: every other check is evaluated, and agrees
            assert check.status == "pass", (check.name, check.value, check.detail)
    assert result.verdict == "pass" and result.quality_status == "pass"
    tags = mlflow.get_run(result.run_id).data.tags
    assert set(tags["parity.skipped_checks"].split(",")) == consistency
    assert (tags["parity.torch_implementation"], tags["parity.tf_implementation"]) == ("arrays-impl 2.0",
                                                                                      "other-impl 2.0")
    assert "implementations: torch arrays-impl 2.0 · tensorflow other-impl 2.0" in tags["mlflow.note.content"]
    html = open(tracking.download_artifact(result.run_id, "parity/report.html")).read()
    assert "<b id=\"torch-implementation\">arrays-impl 2.0</b>" in html and "other-impl 2.0" in html
    summary = json.load(open(tracking.download_artifact(result.run_id, "parity/summary.json")))
    assert summary["torch_implementation"] == "arrays-impl 2.0" and summary["tf_train_run_id"] == "none"
    out = CliRunner().invoke(app, ["check-run", t])
    assert out.exit_code == 1, out.output
    lacking = [line for line in out.output.splitlines() if line.startswith("  lacks")]
    assert len(lacking) == 3 and all("torch.consistency." in line and "ptyparity.train_run_id" in line
                                     for line in lacking)


def test_a_linked_train_run_makes_consistency_checked(linked):
    (train, t), (_, f) = linked["torch"], linked["tensorflow"]
    run = mlflow.get_run(t)
    assert run.data.tags["ptyparity.train_run_id"] == train
    assert run.data.tags["ptyparity.config_hash"] == mlflow.get_run(train).data.tags["ptyparity.config_hash"]
    assert (run.data.params["gridsize"], run.data.params["probe_big"]) == ("1", "false")
    assert CliRunner().invoke(app, ["check-run", t]).exit_code == 0
    result = run_compare(torch_run_id=t, tf_run_id=f)
    assert result.skipped_checks == () and result.verdict == "pass"
    assert all(c.status == "pass" for c in result.checks if ".consistency." in c.name)


def test_check_run_names_what_is_missing(store):
    data = load_npz(store / "test.npz")
    amp, phase = truth_patches(data)
    with record.infer_run(data, implementation="thin", version="1", backend="torch", **LAYOUT) as run:
        run.log_patches("infer", amp[:8], phase[:8], log_dump=False)  # no scale taps, no dump, no canvas
    out = CliRunner().invoke(app, ["check-run", run.run_id])
    assert out.exit_code == 1, out.output
    text = out.output
    assert "lacks ratio.mean_input_scale: metric mean_input_scale (log_patches with diffraction=" in text
    assert "lacks canvas.amp.ssim: artifact stitched/canvas.npz (log_reconstruction or log_canvas)" in text
    assert "lacks torch.gt_skill.amp: metric gt.amp.ssim" in text
    assert "lacks report: artifact debug_dump/patch_stats.json" in text
    assert "ok    ratio.var_zero_mean" in text and "ok    torch.collapsed_fraction" in text
    assert text.splitlines()[-1].startswith("gaps: ")


def test_check_run_bad_input_exits_2(store):
    out = CliRunner().invoke(app, ["check-run", "deadbeef"])
    assert out.exit_code == 2 and out.output.strip().startswith("error: run 'deadbeef' not found")
    with tracking.start_run("compare", run_name="not-a-source") as run:
        pass
    out = CliRunner().invoke(app, ["check-run", run.info.run_id])
    assert out.exit_code == 2 and "is a compare run; check-run checks train and infer runs" in out.output
