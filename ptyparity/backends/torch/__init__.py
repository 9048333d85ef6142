"""PyTorch backend.

- :mod:`ptyparity.backends.torch.ops`: differentiable torch copies of
  :mod:`ptyparity.physics` (same names, arguments and canonical channel-last layouts),
  plus ``to_backend`` / ``to_numpy``;
- :mod:`ptyparity.backends.torch.network`: the PtychoPINN ``nn.Module`` (SPEC §4) whose
  forward pass returns the SPEC §6 taps, and canonical-weights import/export;
- :mod:`ptyparity.backends.torch.lightning_module`: the thin LightningModule that
  wires loss, optimizer and the training hooks;
- :mod:`ptyparity.backends.torch.api`: the backend API of
  :func:`ptyparity.backends.load_backend`.

Importing this package imports no framework. It sets ``OMP_WAIT_POLICY=PASSIVE``
(unless already set) so that, as long as torch is first imported through this
backend, its OpenMP threads sleep instead of spin-waiting, which otherwise slows
training ~10x next to another busy process.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
