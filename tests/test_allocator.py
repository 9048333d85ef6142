"""ptyparity.allocator: freed large blocks are reused, counted in page faults (not timed)."""

import json
import os
import subprocess
import sys

# Allocate, fill and free a 40 MiB array five times (above glibc's largest automatic mmap
# threshold, 32 MiB); the minor page faults of cycles 2-5 tell whether the memory was reused.
_CYCLES = """
import json, resource, sys
import numpy as np
from ptyparity import allocator
applied = allocator.reuse_freed_memory() if sys.argv[1] == "on" else None
faults = []
for _ in range(5):
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    a = np.ones(10 << 20, np.float32)
    del a
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start)
print(json.dumps({"applied": applied, "faults": faults}))
"""
# Faults per fresh array: 10,240 with 4 KiB pages, ~500 with transparent huge pages.


def _cycles(mode, **env):
    proc = subprocess.run([sys.executable, "-c", _CYCLES, mode], capture_output=True, text=True, check=True,
                          env={**os.environ, **env})
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_freed_blocks_are_reused_instead_of_faulted_in_again():
    default, reused = _cycles("off"), _cycles("on")
    assert reused["applied"] is True  # CI and this machine run glibc
    # glibc's default: every cycle maps fresh zeroed pages and faults them in, as the first did
    fresh = default["faults"][0]
    assert fresh >= 20 and min(default["faults"][1:]) > 0.9 * fresh, default
    # raised thresholds: the first cycle grows the heap, later ones reuse it
    assert reused["faults"][0] > 0.9 * fresh and max(reused["faults"][1:]) < 0.05 * fresh, reused


def test_malloc_settings_in_the_environment_are_left_alone():
    kept = _cycles("on", MALLOC_MMAP_THRESHOLD_="131072")
    assert kept["applied"] is False
    assert min(kept["faults"][1:]) > 0.9 * kept["faults"][0] >= 18, kept
    assert _cycles("on", GLIBC_TUNABLES="glibc.malloc.trim_threshold=131072")["applied"] is False
