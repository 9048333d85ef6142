"""The cells of the parity matrix (:mod:`ptyparity.matrix`): the axes, the ``--axes`` text,
the grid and the cells' names. Pure; no framework.
"""

from __future__ import annotations

import itertools

from ptyparity.config import LOSS_MODES, MERGE_WEIGHTINGS, PRECISIONS, ModelConfig, TrainConfig
from ptyparity.errors import PtyparityError

_MODEL, _TRAIN = ModelConfig(), TrainConfig()
# Every axis with the values the default sweep covers, in the order cells are listed.
AXES = {"object_big": (True, False), "probe_big": (False, True), "gridsize": (1, 2), "N": (32, 64),
        "merge_weighting": MERGE_WEIGHTINGS, "loss_mode": LOSS_MODES, "intensity_scale_trainable": (False, True),
        "precision": PRECISIONS}
# The value of an axis that is not swept: the config dataclasses' default (one source of defaults).
FIXED = {"object_big": _MODEL.object_big, "probe_big": _MODEL.probe_big, "gridsize": _MODEL.gridsize,
         "N": _MODEL.N, "merge_weighting": _MODEL.merge_weighting, "loss_mode": _TRAIN.loss_mode,
         "intensity_scale_trainable": _MODEL.intensity_scale_trainable, "precision": _TRAIN.precision}
# --quick: a representative subset. Every value of every axis appears, and each negative
# control of tests/test_matrix.py has cells that must fail and cells that must pass.
QUICK_CELLS = (
    dict(object_big=True, probe_big=False, gridsize=2, N=32, merge_weighting="support"),
    dict(object_big=True, probe_big=True, gridsize=2, N=32, merge_weighting="support"),
    dict(object_big=True, probe_big=False, gridsize=2, N=32, merge_weighting="probe"),
    dict(object_big=False, probe_big=False, gridsize=1, N=32),
    dict(object_big=True, probe_big=True, gridsize=1, N=64, precision="float64"),
    dict(object_big=False, probe_big=True, gridsize=2, N=64),
    dict(object_big=True, probe_big=False, gridsize=2, N=64, merge_weighting="probe",
         intensity_scale_trainable=True, precision="float64"),
    dict(object_big=True, probe_big=False, gridsize=1, N=32, intensity_scale_trainable=True, loss_mode="mae"),
    dict(object_big=True, probe_big=True, gridsize=2, N=32, loss_mode="mae", precision="float64"),
    dict(object_big=False, probe_big=False, gridsize=2, N=32, intensity_scale_trainable=True, precision="float64"),
    dict(object_big=True, probe_big=False, gridsize=2, N=64, merge_weighting="support", precision="float64"),
)

def parse_axes(text):
    """The axes to sweep from ``--axes`` text.

    Parameters
    ----------
    text : str or None
        Comma-separated axis names (``object_big,gridsize``), each optionally with its
        values (``gridsize=2``, ``N=32:64``). None or "": every axis of :data:`AXES`.

    Returns
    -------
    axes : dict
        Axis name -> tuple of values, in :data:`AXES` order; an axis left out is fixed
        at its :data:`FIXED` value.
    """
    if text is None or not str(text).strip():
        return dict(AXES)
    chosen = {}
    for item in str(text).split(","):
        name, _, values = item.strip().partition("=")
        if name not in AXES:
            raise PtyparityError(f"unknown matrix axis {name!r}; axes are {', '.join(AXES)} "
                                 "(e.g. --axes object_big,gridsize=2)")
        if name in chosen:
            raise PtyparityError(f"matrix axis {name!r} is given twice in --axes; name each axis once")
        chosen[name] = tuple(_axis_value(name, v) for v in values.split(":")) if values else AXES[name]
    return {name: chosen[name] for name in AXES if name in chosen}


def _axis_value(name, text):
    for value in AXES[name]:
        if str(value).lower() == text.strip().lower():
            return value
    raise PtyparityError(f"matrix axis {name} takes {', '.join(map(str, AXES[name]))}; got {text!r}")


def cell_grid(axes=None, *, train_steps=0, quick=False):
    """The cells to run, in sweep order.

    Axes that cannot change a cell's outcome are not swept, so no cell repeats another:
    ``merge_weighting`` only with ``object_big`` (nothing is merged otherwise) and
    ``loss_mode`` only with ``train_steps`` (a forward pass has no loss); such a cell gets
    the axis' first value.

    Parameters
    ----------
    axes : dict, optional
        From :func:`parse_axes` (default every axis).
    train_steps : int
    quick : bool
        :data:`QUICK_CELLS` instead of the full product (``axes`` then restricts the subset
        to its values).

    Returns
    -------
    cells : list of dict
        Axis name -> value for every axis of :data:`AXES` (``loss_mode`` only when training).
    """
    axes = dict(AXES) if axes is None else axes
    if isinstance(train_steps, bool) or not isinstance(train_steps, int) or train_steps < 0:
        raise PtyparityError(f"train steps must be an integer >= 0, got {train_steps!r}")
    swept = {name: tuple(axes.get(name, (FIXED[name],))) for name in AXES}
    if quick:
        candidates = [{**FIXED, **cell} for cell in QUICK_CELLS]
        candidates = [c for c in candidates if all(c[k] in swept[k] for k in AXES if k in axes)]
    else:
        candidates = [dict(zip(AXES, values)) for values in itertools.product(*swept.values())]
    cells, seen = [], set()
    for cell in candidates:
        if not cell["object_big"]:
            cell["merge_weighting"] = swept["merge_weighting"][0]
        if not train_steps:
            cell.pop("loss_mode")
        key = tuple(cell.items())
        if key not in seen:
            seen.add(key)
            cells.append(cell)
    if not cells:
        raise PtyparityError("no matrix cell matches --axes with --quick; widen --axes or drop --quick")
    return cells


_TOKENS = {"object_big": "ob", "probe_big": "pb", "gridsize": "g", "N": "N", "intensity_scale_trainable": "tr"}


def cell_id(cell):
    """Short name of a cell, e.g. ``ob1-pb0-g2-N32-support-poisson-tr0-f32``."""
    parts = []
    for name, value in cell.items():
        if name in _TOKENS:
            parts.append(f"{_TOKENS[name]}{int(value)}")
        elif name == "precision":
            parts.append("f" + value[-2:])
        else:
            parts.append(str(value))
    return "-".join(parts)
