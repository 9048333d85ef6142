"""Figures for the MLflow record and the CLI. matplotlib is imported lazily (Agg).

Every function takes arrays or :class:`~ptyparity.data.RawData` and returns a
``matplotlib.figure.Figure``; callers log it (``tracking.log_figure``) or save it. The
debug dump's patch grid (:func:`patch_grid_image`) is a PIL image (``tracking.log_image``).
"""

from __future__ import annotations

import functools

import numpy as np


def pyplot():
    """matplotlib's pyplot on the Agg backend (imported on first use: ~0.5 s)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _panel(fig, ax, img, title, cmap="gray"):
    im = ax.imshow(img, cmap=cmap)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)


def object_figure(obj, *, title="object"):
    """Amplitude and phase of a complex object, side by side."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.6))
    _panel(fig, axes[0], np.abs(obj), f"{title} amplitude")
    _panel(fig, axes[1], np.angle(obj), f"{title} phase (rad)", cmap="twilight")
    fig.tight_layout()
    return fig


def probe_figure(probe):
    """Probe amplitude and phase."""
    return object_figure(probe, title="probe")


def diffraction_figure(diff3d, *, n_patterns=4):
    """The first few diffraction patterns, log10(1 + counts)."""
    plt = pyplot()
    idx = np.linspace(0, len(diff3d) - 1, n_patterns).astype(int)
    fig, axes = plt.subplots(1, n_patterns, figsize=(3 * n_patterns, 3))
    for ax, i in zip(np.atleast_1d(axes), idx):
        _panel(fig, ax, np.log10(1 + diff3d[i].astype(np.float64) ** 2), f"pattern {i}: log10(1+counts)",
               cmap="magma")
    fig.tight_layout()
    return fig


def dataset_figure(data, *, title=""):
    """One-page preview of a dataset: object (if any), probe, scan, diffraction."""
    plt = pyplot()
    fig, axes = plt.subplots(2, 3, figsize=(12, 7.5))
    axes = axes.ravel()
    if data.obj is not None:
        _panel(fig, axes[0], np.abs(data.obj), "objectGuess amplitude")
        _panel(fig, axes[1], np.angle(data.obj), "objectGuess phase (rad)", cmap="twilight")
    else:
        for ax in axes[:2]:
            ax.text(0.5, 0.5, "no ground truth", ha="center", va="center")
            ax.set_axis_off()
    axes[2].scatter(data.xcoords, data.ycoords, s=2)
    axes[2].invert_yaxis()
    axes[2].set_aspect("equal")
    axes[2].set_title(f"scan positions (M={data.n_patterns})", fontsize=9)
    _panel(fig, axes[3], np.abs(data.probe), "probe amplitude")
    _panel(fig, axes[4], np.angle(data.probe), "probe phase (rad)", cmap="twilight")
    _panel(fig, axes[5], np.log10(1 + data.diff3d[0].astype(np.float64) ** 2), "pattern 0: log10(1+counts)",
           cmap="magma")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def patch_mosaic(panels, rows, cols, *, normalise=True, gap=2, title_gap=0):
    """The panels tiled into one image, NaN pixels between and above them.

    Parameters
    ----------
    panels : ndarray, shape (P, N, N), real
        ``P <= rows * cols``, filled row by row; missing panels stay NaN.
    normalise : bool
        True: each panel min-max scaled to [0, 1] (a constant panel is all 0);
        False: the values as they are.
    gap : int
        NaN columns between neighbouring panels.
    title_gap : int
        NaN rows above each row of panels (room for titles).

    Returns
    -------
    mosaic : ndarray, shape (rows * (N + title_gap), cols * (N + gap) - gap), float64
        Panel ``i`` is ``mosaic[r*(N+title_gap)+title_gap :, k*(N+gap) :][:N, :N]``
        with ``r, k = divmod(i, cols)``.
    """
    n = panels.shape[-1]
    values = np.asarray(panels, np.float64)
    if normalise:
        lo = values.min(axis=(1, 2), keepdims=True)
        span = values.max(axis=(1, 2), keepdims=True) - lo
        values = np.divide(values - lo, span, out=np.zeros_like(values), where=span > 0)
    row_step, col_step = n + title_gap, n + gap
    mosaic = np.full((rows * row_step, cols * col_step - gap), np.nan)
    for i, panel in enumerate(values):
        r, k = divmod(i, cols)
        mosaic[r * row_step + title_gap:(r + 1) * row_step, k * col_step:k * col_step + n] = panel
    return mosaic


