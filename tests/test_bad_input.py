"""The bad-input table: every way a user can hand ptyparity something wrong, one row each.

:data:`CASES` is the table (README "When something is wrong"). Each row builds its bad
input in a temporary directory, runs one command and asserts what the README promises:
exit code 2, exactly one output line, ``error: …``, matching the row's pattern, no
traceback, and no run of the store left RUNNING (read from the sqlite file itself).
CLI rows run in-process with typer's CliRunner (fast); MLproject rows format an entry
point's command with the bad parameters and run it through the shell, as ``mlflow run``
does. One fresh sqlite store serves the module.

``PTYPARITY_BAD_INPUT_TABLE=table.md pytest tests/test_bad_input.py`` also writes the
table, with the lines actually printed, as markdown.
"""

import dataclasses
import json
import os
import re
import shlex
import shutil
import sqlite3
import subprocess
import sys
import traceback
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import sqlite_store
from typer.testing import CliRunner

from ptyparity import names

ROOT = Path(__file__).resolve().parent.parent
BUNDLE_V1 = ROOT / "tests" / "data" / "bundle_v1"  # N=32, gridsize 2
PTYCHOPINN = ROOT / "tests" / "data" / "ptychopinn" / "tf_gs2_n64_f1"  # N=64
MLPROJECT = yaml.safe_load((ROOT / "MLproject").read_text())["entry_points"]
SUBPROCESS_TIMEOUT_S = 120  # a bound on a hang only; the rows take ~3 s each


# --- the world every row builds on ---------------------------------------------------------


