"""Read a PtychoPINN autoencoder's Keras ``config.json`` graph: the conv layers' roles.

Keras names layers by creation order (``conv2d_8`` may be the first decoder conv, and the
unused probe_big convs take numbers without appearing in the graph), so roles come from
following the graph from the diffraction input: the encoder chain up to the bottleneck,
where it forks into two decoders, each ending in a ``GetItem`` slice, a head conv and an
``ActivationLayer`` whose function (sigmoid / pi tanh) says which branch is the amplitude.
Everything the import relies on is checked here, one :class:`PtyparityError` per surprise.
Plain dict processing: no Keras import, nothing deserialised but JSON.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ptyparity.architecture import HEAD_BORDER_CHANNELS
from ptyparity.config import PATCH_SIZES
from ptyparity.errors import PtyparityError


@dataclass(frozen=True)
class Layer:
    """One layer of the functional graph: class, name, config and input layer names."""

    class_name: str
    name: str
    config: dict
    inputs: tuple
    call_args: tuple  # the non-tensor positional arguments (GetItem's slice)


@dataclass(frozen=True)
class GraphSummary:
    """What the graph says about the model.

    Attributes
    ----------
    N, gridsize, n_filters_scale : int
    object_big, probe_big : bool
    padded_size : int
        Side of the merge canvas (``ReassemblePatchesLayer``), N when not object_big.
    convs : dict
        Canonical conv name (``encoder.0.conv1``, ``amp_head.conv``, …) -> Keras layer name.
    """

    N: int
    gridsize: int
    n_filters_scale: int
    object_big: bool
    probe_big: bool
    padded_size: int
    convs: dict


def _fail(source, msg):
    raise PtyparityError(f"{source}: {msg}")


def _tensor_inputs(obj, found):
    if isinstance(obj, dict):
        if obj.get("class_name") == "__keras_tensor__":
            found.append(obj["config"]["keras_history"][0])
        else:
            for value in obj.values():
                _tensor_inputs(value, found)
    elif isinstance(obj, list):
        for value in obj:
            _tensor_inputs(value, found)
    return found


def parse_layers(config, source):
    """The functional model's layers by name, in the file's order."""
    try:
        raw = config["config"]["layers"]
    except (KeyError, TypeError):
        _fail(source, "config.json has no functional 'layers' list; is this a Keras 3 model.keras of PtychoPINN?")
    layers = {}
    for item in raw:
        nodes = item.get("inbound_nodes") or []
        args = tuple(nodes[0].get("args", ())[1:]) if nodes else ()
        layers[item["name"]] = Layer(item["class_name"], item["name"], item.get("config", {}),
                                     tuple(_tensor_inputs(nodes, [])), args)
    return layers


def _consumers(layers):
    out = {name: [] for name in layers}
    for layer in layers.values():
        for src in layer.inputs:
            out.setdefault(src, []).append(layer.name)
    return out


def _slice_of(layer, source):
    """``(start, stop)`` of a GetItem ``[..., start:stop]`` on the channel axis."""
    try:
        ellipsis, sl = layer.call_args[0]
        if ellipsis.get("class_name") != "__ellipsis__" or sl.get("class_name") != "__slice__":
            raise ValueError
        cfg = sl["config"]
        if cfg.get("step") not in (None, 1):
            raise ValueError
        return cfg.get("start"), cfg.get("stop")
    except (ValueError, TypeError, KeyError, IndexError):
        _fail(source, f"layer {layer.name!r} slices the decoder output in a way ptyparity does not know "
                      f"({layer.call_args!r}); expected [..., :-{HEAD_BORDER_CHANNELS}]")


def _check_conv(layer, source, activation):
    cfg = layer.config
    expected = {"kernel_size": [3, 3], "strides": [1, 1], "padding": "same", "dilation_rate": [1, 1],
                "use_bias": True, "activation": activation}
    for key, value in expected.items():
        if cfg.get(key) != value:
            _fail(source, f"conv layer {layer.name!r} has {key} {cfg.get(key)!r}, expected {value!r}; "
                          "this is not the PtychoPINN cnn architecture ptyparity imports")


def _check_kinds(path, allowed, what, source):
    """Only ``allowed`` layer classes on ``path``, with the pool/upsample sizes of the ladder."""
    for lyr in path:
        if lyr.class_name not in allowed:
            _fail(source, f"the {what} holds a {lyr.class_name} layer ({lyr.name!r}) that ptyparity's "
                          "network does not have")
        cfg = lyr.config
        if lyr.class_name == "MaxPooling2D" and (cfg.get("pool_size"), cfg.get("strides")) != ([2, 2], [2, 2]):
            _fail(source, f"max pool {lyr.name!r} is not 2x2 with stride 2")
        if lyr.class_name == "UpSampling2D" and (cfg.get("size"), cfg.get("interpolation")) != ([2, 2], "nearest"):
            _fail(source, f"upsampling {lyr.name!r} is not 2x nearest")
    return sum(lyr.class_name in ("MaxPooling2D", "UpSampling2D") for lyr in path)


def _chain(layers, consumers, start, source, stop_at):
    """Follow single-consumer links from ``start`` until ``stop_at(layer)``; the layers passed."""
    path, name = [], start
    for _ in range(len(layers)):
        nxt = consumers.get(name, [])
        if len(nxt) != 1 or stop_at(layers[name]):
            return path, name
        name = nxt[0]
        path.append(layers[name])
    _fail(source, "config.json graph has a cycle")


def _trace_branch(layers, consumers, first, n_stages, source):
    """One decoder from its first conv to its head's activation.

    Returns
    -------
    branch : {"amp", "phase"}
        From the activation: sigmoid (amplitude) or pi * tanh (phase).
    decoder_convs : list of Layer
    head_conv : Layer
    has_border : bool
        The decoder's last channels also feed a probe_big border branch.
    """
    more, tail = _chain(layers, consumers, first, source,
                        lambda lyr: any(layers[x].class_name == "GetItem" for x in consumers.get(lyr.name, [])))
    path = [layers[first], *more]
    if _check_kinds(path, ("Conv2D", "UpSampling2D"), "decoder", source) != n_stages - 1:
        _fail(source, f"a decoder does not have {n_stages - 1} upsamplings (ptyparity's ladder)")
    slices = [layers[x] for x in consumers.get(tail, []) if layers[x].class_name == "GetItem"]
    main, has_border = None, False
    for sl in slices:
        start, stop = _slice_of(sl, source)
        if start is None and stop == -HEAD_BORDER_CHANNELS:
            main = sl
        elif start == -HEAD_BORDER_CHANNELS and stop is None:
            has_border = True
        else:
            _fail(source, f"layer {sl.name!r} slices [..., {start}:{stop}]; expected "
                          f"[..., :-{HEAD_BORDER_CHANNELS}] (and [..., -{HEAD_BORDER_CHANNELS}:] with probe_big)")
    if main is None:
        _fail(source, f"decoder ending at {tail!r} has no [..., :-{HEAD_BORDER_CHANNELS}] head slice; "
                      "not the PtychoPINN head layout")
    head_path, act_name = _chain(layers, consumers, main.name, source, lambda lyr: lyr.class_name == "ActivationLayer")
    head_convs = [lyr for lyr in head_path if lyr.class_name == "Conv2D"]
    act = layers[act_name]
    if act.class_name != "ActivationLayer" or len(head_convs) != 1:
        _fail(source, f"the head after {main.name!r} is not one conv and an ActivationLayer")
    _check_kinds(head_path, ("Conv2D", "ActivationLayer"), "head", source)
    kind = (act.config.get("activation_name"), act.config.get("scale"))
    if kind[0] == "sigmoid" and math.isclose(kind[1], 1.0):
        branch = "amp"
    elif kind[0] == "tanh" and math.isclose(kind[1], math.pi):
        branch = "phase"
    else:
        _fail(source, f"head activation {kind[0]!r} x {kind[1]!r} is not sigmoid (amplitude) or pi*tanh (phase); "
                      "ptyparity imports amp_activation 'sigmoid' models only")
    return branch, [lyr for lyr in path if lyr.class_name == "Conv2D"], head_convs[0], has_border


def summarize_graph(config, source):
    """Map every conv of a PtychoPINN autoencoder graph to its canonical role.

    Parameters
    ----------
    config : dict
        ``config.json`` of ``autoencoder/model.keras``.
    source : str
        Name used in error messages.

    Returns
    -------
    summary : GraphSummary
    """
    layers = parse_layers(config, source)
    consumers = _consumers(layers)
    images = [lyr for lyr in layers.values() if lyr.class_name == "InputLayer"
              and len(lyr.config.get("batch_shape", [])) == 4 and lyr.config["batch_shape"][1] > 2]
    if len(images) != 1:
        _fail(source, f"expected one diffraction input (None, N, N, C) in config.json, found {len(images)}")
    _, n, n2, c = images[0].config["batch_shape"]
    gridsize = math.isqrt(c)
    if n != n2 or gridsize**2 != c:
        _fail(source, f"diffraction input shape {images[0].config['batch_shape']} is not (None, N, N, gridsize**2)")
    if n not in PATCH_SIZES:
        _fail(source, f"the model's patterns are {n}x{n}; ptyparity supports N in {PATCH_SIZES}")

    # Encoder: from the input through IntensityScaler, convs and pools, up to the fork.
    enc, bottleneck = _chain(layers, consumers, images[0].name, source, lambda lyr: False)
    if not enc or enc[0].class_name != "IntensityScaler":
        _fail(source, "the diffraction input does not feed an IntensityScaler; not a PtychoPINN model")
    enc_convs = [lyr for lyr in enc if lyr.class_name == "Conv2D"]
    n_stages = int(math.log2(n)) - 3
    if _check_kinds(enc[1:], ("Conv2D", "MaxPooling2D"), "encoder", source) != n_stages:
        _fail(source, f"the encoder does not have {n_stages} max pools (ptyparity's ladder at N={n})")
    if len(consumers.get(bottleneck, [])) != 2:
        _fail(source, "the encoder does not fork into an amplitude and a phase decoder")
    if not enc_convs or enc_convs[0].config.get("filters") is None:
        _fail(source, "the encoder has no conv layers")
    base = 128 // 2 ** (n_stages - 1)
    f = enc_convs[0].config["filters"] // base
    if f < 1 or enc_convs[0].config["filters"] != base * f:
        _fail(source, f"first encoder conv has {enc_convs[0].config['filters']} filters; ptyparity's ladder "
                      f"needs a multiple of {base} at N={n}")
    convs = {}
    if len(enc_convs) != 2 * n_stages:
        _fail(source, f"the encoder has {len(enc_convs)} convs; ptyparity's ladder has {2 * n_stages} at N={n}")
    for k, lyr in enumerate(enc_convs):
        _check_conv(lyr, source, "relu")
        convs[f"encoder.{k // 2}.conv{k % 2 + 1}"] = lyr.name

    probe_big = False
    branches = {}
    for first in consumers[bottleneck]:
        branch, dec, head_conv, border = _trace_branch(layers, consumers, first, n_stages, source)
        if branch in branches:
            _fail(source, f"both decoders end in a {branch} activation")
        branches[branch] = (dec, head_conv)
        probe_big = probe_big or border
    for branch, (dec, head_conv) in branches.items():
        if len(dec) != 2 * (n_stages - 1):
            _fail(source, f"the {branch} decoder has {len(dec)} convs; ptyparity's ladder has "
                          f"{2 * (n_stages - 1)} at N={n}")
        for k, lyr in enumerate(dec):
            _check_conv(lyr, source, "relu")
            convs[f"{branch}_decoder.{k // 2}.conv{k % 2 + 1}"] = lyr.name
        _check_conv(head_conv, source, "linear")
        convs[f"{branch}_head.conv"] = head_conv.name

    reassemble = [lyr for lyr in layers.values() if lyr.class_name == "ReassemblePatchesLayer"]
    object_big = bool(reassemble)
    padded_size = int(reassemble[0].config.get("padded_size", n)) if object_big else n
    if object_big and reassemble[0].config.get("gridsize", gridsize) != gridsize:
        _fail(source, "ReassemblePatchesLayer gridsize disagrees with the input's channel count")
    for lyr in layers.values():
        if lyr.class_name == "ExtractPatchesPositionLayer" and lyr.config.get("jitter", 0.0) != 0.0:
            _fail(source, f"layer {lyr.name!r} adds position jitter {lyr.config['jitter']}; ptyparity imports "
                          "models without it")
        if lyr.class_name == "ZeroPadding2D" and lyr.config.get("padding") != [[n // 4, n // 4]] * 2:
            _fail(source, f"layer {lyr.name!r} pads by {lyr.config.get('padding')}, expected N/4 = {n // 4}")
        if lyr.class_name == "PadAndDiffractLayer" and lyr.config.get("pad", False):
            _fail(source, f"layer {lyr.name!r} pads before the FFT; ptyparity imports pad=false models only")
    return GraphSummary(N=n, gridsize=gridsize, n_filters_scale=f, object_big=object_big, probe_big=probe_big,
                        padded_size=padded_size, convs=convs)
