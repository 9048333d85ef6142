"""What every ``ptyparity`` command shares: the one-line error handling (exit 2), the run
links it prints, and reading option defaults from where they are defined.

Imports no framework and not mlflow (:mod:`ptyparity.tracking` does that, lazily).
"""

from __future__ import annotations

import contextlib
import inspect as _inspect
import os

import typer

from ptyparity import names, tracking, tracking_preflight
from ptyparity.errors import PtyparityError

EXPERIMENT_HELP = "MLflow experiment name (created when missing)."
EXPERIMENT = names.DEFAULT_EXPERIMENT


def option_default(fn, name):
    """Default of keyword argument ``name`` of workflow function ``fn``."""
    return _inspect.signature(fn).parameters[name].default


@contextlib.contextmanager
def user_errors(*, tracked=False):
    """One line and exit 2 for a user mistake or a tracking error (MLflow, its server or database);
    ``tracked``: check the tracking store first, before any work (fails fast on a wrong URI)."""
    try:
        if tracked:
            tracking.check_store()
        yield
    except PtyparityError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from None
    except Exception as exc:
        if not tracking_preflight.is_tracking_error(exc):
            raise
        typer.echo(f"error: {tracking_preflight.error_line(exc, tracking.tracking_uri())}", err=True)
        raise typer.Exit(code=2) from None


def given_options(ctx):
    """The options the user typed (or set in the environment), not left at their default."""
    return {p.name for p in ctx.command.params  # by name: typer ships its own copy of click's enum
            if getattr(ctx.get_parameter_source(p.name), "name", "") in ("COMMANDLINE", "ENVIRONMENT")}


def echo_links(run_id):
    """Where to see the run: the store, how to start the UI for a local one, the run page and the
    experiment's runs table (both in the UI's model-training view, never its GenAI overview)."""
    links = tracking.run_links(run_id)
    step = os.environ.get(names.PARENT_RUN_ID_ENV)  # a pipeline step: the pipeline prints these once, at the end
    if not step:
        typer.echo(f"  tracking:  {tracking.tracking_uri()}")
        if "start_ui" in links:
            typer.echo(f"  open UI:   {links['start_ui']}")
    typer.echo(f"  run page:  {links['ui']}")
    if not step:
        typer.echo(f"  all runs:  {links['runs']}")
