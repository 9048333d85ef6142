"""The two example implementations (examples/): trained briefly on the simulated data, recorded
through the callbacks and record.infer_run, complete for check-run, and compared with each
other and with a ptyparity-trained run; a negative control whose inference silently ignores
the intensity scale fails the scale checks, and only those."""

import ast
import importlib.util
import pathlib

import mlflow
import pytest
from typer.testing import CliRunner

from ptyparity.cli import app
from ptyparity.runs import run_compare, run_infer
from ptyparity.simulate import SimConfig
from tests.conftest import sqlite_store, write_simulated

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"
SCALE_CHECKS = ("mean_input_scale", "mean_physics_scale")


def load_example(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Each example trained (128 patterns, 2 epochs) and run on the test set; a small ptyparity torch run."""
    root = tmp_path_factory.mktemp("examples_store")
    with sqlite_store(root):
        write_simulated(root, SimConfig(N=32, object_size_px=128, seed=0))
        train, test = str(root / "train.npz"), str(root / "test.npz")
        out = {"root": root}
        for key, name in (("lightning", "lightning_example"), ("keras", "keras_example")):
            example = load_example(name)
            model, train_id = example.train(train, n_groups=128, epochs=2, run_name=f"{key}-train")
            out[key] = {"train": train_id, "infer": example.infer(model, test, train_run_id=train_id)}
            if key == "lightning":
                out[key]["ignores_scale"] = example.infer(model, test, train_run_id=train_id,
                                                          ignore_intensity_scale=True)
                out[key]["unlinked"] = example.infer(model, test)  # no train run named
        result = CliRunner().invoke(app, ["train", "--backend", "torch", "--train-data", train, "--n-groups", "64",
                                          "--max-epochs", "1", "--n-filters-scale", "1", "--patch-stats-limit", "8",
                                          "--no-register", "--quiet", "--run-name", "ptyparity-train"])
        assert result.exit_code == 0, result.output
        (own,) = mlflow.search_runs(experiment_names=["ptyparity"],
                                    filter_string="attributes.run_name = 'ptyparity-train'", output_format="list")
        out["ptyparity"] = {"infer": run_infer(f"runs:/{own.info.run_id}/model", test).run_id}
        yield out


def statuses(result):
    return {c.name: c.status for c in result.checks}


def test_examples_import_no_ptyparity_backend():
    for path in EXAMPLES.glob("*_example.py"):
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
            elif isinstance(node, ast.Import):
                imported.update(a.name for a in node.names)
        ours = {m for m in imported if m.split(".")[0] == "ptyparity"}
        assert ours <= {"ptyparity", "ptyparity.data", "ptyparity.integrations.lightning",
                        "ptyparity.integrations.keras"}, (path.name, ours)


def test_example_runs_are_complete_for_check_run(runs):
    for key in ("lightning", "keras"):
        for kind in ("train", "infer"):
            out = CliRunner().invoke(app, ["check-run", runs[key][kind]])
            assert out.exit_code == 0, out.output
            assert out.output.splitlines()[-1] == "complete: every compare check finds what it reads"
    out = CliRunner().invoke(app, ["check-run", runs["lightning"]["unlinked"]])
    assert out.exit_code == 1 and "lacks torch.consistency.intensity_scale: tag ptyparity.train_run_id" in out.output


def test_the_two_examples_are_compared(runs):
    t, f = runs["lightning"]["infer"], runs["keras"]["infer"]
    assert mlflow.get_run(t).data.tags["ptyparity.pair_key"] == mlflow.get_run(f).data.tags["ptyparity.pair_key"]
    result = run_compare(torch_run_id=t, tf_run_id=f)  # same data, params and seed: no --allow-mismatch
    assert result.verdict in ("pass", "fail", "inconclusive") and result.skipped_checks == ()
    got = statuses(result)
    assert set(got) >= {"canvas.amp.ssim", "canvas.orientation", "torch.gt_skill.amp", "tensorflow.gt_skill.phase"}
    # what two honest implementations of SPEC's scales must agree on, however briefly trained
    for side in ("torch", "tensorflow"):
        for key in (*SCALE_CHECKS, "intensity_scale"):
            assert got[f"{side}.consistency.{key}"] == "pass", (side, key)
    assert got["ratio.mean_input_scale"] == got["ratio.mean_physics_scale"] == "pass"
    tags = mlflow.get_run(result.run_id).data.tags
    assert tags["parity.verdict"] == result.verdict and tags["parity.skipped_checks"] == "none"
    assert (tags["parity.torch_implementation"], tags["parity.tf_implementation"]) == ("example-lightning 0.1",
                                                                                      "example-keras 0.1")
    for source in (t, f):
        assert mlflow.get_run(source).data.tags["parity.verdict"] == result.verdict


def test_an_example_is_compared_with_a_ptyparity_run(runs):
    t, f = runs["ptyparity"]["infer"], runs["keras"]["infer"]
    refused = run_compare(torch_run_id=t, tf_run_id=f)
    assert refused.verdict == "error" and "pair keys differ" in refused.reason
    result = run_compare(torch_run_id=t, tf_run_id=f, allow_mismatch=True)
    got = statuses(result)
    assert result.skipped_checks == () and "skipped" not in got.values()
    assert all(got[f"{s}.consistency.{k}"] == "pass" for s in ("torch", "tensorflow")
               for k in (*SCALE_CHECKS, "intensity_scale"))
    # ptyparity's SPEC scales and the example's own code measure the same factors from the data
    assert got["ratio.mean_input_scale"] == got["ratio.mean_physics_scale"] == "pass"
    tags = mlflow.get_run(result.run_id).data.tags
    assert tags["parity.verdict"] == result.verdict
    assert tags["parity.torch_implementation"].startswith("ptyparity ")
    assert tags["parity.tf_implementation"] == "example-keras 0.1"


def test_an_unlinked_example_run_has_its_consistency_skipped(runs):
    # without a train run there is no training config to pair on: --allow-mismatch
    result = run_compare(torch_run_id=runs["lightning"]["unlinked"], tf_run_id=runs["keras"]["infer"],
                         allow_mismatch=True)
    got = statuses(result)
    assert set(result.skipped_checks) == {f"torch.consistency.{k}" for k in (*SCALE_CHECKS, "intensity_scale")}
    assert all(got[f"tensorflow.consistency.{k}"] == "pass" for k in (*SCALE_CHECKS, "intensity_scale"))
    detail = next(c.detail for c in result.checks if c.name == "torch.consistency.intensity_scale")
    assert "no train run" in detail
    assert mlflow.get_run(result.run_id).data.tags["parity.skipped_checks"] == ",".join(result.skipped_checks)


def test_inference_that_ignores_the_intensity_scale_fails_the_scale_checks(runs):
    result = run_compare(torch_run_id=runs["lightning"]["ignores_scale"], tf_run_id=runs["keras"]["infer"])
    got = statuses(result)
    assert result.parity_status == "fail" and result.verdict == "fail"
    caught = {f"torch.consistency.{k}" for k in SCALE_CHECKS} | {f"ratio.{k}" for k in SCALE_CHECKS}
    assert caught <= set(result.failed_checks)
    # the declared scale was right (the bug is silent); the measured factors give it away
    assert got["torch.consistency.intensity_scale"] == "pass"
    assert got["tensorflow.consistency.mean_input_scale"] == "pass"
    assert mlflow.get_run(result.run_id).data.tags["parity.status"] == "fail"
