"""Bring models of the real PtychoPINN (github hoidn/PtychoPINN) into ptyparity.

- :func:`read_checkpoint`: a TensorFlow ``wts.h5.zip`` read with zipfile + json + h5py
  (its ``*.dill`` members are never opened) into canonical weights and a ``ModelConfig``
  carrying the upstream conventions (``config.PTYCHOPINN_CONVENTIONS``);
- :func:`import_model` adds the dataset (probe, input normalisation), :func:`write_bundle`
  saves an ordinary checksummed bundle;
- :data:`UPSTREAM_TAPS` and :func:`inputs_from_upstream`: upstream's dump keys and inputs
  against ptyparity's taps, for judging any implementation's forward pass;
- :func:`read_torch_state_dict`: the PyTorch port's state dicts, when they map 1:1.

PtychoPINN is GPL-3; nothing here is derived from its code, only from its saved files
and documented behaviour.
"""

from ptyparity.ptychopinn.checkpoint import Checkpoint, read_checkpoint
from ptyparity.ptychopinn.importer import ImportedModel, import_model, write_bundle
from ptyparity.ptychopinn.taps import (UPSTREAM_INPUTS, UPSTREAM_TAPS, UpstreamTap, inputs_from_upstream,
                                       inputs_to_upstream, probe_to_upstream, relative_error, to_upstream,
                                       upstream_tap_errors)
from ptyparity.ptychopinn.torch_port import read_torch_state_dict

__all__ = ["Checkpoint", "ImportedModel", "UPSTREAM_INPUTS", "UPSTREAM_TAPS", "UpstreamTap", "import_model",
           "inputs_from_upstream", "inputs_to_upstream", "probe_to_upstream", "read_checkpoint",
           "read_torch_state_dict", "relative_error", "to_upstream", "upstream_tap_errors", "write_bundle"]