# The patch grid's look: panels ~PANEL_PX wide, DejaVu Sans (matplotlib's own font) at the
# pixel sizes of matplotlib's 8- and 10-point text at 100 dpi.
PANEL_PX, LABEL_PX, TITLE_PX, TITLE_BAND_PX, MARGIN_PX = 200, 11, 14, 35, 5


def patch_grid_image(patches, *, normalise=True, title="", max_panels=16):
    """Grid of (group, channel) amplitude panels, titled ``g<group> c<channel>``, as a
    greyscale PIL image (white between panels).

    Drawn with Pillow, not matplotlib: every training logs four of these (two per dump
    stage), and a matplotlib figure of the same picture took ~50 ms to draw and encode
    against ~9 ms here (PNG of an 8-bit image, half the bytes).

    Parameters
    ----------
    patches : ndarray, shape (B, N, N, C), real
    normalise : bool
        True: each panel min-max scaled (shows structure even in collapsed
        patches); False: one shared grey scale over all panels (shows level differences).
    title : str, optional
        The heading (default: which of the two scales).
    max_panels : int

    Returns
    -------
    image : PIL.Image.Image, mode ``"L"``
        Pixel ``(x, y)`` of the mosaic (:func:`patch_mosaic`, ``gap = max(1, N//16)``,
        ``title_gap = max(3, N//6)``) is the ``zoom x zoom`` block at
        ``(MARGIN_PX + x*zoom, TITLE_BAND_PX + y*zoom)``, ``zoom = max(1, round(PANEL_PX / N))``;
        its grey level is the value on the scale mapped to 0-255.
    """
    from PIL import Image, ImageDraw

    b, n, _, c = patches.shape
    panels = np.moveaxis(np.asarray(patches, np.float64), -1, 1).reshape(b * c, n, n)[:max_panels]
    cols = min(c if c > 1 else 4, len(panels))
    rows = int(np.ceil(len(panels) / cols))
    lo, hi = float(panels.min()), float(panels.max())
    # n/16 pixels of gap read as a thin white line, n/6 above a row leave room for its titles.
    gap, title_gap = max(1, n // 16), max(3, n // 6)
    mosaic = patch_mosaic(panels, rows, cols, normalise=normalise, gap=gap, title_gap=title_gap)
    vmin, vmax = (0.0, 1.0) if normalise else (lo, hi if hi > lo else lo + 1e-12)
    with np.errstate(invalid="ignore"):
        grey = np.rint(np.clip((mosaic - vmin) / (vmax - vmin), 0.0, 1.0) * 255)
    grey = np.where(np.isnan(mosaic), 255, grey).astype(np.uint8)
    zoom = max(1, round(PANEL_PX / n))
    grey = np.repeat(np.repeat(grey, zoom, axis=0), zoom, axis=1)
    image = Image.new("L", (grey.shape[1] + 2 * MARGIN_PX, grey.shape[0] + TITLE_BAND_PX + MARGIN_PX), 255)
    image.paste(Image.fromarray(grey), (MARGIN_PX, TITLE_BAND_PX))
    draw = ImageDraw.Draw(image)
    for i in range(len(panels)):
        r, k = divmod(i, cols)
        x = MARGIN_PX + (k * (n + gap) + n / 2) * zoom
        y = TITLE_BAND_PX + (r * (n + title_gap) + title_gap) * zoom - 2  # the label's baseline
        draw.text((x, y), f"g{i // c} c{i % c}", fill=0, font=_font(LABEL_PX), anchor="md")
    heading = title or ("patches, each min-max scaled" if normalise else f"patches, shared scale [{lo:.3g}, {hi:.3g}]")
    draw.text((image.width / 2, 8), heading, fill=0, font=_font(TITLE_PX), anchor="mt")
    return image


@functools.lru_cache(maxsize=None)
def _font(size):
    """DejaVu Sans at ``size`` pixels: the TrueType file matplotlib ships, else Pillow's default."""
    import os

    import matplotlib
    from PIL import ImageFont

    path = os.path.join(matplotlib.get_data_path(), "fonts", "ttf", "DejaVuSans.ttf")
    try:
        return ImageFont.truetype(path, size)
    except OSError:  # a matplotlib without its fonts, or a Pillow without FreeType
        return ImageFont.load_default(size)


def _log_scale_if_positive(ax, *series):
    """A log y axis when every finite value is positive; linear otherwise (a log axis
    cannot show zero or negative values: an all-zero deviance, one at -1e-21 from data
    that are not counts).

    Its tick labels are plain text ("6e-01"): the default ones are mathtext, whose parsing
    was ~45 % of drawing the loss figure (~0.1 s of every training)."""
    from matplotlib import ticker

    values = np.concatenate([np.asarray(s, np.float64).ravel() for s in series])
    values = values[np.isfinite(values)]
    if values.size and np.all(values > 0):
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(ticker.LogFormatter())
        ax.yaxis.set_minor_formatter(ticker.LogFormatter(labelOnlyBase=False))


def loss_figure(history):
    """Per-epoch train/val loss and deviance (log scale when positive), and the learning rate.

    Fixed margins (room for 7-character tick labels) instead of ``tight_layout``: every
    training logs this figure, and ``tight_layout`` draws it once more to measure it
    (~0.1 s, a third of its cost). The titles sit at a fixed height (where matplotlib puts
    them anyway: these axes have nothing above them) so the draw does not measure every
    axis' ticks to place them (~10 % of a render, the same pixels)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    fig.subplots_adjust(left=0.06, right=0.99, bottom=0.14, top=0.91, wspace=0.26)
    epochs = np.arange(1, len(history["train_loss"]) + 1)
    for key in ("train_loss", "val_loss"):
        axes[0].plot(epochs, history[key], marker="o", label=key)
    for key in ("train_deviance", "val_deviance"):
        axes[1].plot(epochs, history[key], marker="o", label=key)
    _log_scale_if_positive(axes[1], history["train_deviance"], history["val_deviance"])
    axes[2].plot(epochs, history["learning_rate"], marker="o")
    _log_scale_if_positive(axes[2], history["learning_rate"])
    for ax, title in zip(axes, ("loss", "Poisson deviance", "learning rate")):
        ax.set_xlabel("epoch")
        ax.set_title(title, fontsize=10, y=1.0)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    return fig


def canvas_figure(canvas, *, reference=None, title="reconstruction"):
    """Stitched amplitude and phase, with the ground truth beside it when given."""
    plt = pyplot()
    rows = 2 if reference is not None else 1
    fig, axes = plt.subplots(rows, 2, figsize=(9, 4 * rows), squeeze=False)
    _panel(fig, axes[0, 0], np.abs(canvas), f"{title} amplitude")
    _panel(fig, axes[0, 1], np.angle(canvas), f"{title} phase (rad)", cmap="twilight")
    if reference is not None:
        _panel(fig, axes[1, 0], np.abs(reference), "objectGuess amplitude")
        _panel(fig, axes[1, 1], np.angle(reference), "objectGuess phase (rad)", cmap="twilight")
    fig.tight_layout()
    return fig


def figure_png(fig, dpi=90):
    """PNG bytes of a figure (the figure stays open)."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def parity_canvas_figure(torch_canvas, tf_canvas, torch_count, tf_count):
    """Torch and TF stitched canvases side by side with their difference maps.

    The torch canvas is aligned to TF (amplitude scale, phase offset) before the
    difference, exactly as the parity metrics do, on the commonly covered region.
    """
    from ptyparity import metrics

    plt = pyplot()
    region = metrics.covered_region(torch_count, tf_count)
    a, b = torch_canvas[region], tf_canvas[region]
    amp_a = metrics.align_amplitude(np.abs(a), np.abs(b))
    ph_a = metrics.remove_phase_offset(np.angle(a), np.angle(b))
    fig, axes = plt.subplots(2, 3, figsize=(13, 8))
    _panel(fig, axes[0, 0], amp_a, "torch amplitude (aligned)")
    _panel(fig, axes[0, 1], np.abs(b), "tensorflow amplitude")
    _panel(fig, axes[0, 2], amp_a - np.abs(b), "difference torch - tf", cmap="RdBu_r")
    _panel(fig, axes[1, 0], ph_a, "torch phase (offset removed)", cmap="twilight")
    _panel(fig, axes[1, 1], np.angle(b), "tensorflow phase", cmap="twilight")
    _panel(fig, axes[1, 2], metrics.wrap_phase(ph_a - np.angle(b)), "phase difference (rad)", cmap="RdBu_r")
    fig.tight_layout()
    return fig


def tap_error_figure(errors, tolerance):
    """Per-tap relative error bars (log scale, forward order top to bottom) with the tolerance line.

    ``errors``: ``{implementation: {tap: max|ours - ref| / max|ref|}}``, every inner dict in the
    same forward order.
    """
    plt = pyplot()
    taps = list(next(iter(errors.values())))
    fig, ax = plt.subplots(figsize=(7, 0.32 * len(taps) + 1.6))
    height = 0.8 / len(errors)
    floor = np.finfo(np.float64).tiny
    for i, (name, errs) in enumerate(errors.items()):
        values = [max(float(errs[t]), floor) if np.isfinite(errs[t]) else 1.0 for t in taps]
        ax.barh(np.arange(len(taps)) + i * height, values, height=height, label=name)
    ax.axvline(tolerance, color="red", linestyle="--", label=f"tolerance {tolerance:g}")
    ax.set_xscale("log")
    ax.set_yticks(np.arange(len(taps)) + 0.4 - height / 2, taps, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("max|ours - reference| / max|reference|")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def tap_difference_figure(reference, ours, *, title=""):
    """First image of one tap: the reference, ours and ``|ours - reference|`` (complex taps by modulus).

    ``reference``, ``ours``: the same shape, ``(..., H, W, C)`` stacks (the first image is
    ``[0, ..., 0]``) or one image ``(H, W)``.
    """
    plt = pyplot()

    def image(x):
        x = np.asarray(x)
        while x.ndim > 2:
            x = x[0] if x.ndim > 3 else x[..., 0]
        return x

    ref, mine = image(reference), image(ours)
    show = (lambda x: np.abs(x)) if np.iscomplexobj(ref) or np.iscomplexobj(mine) else (lambda x: x)
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.8))
    _panel(fig, axes[0], show(ref), f"{title} reference" + (" |.|" if np.iscomplexobj(ref) else ""))
    _panel(fig, axes[1], show(mine), f"{title} ours")
    _panel(fig, axes[2], np.abs(mine - ref), "|ours - reference|", cmap="magma")
    fig.tight_layout()
    return fig


