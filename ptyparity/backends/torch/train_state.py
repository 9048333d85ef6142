"""Take and restore a :class:`ptyparity.checkpoint.TrainState` of a torch fit.

Weights and Adam's moments go to the canonical names and HWIO layout (torch's conv
weights are OIHW), in the training precision, so a restored fit computes exactly
what the uninterrupted one would: the arrays are copied bit for bit, only permuted.
"""

from __future__ import annotations

import numpy as np
import torch

from ptyparity import architecture
from ptyparity.architecture import LOG_SCALE
from ptyparity.errors import PtyparityError

_TO_CANONICAL = (2, 3, 1, 0)  # OIHW -> HWIO
_FROM_CANONICAL = (3, 2, 0, 1)  # HWIO -> OIHW


def canonical_parameters(net):
    """``{canonical name: parameter}`` of a PtychoPINN network."""
    params = {}
    for spec in architecture.all_convs(net.cfg):
        conv = net.get_submodule(spec.name)
        params[f"{spec.name}.kernel"], params[f"{spec.name}.bias"] = conv.weight, conv.bias
    params[LOG_SCALE] = net.log_scale
    return params


def _to_numpy(tensor):
    tensor = tensor.detach().cpu()
    # np.array, not np.ascontiguousarray: that would make log_scale's () a (1,)
    return np.array((tensor.permute(*_TO_CANONICAL) if tensor.ndim == 4 else tensor).numpy(), order="C")


def _copy_into(target, array):
    """Copy canonical ``array`` into ``target`` in place (its dtype, device and memory format)."""
    value = torch.from_numpy(np.asarray(array))
    if value.ndim == 4:
        value = value.permute(*_FROM_CANONICAL)
    if tuple(value.shape) != tuple(target.shape) or value.dtype != target.dtype:
        raise PtyparityError(f"checkpoint array {tuple(value.shape)} {value.dtype} does not fit the model's "
                             f"{tuple(target.shape)} {target.dtype}; resume with the run's own config")
    with torch.no_grad():
        target.copy_(value)


def capture(net, optimizer):
    """``(weights, adam_m, adam_v, step, rng)`` of a network and its Adam, canonical."""
    params = canonical_parameters(net)
    weights = {name: _to_numpy(p) for name, p in params.items()}
    adam_m, adam_v, step = {}, {}, 0
    for name, p in params.items():
        state = optimizer.state.get(p)
        if state:
            adam_m[name], adam_v[name] = _to_numpy(state["exp_avg"]), _to_numpy(state["exp_avg_sq"])
            step = int(state["step"])
    return weights, adam_m, adam_v, step, {"torch_cpu": torch.get_rng_state().numpy().copy()}


def restore_weights(net, state):
    """The checkpoint's weights into ``net`` (already in the training precision)."""
    params = canonical_parameters(net)
    if set(state.weights) != set(params):
        raise PtyparityError("the checkpoint's weights do not match this network; resume with the run's own config")
    for name, p in params.items():
        _copy_into(p, state.weights[name])


def restore_optimizer(net, optimizer, state):
    """Adam's moments and step count into ``optimizer`` (built over ``net``'s trained parameters)."""
    params = canonical_parameters(net)
    trained = {name for name, p in params.items() if p.requires_grad}
    if set(state.adam_m) != trained or set(state.adam_v) != trained:
        raise PtyparityError("the checkpoint's optimizer state covers other weights than this training "
                             "(intensity_scale_trainable differs?); resume with the run's own config")
    fused = optimizer.param_groups[0].get("fused")  # a fused Adam keeps its step beside the weights
    for name in trained:
        p = params[name]
        m, v = torch.empty_like(p), torch.empty_like(p)  # preserve_format: channels_last like p
        _copy_into(m, state.adam_m[name])
        _copy_into(v, state.adam_v[name])
        optimizer.state[p] = {"step": torch.tensor(float(state.step), dtype=torch.float32,
                                                   device=p.device if fused else "cpu"),
                              "exp_avg": m, "exp_avg_sq": v}
    if "torch_cpu" in state.rng:
        torch.set_rng_state(torch.from_numpy(np.asarray(state.rng["torch_cpu"], np.uint8)))
