"""The ``ptyparity`` command line (typer).

Each command builds a config, calls one library function and prints a summary. A
user mistake (:class:`~ptyparity.errors.PtyparityError`) prints one line,
``error: …``, and exits with code 2; frameworks are imported only by the commands
that need them, so ``ptyparity --help`` starts fast.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from ptyparity.errors import PtyparityError

app = typer.Typer(
    name="ptyparity",
    help="Train, run and compare the PyTorch and TensorFlow PtychoPINN backends, recorded in MLflow.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

EXPERIMENT_HELP = "MLflow experiment name (created when missing)."


@contextlib.contextmanager
def _user_errors():
    try:
        yield
    except PtyparityError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from None


def _echo_links(run_id):
    from ptyparity import tracking

    links = tracking.run_links(run_id)
    typer.echo(f"  tracking:  {tracking.tracking_uri()}")
    if "start_ui" in links:
        typer.echo(f"  open UI:   {links['start_ui']}")
    typer.echo(f"  run page:  {links['ui']}")


@app.command()
def simulate(
    out_dir: Annotated[Path, typer.Option(help="Directory for train.npz and test.npz.")] = Path("data"),
    n: Annotated[int, typer.Option("--n", "-N", help="Patch size N (32, 64, 128 or 256).")] = 32,
    object_family: Annotated[str, typer.Option(help="Object family: lines or images.")] = "lines",
    object_size: Annotated[Optional[int], typer.Option(help="Object side in px (default 8N).")] = None,
    scan_step: Annotated[Optional[float], typer.Option(help="Raster step in px (default N/8).")] = None,
    jitter: Annotated[float, typer.Option(help="Uniform position jitter, +- px.")] = 0.0,
    nphotons: Annotated[float, typer.Option(help="Mean photons per diffraction pattern.")] = 1e6,
    seed: Annotated[int, typer.Option(help="Seed of the simulation.")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace existing train.npz/test.npz.")] = False,
    log_data: Annotated[bool, typer.Option(help="Also store the NPZ files as run artifacts.")] = True,
    experiment: Annotated[str, typer.Option(help=EXPERIMENT_HELP)] = "ptyparity",
    run_name: Annotated[Optional[str], typer.Option(help="MLflow run name.")] = None,
):
    """Simulate the seeded train/test datasets and record them in a ``simulate`` run."""
    with _user_errors():
        from ptyparity.pipeline import run_simulate
        from ptyparity.simulate import SimConfig

        cfg = SimConfig(N=n, object_family=object_family, object_size_px=object_size, scan_step_px=scan_step,
                        jitter_px=jitter, nphotons=nphotons, seed=seed)
        result = run_simulate(cfg, out_dir, experiment=experiment, run_name=run_name, overwrite=overwrite,
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
        from ptyparity.data import load_npz, summarize

        raw = load_npz(data, measurement=measurement)
        summary = summarize(raw)
        if plot is not None:
            from ptyparity import report

            os.makedirs(plot.parent, exist_ok=True)
            fig = report.dataset_figure(raw, title=str(data))
            fig.savefig(plot, dpi=100)
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
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


@app.command()
def pipeline(
    out_dir: Annotated[Path, typer.Option(help="Directory for the simulated data.")] = Path("data"),
    n: Annotated[int, typer.Option("--n", "-N", help="Patch size N.")] = 32,
    seed: Annotated[int, typer.Option(help="Seed of the simulation.")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace existing simulated data.")] = False,
    experiment: Annotated[str, typer.Option(help=EXPERIMENT_HELP)] = "ptyparity",
):
    """The default pipeline on the embedded simulated dataset.

    Today it simulates the default dataset into the tracking store (reusing it when
    it is already there) and says where to look; training, inference and the
    comparison join it as the backends land.
    """
    with _user_errors():
        from ptyparity.data import load_npz
        from ptyparity.pipeline import run_simulate
        from ptyparity.simulate import SimConfig

        train_path = out_dir / "train.npz"
        if train_path.exists() and (out_dir / "test.npz").exists() and not overwrite:
            raw = load_npz(train_path)
            typer.echo(f"reusing {train_path} ({raw.n_patterns} patterns of {raw.N}x{raw.N}); "
                       "pass --overwrite to simulate again")
            return
        result = run_simulate(SimConfig(N=n, seed=seed), out_dir, experiment=experiment,
                              run_name="simulate", overwrite=overwrite)
    typer.echo(f"simulated {out_dir}/train.npz and {out_dir}/test.npz in run {result.run_id}")
    _echo_links(result.run_id)


def main():
    """Entry point of the ``ptyparity`` console script."""
    app()
