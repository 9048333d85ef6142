"""State dicts of PtychoPINN's PyTorch port (``ptycho_torch``): import when they map 1:1.

A ``model.pth`` is loaded with ``torch.load(weights_only=True)`` (tensors and plain
containers only; nothing else is unpickled). Its modules map onto ptyparity's canonical
convs when every one of them is a 3x3 conv (``weight`` (O, I, 3, 3) OIHW and ``bias``)
whose path has a word naming its role (``encoder``; ``amp``/``amplitude``; ``phase``/``phi``)
and whose shapes, in the state dict's order, are exactly ptyparity's ladder for the config; scalars equal
to 1.0 named ``alpha``, ``beta``, ``s1`` or ``s2`` (the port's identity factors) are
accepted as no-ops. Anything else (the port's default CBAM attention,
``…attention.ChannelGate.mlp.{1,3}``, ``…SpatialGate.compress``; convs the ladder does not
have, such as the unused probe_big convs it also stores) has no counterpart, and one
:class:`PtyparityError` lists those modules. The 1:1 case is checked only on synthetic
state dicts: no plain (attention-free) ptycho_torch checkpoint was available.
"""

from __future__ import annotations

import os

import numpy as np

from ptyparity import architecture
from ptyparity.errors import PtyparityError

IDENTITY_SCALARS = ("alpha", "beta", "s1", "s2")
# Role of a module from the words of its path (split at "." and "_"); branches before the
# encoder, so "autoencoder.decoder_phase" is the phase branch. Words, not substrings: "downsample"
# is not "amp".
ROLE_WORDS = (("phase", ("phase", "phi")), ("amp", ("amp", "amplitude")), ("encoder", ("encoder",)))
MAX_LISTED = 12


def _load(path):
    import torch

    source = os.fspath(path)
    if not os.path.isfile(source):
        raise PtyparityError(f"{source}: no such file; give the ptycho_torch model.pth")
    try:
        obj = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError, …
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise PtyparityError(f"{source}: not loadable with torch.load(weights_only=True) ({first[:200]}); "
                             "ptyparity reads plain state dicts only") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise PtyparityError(f"{source}: not a state dict of tensors; save model.state_dict()")
    return source, {k: v.detach().cpu().numpy() for k, v in obj.items()}


def _role(module):
    words = set(module.lower().replace("_", ".").split("."))
    for role, names in ROLE_WORDS:
        if words & set(names):
            return role
    return None


def _listed(names):
    shown = ", ".join(names[:MAX_LISTED])
    return shown + (f" and {len(names) - MAX_LISTED} more" if len(names) > MAX_LISTED else "")


def read_torch_state_dict(path, model_cfg):
    """Canonical conv weights from a ptycho_torch state dict, or one error naming what does not map.

    Parameters
    ----------
    path : str or PathLike
        A ``model.pth`` (a state dict, or a dict holding one under ``state_dict``).
    model_cfg : ModelConfig
        The config the weights must fit (the port keeps its config in dill files, which are
        never read); normally the ``ptychopinn`` conventions.

    Returns
    -------
    weights : dict of ndarray
        Canonical names, HWIO kernels, float32; ``log_scale`` is not part of a state dict
        and must be added by the caller.
    """
    source, state = _load(path)
    modules = {}
    for key, value in state.items():
        module, _, leaf = key.rpartition(".")
        modules.setdefault(module, {})[leaf] = value
    convs = {role: [] for role, _ in ROLE_WORDS}
    no_counterpart = []
    for module, leaves in modules.items():
        weight = leaves.get("weight")
        if set(leaves) == {"weight", "bias"} and weight.ndim == 4 and weight.shape[2:] == (3, 3) \
                and _role(module) is not None:
            convs[_role(module)].append((module, leaves))
        elif set(leaves) <= set(IDENTITY_SCALARS):  # e.g. forward_model.{alpha, beta}
            no_counterpart += [f"{module}.{leaf} (= {v.reshape(-1)[:2].tolist()}, not the identity 1.0)"
                               for leaf, v in leaves.items() if v.size != 1 or float(v.reshape(-1)[0]) != 1.0]
        else:
            no_counterpart.append(module)
    expected = {role: [s for s in architecture.all_convs(model_cfg) if s.name.split(".")[0].startswith(role)]
                for role in convs}
    weights = {}
    for role, found in convs.items():
        specs = expected[role]
        for k, (module, leaves) in enumerate(found):
            if k >= len(specs):
                no_counterpart.append(module)
                continue
            spec = specs[k]
            kernel = np.transpose(leaves["weight"], (2, 3, 1, 0)).astype(np.float32)  # OIHW -> HWIO
            if kernel.shape != spec.kernel_shape or leaves["bias"].shape != (spec.c_out,):
                no_counterpart.append(f"{module} ({tuple(leaves['weight'].shape)} where {spec.name} needs "
                                      f"{(spec.c_out, spec.c_in, 3, 3)})")
                continue
            weights[f"{spec.name}.kernel"] = kernel
            weights[f"{spec.name}.bias"] = leaves["bias"].astype(np.float32)
    if no_counterpart:
        raise PtyparityError(f"{source}: {len(no_counterpart)} module(s) have no counterpart in ptyparity's network: "
                             f"{_listed(no_counterpart)}; only plain-cnn ports (no attention, no extra convs) import")
    missing = [name for name in architecture.weight_shapes(model_cfg)
               if name != architecture.LOG_SCALE and name not in weights]
    if missing:
        raise PtyparityError(f"{source}: the state dict lacks {len(missing)} conv weight(s) of the config's network: "
                             f"{_listed(missing)}; check N, gridsize and n_filters_scale")
    return weights
