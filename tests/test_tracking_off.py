"""ptyparity.tracking_off, the benchmark's tracking-off switch: inside the block nothing reaches
the store, afterwards every recording function is the real one again (a real sqlite store)."""

import mlflow
import numpy as np

from ptyparity import tracking, tracking_off


def test_recording_functions_name_every_kind_of_record():
    named = {name for _, name in tracking_off.recording_functions()}
    for name in ("start_run", "log_params", "log_metrics", "log_figure", "log_image", "log_artifact", "log_npz",
                 "log_bundle_model", "set_tags", "describe_run", "heartbeat"):
        assert name in named, name
    for module, name in tracking_off.recording_functions():
        assert callable(getattr(module, name)), (module.__name__, name)


def test_nothing_is_recorded_inside_the_block_and_everything_is_restored(tracking_uri):
    plt = __import__("ptyparity.report", fromlist=["pyplot"]).pyplot()
    before = {(module, name): getattr(module, name) for module, name in tracking_off.recording_functions()}
    exp = tracking.init_store()
    with tracking_off.disabled():
        for (module, name), original in before.items():
            assert getattr(module, name) is not original, name
        with tracking.start_run("train", backend="torch") as run:
            assert len(run.info.run_id) == 32
            tracking.log_params({"a": 1})
            tracking.log_metrics({"m": 1.0}, step=0)
            tracking.log_npz({"x": np.zeros(3)}, "dump/taps.npz")
            fig = plt.figure()
            tracking.log_figure(fig, "dump/fig.png")
            assert not plt.fignum_exists(fig.number)  # closed, as the real log_figure closes it
    assert mlflow.search_runs(experiment_ids=[exp], output_format="list") == []
    assert {(module, name): getattr(module, name) for module, name in tracking_off.recording_functions()} == before
    with tracking.start_run("train", backend="torch") as run:  # and the real ones record again
        tracking.log_metrics({"m": 2.0}, step=0)
    assert mlflow.get_run(run.info.run_id).data.metrics == {"m": 2.0}
