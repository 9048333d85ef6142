"""PyTorch backend.

- :mod:`ptyparity.backends.torch.ops`: differentiable torch copies of
  :mod:`ptyparity.physics` (same names, arguments and canonical channel-last layouts),
  plus ``to_backend`` / ``to_numpy``;
- :mod:`ptyparity.backends.torch.network`: the PtychoPINN ``nn.Module`` (SPEC §4) whose
  forward pass returns the SPEC §6 taps, and canonical-weights import/export;
- :mod:`ptyparity.backends.torch.lightning_module`: the thin LightningModule that
  wires loss, optimizer and the training hooks;
- :mod:`ptyparity.backends.torch.api`: the backend API of
  :func:`ptyparity.backends.load_backend`;
- :mod:`ptyparity.backends.torch.openmp`: how torch's OpenMP threads wait, and the
  governor that gives a training one thread while other processes keep the CPUs busy.

Importing this package imports no framework. It sets libgomp's wait defaults
(:func:`ptyparity.backends.torch.openmp.environment_defaults`: a short spin, then sleep;
unless the user set ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT``), which take effect as long
as torch is first imported through this backend.
"""

from ptyparity.backends.torch.openmp import environment_defaults

environment_defaults()
