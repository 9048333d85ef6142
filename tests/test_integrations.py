"""The Lightning and Keras callbacks on tiny models of the user's own (temporary sqlite store):
params, per-epoch losses under ptyparity's names, patch statistics and dumps at the start and
the end, and a failed fit ending its run FAILED with the reason."""

import mlflow
import numpy as np
import pytest
from typer.testing import CliRunner

from ptyparity import tracking_record
from ptyparity.cli import app
from ptyparity.data import load_npz
from ptyparity.simulate import SimConfig
from tests.conftest import sqlite_store, write_simulated

N = 32


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("integrations_store")
    with sqlite_store(root):
        write_simulated(root, SimConfig(N=N, object_size_px=64, seed=1))
        yield root


def run_named(name):
    (run,) = mlflow.search_runs(experiment_names=["ptyparity"], filter_string=f"attributes.run_name = '{name}'",
                                output_format="list")
    return run


def assert_recorded_training(run, epochs=2):
    """What either callback must have recorded for a finished fit of ``epochs`` epochs."""
    client = mlflow.MlflowClient()
    run_id = run.info.run_id
    assert run.info.status == "FINISHED" and run.data.tags["ptyparity.kind"] == "train"
    assert run.data.tags["ptyparity.record_schema"] == "1"
    assert [m.step for m in client.get_metric_history(run_id, "train_loss")] == list(range(epochs))
    assert [m.step for m in client.get_metric_history(run_id, "val_loss")] == list(range(epochs))
    assert tracking_record.metric_steps(run_id, "patch.amp.var_zero_mean") == [0, epochs]  # start and end
    arts = tracking_record.list_artifacts(run_id)
    for stage in ("initial", "final"):
        assert {f"debug_dump/{stage}/patch_stats.json", f"debug_dump/{stage}/taps.npz",
                f"debug_dump/{stage}/patch_grid_normalised.png"} <= arts
    assert run.data.params["max_epochs"] == str(epochs) and run.data.params["my_param"] == "7"


# --- Lightning ---------------------------------------------------------------------------

def lightning_module(fail_at_step=None):
    import lightning
    import torch

    class Tiny(lightning.LightningModule):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 2, 3, padding=1)

        def forward(self, x):
            out = self.conv(x)
            return torch.sigmoid(out[:, :1]), torch.tanh(out[:, 1:])

        def training_step(self, batch, index):
            if fail_at_step is not None and self.global_step == fail_at_step:
                raise RuntimeError("boom in training_step")
            amp, _ = self(batch[0])
            loss = torch.mean((amp - 0.5) ** 2)
            self.log("train_loss", loss, on_step=True, on_epoch=True)
            return loss

        def validation_step(self, batch, index):
            amp, _ = self(batch[0])
            self.log("val_loss", torch.mean((amp - 0.5) ** 2))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    return Tiny()


