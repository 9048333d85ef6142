"""How the pipeline runs its steps: a ``ptyparity`` CLI command in this process
(:func:`run_cli_step`), or one backend's ``train`` and ``infer`` in one child process
(:func:`run_backend`, whose other side is :mod:`ptyparity.runs.pipeline_backend`).

Every step is the CLI command a user would type, so it prints, validates and records
exactly what that command does. In process, the step gets the environment a child step
gets (``$PTYPARITY_PARENT_RUN_ID``: its run nests under the pipeline run;
``$PTYPARITY_RUN_ID_FILE``: it reports the run it opened, see
:func:`ptyparity.tracking.start_run`). A backend child appends one JSON line per event
to a report file (:func:`report_event`) that the parent reads while it waits.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import traceback

from ptyparity import names, tracking
from ptyparity.errors import PtyparityError

BACKEND_MODULE = "ptyparity.runs.pipeline_backend"
POLL_S = 0.1  # how often the parent reads the backend child's report while it runs


def peak_rss_mb():
    """This process's peak resident memory so far (``ru_maxrss``, KiB on Linux), in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def process_age_seconds():
    """Seconds since this process was created (Linux ``/proc``: its start in clock ticks
    after boot, against the uptime), or None where ``/proc`` is not there. 10 ms resolution."""
    try:
        with open("/proc/self/stat") as fh:
            started = int(fh.read().rsplit(")", 1)[1].split()[19])  # field 22, counted after the name
        with open("/proc/uptime") as fh:
            uptime = float(fh.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return max(0.0, uptime - started / os.sysconf("SC_CLK_TCK"))


def step_name(args):
    """How an error names a step: the command and its first option (``train --backend torch``)."""
    return " ".join(args[:3])


def step_failed(args, code, tail=""):
    return PtyparityError(f"pipeline step '{step_name(args)}' failed with exit code {code}"
                          + (f": {tail}" if tail else ""))


def _last_line(text):
    lines = text.strip().splitlines()
    return lines[-1] if lines else ""


@contextlib.contextmanager
def _step_environ(id_file, parent_run_id=None):
    """``os.environ`` as a child step's, for the duration of one in-process step."""
    keys = (names.RUN_ID_FILE_ENV, names.PARENT_RUN_ID_ENV, "MLFLOW_RUN_ID")
    saved = {key: os.environ.get(key) for key in keys}
    os.environ[names.RUN_ID_FILE_ENV] = id_file
    if parent_run_id is not None:
        os.environ[names.PARENT_RUN_ID_ENV] = parent_run_id
    # Set by `mlflow run` for the pipeline run; MLflow would resume that run instead of nesting a new one.
    os.environ.pop("MLFLOW_RUN_ID", None)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _invoke_cli(args):
    """``ptyparity ARGS`` in this process; its exit code (a crash prints its traceback, code 1,
    as the command's own process would)."""
    import click
    import typer.main

    from ptyparity import cli

    try:
        code = typer.main.get_command(cli.app).main(list(args), prog_name="ptyparity", standalone_mode=False)
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except click.ClickException as exc:  # bad usage: click's own message, exit 2
        exc.show()
        code = exc.exit_code
    except Exception:  # noqa: BLE001  (any crash of a step is that step's failure, reported by exit code)
        traceback.print_exc()
        code = 1
    if code == 130:  # typer's answer to Ctrl-C (the step's run already ended KILLED): the pipeline's too
        raise KeyboardInterrupt
    return 0 if code is None else int(code)


def cli_step(args, *, quiet, parent_run_id=None):
    """Run ``ptyparity ARGS`` as a step in this process.

    Parameters
    ----------
    args : list of str
        From :func:`ptyparity.runs.pipeline.cli_args`.
    quiet : bool
        Capture the step's output instead of printing it.
    parent_run_id : str, optional
        The pipeline run (default: ``$PTYPARITY_PARENT_RUN_ID`` as it is, in a backend child).

    Returns
    -------
    code : int
        The command's exit code.
    run_id : str or None
        The run the step opened, as it reported it.
    tail : str
        The last line of the captured output ("" unless ``quiet``).
    """
    output = io.StringIO()
    with tempfile.TemporaryDirectory() as tmp:
        id_file = os.path.join(tmp, "run_id")
        with _step_environ(id_file, parent_run_id), \
                (contextlib.redirect_stdout(output) if quiet else contextlib.nullcontext()), \
                (contextlib.redirect_stderr(output) if quiet else contextlib.nullcontext()):
            code = _invoke_cli(args)
        return code, tracking.read_reported_run_id(id_file), _last_line(output.getvalue())


def run_cli_step(args, *, quiet, parent_run_id, ok_codes=(0,), usage=None):
    """:func:`cli_step`, for the parent: a code outside ``ok_codes`` raises :class:`PtyparityError`
    naming the step; ``usage`` receives ``seconds`` (wall) and ``peak_rss_mb`` (this process's
    peak so far, ``ru_maxrss``).

    Returns
    -------
    run_id : str
    returncode : int
    """
    start = time.perf_counter()
    code, run_id, tail = cli_step(args, quiet=quiet, parent_run_id=parent_run_id)
    if usage is not None:
        usage.update(seconds=time.perf_counter() - start, peak_rss_mb=peak_rss_mb())
    if code not in ok_codes:
        raise step_failed(args, code, tail)
    if run_id is None:
        raise PtyparityError(f"pipeline step '{step_name(args)}' reported no run id")
    return run_id, code


def report_event(path, **event):
    """Append one event to a backend child's report (one JSON line, written whole)."""
    with open(path, "a") as fh:
        fh.write(json.dumps(event) + "\n")


def _new_events(path, offset):
    """The complete lines after ``offset`` of a report file, parsed, and the new offset."""
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            chunk = fh.read()
    except FileNotFoundError:
        return [], offset
    complete = chunk[:chunk.rfind(b"\n") + 1]
    return [json.loads(line) for line in complete.splitlines()], offset + len(complete)


def run_backend(spec, env, *, quiet, on_start=None):
    """One backend's steps (``spec["steps"]``: ``train`` then ``infer``) in one child process:
    ``python -m ptyparity.runs.pipeline_backend SPEC``, one framework import for both.

    Parameters
    ----------
    spec : dict
        What :func:`ptyparity.runs.pipeline_backend.main` reads: ``backend``, ``train`` and
        ``infer`` (CLI options; the child adds infer's ``model``, the version train registered).
    env : dict
        The child's environment.
    on_start : callable, optional
        ``on_start(step, args)`` when the child starts a step (``"infer_torch"``, its CLI args).

    Returns
    -------
    results : dict
        ``{step: {"run_id", "seconds", "peak_rss_mb"}}`` of ``train_<backend>`` and
        ``infer_<backend>``, and under ``"start_import_seconds"`` the child's time from its
        launch to its framework and MLflow imported (None if it never said). The train step's
        seconds include the child's start and imports; a failed step raises
        :class:`PtyparityError` naming it.
    """
    with tempfile.TemporaryDirectory() as tmp:
        report = os.path.join(tmp, "report.jsonl")
        log = open(os.path.join(tmp, "output.txt"), "w+") if quiet else None  # a file: nothing to drain
        sys.stdout.flush()  # our lines first, then the child's
        launched = time.time()
        proc = subprocess.Popen([sys.executable, "-m", BACKEND_MODULE, json.dumps({**spec, "report": report})],
                                env=env, stdout=log, stderr=subprocess.STDOUT if quiet else None)
        events, offset, status = [], 0, None
        while status is None:
            pid, wait_status, _ = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                status = os.waitstatus_to_exitcode(wait_status)
                proc.returncode = status
            new, offset = _new_events(report, offset)
            for event in new:
                if "started" in event and on_start is not None:
                    on_start(event["started"], event["args"])
            events += new
            if status is None:
                time.sleep(POLL_S)
        tail = ""
        if log is not None:
            log.seek(0)
            tail = _last_line(log.read())
            log.close()
    return _results(spec, events, status, tail, launched)


def _results(spec, events, status, tail, launched):
    """The finished steps of a backend child, from its events; the first failure raises."""
    backend = spec["backend"]
    args = {f"{step}_{backend}": ["train", "--backend", backend] if step == "train" else [step]
            for step in ("train", "infer")}
    results, imported_at = {}, None
    for event in events:
        if "imported" in event:
            imported_at = event["at"]
        elif "started" in event:
            args[event["started"]] = event["args"]
        elif "finished" in event:
            step = event["finished"]
            if event["exit_code"] != 0:
                raise step_failed(args[step], event["exit_code"], tail)
            if not event.get("run_id"):
                raise PtyparityError(f"pipeline step '{step_name(args[step])}' reported no run id")
            first = not results
            # The first step's time counts from the launch: the child's start and imports are its cost.
            seconds = event["ended_at"] - launched if first else event["seconds"]
            results[step] = {"run_id": event["run_id"], "seconds": seconds, "peak_rss_mb": event["peak_rss_mb"]}
    if status != 0 or len(results) < len(args):  # died outside a step (import error, signal)
        unfinished = next(step for step in args if step not in results)
        raise step_failed(args[unfinished], status, tail)
    results["start_import_seconds"] = None if imported_at is None else imported_at - launched
    return results
