"""MLflow record of every ptyparity run (SPEC §7). The only module that imports mlflow.

Runs are opened with :func:`start_run`, which sets the ``ptyparity.*`` tags and
guarantees the run ends FINISHED, FAILED (an exception) or KILLED (Ctrl-C), never
RUNNING. The store is whatever MLflow resolves: ``MLFLOW_TRACKING_URI`` when set
(a team server, ``http://…``), else MLflow 3's embedded default
``sqlite:///mlflow.db`` in the working directory.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import tempfile
import time
import warnings

import numpy as np

from ptyparity import names
from ptyparity import tracking_liveness as liveness, tracking_notes as notes, tracking_retry
from ptyparity import tracking_preflight as preflight
from ptyparity.errors import PtyparityError
from ptyparity.names import DEFAULT_EXPERIMENT, KINDS, TAG_PREFIX


def _mlflow():
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # our commands print the links
    # Store creation and migrations log at INFO; users should see our lines only.
    for name in ("mlflow.store.db.utils", "mlflow.store.model_registry", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # Two warnings MLflow raises for choices we made on purpose: a local NPZ as the
    # dataset source, and a pyfunc whose dict-in/dict-out predict has no type hints.
    warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
    warnings.filterwarnings("ignore", message=".*Add type hints to the `predict` method")
    import mlflow

    return mlflow


def tracking_uri():
    """The tracking URI MLflow will use (env var, or the sqlite default)."""
    return _mlflow().get_tracking_uri()


_CHECKED = set()  # the URIs check_store passed in this process


def check_store(uri=None):
    """Fail fast, in one line, when the store at ``uri`` (default: the one in effect) cannot work
    (:func:`ptyparity.tracking_preflight.check`); once per URI and process, GETs without retries."""
    mlflow = _mlflow()
    uri = uri or mlflow.get_tracking_uri()
    if uri not in _CHECKED:
        from mlflow.tracking._tracking_service import utils
        from mlflow.utils.rest_utils import http_request

        creds = utils.get_default_host_creds(uri)
        schemes = set(getattr(getattr(utils, "_tracking_store_registry", None), "_registry", {})) or None
        preflight.check(uri, schemes=schemes, get=lambda endpoint, params=None: http_request(
            creds, endpoint, "GET", max_retries=0, params=params, timeout=preflight.TIMEOUT_S, raise_on_status=False))
        _CHECKED.add(tracking_retry.announce(uri))  # and say so when it stops answering mid-run
    return uri


def init_store(uri=None, experiment=DEFAULT_EXPERIMENT):
    """Check the store (:func:`check_store`), then create it and the experiment (marked model development)
    once, before child processes open it (several opening a fresh sqlite store at once race on its migration).

    Returns
    -------
    experiment_id : str
    """
    mlflow = _mlflow()
    if uri:
        mlflow.set_tracking_uri(uri)
    check_store()
    return liveness.swept(notes.model_development_experiment(experiment, mlflow.get_experiment_by_name(experiment)))


def param_text(value):
    """The one text form of a param value, so re-logging never conflicts."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if value is None:
        return "none"
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, sort_keys=True)
    return str(value)