@dataclasses.dataclass
class World:
    root: Path
    uri: str
    db: Path
    train: Path  # a valid N=32 dataset (simulated, 81 patterns)
    test: Path
    n64: Path  # a valid N=64 dataset
    arrays: dict  # train's arrays, to derive malformed variants from

    def npz(self, tmp, name="bad.npz", **changes):
        """The valid training arrays with ``changes`` (a value of None removes the key)."""
        arrays = dict(self.arrays)
        for key, value in changes.items():
            if value is None:
                arrays.pop(key)
            else:
                arrays[key] = value
        path = tmp / name
        np.savez(path, **arrays)
        return path

    def run(self, kind, *, backend=None, pair_key="pk-bad-input", status="FINISHED"):
        """A run with ptyparity's tags and nothing else (no training, no artifacts)."""
        import mlflow

        client = mlflow.MlflowClient()
        exp = client.get_experiment_by_name(names.DEFAULT_EXPERIMENT)
        exp_id = exp.experiment_id if exp else client.create_experiment(names.DEFAULT_EXPERIMENT)
        tags = {names.TAG_KIND: kind, names.TAG_PAIR_KEY: pair_key}
        if backend:
            tags[names.TAG_BACKEND] = backend
        run = client.create_run(exp_id, tags=tags, run_name=f"bad-input-{kind}-{backend}")
        client.set_terminated(run.info.run_id, status)
        return run.info.run_id

    def running_runs(self):
        with sqlite3.connect(self.db) as con:
            return con.execute("SELECT run_uuid FROM runs WHERE status = 'RUNNING'").fetchall()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from ptyparity import tracking
    from ptyparity.data import save_npz
    from ptyparity.simulate import SimConfig, simulate

    root = tmp_path_factory.mktemp("bad_input")
    with sqlite_store(root) as uri:
        tracking.init_store()  # the runs table exists from the start: "none RUNNING" is a real query
        # The registered model exists (no version, no alias): the rows ask for a version and an alias it lacks.
        import mlflow

        mlflow.MlflowClient().create_registered_model(names.registered_model_name("torch"))
        train, test = simulate(SimConfig(N=32, object_size_px=64, seed=3))
        n64, _ = simulate(SimConfig(N=64, object_size_px=128, seed=3))
        paths = {name: save_npz(root / f"{name}.npz", d) for name, d in
                 (("train", train), ("test", test), ("n64", n64))}
        with np.load(paths["train"], allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        yield World(root=root, uri=uri, db=root / "mlflow.db", train=Path(paths["train"]),
                    test=Path(paths["test"]), n64=Path(paths["n64"]), arrays=arrays)


# --- builders of the rows' inputs ------------------------------------------------------------


class _Unpickled:
    """An object whose unpickling creates a directory: proof that nothing was unpickled."""

    def __init__(self, sentinel):
        self.sentinel = sentinel

    def __reduce__(self):
        return os.mkdir, (self.sentinel,)


def pickled_npz(w, tmp):
    # The one pickle this suite writes: hostile input, never loaded (the sentinel proves it).
    diff = np.empty(1, dtype=object)
    diff[0] = _Unpickled(str(tmp / "UNPICKLED"))
    return w.npz(tmp, diff3d=diff)


def corrupt_npz(w, tmp):
    """A valid archive with bytes flipped inside diff3d's member (its CRC no longer holds)."""
    path = w.npz(tmp, name="corrupt.npz")
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("diff3d.npy")
    blob = bytearray(path.read_bytes())
    start = info.header_offset + 30 + len(info.filename) + 200
    blob[start:start + 64] = bytes(64)
    path.write_bytes(bytes(blob))
    return path


def text_file(tmp, name="notes.npz", text="xcoords,ycoords\n1,2\n"):
    path = tmp / name
    path.write_text(text)
    return path


def copied_bundle(tmp, **meta_changes):
    """bundle_v1 with fields of bundle.json changed and nothing recomputed (checksums kept)."""
    target = tmp / "bundle"
    shutil.copytree(BUNDLE_V1, target)
    meta = json.loads((target / "bundle.json").read_text())
    meta.update(meta_changes)
    (target / "bundle.json").write_text(json.dumps(meta))
    return target


def truncated_checkpoint(tmp):
    path = tmp / "wts.h5.zip"
    path.write_bytes((PTYCHOPINN / "wts.h5.zip").read_bytes()[:4096])
    return path


def checkpoint_without_member(tmp):
    """A zip with PtychoPINN's member names gone: just a readme."""
    path = tmp / "wts.h5.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("README.txt", "not a model")
    return path


def full_disk(tmp):
    """A 64 KiB tmpfs (the test runs as root, as on CI); /dev/full where mount is refused."""
    out = tmp / "full"
    out.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(out)], capture_output=True)
    if proc.returncode == 0:
        _MOUNTS.append(out)
    else:  # every write of the simulated train.npz goes to /dev/full: ENOSPC all the same
        (out / "train.npz.tmp.npz").symlink_to("/dev/full")
    return out


_MOUNTS = []


def entry_point(name, w, **params):
    """An MLproject entry point's command: its defaults, the required values, then ``params``."""
    entry = MLPROJECT[name]
    required = {"train_data": w.train, "data": w.train, "model": "models:/ptyparity-torch/1",
                "checkpoint": PTYCHOPINN / "wts.h5.zip"}
    values = {key: spec.get("default", required.get(key)) for key, spec in entry["parameters"].items()}
    values.update(params)
    assert set(values) == set(entry["parameters"]), f"unknown parameters for {name}: {set(values)}"
    return entry["command"].format(**{k: shlex.quote(str(v)) for k, v in values.items()})


# --- the table ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    input: str  # what is wrong, for the table
    command: str  # how it is run, for the table
    build: object  # (world, tmp) -> argv (list: the CLI) or a shell command (str: MLproject)
    pattern: str  # the one error line must match this (re.search)
    check: object = None  # (world, tmp) -> None, more assertions after the run


def _no_unpickling(w, tmp):
    assert not (tmp / "UNPICKLED").exists(), "the object array was unpickled"


def _no_partial_file(w, tmp):
    leftovers = [p.name for p in (tmp / "full").iterdir() if not p.is_symlink()]
    assert leftovers == [], f"a failed write left {leftovers}"


def _inspect(path_fn, *extra):
    return lambda w, tmp: ["inspect", str(path_fn(w, tmp)), *extra]


