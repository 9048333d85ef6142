"""Fail fast on a tracking URI that cannot work, and one line for any tracking error.

MLflow retries an unreachable server for minutes and reports a wrong URI (a server
that is not MLflow, an unknown scheme, an sqlite file where nothing can be written)
with a traceback, often only after the work is done. :func:`check` looks at the URI
before a command does anything else, in a few seconds at most, and raises a
one-line :class:`~ptyparity.errors.PtyparityError` naming the URI and the fix.
:func:`error_line` turns an exception from MLflow or the connection beneath it
into such a line for the CLI.

No MLflow import here: :func:`ptyparity.tracking.check_store` hands in MLflow's known
schemes and a bounded HTTP ``get`` (no retries, :data:`TIMEOUT_S`), so the server is
asked with MLflow's own credentials and TLS settings. A server that drops during a
run still gets MLflow's normal retries; only this check is bounded.
"""

from __future__ import annotations

import os
import socket
import tempfile
from urllib.parse import unquote, urlsplit

from ptyparity.errors import PtyparityError

TIMEOUT_S = 3.0  # per request of the check; a healthy server answers /health in milliseconds
FIX = "set MLFLOW_TRACKING_URI to a reachable server or sqlite:///mlflow.db"
DATABASE_PORTS = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}
SQLITE_HEADER = b"SQLite format 3\x00"
API_PROBE = "/api/2.0/mlflow/experiments/search"  # the cheapest call every MLflow server answers
# Top-level packages whose exceptions are tracking errors (the store, its HTTP client, its database).
TRACKING_PACKAGES = ("mlflow", "requests", "urllib3", "sqlalchemy", "psycopg2", "pymysql")


def check(uri, *, schemes=None, get=None):
    """Raise a one-line error when the tracking store at ``uri`` cannot work.

    Parameters
    ----------
    uri : str
        The tracking URI in effect.
    schemes : set of str, optional
        The URI schemes MLflow has a store for (not checked when None).
    get : callable, optional
        ``get(endpoint, params=None) -> requests.Response``: one GET to the server,
        no retries, timeout :data:`TIMEOUT_S`; needed for ``http(s)`` URIs.

    Raises
    ------
    PtyparityError
        The server is down or not MLflow, the scheme is unknown, or a local store's
        directory is missing or cannot be written.
    """
    if uri in ("databricks", "databricks-uc", "uc"):  # profiles MLflow resolves itself: nothing cheap to try
        return
    scheme = urlsplit(uri).scheme.lower()
    engine = scheme.split("+", 1)[0]  # postgresql+psycopg2 -> postgresql
    if schemes is not None and scheme not in schemes and engine not in schemes and uri not in schemes:
        raise PtyparityError(f"MLFLOW_TRACKING_URI {uri!r} has an unknown scheme {scheme!r}; use http(s)://host:port "
                             "(a tracking server), sqlite:///mlflow.db or a local directory")
    if scheme in ("http", "https"):
        _check_server(uri, get)
    elif engine == "sqlite":
        _check_sqlite(uri)
    elif scheme in ("", "file"):
        _check_directory(uri)
    elif engine in DATABASE_PORTS:
        _check_database(uri, engine)


def _check_server(uri, get):
    health = _ask(uri, get, "/health")
    if health.status_code in (401, 403):
        raise _refused_access(uri, health.status_code)
    if health.status_code != 200:
        raise _not_mlflow(uri, "/health", health)
    api = _ask(uri, get, API_PROBE, params={"max_results": 1})
    if api.status_code in (401, 403):
        raise _refused_access(uri, api.status_code)
    try:
        body = api.json()
    except ValueError:
        body = None
    if api.status_code != 200 or not isinstance(body, dict):
        raise _not_mlflow(uri, API_PROBE, api)


def _ask(uri, get, endpoint, **kwargs):
    try:
        return get(endpoint, **kwargs)
    except Exception as exc:  # noqa: BLE001 - whatever the transport raised, the server cannot be used
        raise PtyparityError(unreachable(uri, exc)) from None


def unreachable(uri, exc):
    """The one line for a tracking server that cannot be reached (``exc`` says why)."""
    return f"cannot reach the MLflow tracking server at {uri} ({_cause(uri, exc)}); start it or {FIX}"


def _refused_access(uri, code):
    return PtyparityError(f"the MLflow tracking server at {uri} refused access (HTTP {code}); set "
                          "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN)")


def _not_mlflow(uri, endpoint, response):
    kind = (response.headers.get("content-type") or "no content type").split(";")[0]
    return PtyparityError(f"{uri} answers but is not an MLflow tracking server (GET {endpoint}: HTTP "
                          f"{response.status_code}, {kind}); check the host, port and path, or {FIX}")


def _chain(exc):
    """``exc`` and the exceptions it wraps (MLflow wraps the requests error it caught)."""
    chain = []
    while exc is not None and len(chain) < 10:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    return chain


