"""The Markdown descriptions (``mlflow.note.content``) a person reads in the MLflow UI.

One pure function per kind of record: each takes the plain dict of what its run logged,
under the keys it logged them (param names ``N``, ``gridsize``…, metric names
``gt.amp.ssim``…, tag keys ``ptyparity.pair_key``, ``parity.verdict``…), and returns a
few lines of Markdown. The first line stands on its own (the runs table shows only it);
the rest stays under a dozen lines. No MLflow here: :mod:`ptyparity.tracking_notes` sets
the tags.
"""

from __future__ import annotations

import math
import os

from ptyparity import names

MAX_LISTED = 8  # checks listed by name before "and N more"

REGISTERED_MODELS = {
    "ptyparity-torch": (
        "PtychoPINN network trained by **ptyparity** with the **PyTorch** backend. Every version is a "
        "backend-neutral bundle (`weights.npz` + checksummed `bundle.json`) that runs on either backend. "
        f"Versions that passed a torch/tensorflow parity compare carry the alias `{names.PARITY_PASSED_ALIAS}`; "
        "compared versions carry the tags `parity.verdict` and `parity.status`."),
    "ptyparity-tensorflow": (
        "PtychoPINN network trained by **ptyparity** with the **TensorFlow** backend. Every version is a "
        "backend-neutral bundle (`weights.npz` + checksummed `bundle.json`) that runs on either backend. "
        f"Versions that passed a torch/tensorflow parity compare carry the alias `{names.PARITY_PASSED_ALIAS}`; "
        "compared versions carry the tags `parity.verdict` and `parity.status`."),
    names.PTYCHOPINN_MODEL_NAME: (
        "Models trained by the upstream **PtychoPINN** (TensorFlow) and imported with "
        "`ptyparity import ptychopinn`: the `wts.h5.zip` weights and `intensity_scale`, the dataset's probe, "
        "and PtychoPINN's conventions, as a ptyparity bundle that runs on either backend. The version tags "
        "name the checkpoint's sha256 and the import run."),
}


def _num(value):
    """A figure in 4 significant digits, or ``n/a``."""
    if value is None:
        return "n/a"
    try:
        value = float(value)
    except (TypeError, ValueError):
        return str(value)
    return f"{value:.4g}" if math.isfinite(value) else str(value)


def _listed(text):
    """A list tag (``a,b`` or ``none``) as a list."""
    if not text or text == names.NONE_LISTED:
        return []
    return [item for item in str(text).split(",") if item]


