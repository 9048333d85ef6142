"""Take and restore a :class:`ptyparity.checkpoint.TrainState` of a Keras fit.

Keras kernels are already HWIO, so the canonical arrays are the variables' values in
the training precision; Adam's moments are the optimizer's per-variable slots
(:class:`~ptyparity.backends.tensorflow.keras_model.SpecAdam`) and its ``iterations``.
Values are copied bit for bit, so a restored fit computes what the uninterrupted one would.
"""

from __future__ import annotations

import numpy as np

from ptyparity import architecture
from ptyparity.errors import PtyparityError


def canonical_variables(net):
    """``{canonical name: variable}`` of a PtychoPINN network."""
    out = {}
    for spec in architecture.all_convs(net.cfg):
        layer = net.convs[spec.name]
        out[f"{spec.name}.kernel"], out[f"{spec.name}.bias"] = layer.kernel, layer.bias
    out[architecture.LOG_SCALE] = net.log_scale
    return out


def _trained(net, optimizer):
    """``{canonical name: (m, v)}`` slots of the variables the optimizer trains."""
    trained = {id(v) for v in net.trainable_variables}
    return {name: (optimizer._momentums[optimizer._get_variable_index(var)],
                   optimizer._velocities[optimizer._get_variable_index(var)])
            for name, var in canonical_variables(net).items() if id(var) in trained}


def capture(system):
    """``(weights, adam_m, adam_v, step, rng)`` of a :class:`PtychoPINNSystem`, canonical."""
    net, optimizer = system.net, system.optimizer
    weights = {name: np.array(var.numpy()) for name, var in canonical_variables(net).items()}
    slots = _trained(net, optimizer)
    adam_m = {name: np.array(m.numpy()) for name, (m, _) in slots.items()}
    adam_v = {name: np.array(v.numpy()) for name, (_, v) in slots.items()}
    # TensorFlow's global seed is re-set from the config by every fit and training draws no
    # random numbers, so there is no generator state to keep.
    return weights, adam_m, adam_v, int(optimizer.iterations.numpy()), {}


def _assign(var, array, what):
    array = np.asarray(array)
    if tuple(array.shape) != tuple(var.shape) or array.dtype != np.dtype(var.dtype):
        raise PtyparityError(f"checkpoint {what} {array.shape} {array.dtype} does not fit the model's "
                             f"{tuple(var.shape)} {var.dtype}; resume with the run's own config")
    var.assign(array)


def restore(system, state):
    """Weights, Adam's moments and ``iterations`` of ``state`` into ``system`` (built, optimizer built)."""
    variables = canonical_variables(system.net)
    slots = _trained(system.net, system.optimizer)
    if set(state.weights) != set(variables):
        raise PtyparityError("the checkpoint's weights do not match this network; resume with the run's own config")
    if set(state.adam_m) != set(slots) or set(state.adam_v) != set(slots):
        raise PtyparityError("the checkpoint's optimizer state covers other weights than this training "
                             "(intensity_scale_trainable differs?); resume with the run's own config")
    for name, var in variables.items():
        _assign(var, state.weights[name], name)
    for name, (m, v) in slots.items():
        _assign(m, state.adam_m[name], f"adam_m/{name}")
        _assign(v, state.adam_v[name], f"adam_v/{name}")
    system.optimizer.iterations.assign(state.step)