@contextlib.contextmanager
def start_run(kind, *, experiment=DEFAULT_EXPERIMENT, run_name=None, tags=None, nested=False,
              parent_run_id=None, backend=None):
    """Open an MLflow run with the SPEC tags; it always ends in a final status.

    Parameters
    ----------
    kind : {"simulate", "train", "infer", "compare", "pipeline"}
        Stored as tag ``ptyparity.kind``.
    experiment : str
        Experiment name, created when missing.
    run_name : str, optional
    tags : dict, optional
        Extra tags; keys without a namespace get the ``ptyparity.`` prefix.
    nested, parent_run_id : optional
        Make the run a child of the active run / of ``parent_run_id``.
    backend : {"torch", "tensorflow"}, optional
        Stored as tag ``ptyparity.backend``.

    Yields
    ------
    run : mlflow.ActiveRun
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    mlflow = _mlflow()
    experiment_id = init_store(experiment=experiment)
    all_tags = {names.TAG_KIND: kind, **liveness.owner_tags()}  # the owner: see tracking_liveness
    if backend is not None:
        all_tags[names.TAG_BACKEND] = backend
    for key, value in (tags or {}).items():
        all_tags[key if "." in key else TAG_PREFIX + key] = str(value)
    if parent_run_id is None:
        parent_run_id = os.environ.get(names.PARENT_RUN_ID_ENV) or None
    project_run = os.environ.get("MLFLOW_RUN_ID")
    if project_run and mlflow.active_run() is None:
        # Started by `mlflow run`: record into the run it created for this entry point.
        run = mlflow.start_run(run_id=project_run)
        mlflow.set_tags(all_tags)
        notes.mark_experiment(run.info.experiment_id)
    else:
        run = mlflow.start_run(experiment_id=experiment_id, run_name=run_name,
                               nested=nested or bool(parent_run_id), parent_run_id=parent_run_id, tags=all_tags)
    _report_run_id(run.info.run_id)
    try:
        yield run
    except KeyboardInterrupt:
        mlflow.end_run(status="KILLED")
        raise
    except BaseException:
        mlflow.end_run(status="FAILED")
        raise
    else:
        mlflow.end_run(status="FINISHED")


def _report_run_id(run_id):
    """Write ``run_id`` to ``$PTYPARITY_RUN_ID_FILE`` when set: how a pipeline step tells its
    parent which run it opened (written at the start, so a failed step reports it too)."""
    path = os.environ.get(names.RUN_ID_FILE_ENV)
    if path:
        with open(path, "w") as fh:
            fh.write(run_id)


def read_reported_run_id(path):
    """The run id a child process wrote with :func:`_report_run_id`, or None."""
    try:
        with open(path) as fh:
            return fh.read().strip() or None
    except FileNotFoundError:
        return None


def run_tag(run, key):
    """Tag ``key`` of ``run`` (keys without a namespace get the ``ptyparity.`` prefix), or None."""
    return run.data.tags.get(key if "." in key else TAG_PREFIX + key)


def set_tags(tags, run_id=None):
    """Set tags on the active run (or on ``run_id``)."""
    mlflow = _mlflow()
    tags = {k if "." in k else TAG_PREFIX + k: str(v) for k, v in tags.items()}
    if run_id is None:
        mlflow.set_tags(tags)
    else:
        client = mlflow.MlflowClient()
        for key, value in tags.items():
            client.set_tag(run_id, key, value)


def log_params(params):
    """Log params in their one text form (see :func:`param_text`)."""
    _mlflow().log_params({k: param_text(v) for k, v in params.items()})


def log_metrics(metrics, step=None):
    """Log finite metrics; non-finite values are skipped (a store cannot chart them)."""
    clean = {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}
    if clean:
        _mlflow().log_metrics(clean, step=step)


def log_dict(obj, artifact_file):
    """Log a JSON-able object as a JSON artifact."""
    _mlflow().log_dict(obj, artifact_file)


def log_figure(fig, artifact_file):
    """Log a matplotlib figure as an image artifact and close it."""
    import matplotlib.pyplot as plt

    _mlflow().log_figure(fig, artifact_file)
    plt.close(fig)


def log_image(image, artifact_file):
    """Log a PIL image as an image artifact (PNG for a ``.png`` name)."""
    directory, name = os.path.split(artifact_file)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, name)
        image.save(path)
        _mlflow().log_artifact(path, directory or None)


def log_artifact(path, artifact_path=None):
    """Log a local file (or directory) as artifact(s)."""
    mlflow = _mlflow()
    (mlflow.log_artifacts if os.path.isdir(path) else mlflow.log_artifact)(path, artifact_path)


def log_npz(arrays, artifact_file):
    """Log a dict of arrays as an ``.npz`` artifact (plain arrays, no pickle).

    Stored uncompressed: a debug dump's taps are float noise outside the zeros, and zlib
    took 14x the write time to halve the file (N=64 dump: 13.4 MB in 16 ms, 6.6 MB in 223 ms)."""
    directory, name = os.path.split(artifact_file)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, name)
        np.savez(path, **arrays)
        _mlflow().log_artifact(path, directory or None)


def log_dataset(data, *, name, digest, source, context):
    """Record a raw dataset as an MLflow dataset input with our digest.

    The features are the scan positions and the diffraction stack; ``digest`` is
    :func:`ptyparity.data.dataset_digest` so the same data is recognised anywhere.
    """
    mlflow = _mlflow()
    import mlflow.data

    features = {"positions": data.positions.astype("float32"), "diff3d": data.diff3d}
    dataset = mlflow.data.from_numpy(features, source=os.path.abspath(source), name=name, digest=digest[:36])
    from mlflow.exceptions import MlflowException
    # Runs logging one dataset at once race on the store's check-then-insert of its row: the
    # loser's transaction rolls back on the unique key; one more try finds the row and links it.
    conflict = ("duplicate key", "UNIQUE constraint", "Duplicate entry")  # PostgreSQL, SQLite, MySQL
    for attempt in range(3):
        try:
            return mlflow.log_input(dataset, context=context)
        except MlflowException as exc:
            if attempt == 2 or not any(k in str(exc) for k in conflict):
                raise


def run_links(run_id):
    """Where to look at a run: its page (``ui``) and its experiment's runs table (``runs``), both in
    the UI's model-training view, and for a local store how to start the UI (``start_ui``)."""
    mlflow = _mlflow()
    uri, exp = mlflow.get_tracking_uri(), mlflow.get_run(run_id).info.experiment_id
    served = uri.startswith(("http://", "https://"))
    base = uri.rstrip("/") if served else "http://127.0.0.1:5000"
    links = {"ui": f"{base}/{notes.ui_path(exp, run_id)}", "runs": f"{base}/{notes.ui_path(exp)}"}
    return links if served else {**links, "start_ui": f"mlflow ui --backend-store-uri {uri} --port 5000"}


