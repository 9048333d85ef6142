"""What a person reads: a pipe or a file gets one line per epoch and no framework
chatter; a terminal (a pseudo-TTY here) gets the frameworks' live progress bars; the
stderr filter drops TensorFlow's C++ noise but never an error, not even from a process
that is killed (ptyparity.console, ptyparity.progress)."""

import fcntl
import os
import pty
import re
import signal
import struct
import subprocess
import sys
import termios

import pytest

from ptyparity import progress
from ptyparity.simulate import SimConfig
from tests.conftest import write_simulated

MAX_EPOCHS = 2
TINY_TRAIN = ["--n-groups", "32", "--max-epochs", str(MAX_EPOCHS), "--n-filters-scale", "1",
              "--patch-stats-limit", "4"]
EPOCH_LINE = re.compile(r"Epoch (\d+)/(\d+)  train_loss \S+  val_loss \S+  train_deviance \S+  val_deviance \S+"
                        r"  lr \S+  \d+\.\d s")
TF_CPP_LINE = re.compile(r"^[IW]\d{4} [0-9:.]+ +\d+ \S+:\d+\] ", re.M)  # absl's INFO / WARNING header


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("output_data")
    write_simulated(root, SimConfig(N=32, object_size_px=96, nphotons=1e5, seed=0))
    return root


def _env(tmp_path):
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}", OMP_WAIT_POLICY="PASSIVE")
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # what a user's shell has: the CLI sets its own default
    return env


def _train_command(backend, data):
    return [sys.executable, "-m", "ptyparity", "train", "--backend", backend, "--train-data",
            str(data / "train.npz"), *TINY_TRAIN]


def _run_on_a_pty(command, env, cwd):
    """Run ``command`` with stdin, stdout and stderr on a pseudo-terminal (120x40);
    returns ``(exit code, everything it wrote)``."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen(command, stdin=slave, stdout=slave, stderr=slave, env=env, cwd=cwd, close_fds=True)
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: every writer of the terminal has closed it
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    return proc.wait(timeout=60), b"".join(chunks).decode("utf-8", "replace")


@pytest.mark.parametrize("backend", ["torch", "tensorflow"])
def test_a_pipe_gets_one_line_per_epoch_and_no_chatter(backend, data, tmp_path):
    proc = subprocess.run(_train_command(backend, data), env=_env(tmp_path), cwd=tmp_path, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, timeout=600)
    out = proc.stdout.decode()  # not text mode: that would turn a "\r" into "\n"
    assert proc.returncode == 0, out
    epochs = [(int(m.group(1)), int(m.group(2))) for m in EPOCH_LINE.finditer(out)]
    assert epochs == [(k, MAX_EPOCHS) for k in range(1, MAX_EPOCHS + 1)], out
    assert len([line for line in out.splitlines() if line.startswith("Epoch ")]) == MAX_EPOCHS, out
    # no redrawn progress bar: carriage returns, backspaces, ANSI escapes, bar glyphs
    for fragment in ("\r", "\x08", "\x1b[", "━", "it/s", "/step"):
        assert fragment not in out, (fragment, out)
    assert not TF_CPP_LINE.search(out), out
    for chatter in ("oneDNN", "absl::InitializeLog", "💡", "litlogger", "GPU available", "TPU available",
                    "Trainer.fit` stopped", "Add type hints"):
        assert chatter not in out, (chatter, out)
    assert not re.search(r"\w*Warning: ", out), out  # UserWarning, FutureWarning, … lines
    assert f"trained {backend}: train_deviance" in out


@pytest.mark.parametrize("backend, bar", [("torch", ("━", "it/s")),   # Lightning's RichProgressBar
                                          ("tensorflow", ("━", "/step"))])  # keras.utils.Progbar
def test_a_terminal_gets_the_live_progress_bar(backend, bar, data, tmp_path):
    code, out = _run_on_a_pty(_train_command(backend, data), _env(tmp_path), tmp_path)
    assert code == 0, out
    for fragment in bar:
        assert fragment in out, (fragment, out)
    assert "\r" in out or "\x1b[" in out, out  # redrawn in place, not printed line after line
    assert not EPOCH_LINE.search(out), out  # the log-style lines are for pipes and files
    assert not TF_CPP_LINE.search(out) and "oneDNN" not in out and "💡" not in out, out


_WRITES_THEN_EXITS = r"""
import os, signal, sys
from ptyparity import console
console.framework_env()
console.filter_native_stderr()
os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n")
os.write(2, b"I0000 00:00:1796158668.170611   28350 port.cc:153] oneDNN custom operations are on.\n")
os.write(2, b"W0000 00:00:1796158668.170611   28350 x.cc:1] a warning at TF_CPP_MIN_LOG_LEVEL=2\n")
os.write(2, b"E0000 00:00:1796158678.433913   28350 util.cc:131] oneDNN supports DT_INT32 only on platforms "
            b"with AVX-512. Falling back to the default Eigen-based implementation if present.\n")
os.write(2, b"E0000 00:00:1796158678.433913   28350 x.cc:2] a real error\n")
print("progress 50%\r", end="", file=sys.stderr, flush=True)
print("progress 100%", file=sys.stderr, flush=True)
if sys.argv[1] == "kill":
    os.kill(os.getpid(), signal.SIGKILL)
raise SystemExit("error: the last words")
"""


@pytest.mark.parametrize("how", ["exit", "kill"])
def test_the_stderr_filter_drops_tf_noise_and_keeps_every_error(how, tmp_path):
    env = _env(tmp_path)
    proc = subprocess.run([sys.executable, "-c", _WRITES_THEN_EXITS, how], env=env, cwd=tmp_path,
                          capture_output=True, timeout=60)  # bytes: text mode would turn "\r" into "\n"
    assert proc.returncode == (-signal.SIGKILL if how == "kill" else 1)
    err = proc.stderr.decode()
    assert "E0000 00:00:1796158678.433913   28350 x.cc:2] a real error\n" in err, err
    assert "progress 50%\rprogress 100%\n" in err, err
    if how == "exit":
        assert err.endswith("error: the last words\n"), err
    for noise in ("absl::InitializeLog", "oneDNN", "W0000"):
        assert noise not in err, (noise, err)


def test_tf_cpp_min_log_level_0_keeps_everything(tmp_path):
    env = dict(_env(tmp_path), TF_CPP_MIN_LOG_LEVEL="0")
    proc = subprocess.run([sys.executable, "-c", _WRITES_THEN_EXITS, "exit"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert "I0000 00:00:1796158668.170611" in proc.stderr and "DT_INT32" in proc.stderr, proc.stderr


def test_epoch_line_names_every_value():
    line = progress.epoch_line(2, 8, {"train_loss": -7797.3174, "val_loss": -7926.7482, "train_deviance": 48.314,
                                      "val_deviance": 53.9221, "learning_rate": 5e-4}, 4.23)
    assert line == ("Epoch 3/8  train_loss -7797.32  val_loss -7926.75  train_deviance 48.314  "
                    "val_deviance 53.9221  lr 0.0005  4.2 s")
    assert EPOCH_LINE.fullmatch(line)
