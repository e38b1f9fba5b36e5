"""File replication for mirror modules: the in-place FUSE interception and its mutation reports.

Design: ``docs/design/replication.md``. ``passthrough`` serves a replicated directory through a
FUSE filesystem mounted over it and reports every mutation to a :class:`MutationSink` (``sink``),
which the replication sender implements.
"""

from hakit.replication.sink import Mutation, MutationSink, NewNode, NullSink, RecordingSink

__all__ = ["Mutation", "MutationSink", "NewNode", "NullSink", "RecordingSink"]
