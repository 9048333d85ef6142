"""The product the way teams use it: a real `mlflow server` on 127.0.0.1, the whole
pipeline recorded over HTTP, the registry loaded from a fresh process, and the MLflow UI
clicked through by a real (headless) browser the way a person does: the printed link, the
runs table with the nested steps, the registered model, the compare view, the HTML report.

Screenshots of every UI page go to test-artifacts/ui_screenshots/ (ignored by git); the
compare view's is the one docs/mlflow_compare_view.png shows."""

import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request

import mlflow
import numpy as np
import pytest
from mlflow_server import start_server, stop_server

pytestmark = pytest.mark.slow

BIN = os.path.dirname(sys.executable)
ARTIFACT_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "test-artifacts")
SCREENSHOTS = os.path.join(ARTIFACT_DIR, "ui_screenshots")
STEP_NAMES = ["compare", "infer-tensorflow", "infer-torch", "simulate", "train-tensorflow", "train-torch"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("server")
    proc, url = start_server(f"sqlite:///{root / 'mlflow.db'}", root, timeout=90)
    try:
        yield url, root
    finally:
        stop_server(proc)


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
        # the logged model carries the last epoch's val_loss, linked over HTTP
        train = client.get_run(ids[f"train_{backend}"])
        (output,) = train.outputs.model_outputs
        linked = {m.key: m for m in client.get_logged_model(output.model_id).metrics}
        last = client.get_metric_history(train.info.run_id, "val_loss")[-1]
        last_epoch = int(train.data.params["max_epochs"]) - 1
        assert (linked["val_loss"].value, linked["val_loss"].step) == (last.value, last_epoch)
        assert "train_step_loss" not in linked and "test_deviance_initial" not in linked
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


@pytest.fixture
def fresh_page(browser):
    """A page in a new browser context: no remembered UI choices, as for a first-time visitor."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    yield context.new_page()
    context.close()


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


def screenshot(page, name, as_is=False):
    """Save what the page shows as test-artifacts/ui_screenshots/<name>; unless ``as_is``, without
    MLflow 3.17's assistant side panel (a third of the width, nothing about the runs)."""
    close = page.locator("button[data-component-id='mlflow.assistant.chat_panel.close']")
    if not as_is and close.count() and close.first.is_visible():
        close.first.click()
    os.makedirs(SCREENSHOTS, exist_ok=True)
    page.screenshot(path=os.path.join(SCREENSHOTS, name))


def printed(stdout, label):
    """The value after ``label`` on the one line of the pipeline's output that starts with it."""
    (line,) = [ln for ln in stdout.splitlines() if ln.strip().startswith(label)]
    return line.split(label, 1)[1].strip()


def run_link(page, run_id):
    """The runs table's link to run ``run_id`` (its name, in the Run Name column)."""
    return page.locator(f"a[href*='/runs/{run_id}']").first


def row_index(link):
    return int(link.locator("xpath=ancestor::*[@role='row'][1]").get_attribute("row-index"))


def test_ui_printed_link_opens_the_runs_table_with_the_nested_steps(pipeline, fresh_page):
    url, _, _, stdout = pipeline
    page = fresh_page
    client = mlflow.MlflowClient(tracking_uri=url)
    pipeline_id = printed(stdout, "pipeline run")
    exp = client.get_run(pipeline_id).info.experiment_id
    link = printed(stdout, "all runs:")
    assert link == f"{url}/#/experiments/{exp}/runs?workflowType=machine_learning"
    steps = client.search_runs([exp], f"tags.mlflow.parentRunId = '{pipeline_id}'")
    assert sorted(r.info.run_name for r in steps) == STEP_NAMES

    page.goto(link)
    parent = run_link(page, pipeline_id)
    parent.wait_for(timeout=60000)
    assert parent.inner_text() == client.get_run(pipeline_id).info.run_name
    assert page.get_by_text("Detect Issues").count() == 0  # not the GenAI overview
    if not run_link(page, steps[0].info.run_id).is_visible():  # steps start folded under their pipeline
        parent.locator("xpath=ancestor::*[@role='row'][1]").locator(
            "button[data-component-id*='runnamecellrenderer']").click()
    parent_x, parent_row = parent.bounding_box()["x"], row_index(parent)
    for step in steps:
        child = run_link(page, step.info.run_id)
        child.wait_for(timeout=30000)
        assert child.inner_text() == step.info.run_name
        # nested: indented under the pipeline row and listed after it
        assert child.bounding_box()["x"] > parent_x + 10, step.info.run_name
        assert row_index(child) > parent_row, step.info.run_name
    screenshot(page, "experiment_runs.png")


def test_ui_bare_experiment_link_lands_on_the_genai_overview_until_the_switch(pipeline, fresh_page):
    """What a person meets on the experiment list's own link (`#/experiments/<id>`) in a fresh
    browser: MLflow's GenAI overview, the runs one click away; after the sidebar's switch to
    "Model training" the same link opens the runs table (the browser remembers the choice)."""
    url, _, _, stdout = pipeline
    page = fresh_page
    pipeline_id = printed(stdout, "pipeline run")
    exp = mlflow.MlflowClient(tracking_uri=url).get_run(pipeline_id).info.experiment_id
    page.goto(f"{url}/#/experiments/{exp}")
    page.wait_for_url(re.compile(r"/overview.*workflowType=genai"), timeout=60000)
    page.get_by_text("Training runs", exact=True).wait_for(timeout=30000)
    assert run_link(page, pipeline_id).count() == 0
    screenshot(page, "bare_experiment_link.png", as_is=True)  # with the "Detect Issues" tour popover

    page.get_by_role("button", name="Got it").click()  # the popover blocks the page until dismissed
    page.get_by_text("Model training", exact=True).click()
    again = page.context.new_page()
    again.goto(f"{url}/#/experiments/{exp}")
    run_link(again, pipeline_id).wait_for(timeout=60000)
    assert "workflowType=machine_learning" in again.url or "/runs" in again.url
    screenshot(again, "bare_experiment_link_after_switch.png")


def markdown_lines(text):
    """The lines of a short Markdown description as the UI renders them (no list marks, emphasis
    or code ticks)."""
    lines = (re.sub(r"^\s*-\s+", "", ln).replace("**", "").replace("`", "") for ln in text.splitlines())
    return [ln.strip() for ln in lines if ln.strip()]


def test_ui_registered_model_shows_the_alias_and_the_version_description(pipeline, fresh_page):
    url, _, ids, _ = pipeline
    page = fresh_page
    client = mlflow.MlflowClient(tracking_uri=url)
    version = client.get_model_version_by_alias("ptyparity-torch", "parity-passed")
    assert version.run_id == ids["train_torch"]

    page.goto(f"{url}/#/models/ptyparity-torch")
    row = find_text(page, f"Version {version.version}").locator("xpath=ancestor::*[@role='row'][1]")
    assert "parity-passed" in row.inner_text()  # the alias, in its version's row
    screenshot(page, "registered_model.png")

    page.goto(f"{url}/#/models/ptyparity-torch/versions/{version.version}")
    lines = markdown_lines(version.description)
    assert ids["train_torch"] in lines[0] and ids["compare"] in " ".join(lines)
    for line in lines:
        page.get_by_text(line).first.wait_for(timeout=30000)
    page.get_by_text("parity-passed").first.wait_for(timeout=30000)
    screenshot(page, "model_version.png")


def test_ui_compare_view_renders_the_pair(pipeline, fresh_page):
    url, _, ids, _ = pipeline
    page = fresh_page
    page.set_viewport_size({"width": 1400, "height": 2000})
    client = mlflow.MlflowClient(tracking_uri=url)
    exp = client.get_run(ids["compare"]).info.experiment_id
    runs = [ids["infer_torch"], ids["infer_tensorflow"], ids["compare"]]
    # as the runs table's Compare button opens it, in the model-training view
    page.goto(f"{url}/#/compare-runs?runs={json.dumps(runs)}&experiments={json.dumps([exp])}"
              "&workflowType=machine_learning".replace(" ", ""))
    page.get_by_text("Comparing 3 Runs").wait_for(timeout=60000)
    page.locator(".js-plotly-plot .main-svg").first.wait_for(timeout=60000)  # the parameter plot, drawn
    screenshot(page, "compare_view.png")
    torch_params = client.get_run(ids["infer_torch"]).data.params
    for name in ("intensity_scale", "object_big"):
        row = find_text(page, name).locator("xpath=ancestor::tr[1]").inner_text().split()
        # the pair lines up: one row, the same value in both backends' columns
        assert row[:3] == [name, torch_params[name], torch_params[name]], row
    for metric in ("ratio.var_zero_mean", "canvas.amp.ssim", "torch.consistency.intensity_scale",
                   "mean_input_scale", "patch.amp.var_zero_mean"):
        find_text(page, metric)
    screenshot(page, "compare_view_metrics.png")


def test_ui_artifact_view_lists_and_opens_the_html_report(pipeline, fresh_page):
    url, _, ids, _ = pipeline
    page = fresh_page
    client = mlflow.MlflowClient(tracking_uri=url)
    compare = client.get_run(ids["compare"])
    exp = compare.info.experiment_id
    page.goto(f"{url}/#/experiments/{exp}/runs/{ids['compare']}/artifacts?workflowType=machine_learning")
    find_text(page, "parity").click()  # the folder in the artifact tree
    find_text(page, "report.html").click()
    page.get_by_text("parity/report.html", exact=True).wait_for(timeout=30000)  # the preview's title
    report = page.frame_locator("iframe").first  # the UI previews HTML in a sandboxed frame
    report.get_by_text("ptyparity parity report").wait_for(timeout=30000)
    report.get_by_text(compare.data.tags["parity.verdict"].upper(), exact=True).wait_for(timeout=30000)
    failed = compare.data.tags.get("parity.failed_checks") or "none"
    assert report.get_by_text(re.compile(r"Failed checks:\s*" + re.escape(failed))).count() == 1
    screenshot(page, "report_artifact.png")
    # the artifact itself, as the tracking server serves it to the UI
    with urllib.request.urlopen(f"{url}/get-artifact?path=parity/report.html&run_uuid={ids['compare']}",
                                timeout=30) as r:
        html = r.read().decode()
    assert "PASS" in html and "data:image/png;base64," in html
