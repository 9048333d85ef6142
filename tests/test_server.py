"""The product the way teams use it: a real `mlflow server` on 127.0.0.1, the whole
pipeline recorded over HTTP, the registry loaded from a fresh process, and the
MLflow UI's compare view rendered by a real (headless) browser."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import mlflow
import numpy as np
import pytest

pytestmark = pytest.mark.slow

BIN = os.path.dirname(sys.executable)
ARTIFACT_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "test-artifacts")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url, proc, timeout=90):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"mlflow server at {url} not healthy after {timeout} s")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("server")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(root / "server.log", "w")
    proc = subprocess.Popen(
        [os.path.join(BIN, "mlflow"), "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_healthy(url, proc)
        yield url, root
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)
        log.close()


@pytest.fixture(scope="module")
def pipeline(server):
    url, root = server
    env = dict(os.environ, MLFLOW_TRACKING_URI=url)
    out = subprocess.run([sys.executable, "-m", "ptyparity", "pipeline", "--out-dir", str(root / "data"), "--quiet"],
                         env=env, capture_output=True, text=True, cwd=root, timeout=900)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "verdict: PASS" in out.stdout
    ids = dict(line.split()[:2] for line in out.stdout.splitlines()[1:] if line.startswith("  ") and
               line.split()[0] in ("infer_torch", "infer_tensorflow", "compare", "train_torch", "train_tensorflow"))
    return url, root, ids, out.stdout


def test_pipeline_over_http_records_everything(pipeline):
    url, root, ids, stdout = pipeline
    assert url in stdout  # the printed UI link points at the server
    client = mlflow.MlflowClient(tracking_uri=url)
    cmp = client.get_run(ids["compare"])
    assert cmp.data.tags["parity.status"] == "pass"
    assert cmp.data.tags["parity.torch_run_id"] == ids["infer_torch"]
    arts = {f.path for f in client.list_artifacts(ids["compare"], "parity")}
    assert "parity/report.html" in arts
    for backend in ("torch", "tensorflow"):
        version = client.get_model_version_by_alias(f"ptyparity-{backend}", "parity-passed")
        assert version.run_id == ids[f"train_{backend}"]
    assert not (root / "mlruns").exists()  # nothing was written next to the client


def test_registry_bundle_loads_over_http_in_a_fresh_process(pipeline):
    url, root, ids, _ = pipeline
    code = f"""
import json, sys, numpy as np, mlflow
model = mlflow.pyfunc.load_model("models:/ptyparity-torch@parity-passed")
d = np.load({str(root / 'data' / 'test.npz')!r})
out = model.predict({{"diff3d": d["diff3d"], "xcoords": d["xcoords"], "ycoords": d["ycoords"],
                      "objectGuess": d["objectGuess"]}})
np.save(sys.argv[1], out["amplitude"])
"""
    target = root / "amp.npy"
    env = dict(os.environ, MLFLOW_TRACKING_URI=url)
    proc = subprocess.run([sys.executable, "-c", code, str(target)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    amplitude = np.load(target)
    client = mlflow.MlflowClient(tracking_uri=url)
    local = client.download_artifacts(ids["infer_torch"], "stitched/canvas.npz", str(root))
    np.testing.assert_array_equal(amplitude, np.abs(np.load(local)["canvas"]))


def chromium():
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    assert path, "chromium is not installed (.ci/run installs Debian's chromium)"
    return path


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    # Debian's chromium, headless, with the flags a closed network needs.
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium(), args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        yield b
        b.close()


def find_text(page, text, tries=60):
    """The element showing exactly ``text``, scrolling the UI's virtualised tables until it renders."""
    loc = page.get_by_text(text, exact=True)
    page.evaluate("""() => {
        for (const el of document.querySelectorAll('*')) if (el.scrollTop) el.scrollTop = 0;
        window.scrollTo(0, 0);
    }""")
    for _ in range(tries):
        if loc.count():
            return loc.first
        page.evaluate("""() => {
            for (const el of document.querySelectorAll('*')) {
                const s = getComputedStyle(el);
                if ((s.overflowY === 'auto' || s.overflowY === 'scroll') && el.scrollHeight > el.clientHeight)
                    el.scrollTop += 200;
            }
            window.scrollBy(0, 300);
        }""")
        page.wait_for_timeout(100)
    raise AssertionError(f"{text!r} is not rendered")


def test_ui_compare_view_renders_the_pair(pipeline, browser):
    url, _, ids, _ = pipeline
    client = mlflow.MlflowClient(tracking_uri=url)
    exp = client.get_run(ids["compare"]).info.experiment_id
    runs = [ids["infer_torch"], ids["infer_tensorflow"], ids["compare"]]
    page = browser.new_page(viewport={"width": 1400, "height": 2000})
    page.goto(f"{url}/#/compare-runs?runs={json.dumps(runs)}&experiments={json.dumps([exp])}".replace(" ", ""))
    page.get_by_text("Comparing 3 Runs").wait_for(timeout=60000)
    os.makedirs(ARTIFACT_DIR, exist_ok=True)
    page.screenshot(path=os.path.join(ARTIFACT_DIR, "mlflow_compare_view.png"))
    torch_params = client.get_run(ids["infer_torch"]).data.params
    for name in ("intensity_scale", "object_big"):
        row = find_text(page, name).locator("xpath=ancestor::tr[1]").inner_text().split()
        # the pair lines up: one row, the same value in both backends' columns
        assert row[:3] == [name, torch_params[name], torch_params[name]], row
    for metric in ("ratio.var_zero_mean", "canvas.amp.ssim", "torch.consistency.intensity_scale",
                   "mean_input_scale", "patch.amp.var_zero_mean"):
        find_text(page, metric)
    page.screenshot(path=os.path.join(ARTIFACT_DIR, "mlflow_compare_view_metrics.png"))
    page.close()


def test_ui_shows_the_html_report_artifact(pipeline, browser):
    url, _, ids, _ = pipeline
    client = mlflow.MlflowClient(tracking_uri=url)
    exp = client.get_run(ids["compare"]).info.experiment_id
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"{url}/#/experiments/{exp}/runs/{ids['compare']}/artifacts/parity/report.html")
    find_text(page, "report.html")
    page.screenshot(path=os.path.join(ARTIFACT_DIR, "mlflow_report_artifact.png"))
    page.close()
    # the artifact itself, as the tracking server serves it to the UI
    with urllib.request.urlopen(f"{url}/get-artifact?path=parity/report.html&run_uuid={ids['compare']}",
                                timeout=30) as r:
        html = r.read().decode()
    assert "PASS" in html and "data:image/png;base64," in html
