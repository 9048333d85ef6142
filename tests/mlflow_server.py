"""A real ``mlflow server`` on 127.0.0.1 for the tests that need one (the standards say
tracking is tested against a real server, never a mock): a free port, a server started in
its own process group and returned once ``/health`` answers, and a stop that takes the
whole group down (uvicorn's helpers can outlive the main process by ~10 s)."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

MLFLOW = os.path.join(os.path.dirname(sys.executable), "mlflow")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def healthy(url):
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def start_server(backend_uri, root, *, port=None, log_name="server.log", serve_artifacts=False, timeout=120):
    """``mlflow server`` on ``backend_uri`` with artifacts under ``root/artifacts``.

    Returns
    -------
    proc : subprocess.Popen
        The server, healthy; stop it with :func:`stop_server`.
    url : str
    """
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = root / log_name
    args = [MLFLOW, "server", "--backend-store-uri", backend_uri, "--artifacts-destination", str(root / "artifacts"),
            *(["--serve-artifacts"] if serve_artifacts else []), "--host", "127.0.0.1", "--port", str(port),
            "--workers", "1"]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + timeout
    while not healthy(url):
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        if time.time() > deadline:
            stop_server(proc)
            raise TimeoutError(f"mlflow server at {url} not healthy after {timeout} s:\n"
                               f"{log_path.read_text()[-3000:]}")
        time.sleep(0.2)
    return proc, url


def stop_server(proc, grace_s=5):
    """SIGTERM the server's process group, SIGKILL what is left after ``grace_s``."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
