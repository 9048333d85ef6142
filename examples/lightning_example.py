"""A small PtychoPINN-style model in plain PyTorch, trained with Lightning and recorded by ptyparity.

Independent of ptyparity's own network and physics: its forward model (probe times object,
far-field FFT, Poisson likelihood) is written here. ptyparity only records it: the training
through ``ParityCallback``, the inference through ``record.infer_run``. Then ``ptyparity
check-run`` and ``ptyparity compare`` judge it like any other run.

    python examples/lightning_example.py --train-data data/train.npz --test-data data/test.npz
"""

import argparse
import logging

import lightning
import numpy as np
import torch
from torch import nn

from ptyparity import record
from ptyparity.data import load_npz
from ptyparity.integrations.lightning import ParityCallback

NAME, VERSION = "example-lightning", "0.1"
logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # Lightning's banner lines and tips


def scales_of(diff3d, probe):
    """Intensity scale s (model amplitude -> counts) and the probe scaled so that an object of
    amplitude 0.5 reproduces the mean pattern energy (N/2)**2 of the normalised data."""
    n = diff3d.shape[-1]
    input_norm = np.sqrt((n / 2) ** 2 / np.mean(np.sum(diff3d.astype(np.float64) ** 2, axis=(1, 2))))
    probe_scale = np.sqrt((n / 2) ** 2 / (0.25 * np.sum(np.abs(probe) ** 2)))
    return 1.0 / input_norm, (probe * probe_scale).astype(np.complex64)


class PatchNet(lightning.LightningModule):
    """diffraction (B, 1, N, N) in count units -> object amplitude and phase (B, 1, N, N)."""

    def __init__(self, probe, intensity_scale, lr=1e-3, width=16):
        super().__init__()
        n = probe.shape[-1]
        self.register_buffer("probe", torch.as_tensor(probe))
        self.register_buffer("intensity_scale", torch.tensor(float(intensity_scale)))
        support = torch.zeros(n, n)
        support[n // 4: 3 * n // 4, n // 4: 3 * n // 4] = 1.0  # the network predicts the central N/2
        self.register_buffer("support", support)
        self.net = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1),
                                 nn.ReLU(), nn.Conv2d(width, 2, 3, padding=1))
        self.lr = lr

    def forward(self, diffraction, scale=None):
        """``(encoder_input, amp, phase, model-unit intensity)``; ``scale`` overrides the stored s."""
        s = self.intensity_scale if scale is None else scale
        x = diffraction / s
        out = self.net(x)
        amp = torch.sigmoid(out[:, :1]) * self.support
        phase = np.pi * torch.tanh(out[:, 1:]) * self.support
        obj = torch.polar(amp, phase)
        wave = torch.fft.fftshift(torch.fft.fft2(self.probe * obj, norm="ortho"), dim=(-2, -1))
        return x, amp, phase, wave.real ** 2 + wave.imag ** 2

    def _loss(self, batch):
        (diffraction,) = batch
        _, _, _, intensity = self(diffraction)
        lam = self.intensity_scale ** 2 * intensity
        return torch.mean(lam - diffraction ** 2 * torch.log(lam + 1e-8))

    def training_step(self, batch, _):
        loss = self._loss(batch)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, _):
        self.log("val_loss", self._loss(batch), on_epoch=True)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def channel_last(t):
    return t.permute(0, 2, 3, 1).numpy()


def taps(model, diffraction, scale=None):
    """What ptyparity measures, channel-last: patches, input and predicted amplitudes."""
    s = float(model.intensity_scale) if scale is None else scale
    with torch.no_grad():
        x, amp, phase, intensity = model(diffraction, scale=None if scale is None else torch.tensor(scale))
    amplitude = torch.sqrt(intensity + 1e-12)
    return {"amp": channel_last(amp), "phase": channel_last(phase), "diffraction": channel_last(diffraction),
            "encoder_input": channel_last(x), "pred_amplitude": channel_last(amplitude),
            "pred_amplitude_counts": channel_last(s * amplitude)}


def predict_patches(model, batch):
    """The one function ParityCallback needs: (model, batch) -> amp, phase (and the scale taps)."""
    return taps(model, batch[0])


def train(train_path, *, n_groups=256, epochs=2, seed=0, experiment="ptyparity", run_name=None):
    """Train on ``n_groups`` patterns of the training NPZ; returns ``(model, train run id)``."""
    lightning.seed_everything(seed, verbose=False)
    data = load_npz(train_path)
    s, probe = scales_of(data.diff3d, data.probe)
    pick = np.random.default_rng(seed).permutation(data.n_patterns)[:n_groups]
    diff = torch.as_tensor(data.diff3d[pick][:, None])
    n_val = max(1, n_groups // 20)
    train_set = torch.utils.data.TensorDataset(diff[n_val:])
    val_set = torch.utils.data.TensorDataset(diff[:n_val])
    model = PatchNet(probe, s)
    parity = ParityCallback(predict_patches, batch=(diff[:16],), data=data, data_path=train_path,
                            implementation=NAME, version=VERSION, gridsize=1, object_big=False, probe_big=False,
                            seed=seed, params={"n_groups": n_groups, "batch_size": 16},
                            scales={"intensity_scale": s, "input_norm": 1.0 / s}, experiment=experiment,
                            run_name=run_name)
    trainer = lightning.Trainer(max_epochs=epochs, callbacks=[parity], logger=False, enable_checkpointing=False,
                                enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                                num_sanity_val_steps=0)
    trainer.fit(model, torch.utils.data.DataLoader(train_set, batch_size=16, shuffle=True),
                torch.utils.data.DataLoader(val_set, batch_size=16))
    return model, parity.run_id


def infer(model, test_path, *, train_run_id=None, ignore_intensity_scale=False, experiment="ptyparity",
          run_name=None):
    """Reconstruct the test NPZ and record it; returns the infer run id.

    ``ignore_intensity_scale`` is a deliberate bug (the negative control): the trained scale is
    recorded but the network is run with 1.0, as a port that forgets to load it would.
    """
    data = load_npz(test_path)
    diffraction = torch.as_tensor(data.diff3d[:, None])
    out = taps(model.eval(), diffraction, scale=1.0 if ignore_intensity_scale else None)
    with record.infer_run(data, data_path=test_path, implementation=NAME, version=VERSION, backend="torch",
                          gridsize=1, object_big=False, probe_big=False, train_run_id=train_run_id,
                          experiment=experiment, run_name=run_name) as run:
        run.log_scales(intensity_scale=float(model.intensity_scale))
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
    model, train_id = train(args.train_data, n_groups=args.n_groups, epochs=args.epochs)
    infer_id = infer(model, args.test_data, train_run_id=train_id)
    print(f"train run {train_id}\ninfer run {infer_id}\nnext: ptyparity check-run {infer_id}")


if __name__ == "__main__":
    main()
