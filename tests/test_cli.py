"""The CLI shell: fast help, inspect output and preview, one-line errors."""

import subprocess
import sys

import numpy as np
from typer.testing import CliRunner

from ptyparity.cli import app
from ptyparity.data import save_npz
from ptyparity.simulate import SimConfig, simulate


def test_help_imports_no_framework():
    code = ("import sys; from ptyparity.cli import app; "
            "from typer.testing import CliRunner; r = CliRunner().invoke(app, ['--help']); "
            "assert r.exit_code == 0, r.output; "
            "heavy = [m for m in ('torch', 'tensorflow', 'mlflow', 'keras', 'lightning') if m in sys.modules]; "
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_module_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "ptyparity", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    assert "simulate" in out.stdout and "inspect" in out.stdout


def test_inspect_prints_what_matters_and_plots(tmp_path):
    train, _ = simulate(SimConfig(N=32, object_size_px=96, nphotons=1e4, seed=1))
    path = tmp_path / "train.npz"
    save_npz(path, train)
    png = tmp_path / "preview.png"
    result = CliRunner().invoke(app, ["inspect", str(path), "--plot", str(png)])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "valid" in out and f"{train.n_patterns} of 32x32 (amplitude)" in out
    assert "scan step" in out and "4 px" in out
    assert "objectGuess 96x96" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    mean_photons = float(np.mean(np.sum(train.diff3d.astype(np.float64) ** 2, axis=(1, 2))))
    assert f"mean {mean_photons:.4g}" in out


def test_inspect_json(tmp_path):
    train, _ = simulate(SimConfig(N=32, object_size_px=64, seed=1))
    path = tmp_path / "t.npz"
    save_npz(path, train)
    result = CliRunner().invoke(app, ["inspect", str(path), "--json"])
    import json
    summary = json.loads(result.output)
    assert summary["has_ground_truth"] is True and summary["N"] == 32


def test_bad_option_value_is_one_line(tmp_path):
    result = CliRunner().invoke(app, ["simulate", "--out-dir", str(tmp_path), "--n", "48"])
    assert result.exit_code == 2
    assert result.output.strip() == "error: N must be one of (32, 64, 128, 256); got 48"


def test_module_boundaries():
    # Backends never import each other; only the tracking layer imports mlflow; nothing
    # outside backends/tensorflow imports tensorflow at all.
    import ast
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[1] / "ptyparity"
    for path in root.rglob("*.py"):
        rel = path.relative_to(root).as_posix()
        tree = ast.parse(path.read_text())
        names = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
        if rel.startswith("backends/torch"):
            assert not any(n.startswith("ptyparity.backends.tensorflow") for n in names), rel
        if rel.startswith("backends/tensorflow"):
            assert not any(n.startswith("ptyparity.backends.torch") for n in names), rel
        if not rel.startswith("backends/tensorflow"):
            assert not any(n.split(".")[0] in ("tensorflow", "keras") for n in names), rel
        if rel not in ("tracking.py", "tracking_pyfunc.py"):
            assert not any(n.split(".")[0] == "mlflow" for n in names), rel
