"""``ptyparity import …``: bring models trained elsewhere into the registry as ptyparity bundles.

A typer sub-app the main :mod:`ptyparity.cli` mounts as ``import``; each command calls one
workflow (:func:`ptyparity.runs.run_import`) and prints a summary.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ptyparity import runs
from ptyparity.cli_support import EXPERIMENT, EXPERIMENT_HELP, echo_links, option_default, user_errors

import_app = typer.Typer(help="Bring models trained elsewhere into the registry as ptyparity bundles.",
                         no_args_is_help=True)


@import_app.command("ptychopinn")
def import_ptychopinn(
    checkpoint: Annotated[Path, typer.Argument(help="The wts.h5.zip PtychoPINN's model_manager.save wrote.")],
    data: Annotated[Path, typer.Option(help="The PtychoPINN-format NPZ the model was trained on (its probeGuess).")],
    name: Annotated[str, typer.Option(help="Registered model name.")] = option_default(runs.run_import, "name"),
    config_yaml: Annotated[Optional[Path], typer.Option("--config", help="The training YAML; its model section must agree with the checkpoint.")] = option_default(runs.run_import, "config_yaml"),
    upstream_commit: Annotated[Optional[str], typer.Option(help="The PtychoPINN commit the model was trained with.")] = option_default(runs.run_import, "upstream_commit"),
    register: Annotated[bool, typer.Option(help="Register the bundle under --name.")] = option_default(runs.run_import, "register"),
    experiment: Annotated[str, typer.Option(help=EXPERIMENT_HELP)] = EXPERIMENT,
    run_name: Annotated[Optional[str], typer.Option(help="MLflow run name.")] = None,
):
    """Import a real PtychoPINN TensorFlow checkpoint (never unpickled) and register it."""
    with user_errors(tracked=True):
        result = runs.run_import(checkpoint, data, name=name, config_yaml=config_yaml, upstream_commit=upstream_commit,
                                 register=register, experiment=experiment, run_name=run_name)
    m, s = result.model_cfg, result.scales
    typer.echo(f"imported {checkpoint}: N={m.N}, gridsize={m.gridsize}, n_filters_scale={m.n_filters_scale}, "
               f"object_big={m.object_big}, probe_big={m.probe_big}, intensity_scale {s.intensity_scale:.6g}")
    typer.echo("  conventions: " + ", ".join(f"{k}={v}" for k, v in m.conventions.items()))
    typer.echo(f"  source:    sha256 {result.provenance['sha256'][:12]}…, upstream commit "
               f"{result.provenance.get('upstream_commit') or 'not given'}\n  run id:    {result.run_id}")
    typer.echo(f"  model:     {result.model_uri}"
               + (f"  (models:/{result.registered_name}/{result.registered_version})"
                  if result.registered_version else ""))
    echo_links(result.run_id)
