"""The parity matrix as a picture: a self-contained, sortable HTML table and a heatmap.

Both read ``matrix/summary.json`` (:func:`ptyparity.matrix.summary`): one row per cell,
one column per tap, each entry the tap's worst error over the three comparisons, coloured
by that error divided by its tolerance (green far below, yellow near, red beyond).
matplotlib is imported lazily.
"""

from __future__ import annotations

import html
import math

import numpy as np

TRAJECTORY = "trajectory"  # the extra column of a trained matrix


def tap_ratios(cell, taps):
    """``{tap: (worst error / tolerance, that error, that comparison)}`` of one summary cell;
    taps the cell has not (``object_canvas`` without object_big) are left out."""
    out = {}
    for tap in taps:
        best = None
        for comparison, errors in cell["errors"].items():
            if tap not in errors:
                continue
            err, tol = errors[tap], cell["tolerances"][comparison][tap]
            ratio = err / tol if err is not None else math.inf
            if best is None or ratio > best[0]:
                best = (ratio, err, comparison)
        if best is not None:
            out[tap] = best
    if cell.get("trajectory"):
        t = cell["trajectory"]
        out[TRAJECTORY] = (t["error"] / t["tolerance"], t["error"], "torch_vs_tensorflow")
    return out


def colour(ratio):
    """Background for error / tolerance: green (<= 1e-4) through yellow (1) to red (beyond)."""
    if ratio is None or not math.isfinite(ratio) or ratio > 1:
        return "#f5a3a3"
    t = min(max((math.log10(max(ratio, 1e-30)) + 4) / 4, 0.0), 1.0)  # 1e-4 -> 0, 1 -> 1
    return f"hsl({120 - 75 * t:.0f}, 70%, {82 - 6 * t:.0f}%)"


def _number(x):
    return "inf" if x is None or not math.isfinite(x) else f"{x:.2e}"


_SORT_JS = """
document.querySelectorAll('th').forEach(function (th, col) {
  th.addEventListener('click', function () {
    var body = document.querySelector('#matrix tbody');
    var rows = Array.prototype.slice.call(body.rows);
    var dir = th.dataset.dir === 'asc' ? -1 : 1; th.dataset.dir = dir === 1 ? 'asc' : 'desc';
    rows.sort(function (a, b) {
      var x = a.cells[col].dataset.v, y = b.cells[col].dataset.v;
      var nx = parseFloat(x), ny = parseFloat(y);
      if (!isNaN(nx) && !isNaN(ny)) return dir * (nx - ny);
      return dir * String(x).localeCompare(String(y));
    });
    rows.forEach(function (r) { body.appendChild(r); });
  });
});
"""


