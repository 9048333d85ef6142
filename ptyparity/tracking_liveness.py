"""Stale runs: a run whose process died (SIGKILL, power loss) without ending it.

Part of the tracking layer (mlflow imported lazily, inside the functions). Every run
:func:`ptyparity.tracking.start_run` opens carries its owner as tags: the host, the
pid and the process's start (:func:`process_started`: Linux's boot id and the
process's start tick, so a reused pid or a reboot is not mistaken for the owner), and
a heartbeat (unix seconds) that a training renews every epoch.

Every command that opens the store (:func:`ptyparity.tracking.init_store`: train,
infer, compare, pipeline, simulate, import, matrix) first calls :func:`sweep`: the
experiment's RUNNING runs owned by a process of *this* host that no longer exists are
ended FAILED with tag ``ptyparity.error`` saying so, and one line per run goes to
stderr. A run of another host is left alone, unless its heartbeat is older than
:data:`REMOTE_STALE_S` (a day: no ptyparity epoch, infer or compare takes that long).
A run without owner tags (opened by another tool) is never touched.
"""

from __future__ import annotations

import math
import os
import socket
import sys
import time

from ptyparity import names

REMOTE_STALE_S = 24 * 3600  # a run of another host is stale when its heartbeat is this old
_SWEPT = set()  # (tracking URI, experiment id) already swept by this process


def _boot_id():
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            return fh.read().strip()
    except OSError:
        return ""


def process_started(pid):
    """A text that differs between two processes that had the same pid: ``<boot id>:<start
    tick>`` from ``/proc`` (Linux), "" without procfs; None when ``pid`` is not running (a
    zombie, killed but not yet reaped, counts as not running)."""
    if not os.path.isdir("/proc/self"):  # no procfs: only whether the pid exists
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return None
        except PermissionError:  # someone else's process: it exists
            pass
        return ""
    try:
        with open(f"/proc/{int(pid)}/stat") as fh:
            stat = fh.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces: count the fields after its ')'.
    fields = stat.rsplit(")", 1)[1].split()  # fields[0] is field 3 (state), fields[19] field 22 (starttime)
    return None if fields[0] == "Z" else f"{_boot_id()}:{fields[19]}"


def owner_tags():
    """The tags that name this process as a run's owner, with a fresh heartbeat."""
    return {names.TAG_OWNER_HOST: socket.gethostname(), names.TAG_OWNER_PID: str(os.getpid()),
            names.TAG_OWNER_STARTED: process_started(os.getpid()) or "", **heartbeat_tags()}


def heartbeat_tags():
    return {names.TAG_HEARTBEAT: str(int(time.time()))}


def heartbeat(metrics=None, step=None):
    """Renew the active run's heartbeat (a training calls this every epoch), with ``metrics``
    (their finite values) at ``step`` in the same write: one store transaction a call."""
    import mlflow
    from mlflow.entities import Metric, RunTag

    now = int(time.time() * 1000)
    values = [Metric(key, float(v), now, step or 0) for key, v in (metrics or {}).items()
              if v is not None and math.isfinite(float(v))]
    mlflow.MlflowClient().log_batch(mlflow.active_run().info.run_id, metrics=values,
                                    tags=[RunTag(k, v) for k, v in heartbeat_tags().items()])


def why_stale(tags, *, now=None):
    """Why the owner of a RUNNING run with these ``tags`` is gone, or None when it may be alive
    (or the run has no owner tags)."""
    host, pid = tags.get(names.TAG_OWNER_HOST), tags.get(names.TAG_OWNER_PID)
    if not host or not (pid or "").isdigit():
        return None
    who = f"process {pid} on {host}"
    if host != socket.gethostname():
        beat = tags.get(names.TAG_HEARTBEAT, "")
        age = (time.time() if now is None else now) - int(beat) if beat.isdigit() else None
        if age is not None and age > REMOTE_STALE_S:
            return f"{who} has not reported for {age / 3600:.0f} h (another host; stale after 24 h)"
        return None
    started = process_started(int(pid))
    if started is None:
        return f"{who} is gone (killed, or crashed without ending the run)"
    recorded = tags.get(names.TAG_OWNER_STARTED, "")
    if recorded and started and started != recorded:
        return f"{who} is gone (the pid now belongs to another process)"
    return None


def sweep(experiment_id, *, quiet=False):
    """End FAILED the experiment's RUNNING runs whose owner is gone (:func:`why_stale`),
    once per experiment and process.

    Returns
    -------
    marked : list of str
        The ids of the runs it ended.
    """
    import mlflow

    key = (mlflow.get_tracking_uri(), str(experiment_id))
    if key in _SWEPT:
        return []
    _SWEPT.add(key)
    client = mlflow.MlflowClient()
    running = client.search_runs([str(experiment_id)], filter_string="attributes.status = 'RUNNING'",
                                 max_results=1000)
    marked = []
    for run in running:
        reason = why_stale(run.data.tags)
        if reason is None:
            continue
        message = (f"stale run: it was left RUNNING by {reason}; marked FAILED by the next ptyparity command "
                   f"(pid {os.getpid()}) at {time.strftime('%Y-%m-%d %H:%M:%S')}")
        client.set_tag(run.info.run_id, names.TAG_ERROR, message)
        client.set_terminated(run.info.run_id, "FAILED")
        marked.append(run.info.run_id)
        if not quiet:
            kind = run.data.tags.get(names.TAG_KIND, "run")
            print(f"ptyparity: {kind} run {run.info.run_id} was left RUNNING by {reason}; marked it FAILED"
                  + (f" (continue it: ptyparity train --resume {run.info.run_id})" if kind == "train" else ""),
                  file=sys.stderr, flush=True)
    return marked


def swept(experiment_id):
    """``experiment_id``, after :func:`sweep` (how :func:`ptyparity.tracking.init_store` calls it)."""
    sweep(experiment_id)
    return experiment_id
