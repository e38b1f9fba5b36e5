"""The small exception hierarchy of hakit.

Every error says who (file, node, module), what went wrong, and what to do next. The CLI maps each
class to a one-line message and a documented exit code.
"""

from __future__ import annotations


class HakitError(Exception):
    """Base class. ``exit_code`` is what the CLI exits with."""

    exit_code = 1


class UserConfigError(HakitError):
    """A configuration file or a command argument given by the user is wrong."""

    exit_code = 2


class NotFoundError(HakitError):
    """A named thing (module, node, file) does not exist."""

    exit_code = 3


class LocalSystemError(HakitError):
    """The local system refused an operation (permissions, missing tool, busy resource)."""

    exit_code = 4


class PeerProtocolError(HakitError):
    """A peer sent something that does not follow the protocol (or could not be reached)."""

    exit_code = 5
