"""Say so when a tracking server stops answering in the middle of a run.

MLflow's HTTP client (3.17.2) retries every request on a refused connection, a broken
read or HTTP 429/5xx: ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` (7) times with waits of
``MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR`` (2) x 2^(n-1) s after the first retry, each at
most 120 s, plus up to 1 s jitter: 0, 4, 8, 16, 32, 64, 120 s, about 4 minutes per
request. The command blocks in that request and goes on, in the same run, once the
server answers again, so a server restart loses nothing. But the retries are silent
(urllib3 logs them to a logger with a NullHandler), and a training that stops for
minutes without a word looks hung. :func:`announce` prints one line per retry.

No MLflow import: this only listens to urllib3's ``Retrying (...)`` log records.
"""

from __future__ import annotations

import logging
import sys

LOGGER = "urllib3.connectionpool"
DEFAULT_BUDGET = "about 4 min"  # MLflow 3.17.2 defaults, see the module docstring


class _RetryNotice(logging.Handler):
    """Turns urllib3's retry warnings into one ptyparity line on stderr."""

    def __init__(self, uri):
        super().__init__(logging.WARNING)
        self.uri = uri

    def emit(self, record):
        if not str(record.msg).startswith("Retrying"):
            return
        try:
            retry, err = record.args[0], record.args[1]
            left = getattr(retry, "total", None)
            wait = retry.get_backoff_time() if hasattr(retry, "get_backoff_time") else None
        except (IndexError, TypeError, AttributeError):
            retry, err, left, wait = None, "", None, None
        text = str(err)
        cause = "connection refused" if "refused" in text.lower() else (type(err).__name__ if err else "no answer")
        when = f"retrying in {wait:.0f} s" if wait is not None else "retrying"
        budget = f", {left} retries left" if isinstance(left, int) else ""
        print(f"ptyparity: the tracking server at {self.uri} does not answer ({cause}); {when}{budget} "
              f"(MLflow retries each request for {DEFAULT_BUDGET}, MLFLOW_HTTP_REQUEST_MAX_RETRIES); "
              "the run goes on when it is back", file=sys.stderr, flush=True)


def announce(uri):
    """Print a line to stderr on each HTTP retry towards the tracking server ``uri`` (http(s) only,
    once per process). Returns ``uri``."""
    if not uri.startswith(("http://", "https://")):
        return uri
    logger = logging.getLogger(LOGGER)
    if not any(isinstance(h, _RetryNotice) for h in logger.handlers):
        logger.addHandler(_RetryNotice(uri))
        if logger.getEffectiveLevel() > logging.WARNING:
            logger.setLevel(logging.WARNING)
    return uri
