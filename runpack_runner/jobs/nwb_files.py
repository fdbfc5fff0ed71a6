"""Opening a remote NWB file for a figure job, and finding the object a path names.

lindi reads the file with HTTP range requests through ``requests``, which waits
forever by default. Here every request made while a job reads the file gets a
connect and a read timeout (the runner's ``remote_connect_timeout`` and ``remote_read_timeout``
settings, which its CLI passes to handlers as ``RUNPACK_REMOTE_CONNECT_TIMEOUT`` and
``RUNPACK_REMOTE_READ_TIMEOUT`` in the environment; :data:`CONNECT_TIMEOUT` and
:data:`READ_TIMEOUT` without them),
a stalled range read is tried :data:`READ_RETRIES` more times rather than lindi's
eight, and lindi's in-memory copy of the file is bounded (:data:`MEMORY_CACHE_BYTES`)
so that reading a large dataset does not keep all of it. The ranges read are kept in
the runner's disk cache (:mod:`runpack_runner.jobs.remote_cache`), so that the next
figure from the same file reads them from there.

Paths are checked against the kind of object a job needs before any data is read,
using only metadata: whether the object is a group or a dataset, its
``neurodata_type`` and its member names. Nothing here iterates a dataset.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import h5py

from runpack_runner.context import JobContext

#: Seconds to wait for a connection, and for each read from it (an answer, a block of
#: data): the defaults of the runner's settings of the same names.
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 30.0
#: The runner's environment variables that change them (see docs/settings.md).
CONNECT_TIMEOUT_ENV = "RUNPACK_REMOTE_CONNECT_TIMEOUT"
READ_TIMEOUT_ENV = "RUNPACK_REMOTE_READ_TIMEOUT"
#: Further tries of a range read that failed (lindi's default is 8, with backoff).
READ_RETRIES = 2
#: lindi keeps what it read of the file in memory up to this size (its default: 1 GiB)…
MEMORY_CACHE_BYTES = 64 * 1024 * 1024
#: …and reads ahead at most this much in one request (its default: 1 GiB).
MAX_REQUEST_BYTES = 16 * 1024 * 1024


def timeouts(environ: Mapping[str, str] | None = None) -> tuple[float, float]:
    """(connect, read) timeouts in seconds: the runner's settings, else the defaults."""
    environ = os.environ if environ is None else environ
    values = []
    for name, default in ((CONNECT_TIMEOUT_ENV, CONNECT_TIMEOUT), (READ_TIMEOUT_ENV, READ_TIMEOUT)):
        text = environ.get(name, "").strip()
        try:
            value = float(text) if text else default
        except ValueError:
            value = default
        values.append(value if value > 0 else default)
    return values[0], values[1]


# --- timeouts for every request a job's thread makes --------------------------------------
_local = threading.local()
_install_lock = threading.Lock()
_installed = False
#: ``Session.request``'s positional parameters before ``timeout``.
_BEFORE_TIMEOUT = 7


def _install() -> None:
    """Wrap ``requests.Session.request`` (once) to fill in the thread's timeouts."""
    global _installed
    import requests

    with _install_lock:
        if _installed:
            return
        original = requests.Session.request

        @functools.wraps(original)
        def request(self: Any, method: Any, url: Any, *args: Any, **kwargs: Any) -> Any:
            limits = getattr(_local, "timeouts", None)
            if limits is not None and len(args) < _BEFORE_TIMEOUT and not kwargs.get("timeout"):
                kwargs["timeout"] = limits
            return original(self, method, url, *args, **kwargs)

        requests.Session.request = request  # type: ignore[method-assign]
        _installed = True


@contextlib.contextmanager
def timed_requests(connect: float, read: float) -> Iterator[None]:
    """Within the block, in this thread, a ``requests`` call without a timeout gets these."""
    _install()
    outer = getattr(_local, "timeouts", None)
    _local.timeouts = (connect, read)
    try:
        yield
    finally:
        _local.timeouts = outer


def _network_error(exc: BaseException, connect: float, read: float) -> str | None:
    """Why, in a few words, for a timeout or connection failure anywhere in ``exc``'s
    chain (lindi and urllib3 wrap errors in their own); None for any other error."""
    import requests

    from runpack.netrules import AddressNotAllowed

    chain: list[BaseException] = []
    cause: BaseException | None = exc
    while cause is not None and cause not in chain:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    for cause in chain:
        if isinstance(cause, AddressNotAllowed):  # a redirect to a private address
            return str(cause)
    for cause in chain:
        if isinstance(cause, requests.exceptions.ConnectTimeout):
            return f"no connection within {connect:g} s (connect timeout)"
        if isinstance(cause, requests.exceptions.Timeout):
            return f"no answer for {read:g} s (read timeout)"
    if any(isinstance(cause, requests.exceptions.ConnectionError) for cause in chain):
        return "the connection failed"
    return None


