"""What the record API and ``check-run`` need from a run beyond :mod:`ptyparity.tracking`.

Part of the tracking layer (kept out of ``tracking.py``, which is at its size limit): the
artifact listing of a run and the metric steps of one key. mlflow is imported lazily.
"""

from __future__ import annotations


def _client():
    from ptyparity import tracking

    tracking.check_store()  # one line, exit 2, for a store that cannot work
    import mlflow

    return mlflow.MlflowClient()


def list_artifacts(run_id):
    """Every artifact file path of run ``run_id`` (recursively), as a set of str."""
    client = _client()
    out, todo = set(), [None]
    while todo:
        for info in client.list_artifacts(run_id, todo.pop()):
            (todo.append(info.path) if info.is_dir else out.add(info.path))
    return out


def metric_steps(run_id, key):
    """The steps at which metric ``key`` of run ``run_id`` was logged, sorted (empty when never)."""
    return sorted(m.step for m in _client().get_metric_history(run_id, key))