def _train(path_fn, *extra):
    return lambda w, tmp: ["train", "--train-data", str(path_fn(w, tmp)), "--n-groups", "16", "--max-epochs", "1",
                           "--quiet", *extra]


def _infer(model_fn, data_fn=lambda w, tmp: w.train, *extra):
    return lambda w, tmp: ["infer", "--model", str(model_fn(w, tmp)), "--data", str(data_fn(w, tmp)), *extra]


def _good(w, tmp):
    return w.train


M = 81  # patterns (and positions) of the valid dataset

CASES = [
    # --- malformed datasets (inspect validates exactly what train and infer load) ---
    Case("npz-missing-file", "a path with no file", "ptyparity inspect", _inspect(lambda w, t: t / "nope.npz"),
         r"nope\.npz: no such file; check the path"),
    Case("npz-empty", "an empty file", "ptyparity inspect", _inspect(lambda w, t: text_file(t, text="")),
         r"the file is empty; expected an NPZ archive"),
    Case("npz-not-npz", "a CSV file named .npz", "ptyparity inspect", _inspect(lambda w, t: text_file(t)),
         r"not an NPZ archive; expected a file written by numpy\.savez"),
    Case("npz-corrupt", "an NPZ with damaged bytes (CRC fails)", "ptyparity inspect", _inspect(corrupt_npz),
         r"corrupt\.npz: cannot read the NPZ archive \(.*\); re-export it"),
    Case("npz-pickled-object", "diff3d as a pickled object array (whose unpickling would act)", "ptyparity inspect",
         _inspect(pickled_npz), r"key 'diff3d' holds Python objects, which are never unpickled", _no_unpickling),
    Case("npz-missing-diff3d", "no diff3d (nor diffraction)", "ptyparity inspect",
         _inspect(lambda w, t: w.npz(t, diff3d=None)), r"key 'diff3d' is missing .*; add it to the NPZ"),
    Case("npz-missing-xcoords", "no xcoords", "ptyparity inspect", _inspect(lambda w, t: w.npz(t, xcoords=None)),
         r"key 'xcoords' is missing \(scan x positions"),
    Case("npz-diff3d-2d", "diff3d of shape (M, N*N)", "ptyparity inspect",
         _inspect(lambda w, t: w.npz(t, diff3d=w.arrays["diff3d"].reshape(M, -1))),
         r"key 'diff3d' must be 3-D, got shape \(81, 1024\)"),
    Case("npz-n-unsupported", "48x48 patterns", "ptyparity inspect",
         _inspect(lambda w, t: w.npz(t, diff3d=w.arrays["diff3d"][:, :24, :24].repeat(2, 1).repeat(2, 2),
                                     probeGuess=np.ones((48, 48), np.complex64))),
         r"diff3d patterns are 48x48; N must be one of \(32, 64, 128, 256\)"),
    Case("npz-positions-mismatch", "80 positions for 81 patterns", "ptyparity inspect",
         _inspect(lambda w, t: w.npz(t, xcoords=w.arrays["xcoords"][:-1], ycoords=w.arrays["ycoords"][:-1])),
         r"diff3d has 81 patterns but xcoords/ycoords have 80 positions"),
    Case("npz-x-y-mismatch", "xcoords and ycoords of different lengths", "ptyparity inspect",
         _inspect(lambda w, t: w.npz(t, ycoords=w.arrays["ycoords"][:-1])),
         r"xcoords has 81 entries but ycoords has 80"),
    Case("npz-complex-diff3d", "complex diff3d (a wavefield, not a measurement)", "ptyparity inspect",
         _inspect(lambda w, t: w.npz(t, diff3d=w.arrays["diff3d"].astype(np.complex64))),
         r"key 'diff3d' is complex \(complex64\) but must be real"),
    Case("npz-string-coords", "xcoords stored as text", "ptyparity inspect",
         _inspect(lambda w, t: w.npz(t, xcoords=w.arrays["xcoords"].astype(str))),
         r"key 'xcoords' has dtype <U\d+; expected a numeric array"),
    Case("npz-nan", "NaN in diff3d", "ptyparity inspect",
         _inspect(lambda w, t: w.npz(t, diff3d=np.where(np.arange(32) == 5, np.nan, w.arrays["diff3d"]))),
         r"key 'diff3d' holds \d+ NaN/inf value\(s\)"),
    Case("npz-negative", "negative counts (background-subtracted)", "ptyparity inspect",
         _inspect(lambda w, t: w.npz(t, diff3d=w.arrays["diff3d"] - 0.5)),
         r"diff3d holds \d+ negative value\(s\); .*clip background-subtracted data at 0"),
    Case("npz-all-zero", "every pattern all zero", "ptyparity inspect",
         _inspect(lambda w, t: w.npz(t, diff3d=np.zeros_like(w.arrays["diff3d"]))),
         r"diff3d is all zeros; there is no signal"),
    Case("npz-probe-size", "a 64x64 probe for 32x32 patterns", "ptyparity inspect",
         _inspect(lambda w, t: w.npz(t, probeGuess=np.ones((64, 64), np.complex64))),
         r"probeGuess has shape \(64, 64\) but the patterns are 32x32"),
    Case("npz-bad-measurement-key", "measurement = 'photons' in the file", "ptyparity inspect",
         _inspect(lambda w, t: w.npz(t, measurement=np.asarray("photons"))),
         r"key 'measurement' is 'photons'; use 'amplitude' or 'intensity'"),
    Case("inspect-bad-measurement-option", "--measurement counts", "ptyparity inspect",
         _inspect(_good, "--measurement", "counts"), r"measurement must be one of auto, amplitude, intensity"),
    # --- train ---
    Case("train-pickled-object", "a pickled object array as training data", "ptyparity train",
         _train(pickled_npz), r"key 'diff3d' holds Python objects, which are never unpickled", _no_unpickling),
    Case("train-unknown-backend", "--backend jax", "ptyparity train", _train(_good, "--backend", "jax"),
         r"backend must be one of torch, tensorflow; got 'jax'"),
    Case("train-gridsize-neighbors", "--gridsize 3 --neighbor-count 4", "ptyparity train",
         _train(_good, "--gridsize", "3", "--neighbor-count", "4"),
         r"neighbor_count=4 is too small for gridsize=3: each group needs 8 partners; use --neighbor-count >= 8"),
    Case("train-neighbors-exceed-scan", "--neighbor-count 100 on 81 positions", "ptyparity train",
         _train(_good, "--neighbor-count", "100"), r"neighbor_count=100 needs at least 101 scan positions, the data "
                                                   r"has 81; lower --neighbor-count"),
    Case("train-zero-groups", "--n-groups 0", "ptyparity train", _train(_good, "--n-groups", "0"),
         r"n_groups must be >= 1, got 0"),
    Case("train-not-counts", "patterns normalised to ~1e-16 photons", "ptyparity train",
         _train(lambda w, t: w.npz(t, diff3d=w.arrays["diff3d"] * 1e-9)),
         r"the data cannot be photon counts: mean .* photons/pattern.*; pass --force to train anyway"),
    Case("train-test-other-n", "--test-data of N=64 for N=32 training data", "ptyparity train",
         lambda w, t: _train(_good, "--test-data", str(w.n64))(w, t),
         r"n64\.npz: patterns are 64x64 but the training data's are 32x32; use a matching test set"),
    Case("train-init-from-contradiction", "--init-from a gridsize-2 bundle with --gridsize 1", "ptyparity train",
         _train(_good, "--init-from", str(BUNDLE_V1), "--gridsize", "1"),
         r"the training options contradict the bundle: gridsize=1 \(the bundle has 2\)"),
    # --- infer: models and bundles ---
    Case("infer-unknown-version", "models:/ptyparity-torch/99 (no such version)", "ptyparity infer",
         _infer(lambda w, t: "models:/ptyparity-torch/99"),
         r"models:/ptyparity-torch/99: cannot fetch the model \(.*version=99\) not found\); check the name, version"),
    Case("infer-unknown-alias", "models:/ptyparity-torch@champion (no such alias)", "ptyparity infer",
         _infer(lambda w, t: "models:/ptyparity-torch@champion"),
         r"models:/ptyparity-torch@champion: cannot fetch the model \(.*alias champion not found.*\); check the name"),
    Case("infer-unknown-run", "runs:/<unknown id>/model", "ptyparity infer",
         _infer(lambda w, t: "runs:/0123456789abcdef0123456789abcdef/model"),
         r"runs:/0123456789abcdef0123456789abcdef/model: cannot fetch the model"),
    Case("infer-missing-path", "a bundle path that does not exist", "ptyparity infer",
         _infer(lambda w, t: t / "no_bundle"), r"no_bundle: no such bundle; give a directory, runs:/<run_id>/model"),
    Case("infer-not-a-bundle", "a directory without bundle.json", "ptyparity infer",
         _infer(lambda w, t: (t / "empty_dir").mkdir() or t / "empty_dir"),
         r"empty_dir: no bundle\.json \+ weights\.npz found; point at a bundle directory"),
    Case("infer-wrong-n", "an N=32 bundle on N=64 data", "ptyparity infer",
         _infer(lambda w, t: BUNDLE_V1, lambda w, t: w.n64),
         r"the data's patterns are 64x64 but the model was trained on N=32; use data of the same size"),
    Case("infer-newer-format", "a bundle with format_version 2 (checksums not recomputed)", "ptyparity infer",
         _infer(lambda w, t: copied_bundle(t, format_version=2)),
         r"bundle\.json: written by a newer ptyparity \(format 2 > 1\); upgrade ptyparity"),
    Case("infer-edited-bundle", "bundle.json with intensity_scale edited by hand", "ptyparity infer",
         _infer(lambda w, t: copied_bundle(t, intensity_scale=1.0)),
         r"config checksum mismatch — the bundle was edited after training"),
    Case("infer-unknown-backend", "--backend jax", "ptyparity infer",
         _infer(lambda w, t: BUNDLE_V1, _good, "--backend", "jax"),
         r"backend must be one of torch, tensorflow or auto; got 'jax'"),
    Case("train-resume-wrong-kind", "--resume with the id of an infer run", "ptyparity train",
         lambda w, t: ["train", "--resume", w.run("infer", backend="torch")],
         r"run [0-9a-f]{32} is not a train run \(kind 'infer'\); --resume takes the id of a train run"),
    Case("train-resume-no-checkpoint", "--resume of a train run without a checkpoint", "ptyparity train",
         lambda w, t: ["train", "--resume", w.run("train", backend="torch", status="FAILED")],
         r"run [0-9a-f]{32} has no checkpoint/ artifact \(it stopped before its first epoch ended"),
    # --- compare ---
    Case("compare-unknown-run", "--torch-run/--tf-run ids that do not exist", "ptyparity compare",
         lambda w, t: ["compare", "--torch-run", "0" * 32, "--tf-run", "1" * 32],
         r"run '0{32}' not found in sqlite:///.*; check the id and MLFLOW_TRACKING_URI"),
    Case("compare-one-side", "--torch-run without --tf-run", "ptyparity compare",
         lambda w, t: ["compare", "--torch-run", "0" * 32], r"give both --torch-run and --tf-run \(infer run ids\)"),
    Case("compare-wrong-kind", "a train run given as the torch infer run", "ptyparity compare",
         lambda w, t: ["compare", "--torch-run", w.run("train", backend="torch"),
                       "--tf-run", w.run("infer", backend="tensorflow")],
         r"run [0-9a-f]{32} is a train run, not an infer run \(compare run [0-9a-f]{32}\)"),
    Case("compare-swapped-sides", "a tensorflow infer run given as --torch-run", "ptyparity compare",
         lambda w, t: ["compare", "--torch-run", w.run("infer", backend="tensorflow"),
                       "--tf-run", w.run("infer", backend="tensorflow")],
         r"run [0-9a-f]{32} is a tensorflow run but was given as the torch run"),
    Case("compare-missing-canvas", "a pair of infer runs whose stitched/canvas.npz is absent", "ptyparity compare",
         lambda w, t: ["compare", "--torch-run", w.run("infer", backend="torch"),
                       "--tf-run", w.run("infer", backend="tensorflow")],
         r"run [0-9a-f]{32} has no artifact 'stitched/canvas\.npz'; re-run its infer step"),
    Case("compare-unknown-pair-key", "--pair-key that no run has", "ptyparity compare",
         lambda w, t: ["compare", "--pair-key", "no-such-key"], r"no torch infer run with pair_key 'no-such-key'"),
    Case("compare-two-ways", "--latest together with --pair-key", "ptyparity compare",
         lambda w, t: ["compare", "--latest", "--pair-key", "k"],
         r"choose the pair one way: --torch-run ID --tf-run ID, --pair-key KEY or --latest"),
    Case("compare-bad-threshold", "--var-ratio-max-factor 0.5", "ptyparity compare",
         lambda w, t: ["compare", "--latest", "--var-ratio-max-factor", "0.5"],
         r"var_ratio_max_factor must be >= 1 \(range \[1/f, f\]\), got 0\.5"),
    Case("compare-reference-without-forward", "--reference without --forward", "ptyparity compare",
         lambda w, t: ["compare", "--reference", str(PTYCHOPINN / "ref_outputs.npz")],
         r"--reference judges a forward pass; add --forward and --model"),
    # --- simulate ---
    Case("simulate-bad-n", "--n 48", "ptyparity simulate", lambda w, t: ["simulate", "--out-dir", str(t), "--n", "48"],
         r"N must be one of \(32, 64, 128, 256\); got 48"),
    Case("simulate-unwritable-dir", "--out-dir under /proc (read-only, even for root)", "ptyparity simulate",
         lambda w, t: ["simulate", "--out-dir", "/proc/ptyparity-data", "--object-size", "64"],
         r"cannot write into --out-dir /proc/ptyparity-data \(.*\); choose a writable directory"),
    Case("simulate-dir-is-file", "--out-dir naming an existing file", "ptyparity simulate",
         lambda w, t: ["simulate", "--out-dir", str(text_file(t, "data")), "--object-size", "64"],
         r"--out-dir .*/data is a file, not a directory; choose a directory"),
    Case("simulate-exists", "train.npz already there, no --overwrite", "ptyparity simulate",
         lambda w, t: (shutil.copy(w.train, t / "train.npz"), ["simulate", "--out-dir", str(t)])[1],
         r"train\.npz already exists; choose another --out-dir or pass --overwrite"),
    Case("simulate-disk-full", "a full disk (64 KiB tmpfs)", "ptyparity simulate",
         lambda w, t: ["simulate", "--out-dir", str(full_disk(t)), "--object-size", "64", "--no-log-data"],
         r"cannot write .*train\.npz \(No space left on device\); free space or choose another directory",
         _no_partial_file),
    # --- pipeline, import, matrix ---
    Case("pipeline-bad-preset", "--preset huge", "ptyparity pipeline",
         lambda w, t: ["pipeline", "--preset", "huge", "--out-dir", str(t)], r"preset must be one of small, full"),
    Case("pipeline-bad-reused-data", "an --out-dir whose train.npz is malformed (reused, not simulated)",
         "ptyparity pipeline",
         lambda w, t: (w.npz(t, name="train.npz", diff3d=None), shutil.copy(w.test, t / "test.npz"),
                       ["pipeline", "--out-dir", str(t)])[2],
         r"train\.npz: key 'diff3d' is missing"),
    Case("import-truncated-zip", "a truncated wts.h5.zip", "ptyparity import ptychopinn",
         lambda w, t: ["import", "ptychopinn", str(truncated_checkpoint(t)), "--data", str(PTYCHOPINN / "data.npz")],
         r"wts\.h5\.zip: .*not a zip archive"),
    Case("import-zip-without-model", "a zip without PtychoPINN's members", "ptyparity import ptychopinn",
         lambda w, t: ["import", "ptychopinn", str(checkpoint_without_member(t)), "--data",
                       str(PTYCHOPINN / "data.npz")],
         r"wts\.h5\.zip: missing member\(s\) \['autoencoder/model\.keras', .*\]; expected a wts\.h5\.zip written by "
         r"PtychoPINN"),
    Case("import-data-other-n", "an N=64 checkpoint with N=32 data", "ptyparity import ptychopinn",
         lambda w, t: ["import", "ptychopinn", str(PTYCHOPINN / "wts.h5.zip"), "--data", str(w.train)],
         r"the dataset's patterns are 32x32 but the checkpoint's model has N=64"),
    Case("matrix-unknown-axis", "--axes colour", "ptyparity matrix", lambda w, t: ["matrix", "--axes", "colour"],
         r"unknown matrix axis 'colour'; axes are object_big, probe_big, gridsize"),
    Case("matrix-bad-value", "--axes gridsize=7", "ptyparity matrix", lambda w, t: ["matrix", "--axes", "gridsize=7"],
         r"matrix axis gridsize takes 1, 2; got '7'"),
    Case("matrix-axis-twice", "--axes N,N", "ptyparity matrix", lambda w, t: ["matrix", "--axes", "N,N"],
         r"matrix axis 'N' is given twice in --axes"),
    Case("matrix-negative-steps", "--train-steps -1", "ptyparity matrix",
         lambda w, t: ["matrix", "--train-steps", "-1"], r"train steps must be an integer >= 0, got -1"),
    # --- MLproject entry points: the same CLI behind `mlflow run` ---
    Case("mlproject-main-preset", "-P preset=huge", "mlflow run -e main",
         lambda w, t: entry_point("main", w, preset="huge", out_dir=t), r"preset must be one of small, full"),
    Case("mlproject-simulate-n", "-P n=48", "mlflow run -e simulate",
         lambda w, t: entry_point("simulate", w, n=48, out_dir=t), r"N must be one of \(32, 64, 128, 256\); got 48"),
    Case("mlproject-inspect-pickle", "-P data=<a pickled object array>", "mlflow run -e inspect",
         lambda w, t: entry_point("inspect", w, data=pickled_npz(w, t)),
         r"key 'diff3d' holds Python objects, which are never unpickled", _no_unpickling),
    Case("mlproject-train-missing-data", "-P train_data=<no such file>", "mlflow run -e train",
         lambda w, t: entry_point("train", w, train_data=t / "nope.npz", test_data=w.test),
         r"nope\.npz: no such file; check the path"),
    Case("mlproject-resume-unknown-run", "-P run_id=<unknown>", "mlflow run -e resume",
         lambda w, t: entry_point("resume", w, run_id="0" * 32), r"run '0{32}' not found"),
    Case("mlproject-infer-unknown-model", "-P model=models:/ptyparity-torch/99", "mlflow run -e infer",
         lambda w, t: entry_point("infer", w, model="models:/ptyparity-torch/99"),
         r"models:/ptyparity-torch/99: cannot fetch the model"),
    Case("mlproject-compare-unknown-runs", "-P torch_run=<unknown> -P tf_run=<unknown>", "mlflow run -e compare",
         lambda w, t: entry_point("compare", w, torch_run="0" * 32, tf_run="1" * 32), r"run '0{32}' not found"),
    Case("mlproject-import-corrupt", "-P checkpoint=<a truncated zip>", "mlflow run -e import_ptychopinn",
         lambda w, t: entry_point("import_ptychopinn", w, checkpoint=truncated_checkpoint(t),
                                  data=PTYCHOPINN / "data.npz"), r"wts\.h5\.zip: .*not a zip archive"),
    Case("mlproject-matrix-axes", "-P axes=colour", "mlflow run -e matrix",
         lambda w, t: entry_point("matrix", w, axes="colour"), r"unknown matrix axis 'colour'"),
]

