"""The ``ptyparity`` command line (typer).

Each command builds a config, calls one library function and prints a summary. A
user mistake (:class:`~ptyparity.errors.PtyparityError`) prints one line,
``error: …``, and exits with code 2; frameworks are imported only by the commands
that need them, so ``ptyparity --help`` starts fast.

Every option default is read from where the value is defined (the config
dataclasses, :data:`ptyparity.parity.DEFAULT_THRESHOLDS`, the workflow functions'
keyword defaults), never written here a second time; ``tests/test_defaults.py``
checks that ``MLproject`` agrees.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from ptyparity import cli_check_run, cli_import, names, runs
from ptyparity.cli_support import EXPERIMENT, EXPERIMENT_HELP
from ptyparity.cli_support import echo_links as _echo_links
from ptyparity.cli_support import given_options as _given
from ptyparity.cli_support import option_default as _kw
from ptyparity.cli_support import user_errors as _user_errors
from ptyparity.config import ModelConfig, TrainConfig
from ptyparity.errors import PtyparityError
from ptyparity.parity import DEFAULT_THRESHOLDS
from ptyparity.simulate import SimConfig

app = typer.Typer(
    name="ptyparity",
    help="Train, run and compare the PyTorch and TensorFlow PtychoPINN backends, recorded in MLflow.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

app.add_typer(cli_import.import_app, name="import")
app.command("check-run")(cli_check_run.check_run)

_SIM = SimConfig()  # defaults of the dataclass fields, read by the options below
_MODEL = ModelConfig()
_TRAIN = TrainConfig()


@app.command()
def simulate(
    out_dir: Annotated[Path, typer.Option(help="Directory for train.npz and test.npz.")] = Path("data"),
    n: Annotated[int, typer.Option("--n", "-N", help="Patch size N (32, 64, 128 or 256).")] = _SIM.N,
    object_family: Annotated[str, typer.Option(help="Object family: lines or images.")] = _SIM.object_family,
    object_size: Annotated[Optional[int], typer.Option(help="Object side in px (default 8N).")] = _SIM.object_size_px,
    scan_step: Annotated[Optional[float], typer.Option(help="Raster step in px (default N/8).")] = _SIM.scan_step_px,
    jitter: Annotated[float, typer.Option(help="Uniform position jitter, +- px.")] = _SIM.jitter_px,
    nphotons: Annotated[float, typer.Option(help="Mean photons per diffraction pattern.")] = _SIM.nphotons,
    seed: Annotated[int, typer.Option(help="Seed of the simulation.")] = _SIM.seed,
    overwrite: Annotated[bool, typer.Option(help="Replace existing train.npz/test.npz.")] = _kw(runs.run_simulate,
                                                                                                "overwrite"),
    log_data: Annotated[bool, typer.Option(help="Also store the NPZ files as run artifacts.")] = _kw(
        runs.run_simulate, "log_data"),
    experiment: Annotated[str, typer.Option(help=EXPERIMENT_HELP)] = EXPERIMENT,
    run_name: Annotated[Optional[str], typer.Option(help="MLflow run name.")] = None,
):
    """Simulate the seeded train/test datasets and record them in a ``simulate`` run."""
    with _user_errors(tracked=True):
        cfg = SimConfig(N=n, object_family=object_family, object_size_px=object_size, scan_step_px=scan_step,
                        jitter_px=jitter, nphotons=nphotons, seed=seed)
        result = runs.run_simulate(cfg, out_dir, experiment=experiment, run_name=run_name, overwrite=overwrite,
                                   log_data=log_data)
    s = result.summary["train"]
    typer.echo(f"simulated {s['n_patterns']} patterns of {s['N']}x{s['N']} per split, "
               f"{s['photons_per_pattern_mean']:.3g} photons/pattern, step {s['scan_step_px']:g} px")
    for split, path in result.paths.items():
        typer.echo(f"  {split:5s}      {path}  (sha256 {result.digests[split][:12]}…)")
    typer.echo(f"  run id:    {result.run_id}")
    _echo_links(result.run_id)


@app.command()
def inspect(
    data: Annotated[Path, typer.Argument(help="Raw NPZ dataset to validate.")],
    measurement: Annotated[str, typer.Option(help="auto, amplitude or intensity.")] = "auto",
    plot: Annotated[Optional[Path], typer.Option(help="Write a preview PNG here.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
):
    """Validate a dataset and print what you need to know before training."""
    with _user_errors():
        from ptyparity.data import count_sanity, load_npz, summarize

        raw = load_npz(data, measurement=measurement)
        summary = summarize(raw)
        warnings = count_sanity(raw)
        if plot is not None:
            from ptyparity import report

            os.makedirs(plot.parent, exist_ok=True)
            fig = report.dataset_figure(raw, title=str(data))
            fig.savefig(plot, dpi=100)
    if as_json:
        typer.echo(json.dumps({**summary, "warnings": [{"code": w.code, "message": w.message} for w in warnings]},
                              indent=2))
        return
    typer.echo(f"{data}: valid")
    rows = [
        ("patterns", f"{summary['n_patterns']} of {summary['N']}x{summary['N']} ({summary['measurement']})"),
        ("photons/pattern", f"mean {summary['photons_per_pattern_mean']:.4g}, "
                            f"min {summary['photons_per_pattern_min']:.4g}"),
        ("scan extent x", "{:.1f} .. {:.1f} px".format(*summary["scan_x_range_px"])),
        ("scan extent y", "{:.1f} .. {:.1f} px".format(*summary["scan_y_range_px"])),
        ("scan step", f"{summary['scan_step_px']:.3g} px (median nearest neighbour)"),
        ("probe", f"{summary['probe_shape'][0]}x{summary['probe_shape'][1]}, "
                  f"rms radius {summary['probe_rms_radius_px']:.2f} px"),
        ("ground truth", f"objectGuess {summary['object_shape'][0]}x{summary['object_shape'][1]}"
                         if summary["has_ground_truth"] else "none (no gt.* metrics at inference)"),
    ]
    if summary["extra_keys"]:
        rows.append(("extra keys", ", ".join(summary["extra_keys"]) + " (kept, ignored)"))
    for key, value in rows:
        typer.echo(f"  {key:16s} {value}")
    if plot is not None:
        typer.echo(f"  preview written to {plot}")
    for w in warnings:
        typer.echo(f"warning: {w.message} ({w.code})")
    if warnings:
        typer.echo("  ptyparity train refuses this data; pass --force to train anyway")


@app.command()
def train(
    ctx: typer.Context,
    train_data: Annotated[Optional[Path], typer.Option(help="Raw training NPZ (required unless --resume).")] = None,
    backend: Annotated[str, typer.Option(help="torch or tensorflow.")] = "torch",
    test_data: Annotated[Optional[Path], typer.Option(help="Held-out NPZ: deviance before/after training.")] = None,
    n_groups: Annotated[int, typer.Option(help="Number of training groups.")] = _TRAIN.n_groups,
    gridsize: Annotated[int, typer.Option(help="Groups have gridsize**2 patterns.")] = _MODEL.gridsize,
    neighbor_count: Annotated[int, typer.Option(help="Partners come from this many nearest positions.")] = _TRAIN.neighbor_count,
    batch_size: Annotated[int, typer.Option(help="Groups per batch.")] = _TRAIN.batch_size,
    max_epochs: Annotated[int, typer.Option(help="Training epochs.")] = _TRAIN.max_epochs,
    learning_rate: Annotated[float, typer.Option(help="Adam learning rate.")] = _TRAIN.learning_rate,
    n_filters_scale: Annotated[int, typer.Option(help="Network width factor f (2 = PtychoPINN; 1 trains ~3x faster on CPU).")] = _MODEL.n_filters_scale,
    loss_mode: Annotated[str, typer.Option(help="poisson or mae.")] = _TRAIN.loss_mode,
    object_big: Annotated[bool, typer.Option(help="Merge each group's patches on one canvas.")] = _MODEL.object_big,
    probe_big: Annotated[bool, typer.Option(help="Predict full N x N patches instead of the N/2 centre.")] = _MODEL.probe_big,
    probe_mask: Annotated[bool, typer.Option(help="Mask the probe with a disk of radius N/4.")] = _MODEL.probe_mask,
    merge_weighting: Annotated[str, typer.Option(help="support or probe.")] = _MODEL.merge_weighting,
    intensity_scale_mode: Annotated[str, typer.Option(help="dataset or closed_form.")] = _TRAIN.intensity_scale_mode,
    intensity_scale: Annotated[Optional[float], typer.Option(help="Explicit intensity scale s (overrides the mode).")] = _TRAIN.intensity_scale,
    intensity_scale_trainable: Annotated[bool, typer.Option(help="Learn log_scale.")] = _MODEL.intensity_scale_trainable,
    accelerator: Annotated[str, typer.Option(help="cpu, gpu or auto.")] = _kw(runs.run_train, "accelerator"),
    devices: Annotated[int, typer.Option(help="Number of devices (torch: Lightning DDP when > 1).")] = _kw(runs.run_train, "devices"),
    deterministic: Annotated[bool, typer.Option(help="Framework deterministic mode.")] = _TRAIN.deterministic,
    precision: Annotated[str, typer.Option(help="float32 or float64. float64: parity verification (slow).")] = _TRAIN.precision,
    seed: Annotated[int, typer.Option(help="Seed of grouping, split, shuffle and init.")] = _TRAIN.seed,
    log_patch_stats: Annotated[bool, typer.Option(help="Log patch.* statistics.")] = _kw(runs.run_train, "log_patch_stats"),
    patch_stats_limit: Annotated[int, typer.Option(help="Groups in the statistics and debug dump.")] = _TRAIN.patch_stats_limit,
    debug_dump: Annotated[bool, typer.Option(help="Log taps.npz, patch_stats.json and patch grids.")] = _kw(runs.run_train, "debug_dump"),
    init_from: Annotated[Optional[str], typer.Option(help="Start from this bundle's weights (path or URI).")] = None,
    register: Annotated[bool, typer.Option(help="Register the bundle as ptyparity-<backend>.")] = _kw(runs.run_train, "register"),
    measurement: Annotated[str, typer.Option(help="auto, amplitude or intensity.")] = _kw(runs.run_train, "measurement"),
    force: Annotated[bool, typer.Option(help="Train on data that cannot be photon counts (see ptyparity inspect).")] = _kw(runs.run_train, "force"),
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = _kw(runs.run_train, "quiet"),
    experiment: Annotated[str, typer.Option(help=EXPERIMENT_HELP)] = EXPERIMENT,
    run_name: Annotated[Optional[str], typer.Option(help="MLflow run name.")] = None,
    resume: Annotated[Optional[str], typer.Option(help="Continue this train run (FAILED, killed or finished) from its last checkpoint, in a new run with its config.")] = None,
):
    """Train one backend and record the run, its bundle and its registered model."""
    with _user_errors(tracked=True):
        from ptyparity.config import BACKENDS

        if resume is None and train_data is None:
            raise PtyparityError("--train-data is required (or --resume RUN_ID to continue a train run)")
        if backend not in BACKENDS:
            raise PtyparityError(f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
        model = ModelConfig(gridsize=gridsize, n_filters_scale=n_filters_scale, object_big=object_big,
                            probe_big=probe_big, probe_mask=probe_mask, merge_weighting=merge_weighting,
                            intensity_scale_trainable=intensity_scale_trainable)
        cfg = TrainConfig(model=model, n_groups=n_groups, neighbor_count=neighbor_count, batch_size=batch_size,
                          max_epochs=max_epochs, learning_rate=learning_rate, loss_mode=loss_mode,
                          intensity_scale_mode=intensity_scale_mode, intensity_scale=intensity_scale, seed=seed,
                          deterministic=deterministic, patch_stats_limit=patch_stats_limit, precision=precision)
        if resume is not None:  # the config comes from the run; typed options must agree with it
            given = {name: ctx.params[name] for name in _given(ctx)}
            backend, result = runs.resume_train(
                resume, given, experiment=given.get("experiment"), run_name=run_name, quiet=quiet,
                accelerator=accelerator, devices=devices, log_patch_stats=log_patch_stats, debug_dump=debug_dump,
                register=register)
        else:
            from ptyparity import warmup

            warmup.import_backend(backend)
            result = runs.run_train(backend, train_data, cfg, test_path=test_data, experiment=experiment,
                                    run_name=run_name, quiet=quiet, accelerator=accelerator, devices=devices,
                                    log_patch_stats=log_patch_stats, debug_dump=debug_dump, init_from=init_from,
                                    register=register, measurement=measurement, force=force,
                                    explicit_fields=_given(ctx) if init_from else None)
    m = result.final_metrics
    typer.echo(f"trained {backend}: train_deviance {m['train_deviance']:.4g}, val_deviance {m['val_deviance']:.4g}"
               + (f", test_deviance {m['test_deviance_initial']:.4g} -> {m['test_deviance']:.4g}"
                  if "test_deviance" in m else ""))
    typer.echo(f"  patches:   amp var_zero_mean {m['patch.amp.var_zero_mean']:.3g}, "
               f"collapsed {m['patch.amp.collapsed_fraction']:.0%}")
    typer.echo(f"  run id:    {result.run_id}")
    typer.echo(f"  model:     {result.model_uri}"
               + (f"  (models:/{names.registered_model_name(backend)}/{result.registered_version})"
                  if result.registered_version else ""))
    _echo_links(result.run_id)


@app.command()
def infer(
    model: Annotated[str, typer.Option(help="models:/ptyparity-<backend>/<version|@alias>, runs:/<id>/model or a bundle dir.")],
    data: Annotated[Path, typer.Option(help="Raw NPZ to reconstruct.")],
    backend: Annotated[str, typer.Option(help="torch, tensorflow, or auto: the bundle's own.")] = "auto",
    patch_stats_limit: Annotated[Optional[int], typer.Option(help="Groups in the statistics and debug dump (default: the training's).")] = _kw(runs.run_infer, "patch_stats_limit"),
    debug_dump: Annotated[bool, typer.Option(help="Log taps.npz, patch_stats.json and patch grids.")] = _kw(runs.run_infer, "debug_dump"),
    measurement: Annotated[str, typer.Option(help="auto, amplitude or intensity.")] = _kw(runs.run_infer, "measurement"),
    experiment: Annotated[str, typer.Option(help=EXPERIMENT_HELP)] = EXPERIMENT,
    run_name: Annotated[Optional[str], typer.Option(help="MLflow run name.")] = None,
):
    """Reconstruct a dataset with a trained bundle and record an ``infer`` run."""
    with _user_errors(tracked=True):
        from ptyparity.config import BACKENDS

        backend = None if backend in ("", "auto") else backend
        if backend is not None and backend not in BACKENDS:
            raise PtyparityError(f"backend must be one of {', '.join(BACKENDS)} or auto; got {backend!r}")
        result = runs.run_infer(model, data, backend=backend, experiment=experiment, run_name=run_name,
                                debug_dump=debug_dump, patch_stats_limit=patch_stats_limit, measurement=measurement)
    m = result.metrics
    if "gt.amp.ssim" in m:
        typer.echo(f"reconstructed: SSIM amp {m['gt.amp.ssim']:.3f} (flat {m['gt.amp.ssim_flat']:.3f}), "
                   f"phase {m['gt.phase.ssim']:.3f} (flat {m['gt.phase.ssim_flat']:.3f})")
    else:
        typer.echo("reconstructed (no objectGuess: no gt.* metrics)")
    typer.echo(f"  patches:   amp var_zero_mean {m['patch.amp.var_zero_mean']:.3g}, "
               f"mean_input_scale {m['mean_input_scale']:.4g}")
    typer.echo(f"  run id:    {result.run_id}")
    _echo_links(result.run_id)


@app.command()
def compare(
    torch_run: Annotated[Optional[str], typer.Option(help="Torch infer run id.")] = None,
    tf_run: Annotated[Optional[str], typer.Option(help="TensorFlow infer run id.")] = None,
    pair_key: Annotated[Optional[str], typer.Option(help="Newest torch and tensorflow infer runs with this key.")] = None,
    latest: Annotated[bool, typer.Option(help="Newest complete pair in the experiment.")] = False,
    allow_mismatch: Annotated[bool, typer.Option(help="Compare runs whose pair keys differ (recorded as a tag).")] = False,
    forward: Annotated[bool, typer.Option(help="Forward mode: same weights in both backends, per-tap errors.")] = False,
    model: Annotated[Optional[str], typer.Option(help="Forward mode: the bundle (models:/…, runs:/… or path).")] = None,
    data: Annotated[Optional[Path], typer.Option(help="Forward mode: data for the batch (default: simulated).")] = None,
    reference: Annotated[Optional[Path], typer.Option(help="Forward mode: judge this NPZ of dumped taps (PtychoPINN or ptyparity key names, with their inputs) against --model run on its inputs.")] = None,
    backend: Annotated[str, typer.Option(help="With --reference: torch, tensorflow, both, numpy (the reference network) or all.")] = _kw(runs.run_compare_forward_reference, "backend"),
    ratio_tolerance: Annotated[float, typer.Option(help="Allowed |torch/tf - 1| of the scale factors and patch mean.")] = DEFAULT_THRESHOLDS["ratio_tolerance"],
    var_ratio_max_factor: Annotated[float, typer.Option(help="torch/tf var_zero_mean must lie in [1/F, F].")] = DEFAULT_THRESHOLDS["var_ratio_max_factor"],
    canvas_amp_ssim_min: Annotated[float, typer.Option(help="Floor of torch-vs-tf canvas amplitude SSIM.")] = DEFAULT_THRESHOLDS["canvas_amp_ssim_min"],
    canvas_phase_ssim_min: Annotated[float, typer.Option(help="Floor of torch-vs-tf canvas phase SSIM.")] = DEFAULT_THRESHOLDS["canvas_phase_ssim_min"],
    collapsed_fraction_max: Annotated[float, typer.Option(help="Allowed share of collapsed patches.")] = DEFAULT_THRESHOLDS["collapsed_fraction_max"],
    tap_tolerance: Annotated[float, typer.Option(help="Forward mode: max relative tap error.")] = _kw(runs.run_compare_forward, "tolerance"),
    experiment: Annotated[str, typer.Option(help=EXPERIMENT_HELP)] = EXPERIMENT,
    run_name: Annotated[Optional[str], typer.Option(help="MLflow run name.")] = None,
):
    """Give the parity verdict of a torch/tensorflow pair (exit 0 pass, 1 fail or inconclusive, 2 error)."""
    with _user_errors(tracked=True):
        if reference is not None and not forward:
            raise PtyparityError("--reference judges a forward pass; add --forward and --model")
        if forward:
            if not model:
                raise PtyparityError("--forward needs --model (models:/ptyparity-torch/<version>, runs:/… or a path)")
            if reference is not None:
                if data is not None:
                    raise PtyparityError("--reference carries its own inputs; drop --data")
                result = runs.run_compare_forward_reference(reference, model, backend=backend, tolerance=tap_tolerance,
                                                            experiment=experiment, run_name=run_name)
            else:
                result = runs.run_compare_forward(model, data_path=data, tolerance=tap_tolerance,
                                                  experiment=experiment, run_name=run_name)
        else:
            thresholds = {"ratio_tolerance": ratio_tolerance, "var_ratio_max_factor": var_ratio_max_factor,
                          "canvas_amp_ssim_min": canvas_amp_ssim_min, "canvas_phase_ssim_min": canvas_phase_ssim_min,
                          "collapsed_fraction_max": collapsed_fraction_max}
            result = runs.run_compare(torch_run_id=torch_run, tf_run_id=tf_run, pair_key=pair_key, latest=latest,
                                      allow_mismatch=allow_mismatch, thresholds=thresholds, experiment=experiment,
                                      run_name=run_name)
    if result.verdict == "error":
        typer.echo(f"error: {result.reason} (compare run {result.run_id})", err=True)
        raise typer.Exit(code=2)
    statuses = f"parity {result.parity_status}" + (f", quality {result.quality_status}" if result.quality_status
                                                   else "")
    typer.echo(f"verdict: {result.verdict.upper()}  ({statuses})"
               + (f"  failed: {', '.join(result.failed_checks)}" if result.failed_checks else ""))
    for c in result.checks:
        mark = {"pass": "ok  ", "fail": "FAIL", "skipped": "skip"}[c.status]
        typer.echo(f"  {mark} {c.name:36s} {c.value:<12.5g} threshold {c.threshold:g}"
                   + (f"  {c.detail}" if mark != "ok  " and c.detail else ""))
    if forward and result.reason:
        typer.echo(f"  first divergent tap: {result.reason}")
    typer.echo(f"  compare run: {result.run_id}")
    _echo_links(result.run_id)
    raise typer.Exit(code=result.exit_code)


@app.command()
def pipeline(
    preset: Annotated[str, typer.Option(help="small (CPU, minutes) or full (N=64, f=2, thousands of groups: a GPU job).")] = _kw(runs.run_pipeline, "preset"),
    out_dir: Annotated[Path, typer.Option(help="Directory of the simulated data (reused when present).")] = Path(_kw(runs.run_pipeline, "out_dir")),
    seed: Annotated[int, typer.Option(help="Seed of simulation and training.")] = _kw(runs.run_pipeline, "seed"),
    overwrite: Annotated[bool, typer.Option(help="Simulate again even if the data exists.")] = _kw(runs.run_pipeline, "overwrite"),
    n_groups: Annotated[int, typer.Option(help="Override the preset's training groups (0: the preset's).")] = 0,
    max_epochs: Annotated[int, typer.Option(help="Override the preset's epochs (0: the preset's).")] = 0,
    accelerator: Annotated[str, typer.Option(help="cpu, gpu or auto.")] = _kw(runs.run_pipeline, "accelerator"),
    devices: Annotated[int, typer.Option(help="Devices per training (torch: DDP when > 1).")] = _kw(runs.run_pipeline, "devices"),
    quiet: Annotated[bool, typer.Option(help="Hide the steps' own output.")] = _kw(runs.run_pipeline, "quiet"),
    experiment: Annotated[str, typer.Option(help=EXPERIMENT_HELP)] = EXPERIMENT,
):
    """The default pipeline: simulate, train both backends, infer both, compare.

    Each step is a nested MLflow run under one ``pipeline`` run; simulate and compare
    run in this process, each backend's train and infer in one process of its own;
    exits 0 when the verdict is pass, 1 when it is fail or inconclusive, 2 on an error.
    """
    with _user_errors(tracked=True):
        result = runs.run_pipeline(preset=preset, out_dir=out_dir, seed=seed, overwrite=overwrite,
                                   experiment=experiment, quiet=quiet, accelerator=accelerator, devices=devices,
                                   overrides={"n_groups": n_groups, "max_epochs": max_epochs}, echo=typer.echo)
    typer.echo(f"verdict: {result.verdict.upper()}  (parity {result.parity_status})")
    for key, run_id in result.runs.items():
        typer.echo(f"  {key:18s} {run_id}")
    typer.echo(f"  pipeline run       {result.run_id}")
    _echo_links(result.runs["compare"])
    raise typer.Exit(code=result.compare_exit_code)


from ptyparity.runs.matrix import run_matrix as _run_matrix  # noqa: E402  (no framework, no mlflow)


@app.command()
def matrix(
    axes: Annotated[Optional[str], typer.Option(help="Axes to sweep, comma-separated, optionally with values: object_big,probe_big,gridsize,N,merge_weighting,loss_mode,intensity_scale_trainable,precision (e.g. gridsize=2,N=32:64). Default: all; the others keep their config default.")] = _kw(_run_matrix, "axes"),
    train_steps: Annotated[int, typer.Option(help="Also train K deterministic steps per cell on both backends and compare the per-step deviance (0: forward only).")] = _kw(_run_matrix, "train_steps"),
    quick: Annotated[bool, typer.Option(help="A representative subset (every value of every axis; under 2 minutes on 2 cores).")] = _kw(_run_matrix, "quick"),
    seed: Annotated[int, typer.Option(help="Seed of the simulated data, groups and weights.")] = _kw(_run_matrix, "seed"),
    experiment: Annotated[str, typer.Option(help=EXPERIMENT_HELP)] = EXPERIMENT,
    run_name: Annotated[Optional[str], typer.Option(help="MLflow run name.")] = None,
):
    """Sweep the configuration space: both backends against the NumPy reference and each other.

    One ``matrix`` run with one nested child per cell; exits 0 when every cell passes,
    1 when any fails, 2 on bad input.
    """
    with _user_errors():  # bad axes: one line, before the store is touched
        from ptyparity import matrix as parity_matrix

        parity_matrix.cell_grid(parity_matrix.parse_axes(axes), train_steps=train_steps, quick=quick)
    with _user_errors(tracked=True):
        result = _run_matrix(axes=axes, train_steps=train_steps, quick=quick, seed=seed, experiment=experiment,
                             run_name=run_name, echo=typer.echo)
    failed = result.failed_cells
    typer.echo(f"matrix: {result.status.upper()}  {len(result.results) - len(failed)} of {len(result.results)} "
               f"cells pass in {result.seconds:.0f} s" + (f"; failed: {', '.join(failed)}" if failed else ""))
    typer.echo(f"  matrix run:  {result.run_id}  (table: {names.MATRIX_TABLE})")
    _echo_links(result.run_id)
    raise typer.Exit(code=result.exit_code)

def main():
    """Entry point of the ``ptyparity`` console script."""
    # Before anything imports TensorFlow (MLflow's model loaders can): keep its C++
    # INFO/WARNING lines (oneDNN banners, dtype notes) out of the user's terminal.
    from ptyparity import allocator, console, warmup

    console.framework_env()
    console.filter_native_stderr()
    allocator.reuse_freed_memory()  # training steps reuse their freed blocks (see the module)
    warmup.enable()  # a training's imports kept out of the collector's full passes (see the module)
    app()
