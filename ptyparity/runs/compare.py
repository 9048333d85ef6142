"""The ``compare`` runs: the parity verdict of a torch/tensorflow pair of infer runs
(SPEC §8), and the forward comparison of one bundle in both backends.

The verdict itself is :func:`ptyparity.parity.evaluate`, a pure function; this
module finds the runs, turns them into :class:`ptyparity.parity.Evidence`, and
records what ``evaluate`` returned.
"""

from __future__ import annotations

import json

import numpy as np

from ptyparity import descriptions, names, tracking, tracking_notes
from ptyparity.errors import PtyparityError
from ptyparity.runs.common import CompareResult

SIDES = ("torch", "tensorflow")


def resolve_pair(*, torch_run_id=None, tf_run_id=None, pair_key=None, latest=False,
                 experiment=names.DEFAULT_EXPERIMENT):
    """Find the (torch, tensorflow) infer runs to compare.

    At most one of: both run ids, a ``pair_key`` (newest infer run of each backend
    with that key) or ``latest`` (the newest pair_key that has finished infer runs
    of both backends; also what an empty choice means). Found through MLflow search
    on tags.
    """
    modes = sum([bool(torch_run_id or tf_run_id), bool(pair_key), bool(latest)])
    if modes > 1:
        raise PtyparityError("choose the pair one way: --torch-run ID --tf-run ID, --pair-key KEY or --latest")
    if torch_run_id or tf_run_id:
        if not (torch_run_id and tf_run_id):
            raise PtyparityError("give both --torch-run and --tf-run (infer run ids)")
        return tracking.get_run(torch_run_id), tracking.get_run(tf_run_id)
    if pair_key:
        found = {}
        for backend in SIDES:
            runs = tracking.search_runs({names.TAG_KIND: "infer", names.TAG_BACKEND: backend,
                                         names.TAG_PAIR_KEY: pair_key}, experiment=experiment, max_results=1)
            if not runs:
                raise PtyparityError(f"no {backend} infer run with pair_key {pair_key!r} in experiment "
                                     f"{experiment!r}; run 'ptyparity infer --backend {backend}' first")
            found[backend] = runs[0]
        return found["torch"], found["tensorflow"]
    # --latest, or nothing chosen: the newest complete pair, reading pages of 100 runs only until it
    # is found (one request in a typical store instead of every infer run; see tracking_search).
    from ptyparity import tracking_search

    newest = {}
    for run in tracking_search.iter_runs({names.TAG_KIND: "infer"}, experiment=experiment, finished_only=True):
        slot = newest.setdefault(tracking.run_tag(run, names.TAG_PAIR_KEY), {})
        slot.setdefault(tracking.run_tag(run, names.TAG_BACKEND), run)  # newest first
        if "torch" in slot and "tensorflow" in slot:
            return slot["torch"], slot["tensorflow"]
    raise PtyparityError(f"no complete torch/tensorflow pair of finished infer runs in experiment {experiment!r}; "
                         "train and infer both backends on the same data first")