def log_series(key, values, *, start_step=0):
    """Log a whole metric history (one key, one value per step) in few requests."""
    mlflow = _mlflow()
    from mlflow.entities import Metric

    run_id = mlflow.active_run().info.run_id
    now = int(time.time() * 1000)
    metrics = [Metric(key, float(v), now, start_step + i) for i, v in enumerate(values) if math.isfinite(float(v))]
    client = mlflow.MlflowClient()
    for i in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[i : i + 1000])


def log_bundle_model(bundle_dir, *, registered_model_name=None, pip_requirements=None, step=0, model_metrics=()):
    """Log a bundle directory as a pyfunc model (models from code, no pickle).

    Parameters
    ----------
    bundle_dir : str
    registered_model_name : str, optional
        Register the model under this name.
    pip_requirements : list of str, optional
    step : int
        The run's step the model comes from. MLflow links every metric the run logged at
        that step to the model; a train run passes its optimizer step count, past its
        per-step values, and names the model's metrics in ``model_metrics`` instead.
    model_metrics : iterable of str
        Metric keys whose latest entry (highest step) describes the model: linked to it as
        logged (same value, step and timestamp, so the run's histories gain no point).
        A metric of the run's step-0 set that MLflow links by default (epoch 0, an initial
        dump) would otherwise stand for the trained model in MLflow's Models view.

    Returns
    -------
    model_uri : str
        ``runs:/<run_id>/model``.
    version : str or None
        The registered model version, when ``registered_model_name`` is given.
    """
    mlflow = _mlflow()
    import mlflow.pyfunc

    code = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tracking_pyfunc.py")
    with _metadata_requirement_check():
        info = mlflow.pyfunc.log_model(name=names.MODEL_ARTIFACT, python_model=code,
                                       artifacts={"bundle": bundle_dir}, registered_model_name=registered_model_name,
                                       pip_requirements=pip_requirements or [], step=step)
    run_id = mlflow.active_run().info.run_id
    if model_metrics:
        _link_model_metrics(mlflow.MlflowClient(), run_id, info.model_id, model_metrics, step)
    version = str(info.registered_model_version) if registered_model_name else None
    return f"runs:/{run_id}/{names.MODEL_ARTIFACT}", version


def _link_model_metrics(client, run_id, model_id, keys, step):
    """Link the latest entry of each metric ``keys`` of run ``run_id`` to logged model
    ``model_id``, but those at ``step``, which ``log_model`` linked already.

    The latest entries come from one ``get_run`` (``RunData`` keeps them as ``Metric``s, with
    their timestamps, in ``_metric_objs``); a store row per key's history cost ~45 ms a train
    run. Another MLflow without that attribute reads the histories."""
    from mlflow.entities import Metric

    wanted = set(keys)
    latest = getattr(client.get_run(run_id).data, "_metric_objs", None)
    if latest is None:
        latest = [max(h, key=lambda m: (m.step, m.timestamp))
                  for h in (client.get_metric_history(run_id, key) for key in sorted(wanted)) if h]
    links = [Metric(m.key, m.value, m.timestamp, m.step, model_id=model_id, run_id=run_id)
             for m in latest if m.key in wanted and m.step != step]
    if links:
        client.log_batch(run_id, metrics=links)


@contextlib.contextmanager
def _metadata_requirement_check():
    """Inside: ``log_model``'s check of the model's pip requirements against the installed
    packages reads each requirement's version from the package metadata
    (:func:`warn_requirement_mismatches`).

    MLflow's own check first maps the files of every installed distribution to its modules
    (``importlib_metadata.packages_distributions``), for a fallback to ``module.__version__``:
    0.27-0.43 s on this project's environment, once in every process that logs a model, so
    in every ``train``. Another MLflow without that function keeps its own check."""
    from mlflow.utils import environment

    original = getattr(environment, "warn_dependency_requirement_mismatches", None)
    if original is None:
        yield
        return
    environment.warn_dependency_requirement_mismatches = warn_requirement_mismatches
    try:
        yield
    finally:
        environment.warn_dependency_requirement_mismatches = original


