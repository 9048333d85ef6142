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


def _imports(path, *, module_level_only=False, modules=()):
    """Modules ``path`` imports. ``from a.b import c`` counts as ``a.b.c`` when that is one
    of ``modules`` (a submodule), else as ``a.b`` (a name defined there)."""
    import ast

    tree = ast.parse(path.read_text())
    nodes = tree.body if module_level_only else ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in modules else node.module)
    return found


def _package_modules():
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[1] / "ptyparity"
    out = {}
    for path in root.rglob("*.py"):
        rel = path.relative_to(root).with_suffix("").as_posix()
        name = "ptyparity." + rel.replace("/", ".")
        out[name[: -len(".__init__")] if name.endswith(".__init__") else name] = path
    return out


FRAMEWORKS = ("torch", "tensorflow", "keras", "lightning")


def test_module_boundaries():
    # Backends never import each other; only the tracking layer imports mlflow; nothing
    # outside backends/tensorflow imports tensorflow at all.
    for name, path in _package_modules().items():
        names = _imports(path)
        if name.startswith("ptyparity.backends.torch"):
            assert not any(n.startswith("ptyparity.backends.tensorflow") for n in names), name
        if name.startswith("ptyparity.backends.tensorflow"):
            assert not any(n.startswith("ptyparity.backends.torch") for n in names), name
        # The Keras callback (ptyparity.integrations.keras) subclasses keras.callbacks.Callback.
        if not name.startswith("ptyparity.backends.tensorflow") and name != "ptyparity.integrations.keras":
            assert not any(n.split(".")[0] in ("tensorflow", "keras") for n in names), name
        if name.startswith("ptyparity.integrations"):  # the callbacks run the user's model, never ours
            assert not any(n.startswith("ptyparity.backends") for n in names), name
        if name not in ("ptyparity.tracking", "ptyparity.tracking_pyfunc", "ptyparity.tracking_notes",
                        "ptyparity.tracking_record", "ptyparity.tracking_liveness"):
            assert not any(n.split(".")[0] == "mlflow" for n in names), name


def test_runs_use_shared_modules_and_load_backend_only():
    # The workflows reach a framework only through ptyparity.backends.load_backend: no
    # backend package, no framework, no mlflow (tracking does that), at any level.
    modules = {n: p for n, p in _package_modules().items() if n.startswith("ptyparity.runs")}
    assert {"ptyparity.runs", "ptyparity.runs.common", "ptyparity.runs.simulate", "ptyparity.runs.train",
            "ptyparity.runs.infer", "ptyparity.runs.compare", "ptyparity.runs.pipeline"} <= set(modules)
    import ast

    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported = [(a.name, None) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                imported = [(node.module or "", a.name) for a in node.names]
            else:
                continue
            for module, what in imported:
                assert module.split(".")[0] not in FRAMEWORKS + ("mlflow",), (name, module)
                if module.startswith("ptyparity.backends") or (module == "ptyparity" and what == "backends"):
                    assert (module, what) == ("ptyparity.backends", "load_backend"), (name, module, what)
    code = ("import sys, ptyparity.runs; "
            f"print([m for m in {FRAMEWORKS + ('mlflow',)!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_no_import_cycles():
    # Import-time (module-level) imports between ptyparity modules form a DAG. Imports inside
    # functions run later and are allowed to point back (e.g. bundle.load -> inference).
    modules = _package_modules()
    graph = {name: sorted({m for m in _imports(path, module_level_only=True, modules=modules) if m in modules}
                          - {name})
             for name, path in modules.items()}
    state = {}  # 1 on the stack, 2 done

    def visit(node, stack):
        state[node] = 1
        for dep in graph[node]:
            assert state.get(dep) != 1, "import cycle: " + " -> ".join(stack + [node, dep])
            if dep not in state:
                visit(dep, stack + [node])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [])
    assert graph["ptyparity.runs.compare"] and "ptyparity.tracking" in graph["ptyparity.runs.compare"]


def test_pipeline_step_arguments_parse_back_to_the_values():
    # The pipeline builds each child's command line from one dict; the CLI reads the same values back.
    import typer.main

    from ptyparity.runs.pipeline import PRESETS, cli_args

    options = {"backend": "tensorflow", "train_data": "d/train.npz", "test_data": "d/test.npz",
               **{k: v for k, v in PRESETS["small"].items() if k != "n"}, "seed": 3, "accelerator": "cpu",
               "devices": 1, "quiet": True, "deterministic": False, "init_from": None, "run_name": "train-tf"}
    args = cli_args("train", options)
    assert args[:3] == ["train", "--backend", "tensorflow"] and "--no-deterministic" in args
    assert "--init-from" not in args  # None: left to the CLI's default
    command = typer.main.get_command(app).commands["train"]
    params = command.make_context("train", args[1:]).params
    for key, value in options.items():
        got = params[key]
        assert (str(got) if hasattr(got, "__fspath__") else got) == value, key
