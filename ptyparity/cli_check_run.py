"""``ptyparity check-run RUN_ID``: what a run lacks for each compare check (exit 0 complete,
1 gaps, 2 bad input). :mod:`ptyparity.cli` registers :func:`check_run`; the work is
:func:`ptyparity.runs.check_run.check_run`.
"""

from __future__ import annotations

from typing import Annotated

import typer

from ptyparity.cli_support import user_errors


def check_run(run_id: Annotated[str, typer.Argument(help="A train or infer run id.")]):
    """List what a train or infer run lacks for each compare check (exit 0 complete, 1 gaps, 2 bad input)."""
    from ptyparity.runs.check_run import check_run as find_needs

    with user_errors(tracked=True):
        result = find_needs(run_id)
    typer.echo(f"run {result.run_id}: {result.kind} run, {result.backend or 'no backend'}, "
               f"implementation {result.implementation}")
    for need in result.needs:
        if not need.lacks:
            typer.echo(f"  ok    {need.check}")
        for item in need.lacks:
            typer.echo(f"  lacks {need.check}: {item}")
    gaps = result.gaps
    typer.echo("complete: every compare check finds what it reads" if not gaps else
               f"gaps: {len(gaps)} of {len(result.needs)} lack something ({', '.join(n.check for n in gaps)})")
    raise typer.Exit(code=result.exit_code)
