"""What a person meets first in the MLflow UI: descriptions and the experiment's kind.

Part of the tracking layer (with :mod:`ptyparity.tracking`, which it does not import):
sets ``mlflow.note.content`` on runs, registered models and model versions (the text
comes from :mod:`ptyparity.descriptions`), and marks experiments as model development
(``mlflow.experimentKind``). mlflow is imported lazily, inside the functions.
"""

from __future__ import annotations

NOTE_TAG = "mlflow.note.content"  # MLflow's description of a run (shown on its page)
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_DEVELOPMENT = "custom_model_development"  # MLflow's kind for model training ("Machine learning")
# The UI's own switch between its "GenAI" and "Machine learning" views is the query parameter
# `workflowType` (else the browser's localStorage, default genai); MLflow 3.17 has no server or
# store setting for it, so every link ptyparity prints carries it.
ML_VIEW_QUERY = "workflowType=machine_learning"


def _client():
    import mlflow

    return mlflow.MlflowClient()


def model_development_experiment(name, experiment=None):
    """The id of experiment ``name``, created when missing, tagged ``mlflow.experimentKind`` =
    ``custom_model_development`` unless it already has a kind (a user's choice is kept).

    Parameters
    ----------
    name : str
    experiment : mlflow.entities.Experiment or None
        The experiment already looked up by that name (None: it does not exist yet).
    """
    from mlflow.exceptions import MlflowException

    client = _client()
    try:
        if experiment is None:
            return client.create_experiment(name, tags={EXPERIMENT_KIND_TAG: MODEL_DEVELOPMENT})
        if EXPERIMENT_KIND_TAG not in experiment.tags:
            client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, MODEL_DEVELOPMENT)
        return experiment.experiment_id
    except MlflowException:
        # Processes starting at once (a team's trainings) race on the insert; the loser finds
        # the winner's experiment and tag. Anything else is re-raised.
        found = client.get_experiment_by_name(name)
        if found is None or EXPERIMENT_KIND_TAG not in found.tags:
            raise
        return found.experiment_id


def mark_experiment(experiment_id):
    """Tag experiment ``experiment_id`` as model development unless it has a kind (e.g. the one
    ``mlflow run`` chose for its run)."""
    experiment = _client().get_experiment(experiment_id)
    model_development_experiment(experiment.name, experiment)


def describe_run(text, run_id=None):
    """Set the Markdown description of run ``run_id`` (default: the active run)."""
    import mlflow

    if run_id is None:
        mlflow.set_tag(NOTE_TAG, text)
    else:
        _client().set_tag(run_id, NOTE_TAG, text)


def describe_registered_model(name, text):
    """Set the description of registered model ``name`` unless it has one (a user's edit is kept)."""
    client = _client()
    if not (client.get_registered_model(name).description or "").strip():
        client.update_registered_model(name, description=text)


def describe_model_version(name, version, text, tags=None):
    """Set the description (and ``tags``) of model version ``name``/``version``."""
    client = _client()
    for key, value in (tags or {}).items():
        client.set_model_version_tag(name, version, key, str(value))
    client.update_model_version(name, version, description=text)


def model_version_record(name, version):
    """``{"source_run_id": …, **tags}`` of a model version: what its description is built from."""
    mv = _client().get_model_version(name, version)
    return {"source_run_id": mv.run_id, **dict(mv.tags or {})}


def ui_path(experiment_id, run_id=None):
    """The UI's hash route of the runs table of an experiment (or of one run's page), in the
    model-training view: ``#/experiments/<id>/runs[/<run_id>]?workflowType=machine_learning``."""
    return f"#/experiments/{experiment_id}/runs" + (f"/{run_id}" if run_id else "") + f"?{ML_VIEW_QUERY}"
