"""A benchmark and test aid: make the tracking layer a no-op inside one ``with`` block.

``scripts/bench.py`` measures what recording costs by running the same workflow
(``run_train``) with tracking on and, in the same process, inside :func:`disabled`.
Within the block every recording function of :mod:`ptyparity.tracking` and
:mod:`ptyparity.tracking_notes` does nothing (``start_run`` yields a run with a
made-up id, ``log_bundle_model`` registers nothing), so the difference of the two
wall times is what MLflow costs. Not a user feature: nothing is recorded inside the
block, and the CLI never calls it. Not thread-safe (it swaps module attributes).
"""

from __future__ import annotations

import contextlib
import types
import uuid

from ptyparity import tracking, tracking_notes

# What a workflow calls to record; reading functions (get_run, search_runs, …) are left alone.
_RECORDING = ("init_store", "check_store", "log_params", "log_metrics", "log_dict", "log_figure", "log_image",
              "log_artifact", "log_npz", "log_dataset", "log_series", "log_text", "set_tags", "tag_model_version",
              "set_model_alias")
_NOTES = ("describe_run", "describe_registered_model", "describe_model_version", "mark_experiment")
_LIVENESS = ("heartbeat", "sweep")  # the run's heartbeat tag and the sweep of stale runs


def _nothing(*args, **kwargs):
    return None


def _close_figure(fig, artifact_file):
    """Figures are made by our code either way; only their rendering and upload is tracking."""
    import matplotlib.pyplot as plt

    plt.close(fig)


@contextlib.contextmanager
def _start_run(kind, **kwargs):
    run_id = uuid.uuid4().hex
    yield types.SimpleNamespace(info=types.SimpleNamespace(run_id=run_id, experiment_id="0"))


def _log_bundle_model(bundle_dir, *, registered_model_name=None, pip_requirements=None, step=0,
                      model_metrics=()):
    return "none", None


def _liveness():
    try:
        from ptyparity import tracking_liveness
    except ImportError:  # an older tree without heartbeats
        return types.SimpleNamespace()
    return tracking_liveness


def recording_functions():
    """The ``(module, name)`` pairs of every function :func:`disabled` switches off: what a
    workflow calls to record (``scripts/bench.py`` also times the calls to them)."""
    pairs = [(tracking, name) for name in _RECORDING + ("start_run", "log_bundle_model")]
    for module, names in ((tracking_notes, _NOTES), (_liveness(), _LIVENESS)):
        pairs += [(module, name) for name in names if hasattr(module, name)]
    return pairs


@contextlib.contextmanager
def disabled():
    """Run the block with :mod:`ptyparity.tracking` recording nothing (see the module docstring)."""
    replaced = {(module, name): getattr(module, name) for module, name in recording_functions()}
    try:
        for (module, name) in replaced:
            setattr(module, name, _nothing)
        tracking.log_figure = _close_figure
        tracking.start_run = _start_run
        tracking.log_bundle_model = _log_bundle_model
        yield
    finally:
        for (module, name), value in replaced.items():
            setattr(module, name, value)
