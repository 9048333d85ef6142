"""Keep framework chatter out of what a ``ptyparity`` process prints, never its errors.

Two pieces, both set up by the CLI's entry point before any framework is imported:

* :func:`framework_env` — the environment defaults for the frameworks' own switches
  (a value the user set wins): ``TF_CPP_MIN_LOG_LEVEL=2`` (TensorFlow's INFO and
  WARNING lines off, as TensorFlow documents it). The pipeline passes them to its
  child processes too.
* :func:`filter_native_stderr` — TensorFlow 2.21 logs through C++ absl *before* it
  reads ``TF_CPP_MIN_LOG_LEVEL`` (``I0000 … port.cc] oneDNN custom operations are
  on …``, preceded by ``WARNING: All log messages before absl::InitializeLog() …``),
  and on CPUs without AVX-512 it logs the fallback notice ``E0000 … oneDNN supports
  DT_INT32 only on platforms with AVX-512 …`` at ERROR level. No switch reaches these,
  so file descriptor 2 is routed through a small filter *process* that drops exactly
  the lines the log level says to drop (and that one notice) and passes everything
  else through unchanged, partial lines and progress output at once. Being a separate
  process it outlives a crash of ours: whatever we wrote before dying still arrives.
  ``TF_CPP_MIN_LOG_LEVEL=0`` turns the filter off.

Lightning's info lines (``GPU available: …``, its "💡 Tip" advertising) have no
environment switch; the torch backend lowers its loggers around a fit.
"""

from __future__ import annotations

import atexit
import os
import subprocess
import sys

FRAMEWORK_ENV = {"TF_CPP_MIN_LOG_LEVEL": "2"}

# The filter's own source: it runs with `python -S` (no site-packages; stdlib only).
# argv[1] is the log level: 1 drops I lines, 2 also W lines and the known ERROR-level
# fallback notice, 3 also E lines (TensorFlow's meaning of TF_CPP_MIN_LOG_LEVEL).
_FILTER_SOURCE = r"""
import os, re, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)   # Ctrl-C is for the process we serve: keep draining
signal.signal(signal.SIGTERM, signal.SIG_IGN)  # we end at EOF, when every writer is gone
level = int(sys.argv[1])
header = re.compile(rb"([IWEF])\d{4} [0-9:.]+ +\d+ [^ \]]+:\d+\] ")
partial = re.compile(rb"[IWEF](?:\d{1,4}(?: [0-9:.]*(?: +\d*(?: [^ \]\n]*)?)?)?)?")  # a header's start
banner = b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
notices = (b"oneDNN supports DT_INT32 only on platforms with AVX-512",)
dropped = {1: b"I", 2: b"IW", 3: b"IWE"}.get(level, b"IWE" if level > 3 else b"")

def noise(line):
    if line.rstrip(b"\r\n") == banner:
        return True
    m = header.match(line)
    if not m:
        return False
    severity = m.group(1)
    return severity in dropped or (level >= 2 and severity == b"E" and any(n in line for n in notices))

def maybe_noise(start):
    # could this unfinished line still become a dropped one? (C++ writes a line at once)
    if banner.startswith(start) or header.match(start):
        return True
    return len(start) < 200 and partial.fullmatch(start) is not None

out = sys.stdout.buffer
pending, passing = b"", False
while True:
    try:
        chunk = os.read(0, 65536)
    except InterruptedError:
        continue
    if not chunk:
        break
    while chunk:
        cut = chunk.find(b"\n")
        piece, chunk = (chunk, b"") if cut < 0 else (chunk[:cut + 1], chunk[cut + 1:])
        if passing:
            out.write(piece)
            passing = not piece.endswith(b"\n")
            continue
        pending += piece
        if pending.endswith(b"\n"):
            if not noise(pending):
                out.write(pending)
            pending = b""
        elif not maybe_noise(pending):
            out.write(pending)
            pending, passing = b"", True
    out.flush()
if pending and not noise(pending):
    out.write(pending)
out.flush()
"""

_installed = False


def framework_env(env=None):
    """``env`` (default ``os.environ``, changed in place) with :data:`FRAMEWORK_ENV`'s
    defaults filled in where unset; returns it."""
    env = os.environ if env is None else env
    for key, value in FRAMEWORK_ENV.items():
        env.setdefault(key, value)
    return env


def _log_level():
    try:
        return int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0"))
    except ValueError:
        return 0


def filter_native_stderr():
    """Route this process's file descriptor 2 through the filter process (once).

    Does nothing when ``TF_CPP_MIN_LOG_LEVEL`` is 0 or unset, or when stderr cannot
    be duplicated (closed). At exit the original stderr is put back and the filter
    is given a moment to finish writing, so its last lines come before the shell's
    prompt.
    """
    global _installed
    level = _log_level()
    if _installed or level <= 0:
        return
    try:
        original = os.dup(2)
    except OSError:
        return
    try:
        proc = subprocess.Popen([sys.executable, "-S", "-c", _FILTER_SOURCE, str(level)], stdin=subprocess.PIPE,
                                stdout=original, stderr=subprocess.DEVNULL, close_fds=True)
    except OSError:
        os.close(original)
        return
    sys.stderr.flush()
    os.dup2(proc.stdin.fileno(), 2)
    proc.stdin.close()  # fd 2 is now the filter's only writer end in this process
    _installed = True
    atexit.register(_restore, original, proc)


def _restore(original, proc):
    try:
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    os.dup2(original, 2)  # closes our end of the pipe: the filter sees EOF once our children are done
    os.close(original)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:  # a child still holds the pipe; the filter ends with it
        pass
