"""The pipeline's backend process: ``python -m ptyparity.runs.pipeline_backend SPEC``.

Runs ``ptyparity train`` and then ``ptyparity infer`` of the version that train
registered, both in this process (the framework is imported once), and appends an
event per step to the report file the parent named (see
:func:`ptyparity.runs.pipeline_steps.run_backend`). Started by the pipeline only; one
backend per process, one process at a time.
"""

from __future__ import annotations

import atexit
import json
import os
import sys
import time

from ptyparity import allocator, console, warmup
from ptyparity.errors import PtyparityError
from ptyparity.runs.pipeline import cli_args, registered_model_uri
from ptyparity.runs.pipeline_steps import cli_step, peak_rss_mb, report_event


def main(argv=None):
    """Run the steps of the spec (JSON: ``backend``, ``train`` and ``infer`` CLI options,
    ``report`` path); the exit code is the failed step's, else 0."""
    spec = json.loads((sys.argv[1:] if argv is None else argv)[0])
    backend, report = spec["backend"], spec["report"]
    console.framework_env()  # as the `ptyparity` entry point does
    console.filter_native_stderr()
    allocator.reuse_freed_memory()
    warmup.enable()
    # A torch DDP rank that Lightning started from this command line (LOCAL_RANK > 0) joins the
    # training only: rank 0 owns the report and the inference.
    if int(os.environ.get("LOCAL_RANK") or 0) > 0:
        return cli_step(cli_args("train", spec["train"]), quiet=False)[0]
    _import_framework(backend)
    report_event(report, imported=backend, at=time.time())
    train_run = None
    for step in ("train", "infer"):
        name, start = f"{step}_{backend}", time.perf_counter()
        try:
            options = spec[step] if step == "train" else {"model": registered_model_uri(backend, train_run),
                                                           **spec[step]}
        except PtyparityError as exc:  # no registered version to infer with: this step's failure
            print(f"error: {exc}", file=sys.stderr, flush=True)
            report_event(report, finished=name, run_id=None, exit_code=2, seconds=0.0, ended_at=time.time(),
                         peak_rss_mb=peak_rss_mb())
            return 2
        args = cli_args(step, options)
        report_event(report, started=name, args=args)
        code, run_id, _ = cli_step(args, quiet=False)
        # ru_maxrss is this process's peak so far: the infer figure includes the train step's peak.
        report_event(report, finished=name, run_id=run_id, exit_code=code, seconds=time.perf_counter() - start,
                     ended_at=time.time(), peak_rss_mb=peak_rss_mb())
        if code != 0:
            return code
        train_run = run_id
    return 0


def _import_framework(backend):
    """What every step of this process needs first: MLflow, the backend's framework and its
    training modules (so the parent can tell the process's start and imports apart from the
    training), then kept out of the collector's full passes (:mod:`ptyparity.warmup`)."""
    from ptyparity import tracking

    tracking._mlflow()
    warmup.import_backend(backend)


def _exit_without_teardown(code):
    """The last exit handler: every other one has run (MLflow's, the stderr filter's), so leave
    now, skipping the interpreter's teardown of the framework (1.3-1.7 s of freeing memory that
    nobody reads again; the parent waits for this process before it goes on)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code[0])


if __name__ == "__main__":
    exit_code = [1]  # what an uncaught exception (its traceback already printed) exits with
    atexit.register(_exit_without_teardown, exit_code)  # registered first: runs last
    exit_code[0] = main()
    sys.exit(exit_code[0])
