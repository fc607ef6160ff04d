"""Which host names stand for this machine, and which for the local network.

Two questions with different answers:

- :func:`is_loopback_host`: only this machine (``localhost``, ``127.0.0.0/8``,
  ``::1``). The OpenAI-compatible API trusts browsers' ``Origin`` and ``Host``
  headers only when they name this machine.
- :func:`is_local_host`: this machine or the private network (``10/8``,
  ``172.16/12``, ``192.168/16``, ``fc00::/7``, ``*.local`` mDNS names and the
  machine's own hostname). A model server there keeps the documents in the
  house, which is what ``RAG_ROUTING=local-only`` promises; anything else is remote.

>>> is_local_host("192.168.1.20"), is_local_host("api.openai.com")
(True, False)
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

_PRIVATE = tuple(
    ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")
)


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def is_loopback_host(host: str | None) -> bool:
    """True when ``host`` (a name or address, no port) can only mean this machine."""
    if not host:
        return False
    host = host.lower().rstrip(".")
    address = _address(host)
    if address is not None:
        return address.is_loopback
    # RFC 6761: every *.localhost name resolves to loopback.
    return host == "localhost" or host.endswith(".localhost")


def is_local_host(host: str | None) -> bool:
    """True when ``host`` is this machine or on the private network (see the module docstring)."""
    if not host:
        return False
    if is_loopback_host(host):
        return True
    host = host.lower().rstrip(".")
    address = _address(host)
    if address is not None:
        return any(address in net for net in _PRIVATE if net.version == address.version)
    return host.endswith(".local") or host == socket.gethostname().lower()


def is_local_url(url: str) -> bool:
    """True when the server ``url`` names is on this machine or the private network."""
    return is_local_host(urlsplit(url).hostname)


def host_of(header: str) -> str:
    """The host name of a ``Host`` header or an ``Origin`` URL, without port or scheme."""
    if "://" in header:
        return urlsplit(header).hostname or ""
    return urlsplit(f"//{header}").hostname or ""
