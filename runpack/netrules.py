"""Which URLs named by callers or runners may be fetched: the address rule.

A URL given by someone else (a figure URL in a runner's result, an ``nwb_url`` in a
public submit) is fetched only over http(s), without credentials, and only from
public addresses: never loopback, private, link-local, CGNAT, multicast, reserved
or unspecified ones, never a cloud metadata address (169.254.169.254,
fd00:ec2::254), whether written as a name, a literal, a decimal number
(``http://2130706433/``) or an IPv4 address inside an IPv6 one. ``allow_private``
(``RUNPACK_ALLOW_PRIVATE_URLS``) lifts the address part, for labs that serve files
on their own network and for tests on loopback.

The rule is applied to the address actually connected to, after name resolution,
so a name that resolves to a public address once and a private one later (DNS
rebinding) gains nothing: the server's validator checks every socket it opens
(:func:`check_sockaddr` as aiohttp's socket factory) and the runner checks every
name its handlers resolve (:func:`guarded`). Stdlib only: the runner shares it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import threading
from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import SplitResult, urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: Where figpack's cloud serves figures: the hosts whose ``figpack.json`` the server
#: fetches by default (``RUNPACK_FIGURE_URL_HOSTS``).
FIGPACK_HOSTS = ("figures.figpack.org",)

#: Shared address space (carrier-grade NAT; cloud metadata at 100.100.100.200), which
#: ``is_global`` does not catch on every Python version.
CGNAT = ipaddress.ip_network("100.64.0.0/10")
#: NAT64's well-known prefix: the IPv4 address in its last 32 bits is what is reached.
NAT64 = ipaddress.ip_network("64:ff9b::/96")
#: The resolver, as it was before :func:`guarded` wrapped it.
_real_getaddrinfo = socket.getaddrinfo


class URLNotAllowed(ValueError):
    """A URL that the address rule forbids; the message says why, never whether the
    address answers (it is raised before any connection)."""


class AddressNotAllowed(OSError):
    """A connection to a forbidden address, refused before it was opened."""


def address_allowed(address: str | IPAddress) -> bool:
    """True for a public unicast address; False for anything else or unreadable."""
    try:
        ip = ipaddress.ip_address(address) if isinstance(address, str) else address
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id:
            return False
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and ip in NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is None and ip.teredo is not None:
            embedded = ip.teredo[1]
        if embedded is not None:
            return address_allowed(embedded)
        if ip.is_site_local:
            return False
    elif ip in CGNAT:
        return False
    return ip.is_global and not (
        ip.is_multicast
        or ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_reserved
        or ip.is_unspecified
    )


def host_matches(host: str, patterns: Iterable[str]) -> bool:
    """True when ``host`` is one of ``patterns``: a name, ``*.domain`` (any name under
    it) or ``*`` (any host). Case and a trailing dot do not matter."""
    host = host.lower().rstrip(".")
    for pattern in patterns:
        pattern = pattern.strip().lower().rstrip(".")
        if pattern == "*" or pattern == host:
            return True
        if pattern.startswith("*.") and host.endswith(pattern[1:]):
            return True
    return False


def split_url(url: str) -> SplitResult:
    """``url`` split, once it is an http(s) URL with a host and no credentials."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - ValueError for a port that is not a number
    except ValueError:
        raise URLNotAllowed(f"URL not allowed: {url} cannot be read") from None
    if parts.scheme not in ("http", "https"):
        raise URLNotAllowed(f"URL not allowed: {url} is not an http(s) URL")
    if not parts.hostname:
        raise URLNotAllowed(f"URL not allowed: {url} has no host")
    if "@" in parts.netloc:
        raise URLNotAllowed(f"URL not allowed: {url} carries credentials")
    return parts


def check_url(url: str, *, allow_private: bool = False, resolve: bool = True) -> None:
    """Raise :class:`URLNotAllowed` unless ``url`` may be fetched: an http(s) URL with
    no credentials whose host resolves only to allowed addresses (every one of them).
    A name that does not resolve is refused too ("the host of … cannot be resolved").
    ``resolve=False`` checks the text only (a literal address is still checked)."""
    parts = split_url(url)
    host = parts.hostname or ""
    if allow_private:
        return
    literal = _literal(host)
    if literal is not None:
        if not address_allowed(literal):
            raise URLNotAllowed(f"URL not allowed: {url} resolves to a private address")
        return
    if not resolve:
        return
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        infos = _real_getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise URLNotAllowed(f"the host of {url} cannot be resolved") from None
    for info in infos:
        if not address_allowed(str(info[4][0])):
            raise URLNotAllowed(f"URL not allowed: {url} resolves to a private address")


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def check_sockaddr(addr_info: tuple[Any, ...]) -> socket.socket:
    """A socket for one resolved address (``getaddrinfo``'s tuple), refused with
    :class:`AddressNotAllowed` when the address is not public; aiohttp's
    ``socket_factory`` when private addresses are not allowed."""
    family, type_, proto, _, sockaddr = addr_info
    if not address_allowed(str(sockaddr[0])):
        raise AddressNotAllowed(f"connection to a private address refused: {sockaddr[0]}")
    return socket.socket(family=family, type=type_, proto=proto)


# --- the runner's handlers: every name they resolve, in their thread ---------------------

_guard = threading.local()
_install_lock = threading.Lock()
_installed = False
#: Every thread of this process is guarded (a job's own process: :func:`guard_process`).
_whole_process = False


def _checked_getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
    infos = _real_getaddrinfo(host, port, *args, **kwargs)
    if _whole_process or getattr(_guard, "active", False):
        for info in infos:
            if not address_allowed(str(info[4][0])):
                raise AddressNotAllowed(f"connection to a private address refused: {host}")
    return infos


def _install() -> None:
    global _installed
    if not _installed:
        with _install_lock:
            if not _installed:
                socket.getaddrinfo = _checked_getaddrinfo
                _installed = True


def guard_process(allow_private: bool = False) -> None:
    """As :func:`guarded`, for every thread of this process from now on (a process
    that runs one job's handler, threads it starts included)."""
    global _whole_process
    if not allow_private:
        _install()
        _whole_process = True


@contextlib.contextmanager
def guarded(allow_private: bool = False) -> Iterator[None]:
    """Within the block, in this thread, a name that resolves to a forbidden address
    raises :class:`AddressNotAllowed`: every connection that an HTTP library makes
    (requests, urllib, http.client, each redirect too) resolves its host through
    ``socket.getaddrinfo``, so none reaches a private address. Other threads (the
    runner's own connection to its server) are not affected. Literal addresses go
    through ``getaddrinfo`` as well in those libraries."""
    if not allow_private:
        _install()
    outer = getattr(_guard, "active", False)
    _guard.active = not allow_private
    try:
        yield
    finally:
        _guard.active = outer