def _cause(uri, exc):
    """Why a connection to ``uri`` failed, in a few words."""
    chain = _chain(exc)
    text = " ".join(f"{type(e).__name__}: {e}" for e in chain)
    if any("Timeout" in type(e).__name__ for e in chain) or "timed out" in text:
        return f"no answer within {TIMEOUT_S:g} s"
    if "NameResolutionError" in text or "Name or service not known" in text or "nodename nor servname" in text:
        return f"unknown host {urlsplit(uri).hostname}"
    if "Connection refused" in text:
        return "connection refused"
    if "SSLError" in text or "CERTIFICATE" in text:
        return "TLS handshake failed; check MLFLOW_TRACKING_SERVER_CERT_PATH or MLFLOW_TRACKING_INSECURE_TLS"
    return first_line(exc)


def first_line(exc, limit=300):
    """The first line of an exception's message (its type name when empty), at most ``limit`` characters."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _sqlite_path(uri):
    """The file of an ``sqlite:///`` URI (None for an in-memory database)."""
    rest = uri.split("://", 1)[1].split("?", 1)[0]
    path = unquote(rest[1:] if rest.startswith("/") else rest)  # sqlite:///rel.db, sqlite:////abs.db
    return None if path in ("", ":memory:") else path


def _check_sqlite(uri):
    path = _sqlite_path(uri)
    if path is None:
        return
    _check_writable_dir(uri, os.path.dirname(os.path.abspath(path)), "sqlite store")
    if os.path.isdir(path):
        raise PtyparityError(f"the sqlite store {uri} names a directory, {path}; point MLFLOW_TRACKING_URI at a "
                             "file, e.g. sqlite:///mlflow.db")
    if os.path.isfile(path) and os.path.getsize(path) > 0:
        with open(path, "rb") as fh:
            header = fh.read(len(SQLITE_HEADER))
        if header != SQLITE_HEADER:
            raise PtyparityError(f"{path} is not an SQLite database, so {uri} cannot be the tracking store; "
                                 "point MLFLOW_TRACKING_URI at an MLflow store, e.g. sqlite:///mlflow.db")
        if not os.access(path, os.R_OK | os.W_OK):
            raise PtyparityError(f"the sqlite store {path} cannot be written; fix its permissions or {FIX}")


def _check_directory(uri):
    """A local file store (``file:`` URI or a plain path): its parent must exist and be writable."""
    if os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() not in ("true", "1"):
        raise PtyparityError(f"MLflow 3 refuses the file store {uri}; use sqlite:///mlflow.db (`mlflow "
                             "migrate-filestore` converts an existing one) or set MLFLOW_ALLOW_FILE_STORE=true")
    path = os.path.abspath(unquote(urlsplit(uri).path) if uri.startswith("file:") else uri)
    if os.path.exists(path) and not os.path.isdir(path):
        raise PtyparityError(f"the tracking store {uri} is a file, not a directory; {FIX}")
    _check_writable_dir(uri, path if os.path.isdir(path) else os.path.dirname(path), "tracking store")


def _check_writable_dir(uri, directory, what):
    """``directory`` exists and a file can be created in it (tried, so it also holds for root and
    read-only mounts). A missing directory is refused, not created: a typo in the path would
    otherwise start a new, empty store there."""
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise PtyparityError(f"the {what} {uri} lies under {directory}, which is a file, not a directory; "
                             "fix the path in MLFLOW_TRACKING_URI")
    if not os.path.isdir(directory):
        raise PtyparityError(f"the directory {directory} of the {what} {uri} does not exist; create it "
                             f"(mkdir -p {directory}) or fix the path in MLFLOW_TRACKING_URI")
    try:
        fd, probe = tempfile.mkstemp(dir=directory, prefix=".ptyparity-write-check-")
    except OSError as exc:
        raise PtyparityError(f"cannot write the {what} {uri}: no file can be created in {directory} "
                             f"({exc.strerror}); choose a writable directory or {FIX}") from None
    os.close(fd)
    os.remove(probe)


def _check_database(uri, engine):
    """A database server's port must accept a connection (MLflow itself retries for minutes)."""
    parts = urlsplit(uri)
    try:
        host, port = parts.hostname, parts.port or DATABASE_PORTS[engine]
    except ValueError:
        raise PtyparityError(f"MLFLOW_TRACKING_URI {uri!r} has an invalid port; use {engine}://user@host:port/db") \
            from None
    if not host:  # a local socket: nothing cheap to try
        return
    try:
        socket.create_connection((host, port), timeout=TIMEOUT_S).close()
    except OSError as exc:
        reason = "no answer" if isinstance(exc, socket.timeout) else (exc.strerror or first_line(exc)).lower()
        raise PtyparityError(f"cannot reach the {engine} database of the tracking store at {host}:{port} "
                             f"({reason}); start it or {FIX}") from None


def is_tracking_error(exc):
    """True for an exception raised by MLflow or the client, driver or database beneath it."""
    return any(cls.__module__.split(".", 1)[0] in TRACKING_PACKAGES for cls in type(exc).__mro__)


def error_line(exc, uri):
    """One line for a tracking error (see :func:`is_tracking_error`) met while using ``uri``."""
    if any(type(e).__name__ in ("ConnectionError", "ConnectTimeout", "ReadTimeout", "NewConnectionError",
                                "MaxRetryError") for e in _chain(exc)):
        return unreachable(uri, exc)
    return f"MLflow ({uri}): {first_line(exc)}; check the ids and names given and MLFLOW_TRACKING_URI"