def run_compare(*, torch_run_id=None, tf_run_id=None, pair_key=None, latest=False, allow_mismatch=False,
                thresholds=None, experiment=names.DEFAULT_EXPERIMENT, run_name=None):
    """Compare a torch and a TF infer run; record the verdict (SPEC §8).

    Parameters
    ----------
    torch_run_id, tf_run_id, pair_key, latest
        How to find the pair (see :func:`resolve_pair`).
    allow_mismatch : bool
        Compare runs whose pair keys differ (tagged ``parity.allow_mismatch``).
    thresholds : dict, optional
        Overrides of :data:`ptyparity.parity.DEFAULT_THRESHOLDS`; each threshold
        in effect is a ``threshold.*`` param.

    Returns
    -------
    result : CompareResult
        ``verdict`` pass, fail, inconclusive or error; ``exit_code`` 0, 1, 1 or 2.
    """
    from ptyparity import parity

    thr = parity.validate_thresholds(thresholds)  # a bad threshold is refused before any run opens
    pair = resolve_pair(torch_run_id=torch_run_id, tf_run_id=tf_run_id, pair_key=pair_key, latest=latest,
                        experiment=experiment)
    with tracking.start_run("compare", experiment=experiment, run_name=run_name,
                            tags={names.TAG_PAIR_KEY: tracking.run_tag(pair[0], names.TAG_PAIR_KEY) or ""}) as run:
        tracking.log_params({f"{names.THRESHOLD_PREFIX}{k}": v for k, v in thr.items()})
        sides = {names.PARITY_TORCH_RUN_ID: pair[0].info.run_id, names.PARITY_TF_RUN_ID: pair[1].info.run_id}
        tracking.set_tags(sides)
        if allow_mismatch:
            tracking.set_tags({names.PARITY_ALLOW_MISMATCH: "true"})
        try:
            trains, evidence = _gather(pair, allow_mismatch)
        except _Refused as exc:
            return _record_error(run.info.run_id, pair, str(exc), sides)
        implementations = {names.PARITY_TORCH_IMPLEMENTATION: evidence["torch"].name,
                           names.PARITY_TF_IMPLEMENTATION: evidence["tensorflow"].name}
        tracking.set_tags({names.PARITY_TORCH_TRAIN_RUN_ID: _run_id(trains["torch"]),
                           names.PARITY_TF_TRAIN_RUN_ID: _run_id(trains["tensorflow"]), **implementations})
        verdict = parity.evaluate(evidence["torch"], evidence["tensorflow"], thr)
        verdict_tags = _log_verdict(verdict)
        summary = _summary(verdict, thr, pair, trains, evidence)
        tracking.log_dict(json.loads(json.dumps(summary, default=float)), names.PARITY_SUMMARY)
        _log_parity_report(summary, pair, evidence)
        _tag_sources(run.info.run_id, pair, verdict)
        tracking_notes.describe_run(descriptions.compare_description({**sides, **implementations,
                                                                      **verdict_tags}))
        return CompareResult(run_id=run.info.run_id, verdict=verdict.verdict, parity_status=verdict.parity_status,
                             quality_status=verdict.quality_status, checks=tuple(verdict.checks),
                             failed_checks=tuple(verdict.failed_checks), skipped_checks=tuple(verdict.skipped_checks))


class _Refused(Exception):
    """The pair cannot be compared (the verdict is ``error``)."""


def _refusal(torch_run, tf_run, allow_mismatch):
    """Why this pair cannot be compared, or None."""
    for name, run in zip(SIDES, (torch_run, tf_run)):
        kind, backend = tracking.run_tag(run, names.TAG_KIND), tracking.run_tag(run, names.TAG_BACKEND)
        if kind != "infer":
            return f"run {run.info.run_id} is a {kind or 'non-ptyparity'} run, not an infer run"
        if backend != name:
            return f"run {run.info.run_id} is a {backend} run but was given as the {name} run"
        if run.info.status != "FINISHED":
            return f"run {run.info.run_id} is {run.info.status}, not FINISHED; compare finished runs only"
    keys = [tracking.run_tag(r, names.TAG_PAIR_KEY) for r in (torch_run, tf_run)]
    if keys[0] != keys[1] and not allow_mismatch:
        return (f"pair keys differ (torch {keys[0]} vs tensorflow {keys[1]}): different data, config or seed; "
                "pass --allow-mismatch to compare anyway")
    return None


