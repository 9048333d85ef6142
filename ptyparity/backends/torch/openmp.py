"""How torch's OpenMP threads wait between operations, and how many a training uses.

torch's CPU kernels run on GNU OpenMP (libgomp). Between two parallel operations its
worker threads wait for the next one, and *how* they wait decides the step rate:

- sleeping at once (``OMP_WAIT_POLICY=PASSIVE``) costs a futex wake-up per operation, a few
  hundred per training step. On this project's 2-core machine the small model's step ran at
  ~160 groups/s that way, against ~300 with a short spin (``scripts/bench.py``'s step worker,
  interleaved runs).
- spinning costs the other processes on the machine their CPU. Next to one busy process a
  spinning torch training fell to 40-80 groups/s, where one thread, which never waits for a
  worker, kept ~180.

So :func:`environment_defaults` gives libgomp a short spin (``GOMP_SPINCOUNT``, about a
millisecond, a third of libgomp's own default) and otherwise the passive policy, and
:class:`ThreadGovernor` watches, during a fit, how much CPU the *other* processes take: while
they keep half a core busy, the training runs on one thread (no worker to wait for, so no
spin); when they go quiet, it takes its threads back. CPUs beyond the training's threads are the
others' to use: on a large machine only a nearly full one sends the training to one thread.
libgomp reads its variables once, when torch is imported, so the defaults must be in the
environment before that: the backend package sets them on import, before any framework (in
every process that imports it first, the pipeline's torch child included).

Nothing here imports a framework.
"""

from __future__ import annotations

import os
import time

SPIN_COUNT = 100_000  # libgomp's spins before a waiting thread sleeps; ~1 ms (its default: 300,000)
POLL_SECONDS = 1.0  # how often a fit's governor looks at the machine
BUSY_CORES = 0.5  # other processes' CPU use (cores) that sends a training to one thread ...
IDLE_CORES = 0.25  # ... and below which it takes its threads back


def environment_defaults(environ=os.environ):
    """Set libgomp's wait defaults in ``environ`` (a mapping, changed in place) unless the
    user chose a wait policy or a spin count: ``GOMP_SPINCOUNT`` :data:`SPIN_COUNT` and
    ``OMP_WAIT_POLICY=PASSIVE`` (which then only governs an oversubscribed pool).

    Returns
    -------
    environ : mapping
    """
    if "OMP_WAIT_POLICY" not in environ and "GOMP_SPINCOUNT" not in environ:
        environ["GOMP_SPINCOUNT"] = str(SPIN_COUNT)
    environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return environ


def _busy_seconds(cpus):
    """CPU seconds spent busy (user, nice, system, irq, softirq) so far on the CPUs ``cpus``,
    from ``/proc/stat``; None where that cannot be read. Steal and iowait are not work of this
    machine's processes and are left out."""
    try:
        with open("/proc/stat") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return None
    ticks = 0
    for line in lines:
        name, *fields = line.split()
        if not name.startswith("cpu") or name == "cpu":
            continue
        if int(name[3:]) in cpus:
            user, nice, system, _idle, _iowait, irq, softirq = (int(f) for f in fields[:7])
            ticks += user + nice + system + irq + softirq
    return ticks / os.sysconf("SC_CLK_TCK")


class OtherProcessesMeter:
    """CPU use of every process but this one on the CPUs this process may run on.

    :meth:`cores` is the mean number of cores the others kept busy since the previous call:
    busy time of those CPUs (``/proc/stat``) minus this process's own CPU time (all its
    threads, spinning included), over the wall time between the calls. ``available`` is
    False where ``/proc/stat`` cannot be read (not Linux): then :meth:`cores` is always None.
    """

    def __init__(self):
        self.cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
        self._last = self._sample()
        self.available = self._last is not None

    def _sample(self):
        busy = _busy_seconds(self.cpus)
        if busy is None:
            return None
        own = os.times()
        return time.monotonic(), busy, own.user + own.system

    def cores(self):
        sample = self._sample()
        if sample is None or self._last is None:
            return None
        (t0, busy0, own0), (t1, busy1, own1) = self._last, sample
        self._last = sample
        if t1 <= t0:
            return None
        return max(0.0, (busy1 - busy0) - (own1 - own0)) / (t1 - t0)


class ThreadGovernor:
    """The intra-op thread count a training should run with, given the other processes' load.

    Parameters
    ----------
    threads : int
        The count it starts with and returns to (torch's setting when the fit starts).
    meter : OtherProcessesMeter, optional
        What measures the others' CPU use (default: a new one).
    poll_seconds : float, optional
        Look at most this often (default :data:`POLL_SECONDS`).
    cpus : int, optional
        CPUs this process may use (default: the meter's).

    :meth:`poll` is cheap enough for every training step: between looks it reads the clock.
    It returns the new count when the training should change it, otherwise None: one thread
    while the others keep :data:`BUSY_CORES` of the cores ``threads`` needs busy, ``threads``
    again once they use less than :data:`IDLE_CORES` of them (the CPUs beyond ``threads``
    are the others' to take: 2 threads on 64 CPUs give way only past 62.5 busy cores).
    ``switches`` counts the changes.
    """

    def __init__(self, threads, *, meter=None, poll_seconds=None, cpus=None):
        self.max_threads = max(1, int(threads))
        self.threads = self.max_threads
        self.meter = meter if meter is not None else OtherProcessesMeter()
        self.poll_seconds = POLL_SECONDS if poll_seconds is None else float(poll_seconds)
        self.spare = max(0, (len(self.meter.cpus) if cpus is None else int(cpus)) - self.max_threads)
        self.switches = 0
        self._next = time.monotonic() + self.poll_seconds

    def poll(self):
        now = time.monotonic()
        if self.max_threads == 1 or now < self._next:
            return None
        self._next = now + self.poll_seconds
        others = self.meter.cores()
        if others is None:
            return None
        if self.threads > 1 and others >= self.spare + BUSY_CORES:
            self.threads = 1
        elif self.threads == 1 and others < self.spare + IDLE_CORES:
            self.threads = self.max_threads
        else:
            return None
        self.switches += 1
        return self.threads
