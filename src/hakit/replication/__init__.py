"""File replication for mirror modules: the in-place FUSE interception and its mutation reports.

Design: ``docs/design/replication.md``. ``passthrough`` serves a replicated directory through a
FUSE filesystem mounted over it and reports every mutation to a :class:`MutationSink` (``sink``),
which the replication sender implements.

Importing the package loads the FUSE shim (``fuseshim``) so that it is in place before pyfuse3
creates a session.
"""

from hakit.replication import fuseshim
from hakit.replication.sink import Mutation, MutationSink, NewNode, NullSink, RecordingSink

fuseshim.load()

__all__ = ["Mutation", "MutationSink", "NewNode", "NullSink", "RecordingSink"]