def warn_requirement_mismatches(requirements):
    """Warn (MLflow's logger) about the pip ``requirements`` the installed packages do not
    satisfy; lines that are not a requirement (a file, a URL) and those whose environment
    marker is false are skipped.

    Returns
    -------
    mismatches : list of str
        ``"name (current: version or uninstalled, required: requirement)"`` each.
    """
    import importlib.metadata

    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.version import InvalidVersion

    mismatches = []
    for text in requirements:
        try:
            req = Requirement(text)
        except InvalidRequirement:
            continue
        if req.marker is not None and not req.marker.evaluate():
            continue
        if req.name.lower() == "mlflow":  # the metadata of an editable install may be stale
            installed = _mlflow().__version__
        else:
            try:
                installed = importlib.metadata.version(req.name)
            except importlib.metadata.PackageNotFoundError:
                installed = None
        try:
            satisfied = installed is not None and req.specifier.contains(installed, prereleases=True)
        except InvalidVersion:  # a version PEP 440 cannot read: nothing to compare
            continue
        if not satisfied:
            mismatches.append(f"{req.name} (current: {installed or 'uninstalled'}, required: {text})")
    if mismatches:
        logging.getLogger("mlflow.utils.requirements_utils").warning(
            "the model's pip requirements do not match this Python environment: %s", "; ".join(mismatches))
    return mismatches


def download_model(uri):
    """Local copy of a model/artifact URI (``models:/…``, ``runs:/…``)."""
    mlflow = _mlflow()
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException

    try:
        return mlflow.artifacts.download_artifacts(artifact_uri=uri)
    except MlflowException as exc:
        raise PtyparityError(f"{uri}: cannot fetch the model ({preflight.first_line(exc)}); check the name, "
                             "version or alias and MLFLOW_TRACKING_URI") from None


def model_version_of(uri):
    """``(name, version)`` for a ``models:/name/version`` or ``models:/name@alias`` URI, else None."""
    if not uri.startswith("models:/"):
        return None
    mlflow = _mlflow()
    rest = uri[len("models:/"):]
    client = mlflow.MlflowClient()
    if "@" in rest:
        name, alias = rest.split("@", 1)
        return name, str(client.get_model_version_by_alias(name, alias).version)
    name, _, version = rest.partition("/")
    return (name, version) if version.isdigit() else None


def get_run(run_id):
    """The run, or a one-line error naming the unknown id."""
    mlflow = _mlflow()
    from mlflow.exceptions import MlflowException

    try:
        return mlflow.get_run(run_id)
    except MlflowException:
        raise PtyparityError(f"run {run_id!r} not found in {mlflow.get_tracking_uri()}; check the id "
                             "and MLFLOW_TRACKING_URI") from None


def search_runs(filters, *, experiment=DEFAULT_EXPERIMENT, max_results=1000, finished_only=False):
    """Runs of ``experiment`` matching tag equalities, newest first.

    Parameters
    ----------
    filters : dict
        ``{tag: value}``; keys without a namespace get the ``ptyparity.`` prefix.
    """
    mlflow = _mlflow()
    exp = mlflow.get_experiment_by_name(experiment)
    if exp is None:
        return []
    parts = [f"tags.`{k if '.' in k else TAG_PREFIX + k}` = '{v}'" for k, v in filters.items()]
    if finished_only:
        parts.append("attributes.status = 'FINISHED'")
    return mlflow.search_runs(experiment_ids=[exp.experiment_id], filter_string=" and ".join(parts),
                              order_by=["attributes.start_time DESC"], max_results=max_results,
                              output_format="list")


def download_artifact(run_id, path):
    """Local path of one run artifact, or a one-line error when it is missing."""
    mlflow = _mlflow()
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException

    try:
        local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path)
    except (MlflowException, OSError):
        local = None
    if not local or not os.path.exists(local):
        raise PtyparityError(f"run {run_id} has no artifact {path!r}; re-run its infer step (was it logged "
                             "with --no-debug-dump?)")
    return local


def tag_model_version(name, version, tags):
    """Set tags on a registered model version."""
    client = _mlflow().MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, str(value))


def set_model_alias(name, alias, version):
    """Point ``alias`` of model ``name`` at ``version`` (moving it if it existed)."""
    _mlflow().MlflowClient().set_registered_model_alias(name, alias, version)


def log_text(text, artifact_file):
    """Log a text artifact (e.g. an HTML report)."""
    _mlflow().log_text(text, artifact_file)


def registered_version_of_run(name, run_id):
    """The version of registered model ``name`` created from ``run_id``, or None."""
    client = _mlflow().MlflowClient()
    versions = client.search_model_versions(f"name='{name}' and run_id='{run_id}'")
    return str(max(int(v.version) for v in versions)) if versions else None


def experiment_name(run):
    """Name of the experiment a run belongs to."""
    return _mlflow().get_experiment(run.info.experiment_id).name