def _gather(pair, allow_mismatch):
    """The train run (or None: a bundle trained elsewhere) and the Evidence of each side.

    Raises
    ------
    _Refused
        With the reason, when the pair cannot be compared.
    """
    from ptyparity import parity

    reason = _refusal(*pair, allow_mismatch)
    if reason is not None:
        raise _Refused(reason)
    trains, evidence = {}, {}
    try:
        for side, run in zip(SIDES, pair):
            train_id = tracking.run_tag(run, names.TAG_TRAIN_RUN_ID)
            trains[side] = tracking.get_run(train_id) if train_id else None
            with np.load(tracking.download_artifact(run.info.run_id, names.CANVAS_NPZ), allow_pickle=False) as npz:
                canvas, count = npz["canvas"], npz["count"]
            evidence[side] = parity.Evidence(
                infer=_numbers(run), train=_numbers(trains[side]) if trains[side] is not None else None,
                canvas=canvas, count=count, name=implementation_label(run))
    except Exception as exc:  # noqa: BLE001 - any missing piece refuses the pair
        raise _Refused(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
    return trains, evidence


def implementation_label(run):
    """``"<implementation> <version>"`` of an infer run (tags of :mod:`ptyparity.record`); a run
    recorded before those tags existed was made by ptyparity itself."""
    name = tracking.run_tag(run, names.TAG_IMPLEMENTATION) or "ptyparity"
    version = tracking.run_tag(run, names.TAG_IMPLEMENTATION_VERSION) or "(version not recorded)"
    return f"{name} {version}"


def _numbers(run):
    """A run's metrics plus its ``intensity_scale`` param, as :class:`parity.Evidence` wants them."""
    values = dict(run.data.metrics)
    if "intensity_scale" in run.data.params:
        values["intensity_scale"] = float(run.data.params["intensity_scale"])
    return values


def _run_id(run):
    return run.info.run_id if run is not None else names.NONE_LISTED


def _listed(items):
    return ",".join(items) or names.NONE_LISTED


def _record_error(run_id, pair, reason, sides):
    """Tag (and describe) the compare run and tag both source runs ``error``; the verdict is ``error`` (exit 2)."""
    tags = {names.PARITY_STATUS: "error", names.PARITY_VERDICT: "error", names.PARITY_ERROR: reason[:5000]}
    tracking.set_tags(tags)
    tracking_notes.describe_run(descriptions.compare_description({**sides, **tags}))
    for source in pair:
        tracking.set_tags({names.PARITY_STATUS: "error", names.PARITY_VERDICT: "error",
                           names.PARITY_COMPARE_RUN_ID: run_id}, run_id=source.info.run_id)
    return CompareResult(run_id=run_id, verdict="error", parity_status="error", quality_status="", checks=(),
                         failed_checks=(), reason=reason)


def _log_verdict(verdict):
    """Each evaluated check as a metric (skipped checks are not logged: they have no
    value; the tag ``parity.skipped_checks`` lists them), the canvas scores, the tags (returned)."""
    tracking.log_metrics({c.name: c.value for c in verdict.checks if c.status != "skipped"})
    tracking.log_metrics(verdict.canvas_scores)
    tags = {names.PARITY_STATUS: verdict.parity_status, names.QUALITY_STATUS: verdict.quality_status,
            names.PARITY_VERDICT: verdict.verdict, names.PARITY_FAILED_CHECKS: _listed(verdict.failed_checks),
            names.PARITY_SKIPPED_CHECKS: _listed(verdict.skipped_checks),
            names.PARITY_BEST_ORIENTATION: verdict.best_orientation or names.NONE_LISTED}
    tracking.set_tags(tags)
    return tags


def _summary(verdict, thresholds, pair, trains, evidence):
    """``parity/summary.json``: everything the verdict rests on, and who computed each side."""
    return {"verdict": verdict.verdict, "parity_status": verdict.parity_status,
            "quality_status": verdict.quality_status, "failed_checks": list(verdict.failed_checks),
            "skipped_checks": list(verdict.skipped_checks), "best_orientation": verdict.best_orientation,
            "checks": [c.as_dict() for c in verdict.checks], "canvas_scores": dict(verdict.canvas_scores),
            "thresholds": thresholds, "torch_run_id": pair[0].info.run_id, "tf_run_id": pair[1].info.run_id,
            "torch_train_run_id": _run_id(trains["torch"]), "tf_train_run_id": _run_id(trains["tensorflow"]),
            "torch_implementation": evidence["torch"].name, "tf_implementation": evidence["tensorflow"].name}


def _tag_sources(compare_run_id, pair, verdict):
    """The verdict on both infer runs and their model versions (tags and description);
    ``parity-passed`` on a pass."""
    tags = {names.PARITY_STATUS: verdict.parity_status, names.QUALITY_STATUS: verdict.quality_status,
            names.PARITY_VERDICT: verdict.verdict, names.PARITY_COMPARE_RUN_ID: compare_run_id}
    for source in pair:
        tracking.set_tags(tags, run_id=source.info.run_id)
        name, version = tracking.run_tag(source, names.TAG_MODEL_NAME), tracking.run_tag(source,
                                                                                          names.TAG_MODEL_VERSION)
        if name and version:
            tracking.tag_model_version(name, version, tags)
            _describe_version(name, version, {**tags, names.PARITY_FAILED_CHECKS: _listed(verdict.failed_checks)})
            if verdict.verdict == "pass":
                tracking.set_model_alias(name, names.PARITY_PASSED_ALIAS, version)


def _describe_version(name, version, verdict_tags):
    """Rebuild a model version's description from its tags, now with the verdict."""
    rec = tracking_notes.model_version_record(name, version)
    kind = "import" if names.TAG_IMPORT_RUN_ID in rec else "train"
    tracking_notes.describe_model_version(name, version, descriptions.model_version_description(
        {**rec, **verdict_tags, "source_kind": kind}))


def _log_parity_report(summary, pair, evidence):
    """Figures and the self-contained ``parity/report.html``."""
    from ptyparity import report

    t, f = evidence["torch"], evidence["tensorflow"]
    figures = {"canvases": report.parity_canvas_figure(t.canvas, f.canvas, t.count, f.count)}
    variances, grids = {}, {}
    for side, run in zip(SIDES, pair):
        try:
            with open(tracking.download_artifact(run.info.run_id, names.PATCH_STATS)) as fh:
                variances[side] = np.asarray(json.load(fh)["per_patch"]["amp"]["var"]).ravel()
            grids[side] = tracking.download_artifact(run.info.run_id, names.PATCH_GRID_NORMALISED)
        except (PtyparityError, OSError, KeyError, ValueError):  # a run logged without a debug dump
            pass
    if variances:
        figures["patch_variance"] = report.variance_histogram_figure(variances)
    pngs = {}
    for key, fig in figures.items():
        pngs[key] = report.figure_png(fig)
        tracking.log_figure(fig, names.parity_figure(key))
    for side, path in grids.items():
        with open(path, "rb") as fh:
            pngs[f"patch_grid_{side}"] = fh.read()
    tracking.log_text(report.parity_html(summary, pngs), names.PARITY_REPORT)


def run_compare_forward(model_uri, *, data_path=None, n_groups=8, tolerance=1e-4,
                        experiment=names.DEFAULT_EXPERIMENT, run_name=None):
    """Same weights in both backends, one batch, per-tap max error (SPEC §8).

    Without ``data_path`` the batch comes from a freshly simulated dataset of the
    bundle's N (seed 0). TF is the reference; the first tap in forward order whose
    ``max|torch - tf| / max|tf|`` exceeds ``tolerance`` is named.

    Returns
    -------
    result : CompareResult
        ``reason`` is the first divergent tap ("" when none).
    """
    from ptyparity import bundle, parity
    from ptyparity.data import load_npz

    rec = bundle.load(model_uri)
    data = load_npz(data_path) if data_path else _simulated_batch_data(rec.model_cfg.N)
    rec.check_data(data)
    groups = rec.groups_for(data)
    which = np.arange(min(n_groups, len(groups)))
    with tracking.start_run("compare", experiment=experiment, run_name=run_name,
                            tags={names.PARITY_MODE: "forward", names.TAG_MODEL_URI: model_uri}) as run:
        tracking.log_params({f"{names.THRESHOLD_PREFIX}tap_rtol": tolerance, "n_groups": len(which)})
        taps = {b: rec.taps(data, backend=b, groups=groups, which=which) for b in ("tensorflow", "torch")}
        errors = parity.tap_errors(taps["tensorflow"], taps["torch"])
        first = parity.first_divergent_tap(errors, tolerance, names.TAP_NAMES)
        checks = tuple(parity.Check(f"forward.{name}", errors[name], tolerance, errors[name] <= tolerance,
                                    "max|torch - tf| / max|tf|") for name in names.TAP_NAMES if name in errors)
        failed = tuple(c.name for c in checks if not c.passed)
        status = "fail" if failed else "pass"
        tracking.log_metrics({c.name: c.value for c in checks})
        tags = {names.PARITY_STATUS: status, names.PARITY_VERDICT: status, names.PARITY_FAILED_CHECKS: _listed(failed),
                names.PARITY_FIRST_DIVERGENT_TAP: first or names.NONE_LISTED}
        tracking.set_tags(tags)
        tracking_notes.describe_run(descriptions.compare_description(
            {**tags, names.PARITY_MODE: "forward", names.TAG_MODEL_URI: model_uri}))
        tracking.log_dict({"status": status, "first_divergent_tap": first, "tolerance": tolerance,
                           "tap_errors": errors}, names.PARITY_FORWARD)
        return CompareResult(run_id=run.info.run_id, verdict=status, parity_status=status, quality_status="",
                             checks=checks, failed_checks=failed, reason=first or "")


def _simulated_batch_data(n):
    """A dataset of patch size ``n`` simulated with seed 0 (the forward mode's default batch)."""
    from ptyparity.simulate import SimConfig, simulate_split

    return simulate_split(SimConfig(N=n, object_size_px=4 * n), rng=np.random.default_rng(0), variant=0)