_SEEN = {}  # case id -> the error line printed, for the rendered table


# --- running a row ---------------------------------------------------------------------------


def _child_env(uri):
    env = dict(os.environ, MLFLOW_TRACKING_URI=uri, OMP_WAIT_POLICY="PASSIVE")
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")  # MLproject's `python`
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    for key in ("MLFLOW_RUN_ID", names.PARENT_RUN_ID_ENV, names.RUN_ID_FILE_ENV):
        env.pop(key, None)
    return env


def _run(argv, w, tmp):
    """(exit code, output lines, traceback text or "") of one row's command."""
    if isinstance(argv, str):  # an MLproject command line
        proc = subprocess.run(argv, shell=True, cwd=tmp, env=_child_env(w.uri), capture_output=True, text=True,
                              timeout=SUBPROCESS_TIMEOUT_S)
        return proc.returncode, (proc.stdout + proc.stderr).splitlines(), ""
    import mlflow

    from ptyparity.cli import app

    result = CliRunner().invoke(app, argv)
    tb = "" if isinstance(result.exception, SystemExit) or result.exc_info is None else \
        "".join(traceback.format_exception(*result.exc_info))
    assert mlflow.active_run() is None, "the command left an active MLflow run in the process"
    return result.exit_code, result.output.splitlines(), tb


