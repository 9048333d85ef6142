"""The ``matrix`` run: the parity matrix (:mod:`ptyparity.matrix`) recorded as one parent run
with one nested ``matrix_cell`` child per cell.

A child's params are its cell, its metrics the per-tap errors (``<comparison>.<tap>``), the
worst error / tolerance and, when trained, ``trajectory.error`` / ``.floor`` / ``.tolerance``;
its tag ``parity.status`` says pass, fail or error. The parent holds ``matrix/summary.json``,
``matrix/table.html`` and ``matrix/heatmap.png`` and the tags ``parity.status`` and
``parity.failed_cells``. Bad axes are refused before any run opens.
"""

from __future__ import annotations

import dataclasses
import math
import time

from ptyparity import matrix, matrix_report, names, tracking


@dataclasses.dataclass(frozen=True)
class MatrixResult:
    """The outcome of a matrix run.

    Attributes
    ----------
    run_id : str
        The parent run.
    status : {"pass", "fail"}
    results : list of ptyparity.matrix.CellResult
    child_run_ids : dict
        Cell id -> its child run.
    seconds : float
        Wall time of the cells (framework imports included).
    exit_code : int
        0 when every cell passes, else 1.
    """

    run_id: str
    status: str
    results: list
    child_run_ids: dict
    seconds: float

    @property
    def exit_code(self):
        return 0 if self.status == "pass" else 1

    @property
    def failed_cells(self):
        return [r.id for r in self.results if r.status != "pass"]


def _finite(obj):
    """``obj`` with every non-finite float as None (strict JSON)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _cell_metrics(result):
    metrics = {f"{c}.{tap}": err for c, errors in result.errors.items() for tap, err in errors.items()}
    metrics["worst_ratio"] = result.worst_ratio
    metrics["seconds"] = result.seconds
    if result.trajectory:
        metrics.update({f"{names.TRAJECTORY_PREFIX}{k}": result.trajectory[k] for k in ("error", "floor", "tolerance")
                        if result.trajectory[k] is not None})
        metrics[f"{names.TRAJECTORY_PREFIX}steps"] = result.trajectory["steps"]
    return metrics


def _failed_tag(failed):
    text = ",".join(failed) if failed else names.NONE_LISTED
    if len(text) > 4000:  # MLflow tag values are bounded; the summary lists them all
        text = f"{len(failed)} cells, see {names.MATRIX_SUMMARY}: " + text[:3900] + "…"
    return text


def line(result):
    """One printable line of a cell."""
    text = f"{result.status:5s} {result.id:46s} worst err/tol {result.worst_ratio:9.2e}  {result.seconds:5.1f} s"
    if result.first_divergent_tap:
        text += f"  first divergent: {result.first_divergent_tap} ({result.first_divergent_comparison})"
    if result.trajectory and not result.trajectory["passed"]:
        text += f"  trajectory {result.trajectory['error']:.2e} > {result.trajectory['tolerance']:.2e}"
    if result.error:
        text += f"  {result.error}"
    return text


def run_matrix(*, axes=None, train_steps=0, quick=False, seed=0, experiment=names.DEFAULT_EXPERIMENT,
               run_name=None, echo=None, apis=None):
    """Sweep the cells and record the matrix.

    Parameters
    ----------
    axes : str, optional
        ``--axes`` text (:func:`ptyparity.matrix.parse_axes`); None or "": every axis.
    train_steps : int
        K deterministic training steps per cell (0: forward passes only).
    quick : bool
        The representative subset :data:`ptyparity.matrix.QUICK_CELLS`.
    seed : int
        Seed of the simulated data, the groups and the weights.
    echo : callable, optional
        Receives one line per cell as it completes.
    apis : dict, optional
        Backend APIs (default both, :func:`ptyparity.matrix.load_backends`).

    Returns
    -------
    result : MatrixResult

    Raises
    ------
    PtyparityError
        Bad axes or train steps (before any run opens).
    """
    parsed = matrix.parse_axes(axes)
    cells = matrix.cell_grid(parsed, train_steps=train_steps, quick=quick)
    start = time.perf_counter()
    apis = apis or matrix.load_backends()
    run_name = run_name or f"matrix-{'quick' if quick else 'full'}-{len(cells)}"
    with tracking.start_run(names.KIND_MATRIX, experiment=experiment, run_name=run_name) as parent:
        parent_id = parent.info.run_id
        versions = {k: v for api in apis.values() for k, v in api.versions().items()}
        tracking.log_params({"axes": axes or "all", "train_steps": train_steps, "quick": quick, "seed": seed,
                             "n_cells": len(cells), "n_filters_scale": matrix.N_FILTERS_SCALE,
                             "batch_groups": matrix.BATCH_GROUPS, **versions})
        results, children = [], {}
        for cell in cells:
            cell_id = matrix.cell_id(cell)
            with tracking.start_run(names.KIND_MATRIX_CELL, experiment=experiment, run_name=cell_id,
                                    parent_run_id=parent_id, tags={names.TAG_MATRIX_CELL: cell_id}) as child:
                tracking.log_params({**cell, "train_steps": train_steps, "seed": seed})
                result = matrix.run_cell(cell, apis, train_steps=train_steps, seed=seed)
                tracking.log_metrics(_cell_metrics(result))
                tracking.set_tags({names.PARITY_STATUS: result.status,
                                   names.PARITY_FIRST_DIVERGENT_TAP: result.first_divergent_tap or names.NONE_LISTED,
                                   names.PARITY_FIRST_DIVERGENT_COMPARISON:
                                       result.first_divergent_comparison or names.NONE_LISTED,
                                   **({names.PARITY_ERROR: result.error} if result.error else {})})
            children[cell_id] = child.info.run_id
            results.append(result)
            if echo is not None:
                echo(line(result))
        seconds = time.perf_counter() - start
        record = matrix.summary(results, axes=parsed, train_steps=train_steps, seed=seed, seconds=seconds)
        record["child_run_ids"] = children
        tracking.log_dict(_finite(record), names.MATRIX_SUMMARY)
        tracking.log_text(matrix_report.matrix_html(record), names.MATRIX_TABLE)
        tracking.log_figure(matrix_report.heatmap_figure(record), names.MATRIX_HEATMAP)
        tracking.log_metrics({"n_cells": len(results), "n_failed": record["n_failed"], "seconds": seconds})
        tracking.set_tags({names.PARITY_STATUS: record["status"],
                           names.PARITY_FAILED_CELLS: _failed_tag(record["failed_cells"])})
    return MatrixResult(run_id=parent_id, status=record["status"], results=results, child_run_ids=children,
                        seconds=seconds)
