"""Proxies from the environment, read as httpx reads them.

httpx reads ``HTTPS_PROXY``, ``HTTP_PROXY``, ``ALL_PROXY`` and ``NO_PROXY`` (any case)
only when it builds its own transport: a client given ``transport=`` ignores them
(encode/httpx#1122). We pass our own transport, so the same reading is done here and
given to httpx as ``mounts=``, a public argument: one proxied transport per proxy
pattern, and direct (None) for the ``NO_PROXY`` hosts.

The rules follow httpx's ``get_environment_proxies`` and curl's ``NO_PROXY``:
``urllib.request.getproxies()`` finds the variables (lower case first; on macOS and
Windows also the system settings); a proxy without a scheme is ``http://``;
``NO_PROXY=*`` turns every proxy off; ``.example.com`` exempts the subdomains of
example.com and ``example.com`` exempts it and its subdomains; IP addresses and
``localhost`` are exempted as given.
"""

from __future__ import annotations

import ipaddress
import urllib.request

__all__ = ["environment_proxies"]


def _is_ip(host: str, version: int) -> bool:
    try:
        address = ipaddress.ip_address(host.split("/", 1)[0])
    except ValueError:
        return False
    return address.version == version


def environment_proxies() -> dict[str, str | None]:
    """URL patterns (httpx's `mounts` keys) to a proxy URL, or None for "direct"."""
    found = urllib.request.getproxies()
    mounts: dict[str, str | None] = {}
    for scheme in ("http", "https", "all"):
        url = found.get(scheme)
        if url:
            mounts[f"{scheme}://"] = url if "://" in url else f"http://{url}"
    for entry in found.get("no", "").split(","):
        host = entry.strip()
        if host == "*":
            return {}
        if not host:
            continue
        if "://" in host:
            mounts[host] = None
        elif _is_ip(host, 4) or host.lower() == "localhost":
            mounts[f"all://{host}"] = None
        elif _is_ip(host, 6):
            mounts[f"all://[{host}]"] = None
        else:
            mounts[f"all://*{host}"] = None
    return mounts