def matrix_html(summary):
    """The whole matrix as one HTML page (no external resources): click a header to sort."""
    taps = list(summary["taps"]) + ([TRAJECTORY] if summary["train_steps"] else [])
    axes = list(summary["cells"][0]["cell"]) if summary["cells"] else []
    head = ["cell", *axes, "status", "first divergent", "worst err/tol", *taps, "s"]
    rows = []
    for cell in summary["cells"]:
        ratios = tap_ratios(cell, taps)
        tds = [f"<td data-v='{html.escape(cell['id'])}'><code>{html.escape(cell['id'])}</code></td>"]
        tds += [f"<td data-v='{html.escape(str(v))}'>{html.escape(str(v))}</td>" for v in cell["cell"].values()]
        status = cell["status"]
        tds.append(f"<td data-v='{status}' class='{status}'>{status}"
                   + (f" <small>{html.escape(cell['error'])}</small>" if cell.get("error") else "") + "</td>")
        first = cell["first_divergent_tap"] or ""
        where = f" ({cell['first_divergent_comparison']})" if first else ""
        tds.append(f"<td data-v='{html.escape(first)}'>{html.escape(first + where)}</td>")
        worst = cell["worst_ratio"]
        tds.append(f"<td data-v='{worst if math.isfinite(worst) else 1e300}' style='background:{colour(worst)}'>"
                   f"{_number(worst)}</td>")
        for tap in taps:
            if tap not in ratios:
                tds.append("<td data-v='-1' class='na'>&ndash;</td>")
                continue
            ratio, err, comparison = ratios[tap]
            tip = f"{comparison}: error {_number(err)}, error/tolerance {_number(ratio)}"
            tds.append(f"<td data-v='{ratio if math.isfinite(ratio) else 1e300}' title='{tip}' "
                       f"style='background:{colour(ratio)}'>{_number(err)}</td>")
        tds.append(f"<td data-v='{cell['seconds']:.3f}'>{cell['seconds']:.1f}</td>")
        rows.append("<tr>" + "".join(tds) + "</tr>")
    status = summary["status"]
    banner = {"pass": "#1a7f37", "fail": "#cf222e"}.get(status, "#9a6700")
    failed = ", ".join(summary["failed_cells"]) or "none"
    ths = "".join(f"<th title='click to sort'>{html.escape(h)}</th>" for h in head)
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>ptyparity matrix: {status}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; color: #1f2328; }}
.verdict {{ font-size: 1.4em; color: white; background: {banner}; padding: .15em .6em; border-radius: 6px; }}
table {{ border-collapse: collapse; margin: 1em 0; font-size: .8em; }}
td, th {{ border: 1px solid #d0d7de; padding: .2em .45em; white-space: nowrap; }}
th {{ cursor: pointer; background: #f6f8fa; position: sticky; top: 0; }}
td.fail, td.error {{ color: #cf222e; font-weight: bold; }} td.pass {{ color: #1a7f37; }}
td.na {{ color: #8c959f; text-align: center; }}
</style></head><body>
<h1>ptyparity parity matrix</h1>
<p><span class="verdict" id="status">{status.upper()}</span>
 {summary['n_cells'] - summary['n_failed']} of {summary['n_cells']} cells pass
 ({summary['seconds']:.0f} s, {summary['train_steps']} training steps per cell)</p>
<p>Failed cells: <b id="failed">{html.escape(failed)}</b></p>
<p>Each tap shows its largest <code>max|a - b| / max|b|</code> over torch vs the NumPy reference,
TensorFlow vs the reference and torch vs TensorFlow (hover for which), coloured by that error over
its tolerance: float32 {summary['tolerance_rules']['float32']:g}; float64 exact claims
{summary['tolerance_rules']['float64_exact']:g}; trajectories in float32
{html.escape(summary['tolerance_rules']['float32_trajectory'])}. Red: beyond the tolerance.</p>
<table id="matrix"><thead><tr>{ths}</tr></thead><tbody>
{chr(10).join(rows)}
</tbody></table>
<script>{_SORT_JS}</script>
</body></html>
"""


def heatmap_figure(summary):
    """log10(error / tolerance) per cell (rows) and tap (columns); 0 is the tolerance."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    taps = list(summary["taps"]) + ([TRAJECTORY] if summary["train_steps"] else [])
    cells = summary["cells"]
    grid = np.full((max(len(cells), 1), len(taps)), np.nan)
    for i, cell in enumerate(cells):
        for j, tap in enumerate(taps):
            ratio = tap_ratios(cell, taps).get(tap)
            if ratio is not None:
                grid[i, j] = np.log10(max(ratio[0], 1e-12)) if math.isfinite(ratio[0]) else 3.0
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * len(taps), 1.6 + 0.22 * len(grid)))
    im = ax.imshow(np.clip(grid, -6, 3), cmap="RdYlGn_r", vmin=-6, vmax=3, aspect="auto")
    ax.set_xticks(range(len(taps)), taps, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(cells)), [c["id"] + ("" if c["status"] == "pass" else "  X") for c in cells],
                  fontsize=6)
    ax.set_title(f"parity matrix: {summary['status']} ({summary['n_failed']} of {summary['n_cells']} cells fail)",
                 fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.04, label="log10(error / tolerance)")
    fig.tight_layout()
    return fig
