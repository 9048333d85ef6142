"""The torch fit's thread governor (ptyparity.backends.torch.openmp): its decisions, its
measurement of the other processes' CPU use against a real busy process, and a real fit
next to one."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest
import torch

from ptyparity.backends.torch import api, network, openmp
from ptyparity.training import TrainHooks
from tests.backends.helpers import initial_weights, training_set

BURN = "import time\nend = time.time() + 60\nwhile time.time() < end: pass\n"

pytestmark = pytest.mark.skipif(not openmp.OtherProcessesMeter().available,
                                reason="/proc/stat is Linux's; elsewhere the governor does nothing")


@pytest.fixture
def busy_neighbour():
    """Another process keeping one core busy (for at most a minute)."""
    proc = subprocess.Popen([sys.executable, "-c", BURN])
    time.sleep(0.3)  # running, not starting
    yield proc
    proc.kill()
    proc.wait()


class ScriptedMeter:
    """Returns the given loads in turn (cores), then None."""

    def __init__(self, loads):
        self.loads = list(loads)

    def cores(self):
        return self.loads.pop(0) if self.loads else None


def test_governor_drops_to_one_thread_while_others_are_busy_and_takes_its_threads_back():
    gov = openmp.ThreadGovernor(4, meter=ScriptedMeter([0.1, 0.9, 0.7, 0.4, 0.2, 0.6, None]), poll_seconds=0,
                                cpus=4)
    decisions = [gov.poll() for _ in range(7)]
    # idle: stay; busy: one thread; still busy, then in between (hysteresis): stay; quiet: all
    # four back; half a core busy again: one; no reading: stay.
    assert decisions == [None, 1, None, None, 4, 1, None]
    assert gov.switches == 3 and gov.threads == 1


def test_governor_looks_no_more_often_than_asked_and_never_below_one_thread():
    meter = ScriptedMeter([0.9] * 10)
    gov = openmp.ThreadGovernor(2, meter=meter, poll_seconds=60, cpus=2)
    assert [gov.poll() for _ in range(5)] == [None] * 5 and len(meter.loads) == 10  # not due: no reading
    single = openmp.ThreadGovernor(1, meter=ScriptedMeter([0.9, 0.0]), poll_seconds=0, cpus=2)
    assert [single.poll(), single.poll()] == [None, None]


def test_governor_leaves_the_cpus_beyond_its_threads_to_the_others():
    # 2 threads on 8 CPUs: 6 cores are the others'; only past 6.5 busy does the training give way.
    gov = openmp.ThreadGovernor(2, meter=ScriptedMeter([5.9, 6.4, 6.6, 6.3, 6.1]), poll_seconds=0, cpus=8)
    assert [gov.poll() for _ in range(5)] == [None, None, 1, None, 2]


def test_meter_counts_another_busy_process(busy_neighbour):
    meter = openmp.OtherProcessesMeter()
    time.sleep(0.6)
    assert meter.cores() >= openmp.BUSY_CORES


def test_meter_leaves_out_this_process_own_cpu_time():
    meter = openmp.OtherProcessesMeter()
    cpus = meter.cpus
    busy0, wall0 = openmp._busy_seconds(cpus), time.monotonic()

    def spin(end=time.monotonic() + 0.6):
        while time.monotonic() < end:
            pass

    spinner = threading.Thread(target=spin)
    spinner.start()
    spinner.join()
    others = meter.cores()
    everyone = (openmp._busy_seconds(cpus) - busy0) / (time.monotonic() - wall0)
    # this process kept ~1 core busy; whatever else the machine did is in both figures
    assert everyone - others >= 0.5, (everyone, others)


class ThreadsSeen(TrainHooks):
    def __init__(self):
        self.threads = []

    def on_step(self, step, metrics):
        self.threads.append(torch.get_num_threads())


@pytest.mark.parametrize("deterministic", [False, True])
def test_fit_runs_on_one_thread_next_to_a_busy_process_unless_deterministic(busy_neighbour, monkeypatch,
                                                                            deterministic):
    monkeypatch.setattr(openmp, "POLL_SECONDS", 0.05)
    before = torch.get_num_threads()
    threads = max(2, len(openmp.OtherProcessesMeter().cpus))  # every CPU: the busy neighbour takes one of ours
    torch.set_num_threads(threads)
    try:
        ts = training_set(max_epochs=6)
        model = network.build_model(ts.cfg.model, ts.probe, initial_weights(ts))
        seen = ThreadsSeen()
        api.fit(model, ts, seen, quiet=True, deterministic=deterministic)
        after = torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
    assert after == threads, "the fit puts torch's thread count back"
    if deterministic:
        assert set(seen.threads) == {threads}, "a deterministic fit keeps its threads"
    else:
        assert 1 in seen.threads, f"threads per step next to a busy process: {seen.threads}"