def _checks(items):
    """``a, b, c`` as code, at most :data:`MAX_LISTED` of them, or ``none``."""
    if not items:
        return "none"
    shown = ", ".join(f"`{c}`" for c in items[:MAX_LISTED])
    return shown + (f" and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else "")


def _epochs(value):
    return f"{value if value is not None else '?'} epoch" + ("" if str(value) == "1" else "s")


def _network(rec):
    return f"N={rec.get('N', '?')}, gridsize={rec.get('gridsize', '?')}, f={rec.get('n_filters_scale', '?')}"


def train_description(rec):
    """A ``train`` run: backend, network, epochs, final deviances, held-out deviance, scale, model.

    Parameters
    ----------
    rec : dict
        The run's params (``N``, ``gridsize``, ``n_filters_scale``, ``n_groups``, ``max_epochs``,
        ``intensity_scale``, ``intensity_scale_mode``), final metrics (``train_deviance``,
        ``val_deviance``, optional ``test_deviance_initial``, ``test_deviance``), tags
        (``ptyparity.backend``, ``ptyparity.pair_key``, optional ``ptyparity.init_from``) and the
        registered ``model_name`` / ``model_version`` (optional).
    """
    lines = [f"**train {rec.get(names.TAG_BACKEND, '?')}** · {_network(rec)} · {rec.get('n_groups', '?')} groups · "
             f"{_epochs(rec.get('max_epochs'))}",
             f"- final deviance: train {_num(rec.get('train_deviance'))}, val {_num(rec.get('val_deviance'))}"]
    if rec.get("test_deviance") is not None:
        lines.append(f"- held-out deviance: {_num(rec.get('test_deviance_initial'))} → {_num(rec['test_deviance'])}"
                     " (before → after training)")
    lines.append(f"- intensity_scale: {_num(rec.get('intensity_scale'))} ({rec.get('intensity_scale_mode', '?')})")
    if rec.get(names.TAG_INIT_FROM):
        lines.append(f"- started from: `{rec[names.TAG_INIT_FROM]}`")
    if rec.get("model_version"):
        lines.append(f"- model: `{rec.get('model_name')}` version {rec['model_version']}")
    lines.append(f"- pair key: `{rec.get(names.TAG_PAIR_KEY, '?')}`")
    return "\n".join(lines)


def infer_description(rec):
    """An ``infer`` run: which model ran where, SSIM against the flat guess, patch variance.

    Parameters
    ----------
    rec : dict
        Tags (``ptyparity.backend``, ``ptyparity.model_uri``, ``ptyparity.bundle_backend``,
        ``ptyparity.pair_key``), params (``intensity_scale``), metrics (``gt.amp.ssim``,
        ``gt.amp.ssim_flat``, ``gt.phase.ssim``, ``gt.phase.ssim_flat`` when the data had
        ``objectGuess``; ``patch.amp.var_zero_mean``) and ``data_path`` (optional).
    """
    backend, bundle_backend = rec.get(names.TAG_BACKEND, "?"), rec.get(names.TAG_BUNDLE_BACKEND)
    where = f" (a {bundle_backend} bundle)" if bundle_backend and bundle_backend != backend else ""
    lines = [f"**infer {backend}** with `{rec.get(names.TAG_MODEL_URI, '?')}`{where}"]
    amp, phase = f"{names.GT_PREFIX}amp.ssim", f"{names.GT_PREFIX}phase.ssim"
    if rec.get(amp) is not None:
        lines.append(f"- SSIM amplitude {_num(rec[amp])} (flat guess {_num(rec.get(amp + names.FLAT_SUFFIX))}) · "
                     f"phase {_num(rec.get(phase))} (flat guess {_num(rec.get(phase + names.FLAT_SUFFIX))})")
    else:
        lines.append("- no ground truth: the data has no `objectGuess`, so no SSIM")
    lines.append(f"- patch.amp.var_zero_mean: {_num(rec.get(names.PATCH_PREFIX + 'amp.var_zero_mean'))} · "
                 f"intensity_scale {_num(rec.get('intensity_scale'))}")
    if rec.get("data_path"):
        lines.append(f"- data: `{os.path.basename(os.fspath(rec['data_path']))}`")
    lines.append(f"- pair key: `{rec.get(names.TAG_PAIR_KEY, '?')}`")
    return "\n".join(lines)


def compare_description(rec):
    """A ``compare`` run (pair, ``--forward`` or ``--forward --reference``): the verdict first.

    Parameters
    ----------
    rec : dict
        The run's tags as logged: ``parity.verdict``, ``parity.status``, ``quality.status``,
        ``parity.failed_checks``, ``parity.skipped_checks`` (comma lists or ``none``),
        ``parity.mode`` (absent for a pair), ``parity.error``, ``parity.torch_run_id``,
        ``parity.tf_run_id``, ``parity.first_divergent_tap``, ``ptyparity.model_uri``,
        ``parity.reference_file``, ``parity.torch_implementation``, ``parity.tf_implementation``.
    """
    verdict = str(rec.get(names.PARITY_VERDICT, "error")).upper()
    mode = rec.get(names.PARITY_MODE)
    failed = _checks(_listed(rec.get(names.PARITY_FAILED_CHECKS)))
    if mode in ("forward", "forward_reference"):
        what = "compare --forward" + (" --reference" if mode == "forward_reference" else "")
        record = names.PARITY_FORWARD_REFERENCE if mode == "forward_reference" else names.PARITY_FORWARD
        lines = [f"**{what}: {verdict}** · `{rec.get(names.TAG_MODEL_URI, '?')}`"]
        if mode == "forward_reference":
            lines.append(f"- reference dump: `{os.path.basename(str(rec.get(names.PARITY_REFERENCE_FILE, '?')))}` "
                         f"({rec.get(names.PARITY_REFERENCE_STYLE, '?')} key names)")
        lines += [f"- failed checks: {failed}",
                  f"- first divergent tap: `{rec.get(names.PARITY_FIRST_DIVERGENT_TAP) or names.NONE_LISTED}`",
                  f"- per-tap errors: `{record}` (artifacts)"]
        return "\n".join(lines)
    if verdict == "ERROR":
        return "\n".join([f"**compare: ERROR** · the pair could not be compared",
                          f"- why: {rec.get(names.PARITY_ERROR) or 'unknown'}",
                          f"- torch infer `{rec.get(names.PARITY_TORCH_RUN_ID, '?')}` · tensorflow infer "
                          f"`{rec.get(names.PARITY_TF_RUN_ID, '?')}`"])
    return "\n".join([
        f"**compare: {verdict}** · parity {rec.get(names.PARITY_STATUS, '?')} · quality "
        f"{rec.get(names.QUALITY_STATUS, '?')}",
        f"- failed checks: {failed}",
        f"- skipped checks: {_checks(_listed(rec.get(names.PARITY_SKIPPED_CHECKS)))}",
        f"- torch infer `{rec.get(names.PARITY_TORCH_RUN_ID, '?')}` · tensorflow infer "
        f"`{rec.get(names.PARITY_TF_RUN_ID, '?')}`",
        *([f"- implementations: torch {rec[names.PARITY_TORCH_IMPLEMENTATION]} · tensorflow "
           f"{rec.get(names.PARITY_TF_IMPLEMENTATION, '?')}"] if rec.get(names.PARITY_TORCH_IMPLEMENTATION) else []),
        f"- report: `{names.PARITY_REPORT}` (artifacts; opens in the artifact view)"])


def pipeline_description(rec):
    """A ``pipeline`` run: the verdict, the sizes, and each step's run id.

    Parameters
    ----------
    rec : dict
        Params ``preset`` and ``resolved.*``, tags ``parity.verdict``, ``parity.status`` and
        ``pipeline.<step>`` (the step run ids, in step order).
    """
    size = {k[len(names.RESOLVED_PREFIX):]: v for k, v in rec.items() if k.startswith(names.RESOLVED_PREFIX)}
    lines = [f"**pipeline {rec.get('preset', '?')}: {str(rec.get(names.PARITY_VERDICT, 'error')).upper()}** · "
             f"parity {rec.get(names.PARITY_STATUS, '?')}",
             f"- N={size.get('n', '?')}, gridsize={size.get('gridsize', '?')}, f={size.get('n_filters_scale', '?')} · "
             f"{size.get('n_groups', '?')} groups · {_epochs(size.get('max_epochs'))}"]
    lines += [f"- {k[len(names.PIPELINE_TAG_PREFIX):]}: `{v}`" for k, v in rec.items()
              if k.startswith(names.PIPELINE_TAG_PREFIX)]
    lines.append(f"- report: the compare run's `{names.PARITY_REPORT}`")
    return "\n".join(lines)


def import_description(rec):
    """An ``import`` run: which checkpoint, its network and scale, where it was registered.

    Parameters
    ----------
    rec : dict
        Params (``source_file``, ``N``, ``gridsize``, ``n_filters_scale``, ``intensity_scale``),
        tags (``ptyparity.source_sha256``, optional ``ptyparity.upstream_commit``) and
        ``model_name`` / ``model_version`` (optional).
    """
    lines = [f"**import ptychopinn** `{rec.get('source_file', '?')}` · {_network(rec)}",
             f"- sha256 `{str(rec.get(names.TAG_SOURCE_SHA256, '?'))[:16]}…` · intensity_scale "
             f"{_num(rec.get('intensity_scale'))}"]
    if rec.get(names.TAG_UPSTREAM_COMMIT):
        lines.append(f"- PtychoPINN commit `{rec[names.TAG_UPSTREAM_COMMIT]}`")
    if rec.get("model_version"):
        lines.append(f"- model: `{rec.get('model_name')}` version {rec['model_version']}")
    return "\n".join(lines)


def registered_model_description(name):
    """What a registered model is (:data:`REGISTERED_MODELS`), or a generic line for another name."""
    return REGISTERED_MODELS.get(name, f"A ptyparity bundle registered as `{name}`; runs on either backend.")


def model_version_description(rec):
    """A model version: the run that made it, its pair key and, once compared, the verdict.

    Parameters
    ----------
    rec : dict
        ``source_kind`` ("train" or "import"), ``source_run_id``, ``ptyparity.backend`` and
        ``ptyparity.pair_key`` (train), ``ptyparity.source_sha256`` (import); after a compare also ``parity.verdict``,
        ``parity.status``, ``quality.status``, ``parity.compare_run_id`` and
        ``parity.failed_checks``.
    """
    if rec.get("source_kind") == "import":
        sha = rec.get(names.TAG_SOURCE_SHA256)
        first = f"Imported from PtychoPINN by run `{rec.get('source_run_id', '?')}`" + (
            f" · checkpoint sha256 `{sha[:16]}…`" if sha else "")
    else:
        first = (f"Trained by ptyparity ({rec.get(names.TAG_BACKEND, '?')}) in run `{rec.get('source_run_id', '?')}`"
                 f" · pair key `{rec.get(names.TAG_PAIR_KEY, '?')}`")
    lines = [first]
    if rec.get(names.PARITY_VERDICT):
        lines.append(f"- parity verdict: **{str(rec[names.PARITY_VERDICT]).upper()}** (parity "
                     f"{rec.get(names.PARITY_STATUS, '?')}, quality {rec.get(names.QUALITY_STATUS, '?')}) by compare "
                     f"run `{rec.get(names.PARITY_COMPARE_RUN_ID, '?')}`")
        lines.append(f"- failed checks: {_checks(_listed(rec.get(names.PARITY_FAILED_CHECKS)))}")
    else:
        lines.append("- not compared yet")
    return "\n".join(lines)