def variance_histogram_figure(variances):
    """Histograms of per-patch amplitude variance, one per backend, log-spaced bins."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    allv = np.concatenate([np.asarray(v).ravel() for v in variances.values()])
    lo = max(float(np.min(allv[allv > 0])) if np.any(allv > 0) else 1e-12, 1e-12)
    hi = max(float(np.max(allv)), lo * 10)
    bins = np.logspace(np.log10(lo), np.log10(hi), 30)
    for name, v in variances.items():
        ax.hist(np.maximum(np.asarray(v).ravel(), lo), bins=bins, alpha=0.6, label=name)
    ax.set_xscale("log")
    ax.set_xlabel("per-patch amplitude variance (support)")
    ax.set_ylabel("patches")
    ax.legend()
    fig.tight_layout()
    return fig


def parity_html(summary, pngs):
    """A self-contained HTML report: verdict, every check, embedded figures.

    Parameters
    ----------
    summary : dict
        ``parity/summary.json`` of a compare run (``verdict``, ``parity_status``,
        ``quality_status``, ``checks`` as :meth:`ptyparity.parity.Check.as_dict`, …).
    pngs : dict of bytes
        Figure key -> PNG bytes, embedded in this order.
    """
    import base64
    import html

    verdict = summary["verdict"]
    colour = {"pass": "#1a7f37", "fail": "#cf222e"}.get(verdict, "#9a6700")
    marks = {"pass": ("ok", "&#10003;"), "fail": ("bad", "&#10007;"), "skipped": ("skip", "&ndash;")}
    rows = []
    for c in summary["checks"]:
        css, mark = marks[c["status"]]
        rows.append(f"<tr class='{css}'><td>{mark}</td><td>{html.escape(c['name'])}</td><td>{c['kind']}</td>"
                    f"<td>{c['value']:.6g}</td><td>{c['threshold']:.6g}</td><td>{html.escape(c['detail'])}</td></tr>")
    imgs = []
    captions = {"canvases": "Stitched canvases and difference (TF reference)",
                "patch_variance": "Per-patch amplitude variance",
                "patch_grid_torch": "Torch patches (each min-max scaled)",
                "patch_grid_tensorflow": "TensorFlow patches (each min-max scaled)"}
    for key, data in pngs.items():
        b64 = base64.b64encode(data).decode()
        imgs.append(f"<figure><img src='data:image/png;base64,{b64}'/><figcaption>"
                    f"{html.escape(captions.get(key, key))}</figcaption></figure>")
    failed = ", ".join(summary["failed_checks"]) or "none"
    skipped = ", ".join(summary["skipped_checks"]) or "none"
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>ptyparity: {verdict}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #1f2328; }}
.verdict {{ font-size: 1.6em; color: white; background: {colour}; display: inline-block; padding: .2em .6em; border-radius: 6px; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
td, th {{ border: 1px solid #d0d7de; padding: .3em .6em; font-size: .9em; }}
tr.bad td {{ background: #ffebe9; }}
tr.skip td {{ color: #656d76; }}
figure {{ display: inline-block; margin: .5em; vertical-align: top; }}
img {{ max-width: 640px; border: 1px solid #d0d7de; }}
</style></head><body>
<h1>ptyparity parity report</h1>
<p><span class="verdict" id="verdict">{verdict.upper()}</span></p>
<p>Agreement (parity.status): <b id="parity-status">{summary['parity_status']}</b>;
ground-truth skill (quality.status): <b id="quality-status">{summary['quality_status']}</b></p>
<p>Failed checks: <b id="failed">{html.escape(failed)}</b>; skipped: <span id="skipped">{html.escape(skipped)}</span></p>
<p>torch side: <b id="torch-implementation">{html.escape(summary.get('torch_implementation', '?'))}</b>,
infer run <code>{summary['torch_run_id']}</code> (train <code>{summary['torch_train_run_id']}</code>);
tensorflow side: <b id="tf-implementation">{html.escape(summary.get('tf_implementation', '?'))}</b>,
infer run <code>{summary['tf_run_id']}</code> (train <code>{summary['tf_train_run_id']}</code>)</p>
<table><tr><th></th><th>check</th><th>kind</th><th>value</th><th>threshold</th><th>detail</th></tr>
{''.join(rows)}
</table>
{''.join(imgs)}
</body></html>
"""
