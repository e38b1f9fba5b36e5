"""Checks of single values shared by cluster.xml and userconfig.xml: addresses, names, ports.

Each function returns ``None`` when the value is fine, else a short description of what is wrong
(the caller adds file, line and element). Nothing here resolves names or touches the network:
validation has no I/O, so a DNS name is only checked for its syntax.
"""

from __future__ import annotations

import ipaddress
import re

# RFC 1123 host name: dot-separated labels of letters, digits and inner hyphens. Underscores are
# tolerated because real (Windows) host names contain them.
_LABEL = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$")
_NODE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


def address_problem(text: str) -> str | None:
    """Why ``text`` is not an IPv4/IPv6 literal (``[v6]`` accepted) nor a DNS name, or None."""
    if not text:
        return "the address is empty"
    if text != text.strip():
        return "the address has leading or trailing spaces"
    if text.startswith("[") or text.endswith("]"):
        inner = text[1:-1] if text.startswith("[") and text.endswith("]") else ""
        try:
            ipaddress.IPv6Address(inner)
        except ValueError:
            return "'[...]' must enclose an IPv6 address"
        return None
    try:
        ipaddress.ip_address(text)
    except ValueError:
        pass
    else:
        return None
    if re.fullmatch(r"[\d.]+", text):
        return "not a valid IPv4 address (four numbers 0-255 separated by dots)"
    if ":" in text:
        return "not a valid IPv6 address"
    if len(text) > 253:
        return "a DNS name is at most 253 characters"
    if not all(_LABEL.match(label) for label in text.rstrip(".").split(".")):
        return "neither an IP address nor a valid DNS name (letters, digits, '-' and '.')"
    return None


def ip_literal(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The IP address written in ``text`` (``[v6]`` accepted), or None for a DNS name."""
    inner = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    try:
        return ipaddress.ip_address(inner)
    except ValueError:
        return None


def node_name_problem(text: str) -> str | None:
    """Why ``text`` cannot be a node name, or None."""
    if not text:
        return "the node name is empty"
    if not _NODE_NAME.match(text):
        return "a node name is made of letters, digits, '_', '-' and '.'"
    return None


def port_problem(value: int) -> str | None:
    """Why ``value`` is not a usable TCP/UDP port, or None."""
    if not 1 <= value <= 65535:
        return "a port is a number from 1 to 65535"
    return None