def fit_lightning(store, run_name, module):
    import lightning
    import torch

    from ptyparity.integrations.lightning import ParityCallback

    data = load_npz(store / "train.npz")
    x = torch.as_tensor(data.diff3d[:32, None] / data.diff3d.max())
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x), batch_size=8)

    def predict_patches(model, batch):  # torch (B, C, N, N) -> channel-last
        amp, phase = model(batch[0])
        return amp.permute(0, 2, 3, 1), phase.permute(0, 2, 3, 1)

    parity = ParityCallback(predict_patches, batch=(x[:4],), data=store / "train.npz", implementation="tiny-torch",
                            version="0.0.1", params={"my_param": 7}, run_name=run_name)
    trainer = lightning.Trainer(max_epochs=2, callbacks=[parity], logger=False, enable_checkpointing=False,
                                enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(module, loader, loader)
    return parity


def test_lightning_callback_records_the_training(store):
    parity = fit_lightning(store, "lightning-ok", lightning_module())
    run = run_named("lightning-ok")
    assert parity.run_id == run.info.run_id
    assert_recorded_training(run)
    assert run.data.tags["ptyparity.backend"] == "torch" and run.data.tags["ptyparity.implementation"] == "tiny-torch"
    assert run.data.params["learning_rate"] == "0.01"
    # predict_patches returned only (amp, phase) and no scales were given: check-run says what compare will miss
    out = CliRunner().invoke(app, ["check-run", run.info.run_id])
    assert out.exit_code == 1, out.output
    for key, how in (("mean_input_scale", "diffraction= and encoder_input="), ("intensity_scale", "log_scales")):
        assert f"lacks torch.consistency.{key}: " in out.output and how in out.output


def test_lightning_failure_ends_the_run_failed(store):
    with pytest.raises(RuntimeError, match="boom in training_step"):
        fit_lightning(store, "lightning-fail", lightning_module(fail_at_step=5))
    run = run_named("lightning-fail")
    assert run.info.status == "FAILED" and run.data.tags["ptyparity.error"] == "boom in training_step"
    assert [m.step for m in mlflow.MlflowClient().get_metric_history(run.info.run_id, "train_loss")] == [0]


# --- Keras -------------------------------------------------------------------------------

def fit_keras(store, run_name, extra_callbacks=()):
    import keras

    from ptyparity.integrations.keras import ParityCallback

    keras.utils.set_random_seed(0)
    data = load_npz(store / "train.npz")
    diffraction = data.diff3d[:32, ..., None]
    x = (diffraction / diffraction.max()).astype("float32")
    inputs = keras.Input((N, N, 1))
    model = keras.Model(inputs, keras.layers.Conv2D(2, 3, padding="same")(inputs))
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")

    def predict_patches(m, batch):  # the dict form: ptyparity also measures mean_input_scale
        out = keras.ops.convert_to_numpy(m(batch, training=False))
        return {"amp": 1 / (1 + np.exp(-out[..., :1])), "phase": np.tanh(out[..., 1:]),
                "diffraction": diffraction[:4], "encoder_input": batch}

    with ParityCallback(predict_patches, batch=x[:4], data=store / "train.npz", implementation="tiny-keras",
                        version="0.0.1", params={"my_param": 7}, scales={"intensity_scale": 2.0},
                        run_name=run_name) as parity:
        model.fit(x, np.zeros((32, N, N, 2), "float32"), epochs=2, batch_size=8, validation_split=0.25, verbose=0,
                  callbacks=[parity, *extra_callbacks])
    return parity, float(diffraction.max())


def test_keras_callback_records_the_training(store):
    parity, peak = fit_keras(store, "keras-ok")
    run = run_named("keras-ok")
    assert parity.run_id == run.info.run_id
    assert_recorded_training(run)  # Keras' "loss" is recorded as train_loss
    assert "loss" not in run.data.metrics
    assert run.data.tags["ptyparity.backend"] == "tensorflow"
    assert run.data.params["learning_rate"] == "0.01" and run.data.params["intensity_scale"] == "2.0"
    assert run.data.metrics["mean_input_scale"] == pytest.approx(1 / peak, rel=1e-6)
    assert "mean_physics_scale" not in run.data.metrics  # not handed over, so not made up


def test_keras_failure_inside_the_with_block_ends_the_run_failed(store):
    import keras

    class Explode(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            raise ValueError("disk full while saving")

    with pytest.raises(ValueError, match="disk full"):
        fit_keras(store, "keras-fail", extra_callbacks=[Explode()])
    run = run_named("keras-fail")
    assert run.info.status == "FAILED" and run.data.tags["ptyparity.error"] == "disk full while saving"


KERAS_WITHOUT_WITH = """
import sys
import keras
import numpy as np
from ptyparity.data import load_npz
from ptyparity.integrations.keras import ParityCallback

class Explode(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        raise ValueError("disk full while saving")

data = load_npz(sys.argv[1])
x = (data.diff3d[:32, ..., None] / data.diff3d.max()).astype("float32")
inputs = keras.Input((x.shape[1], x.shape[2], 1))
model = keras.Model(inputs, keras.layers.Conv2D(2, 3, padding="same")(inputs))
model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
parity = ParityCallback(lambda m, b: (np.ones((4,) + x.shape[1:3] + (1,)), np.zeros((4,) + x.shape[1:3] + (1,))),
                        batch=x[:4], data=sys.argv[1], implementation="tiny-keras", version="0.0.1",
                        run_name="keras-no-with")
model.fit(x, np.zeros(x.shape[:3] + (2,), "float32"), epochs=2, batch_size=8, verbose=0, callbacks=[parity, Explode()])
"""


def test_keras_failure_without_the_with_block_ends_the_run_failed_at_exit(store, tmp_path):
    """Without ``with``, Keras calls no callback when ``fit`` raises: the callback's exit hook ends
    the run FAILED when the process dies of the exception (MLflow's own exit hook, which runs
    after it, would end it FINISHED)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "user_training.py"
    script.write_text(KERAS_WITHOUT_WITH)
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run([sys.executable, str(script), str(store / "train.npz")], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "ValueError: disk full while saving" in proc.stderr, proc.stderr[-2000:]
    run = run_named("keras-no-with")
    assert run.info.status == "FAILED"
    assert "the process ended during model.fit" in run.data.tags["ptyparity.error"]
    # Epoch 0 ended (the callback logged it) before the next callback raised.
    assert [m.step for m in mlflow.MlflowClient().get_metric_history(run.info.run_id, "train_loss")] == [0]