@contextlib.contextmanager
def open_nwb(ctx: JobContext, url: str) -> Iterator[Any]:
    """The remote file as an h5py-like object, read with timeouts and bounded memory;
    closed at the end. RuntimeError, one line, when the file cannot be read."""
    import lindi
    import lindi.LindiRemfile.LindiRemfile as remfile

    ctx.log(f"Opening NWB file: {url}")
    # Before any connection, so that the answer never tells a refused port from an
    # open one; every connection lindi then makes meets the same rule (JobRun).
    ctx.check_url(url)
    connect, read = timeouts()
    remfile._num_request_retries = READ_RETRIES  # type: ignore[attr-defined]
    with timed_requests(connect, read), _disk_cache(ctx, url) as ranges:
        try:
            f = lindi.LindiH5pyFile.from_hdf5_file(url, local_cache=ranges)
        except Exception as exc:
            why = _network_error(exc, connect, read) or _first_line(exc)
            raise RuntimeError(f"Cannot open the NWB file at {url}: {why}") from exc
        _bound_memory(f)
        try:
            yield f
        except Exception as exc:
            failure = _network_error(exc, connect, read)
            if failure is None:
                raise
            raise RuntimeError(f"Reading the NWB file at {url} failed: {failure}") from exc
        finally:
            f.close()
            if ranges is not None:
                ctx.log(
                    f"Remote read cache: {ranges.hits} ranges from disk, {ranges.misses} fetched"
                )


@contextlib.contextmanager
def _disk_cache(ctx: JobContext, url: str) -> Iterator[Any]:
    """The runner's disk cache for this version of the file (remote_cache), or None:
    when it is off, cannot be opened, or the server tells no version of the file."""
    import lindi.LindiRemfile.LindiRemfile as remfile
    import requests

    from runpack_runner.jobs import remote_cache

    chunk = int(remfile.default_min_chunk_size)

    cache = remote_cache.open_cache()
    if cache is None:
        yield None
        return
    try:
        version = None
        try:
            # lindi asks the same way for the size: a GET closed after its headers.
            with requests.get(url, stream=True) as response:
                if response.status_code == 200:
                    version = remote_cache.file_version(response.headers)
        except Exception:  # lindi meets the same failure next and says what it is
            pass
        if version is None:
            yield None
            return
        ranges = remote_cache.FileRanges(cache, url, version, ctx.log, chunk)
        try:
            yield ranges
        finally:
            ranges.flush()
    finally:
        cache.close()


def _bound_memory(f: Any) -> None:
    """Limit lindi's in-memory copy of the remote file (its defaults allow 1 GiB)."""
    remote: Any = getattr(getattr(f, "_zarr_store", None), "_file", None)
    if hasattr(remote, "_max_chunks_in_cache") and hasattr(remote, "_min_chunk_size"):
        chunk = int(remote._min_chunk_size)
        remote._max_chunks_in_cache = max(1, MEMORY_CACHE_BYTES // chunk)
        remote._max_chunk_size = max(chunk, MAX_REQUEST_BYTES)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


# --- what a path names -----------------------------------------------------------------
def neurodata_type(obj: Any) -> str:
    value = obj.attrs.get("neurodata_type")
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    return value if isinstance(value, str) else ""


def describe(obj: Any) -> str:
    """What ``obj`` is, from its metadata: "a dataset of shape (3,)", "a Units group"…"""
    if isinstance(obj, h5py.Dataset):
        return f"a dataset of shape {tuple(obj.shape)}"
    if isinstance(obj, h5py.Group):
        kind = neurodata_type(obj)
        return f"a group ({kind})" if kind else "a group"
    return f"a {type(obj).__name__}"


def get_object(f: Any, path: str, what: str) -> Any:
    """The object at ``path``; ValueError when the file has none there."""
    try:
        obj = f.get(path)
    except (KeyError, ValueError, OSError, AssertionError, TypeError):  # lindi asserts
        obj = None
    if obj is None:
        raise ValueError(f"No {what} at '{path}' in the NWB file")
    return obj


def get_group(f: Any, path: str, what: str, needs: tuple[str, ...] = ()) -> Any:
    """The group at ``path`` holding the datasets ``needs``; ValueError saying what the
    path names instead (a dataset, a group without them)."""
    obj = get_object(f, path, what)
    if not isinstance(obj, h5py.Group):
        raise ValueError(f"'{path}' is {describe(obj)}, not {_a(what)}")
    names = set(obj.keys())
    for name in needs:
        if name not in names:
            raise ValueError(f"'{path}' is {describe(obj)}, not {_a(what)}: it has no '{name}'")
        if not isinstance(obj.get(name), h5py.Dataset):
            raise ValueError(f"'{path}/{name}' is {describe(obj.get(name))}, not a dataset")
    return obj


def _a(what: str) -> str:
    """ "an ImageSeries", "a units table", "a PoseEstimation"."""
    return ("an " if what[:1].lower() in "aeio" else "a ") + what


def read_numbers(dataset: Any, path: str, dtype: Any) -> Any:
    """The whole dataset as a numpy array of ``dtype``; ValueError naming ``path`` when
    it holds something else than numbers (checked from its type, before reading)."""
    import numpy as np

    kind = getattr(getattr(dataset, "dtype", None), "kind", "")
    if not isinstance(dataset, h5py.Dataset) or kind not in "biuf":
        what = f"{dataset.dtype} values" if kind else describe(dataset)
        raise ValueError(f"'{path}' holds {what}, not numbers")
    return np.asarray(dataset[()], dtype=dtype)
