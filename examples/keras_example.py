"""A small PtychoPINN-style model in plain Keras, trained with ``fit`` and recorded by ptyparity.

Independent of ptyparity's own network and physics: its forward model (probe times object,
far-field FFT, Poisson likelihood) is written here with ``keras.ops``. ptyparity only records
it: the training through ``ParityCallback``, the inference through ``record.infer_run``. Then
``ptyparity check-run`` and ``ptyparity compare`` judge it like any other run.

    python examples/keras_example.py --train-data data/train.npz --test-data data/test.npz
"""

import argparse
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import ops  # noqa: E402

from ptyparity import record  # noqa: E402
from ptyparity.data import load_npz  # noqa: E402
from ptyparity.integrations.keras import ParityCallback  # noqa: E402

NAME, VERSION = "example-keras", "0.1"


def scales_of(diff3d, probe):
    """Intensity scale s (model amplitude -> counts) and the probe scaled so that an object of
    amplitude 0.5 reproduces the mean pattern energy (N/2)**2 of the normalised data."""
    n = diff3d.shape[-1]
    input_norm = np.sqrt((n / 2) ** 2 / np.mean(np.sum(diff3d.astype(np.float64) ** 2, axis=(1, 2))))
    probe_scale = np.sqrt((n / 2) ** 2 / (0.25 * np.sum(np.abs(probe) ** 2)))
    return 1.0 / input_norm, (probe * probe_scale).astype(np.complex64)


class FarField(keras.layers.Layer):
    """(amp, phase) (B, N, N, 1) -> model-unit far-field intensity |FFT(P * o)|**2 / N**2, (B, N, N),
    centred (the detector's layout)."""

    def __init__(self, probe, **kwargs):
        super().__init__(**kwargs)
        self.probe_re, self.probe_im = np.real(probe).astype("float32"), np.imag(probe).astype("float32")

    def call(self, amp, phase):
        n = self.probe_re.shape[-1]
        o_re, o_im = amp[..., 0] * ops.cos(phase[..., 0]), amp[..., 0] * ops.sin(phase[..., 0])
        re, im = ops.fft2((self.probe_re * o_re - self.probe_im * o_im, self.probe_re * o_im + self.probe_im * o_re))
        intensity = (re ** 2 + im ** 2) / n ** 2
        return ops.roll(ops.roll(intensity, n // 2, axis=1), n // 2, axis=2)  # fftshift (N even)


def build(probe, width=16):
    """``(taps_model, intensity_model)`` on the normalised patterns (B, N, N, 1): the first gives
    amp, phase and intensity, the second only the intensity (what training fits)."""
    n = probe.shape[-1]
    support = np.zeros((n, n, 1), "float32")
    support[n // 4: 3 * n // 4, n // 4: 3 * n // 4] = 1.0  # the network predicts the central N/2
    x = keras.Input((n, n, 1))
    h = keras.layers.Conv2D(width, 3, padding="same", activation="relu")(x)
    h = keras.layers.Conv2D(width, 3, padding="same", activation="relu")(h)
    out = keras.layers.Conv2D(2, 3, padding="same")(h)
    amp = keras.layers.Lambda(lambda t: ops.sigmoid(t[..., :1]) * support)(out)
    phase = keras.layers.Lambda(lambda t: np.pi * ops.tanh(t[..., 1:]) * support)(out)
    intensity = FarField(probe)(amp, phase)
    return keras.Model(x, [amp, phase, intensity]), keras.Model(x, intensity)


def poisson(counts_amplitude, lam):
    return ops.mean(lam - counts_amplitude ** 2 * ops.log(lam + 1e-8))


class Trained:
    """The fitted model and the intensity scale it persists."""

    def __init__(self, taps_model, intensity_scale):
        self.taps_model, self.intensity_scale = taps_model, float(intensity_scale)

    def taps(self, diff3d, scale=None):
        """What ptyparity measures, channel-last: patches, input and predicted amplitudes."""
        s = self.intensity_scale if scale is None else scale
        diffraction = diff3d[..., None].astype("float32")
        x = diffraction / np.float32(s)
        amp, phase, intensity = (np.asarray(t) for t in self.taps_model.predict(x, batch_size=256, verbose=0))
        amplitude = np.sqrt(intensity + 1e-12)[..., None]
        return {"amp": amp, "phase": phase, "diffraction": diffraction, "encoder_input": x,
                "pred_amplitude": amplitude, "pred_amplitude_counts": s * amplitude}


def train(train_path, *, n_groups=256, epochs=2, seed=0, experiment="ptyparity", run_name=None):
    """Train on ``n_groups`` patterns of the training NPZ; returns ``(Trained, train run id)``."""
    keras.utils.set_random_seed(seed)
    data = load_npz(train_path)
    s, probe = scales_of(data.diff3d, data.probe)
    pick = np.random.default_rng(seed).permutation(data.n_patterns)[:n_groups]
    diff = data.diff3d[pick][..., None].astype("float32")
    n_val = max(1, n_groups // 20)
    taps_model, intensity_model = build(probe)
    scale = np.float32(s)
    train_model = keras.Model(intensity_model.input, intensity_model.output * scale ** 2)  # counts
    train_model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=poisson)
    trained = Trained(taps_model, s)

    def predict_patches(model, batch):  # the one function ParityCallback needs
        return trained.taps(batch)

    with ParityCallback(predict_patches, batch=data.diff3d[pick][:16], data=data, data_path=train_path,
                        implementation=NAME, version=VERSION, gridsize=1, object_big=False, probe_big=False,
                        seed=seed, params={"n_groups": n_groups, "batch_size": 16},
                        scales={"intensity_scale": s, "input_norm": 1.0 / s}, experiment=experiment,
                        run_name=run_name) as parity:
        train_model.fit(diff[n_val:] / scale, diff[n_val:, ..., 0], validation_data=(diff[:n_val] / scale,
                        diff[:n_val, ..., 0]), epochs=epochs, batch_size=16, shuffle=True, verbose=0,
                        callbacks=[parity])
    return trained, parity.run_id


def infer(trained, test_path, *, train_run_id=None, ignore_intensity_scale=False, experiment="ptyparity",
          run_name=None):
    """Reconstruct the test NPZ and record it; returns the infer run id (``ignore_intensity_scale``:
    the negative control's bug, the trained scale recorded but 1.0 used)."""
    data = load_npz(test_path)
    out = trained.taps(data.diff3d, scale=1.0 if ignore_intensity_scale else None)
    with record.infer_run(data, data_path=test_path, implementation=NAME, version=VERSION,
                          backend="tensorflow", gridsize=1, object_big=False, probe_big=False,
                          train_run_id=train_run_id, experiment=experiment, run_name=run_name) as run:
        run.log_scales(intensity_scale=trained.intensity_scale)
        run.log_patches("infer", **{k: v[:16] for k, v in out.items()})
        run.log_reconstruction(out["amp"], out["phase"], data.positions)
        return run.run_id


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-data", default="data/train.npz")
    parser.add_argument("--test-data", default="data/test.npz")
    parser.add_argument("--n-groups", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    trained, train_id = train(args.train_data, n_groups=args.n_groups, epochs=args.epochs)
    infer_id = infer(trained, args.test_data, train_run_id=train_id)
    print(f"train run {train_id}\ninfer run {infer_id}\nnext: ptyparity check-run {infer_id}")


if __name__ == "__main__":
    main()
