"""Run searches that stop early: pages of runs, newest first (part of the tracking layer).

:func:`ptyparity.tracking.search_runs` fetches every match up to ``max_results`` in one
call; ``compare --latest`` needs only the newest complete pair, which in a store of
thousands of runs is usually in the first page. Against a tracking server each page is
one HTTP request, so asking for small pages and stopping as soon as the answer is found
keeps the lookup near constant time (scripts/bench.py measures it among 1,000 runs).
"""

from __future__ import annotations

from ptyparity import tracking
from ptyparity.names import DEFAULT_EXPERIMENT, TAG_PREFIX


def filter_string(filters, *, finished_only=False):
    """MLflow's filter string for tag equalities (keys without a namespace get ``ptyparity.``)."""
    parts = [f"tags.`{k if '.' in k else TAG_PREFIX + k}` = '{v}'" for k, v in filters.items()]
    if finished_only:
        parts.append("attributes.status = 'FINISHED'")
    return " and ".join(parts)


def iter_runs(filters, *, experiment=DEFAULT_EXPERIMENT, finished_only=False, page_size=100):
    """Runs of ``experiment`` matching tag equalities, newest first, fetched a page at a time.

    Parameters
    ----------
    filters : dict
        ``{tag: value}``.
    page_size : int
        Runs per request; the generator asks for the next page only when the caller
        gets that far.

    Yields
    ------
    run : mlflow.entities.Run
    """
    mlflow = tracking._mlflow()
    exp = mlflow.get_experiment_by_name(experiment)
    if exp is None:
        return
    client = mlflow.MlflowClient()
    token = None
    while True:
        page = client.search_runs([exp.experiment_id], filter_string=filter_string(filters, finished_only=finished_only),
                                  order_by=["attributes.start_time DESC"], max_results=page_size, page_token=token)
        yield from page
        token = page.token
        if not token:
            return