@pytest.fixture(scope="module", autouse=True)
def _table(world):
    yield
    for mount in _MOUNTS:
        subprocess.run(["umount", str(mount)], check=False)
    target = os.environ.get("PTYPARITY_BAD_INPUT_TABLE")
    if target:
        Path(target).write_text(render_table(world.root))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_exit_2_and_no_run_left_running(case, world, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing a command writes by default lands in the repository
    argv = case.build(world, tmp_path)
    code, lines, tb = _run(argv, world, tmp_path)
    text = "\n".join(lines)
    assert "Traceback" not in text and not tb, f"{case.id}: traceback\n{tb or text}"
    assert code == 2, f"{case.id}: exit {code}\n{text}"
    printed = [line for line in lines if line.strip()]
    assert len(printed) == 1 and printed[0].startswith("error: "), f"{case.id}: not one error line:\n{text}"
    assert re.search(case.pattern, printed[0]), f"{case.id}: {printed[0]!r} does not match {case.pattern!r}"
    assert world.running_runs() == [], f"{case.id}: runs left RUNNING: {world.running_runs()}"
    if case.check:
        case.check(world, tmp_path)
    _SEEN[case.id] = printed[0]


def test_the_table_has_at_least_25_rows_across_every_command_and_entry_point():
    commands = {c.command for c in CASES}
    for command in ("simulate", "inspect", "train", "infer", "compare", "pipeline", "import ptychopinn", "matrix"):
        assert f"ptyparity {command}" in commands, command
    assert {c.command.split("-e ")[-1] for c in CASES if c.command.startswith("mlflow run")} == set(MLPROJECT)
    assert len({c.id for c in CASES}) == len(CASES) >= 25


def _abridged(line, root):
    line = line.replace(str(root), "…").replace(os.fspath(ROOT), ".")
    line = re.sub(r"/tmp/\S*/(?=[^/\s]+)", "…/", line)
    line = re.sub(r"\b[0-9a-f]{32}\b", "<run id>", line)
    line = line.replace("|", "\\|")
    return line if len(line) <= 140 else line[:139] + "…"


def render_table(root):
    """The README table, from the lines the rows printed in this session (rows not run are left out)."""
    rows = ["| input | command | the one line printed (abridged) | exit code |", "|---|---|---|---|"]
    for case in CASES:
        if case.id in _SEEN:
            rows.append(f"| {case.input} | `{case.command}` | `{_abridged(_SEEN[case.id], root)}` | 2 |")
    return "\n".join(rows) + "\n"
