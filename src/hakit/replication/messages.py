"""Per-message codecs of the replication stream: typed messages to frame bodies and back.

Theory of operation (docs/design/replication.md §5): :mod:`hakit.replication.wire` cuts the stream
into frames ``(type, seq, header, payload)``; this module gives each request type its meaning. A
message is a frozen dataclass; :func:`encode` turns it into ``(type, header, payload)`` for
``Sender.send`` and :func:`decode` turns a received :class:`~hakit.replication.wire.Frame` back into
the same dataclass.

Header layout: the fields in declaration order, big endian, integers fixed width (modes, owners
u32; sizes and offsets u64; times i64 nanoseconds, since times before 1970 are legal), byte
strings (paths, names, symlink targets, text) as ``u16 length | bytes``. Bulk bytes go in the
payload, never copied into the header: a ``WRITE``'s data, a ``SETXATTR``'s value, a
``DIRLIST``'s entries (a directory of many names would not fit the 64 KiB header), a ``HASHES``'
block digests and a ``NEED``'s block indexes.

``NEED`` is the one message here that is not a request: the secondary's answer to a ``HASHES``
request (same seq), sent as a control frame, so it has its own codec (:func:`encode_need`,
:func:`decode_need`) and is not part of :data:`Message`.

The peer is authenticated, but a bug or a corrupted stream must never make the secondary write
outside its directory, so :func:`decode` validates every path (:func:`check_relative`) and every
name, and any malformed frame raises :class:`~hakit.replication.wire.ProtocolError` naming the
frame type, its seq, the field and what was wrong (never ``IndexError`` or ``struct.error``).
"""

from __future__ import annotations

import stat
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from hakit.replication import wire
from hakit.replication.sink import NewNode
from hakit.replication.wire import Frame, FrameType, ProtocolError

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
_RENAME_FLAGS = (0, RENAME_NOREPLACE, RENAME_EXCHANGE)

_U8 = struct.Struct("!B")
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_U64 = struct.Struct("!Q")
_I64 = struct.Struct("!q")
_KIND = {
    _U8: "an unsigned byte",
    _U32: "32 bits unsigned",
    _U64: "64 bits unsigned",
    _I64: "64 bits signed",
}
_U16_MAX = 2**16 - 1

DIGEST_SIZE = 16
"""Bytes of one block digest in ``HASHES`` (blake2b with ``digest_size=16``)."""

# SetAttr's "which fields are present" bits.
_HAS_MODE = 0x01
_HAS_UID = 0x02
_HAS_GID = 0x04
_HAS_ATIME = 0x08
_HAS_MTIME = 0x10
_SETATTR_BITS = (_HAS_MODE, _HAS_UID, _HAS_GID, _HAS_ATIME, _HAS_MTIME)
_HAS_ALL = _HAS_MODE | _HAS_UID | _HAS_GID | _HAS_ATIME | _HAS_MTIME

# ---- messages ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Create:
    """An empty regular file was created (``CREATE``)."""

    node: NewNode


@dataclass(frozen=True)
class Mknod:
    """A FIFO, socket, device or empty regular file was created (``MKNOD``)."""

    node: NewNode


@dataclass(frozen=True)
class Mkdir:
    """A directory was created (``MKDIR``)."""

    node: NewNode


@dataclass(frozen=True)
class Symlink:
    """A symbolic link to ``target`` was created (``SYMLINK``)."""

    node: NewNode
    target: bytes


@dataclass(frozen=True)
class Link:
    """A hard link ``new`` to ``existing`` was created (``LINK``)."""

    existing: bytes
    new: bytes
    parent_mtime_ns: int


@dataclass(frozen=True)
class Unlink:
    """A non-directory entry was removed (``UNLINK``)."""

    path: bytes
    parent_mtime_ns: int


@dataclass(frozen=True)
class Rmdir:
    """An empty directory was removed (``RMDIR``)."""

    path: bytes
    parent_mtime_ns: int


@dataclass(frozen=True)
class Rename:
    """``old`` was renamed to ``new`` (``flags``: 0, RENAME_NOREPLACE or RENAME_EXCHANGE)."""

    old: bytes
    new: bytes
    flags: int
    old_parent_mtime_ns: int
    new_parent_mtime_ns: int


@dataclass(frozen=True)
class Write:
    """``data`` was written at ``offset``; the file's mtime is now ``mtime_ns`` (``WRITE``)."""

    path: bytes
    offset: int
    mtime_ns: int
    data: bytes


@dataclass(frozen=True)
class Truncate:
    """The file's size was set to ``size`` (``TRUNCATE``)."""

    path: bytes
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class Fallocate:
    """``fallocate(mode, offset, length)`` was applied (``FALLOCATE``)."""

    path: bytes
    mode: int
    offset: int
    length: int
    mtime_ns: int


@dataclass(frozen=True)
class SetAttr:
    """chmod/chown/utimens: the fields given (not None) are the node's values now (``SETATTR``)."""

    path: bytes
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    atime_ns: int | None = None
    mtime_ns: int | None = None


@dataclass(frozen=True)
class SetXattr:
    """Extended attribute ``name`` was set to ``value`` (``SETXATTR``)."""

    path: bytes
    name: bytes
    value: bytes


@dataclass(frozen=True)
class RemoveXattr:
    """Extended attribute ``name`` was removed (``REMOVEXATTR``)."""

    path: bytes
    name: bytes


@dataclass(frozen=True)
class Fsync:
    """The application asked for durability of this file or directory (``FSYNC``)."""

    path: bytes
    datasync: bool


@dataclass(frozen=True)
class ResyncBegin:
    """A copy of the primary's tree starts (``RESYNC_BEGIN``): ``kind`` e.g. "full"."""

    kind: str
    generation: str


@dataclass(frozen=True)
class DirEntry:
    """One name of a directory listing, with what is needed to recreate it.

    ``mode`` includes the file-type bits; ``target`` is a symlink's target; ``link_to`` is the
    path (relative to the replicated directory) of an earlier-listed name of the same inode, when
    this name is a further hard link to it."""

    name: bytes
    mode: int
    uid: int
    gid: int
    rdev: int
    size: int
    atime_ns: int
    mtime_ns: int
    target: bytes = b""
    link_to: bytes | None = None


@dataclass(frozen=True)
class DirListing:
    """The names of directory ``path`` (``DIRLIST``); ``more``: further frames of it follow.

    ``mode``, ``uid`` and ``gid`` describe the directory itself."""

    path: bytes
    mode: int
    uid: int
    gid: int
    entries: tuple[DirEntry, ...]
    more: bool


@dataclass(frozen=True)
class Hashes:
    """The primary's digests of a file's blocks (``HASHES``), asking which ones differ.

    Block ``i`` is bytes ``[i * block_size, min((i + 1) * block_size, size))`` of the primary's
    file of ``size`` bytes (the last one may be short); ``digests[i]`` is its blake2b digest of
    :data:`DIGEST_SIZE` bytes. The secondary answers with :class:`Need`."""

    path: bytes
    block_size: int
    size: int
    digests: tuple[bytes, ...]


@dataclass(frozen=True)
class Need:
    """The secondary's answer to the ``HASHES`` request ``seq`` (``NEED``, a control frame).

    ``blocks``: the indexes (increasing) of the blocks of ``path`` whose content differs here,
    which the primary then sends."""

    seq: int
    path: bytes
    blocks: tuple[int, ...]


@dataclass(frozen=True)
class ResyncEnd:
    """The copy is complete (``RESYNC_END``): ``files`` names and ``bytes`` of data were sent."""

    kind: str
    files: int
    bytes: int


Message = (
    Create
    | Mknod
    | Mkdir
    | Symlink
    | Link
    | Unlink
    | Rmdir
    | Rename
    | Write
    | Truncate
    | Fallocate
    | SetAttr
    | SetXattr
    | RemoveXattr
    | Fsync
    | ResyncBegin
    | DirListing
    | Hashes
    | ResyncEnd
)

NAMESPACE_MESSAGES = (Create, Mknod, Mkdir, Symlink, Link, Unlink, Rmdir, Rename, DirListing)
"""Messages that add, remove or move names (the receiver's barriers, §4)."""


_FRAME_TYPES: dict[type, FrameType] = {
    Create: FrameType.CREATE,
    Mknod: FrameType.MKNOD,
    Mkdir: FrameType.MKDIR,
    Symlink: FrameType.SYMLINK,
    Link: FrameType.LINK,
    Unlink: FrameType.UNLINK,
    Rmdir: FrameType.RMDIR,
    Rename: FrameType.RENAME,
    Write: FrameType.WRITE,
    Truncate: FrameType.TRUNCATE,
    Fallocate: FrameType.FALLOCATE,
    SetAttr: FrameType.SETATTR,
    SetXattr: FrameType.SETXATTR,
    RemoveXattr: FrameType.REMOVEXATTR,
    Fsync: FrameType.FSYNC,
    ResyncBegin: FrameType.RESYNC_BEGIN,
    DirListing: FrameType.DIRLIST,
    Hashes: FrameType.HASHES,
    ResyncEnd: FrameType.RESYNC_END,
}


def frame_type_of(msg: Message) -> FrameType:
    """The frame type that carries ``msg``."""
    return _FRAME_TYPES[type(msg)]


def block_count(size: int, block_size: int) -> int:
    """How many blocks of ``block_size`` bytes cover ``size`` bytes (the last one may be short)."""
    return -(-size // block_size)


# ---- validation ----------------------------------------------------------------------------------


def check_relative(path: bytes) -> None:
    """Raise ProtocolError unless ``path`` is a clean relative path inside the replicated dir.

    ``b""`` (the directory itself) is accepted; an absolute path, an empty component (``//``, a
    trailing ``/``), a ``.`` or ``..`` component, or a NUL byte is not."""
    if not path:
        return
    if b"\0" in path:
        raise ProtocolError(f"path {path!r} contains a NUL byte")
    if path.startswith(b"/"):
        raise ProtocolError(f"path {path!r} is absolute, it must be relative to the directory")
    for component in path.split(b"/"):
        if not component:
            raise ProtocolError(f"path {path!r} has an empty component ('//' or a trailing '/')")
        if component in (b".", b".."):
            raise ProtocolError(f"path {path!r} has a {component.decode()!r} component")


def _check_entry_path(path: bytes) -> None:
    check_relative(path)
    if not path:
        raise ProtocolError("path is empty: it must name an entry, not the directory itself")


def _check_name(name: bytes) -> None:
    if not name or name in (b".", b"..") or b"/" in name or b"\0" in name:
        raise ProtocolError(f"{name!r} is not a single file name")


def _check_no_nul(value: bytes) -> None:
    if not value:
        raise ProtocolError("is empty")
    if b"\0" in value:
        raise ProtocolError(f"{value!r} contains a NUL byte")


def _check_rename_flags(flags: int) -> None:
    if flags not in _RENAME_FLAGS:
        raise ProtocolError(
            f"{flags} is not 0, RENAME_NOREPLACE ({RENAME_NOREPLACE}) or RENAME_EXCHANGE"
            f" ({RENAME_EXCHANGE})"
        )


# ---- header writing and reading ------------------------------------------------------------------


class _Writer:
    """Accumulates a header; every field is named so an unencodable value says which it is."""

    def __init__(self, what: str) -> None:
        self._what = what
        self._parts: list[bytes] = []

    def _pack(self, fmt: struct.Struct, value: int, field: str) -> None:
        try:
            self._parts.append(fmt.pack(value))
        except struct.error:
            raise ValueError(
                f"{self._what}: field {field} = {value!r} does not fit in {_KIND[fmt]}"
            ) from None

    def u8(self, value: int, field: str) -> None:
        self._pack(_U8, value, field)

    def u32(self, value: int, field: str) -> None:
        self._pack(_U32, value, field)

    def u64(self, value: int, field: str) -> None:
        self._pack(_U64, value, field)

    def i64(self, value: int, field: str) -> None:
        self._pack(_I64, value, field)

    def blob(self, value: bytes, field: str) -> None:
        if len(value) > _U16_MAX:
            raise ValueError(
                f"{self._what}: field {field} is {len(value)} bytes long, at most {_U16_MAX}"
            )
        self._parts.append(_U16.pack(len(value)))
        self._parts.append(value)

    def text(self, value: str, field: str) -> None:
        self.blob(value.encode("utf-8"), field)

    def getvalue(self) -> bytes:
        return b"".join(self._parts)


class _Reader:
    """Reads fields from a header (or a payload) with errors that locate the bad field."""

    def __init__(self, frame: Frame, data: bytes, part: str) -> None:
        self._frame = frame
        self._data = data
        self._part = part
        self._pos = 0

    def fail(self, field: str, problem: str) -> ProtocolError:
        return ProtocolError(
            f"{self._frame.type.name} frame (seq {self._frame.seq}), {self._part} field {field}: "
            f"{problem}"
        )

    def _unpack(self, fmt: struct.Struct, field: str) -> int:
        end = self._pos + fmt.size
        if end > len(self._data):
            raise self.fail(
                field,
                f"needs {fmt.size} bytes at offset {self._pos}, the {self._part} has "
                f"{len(self._data)}",
            )
        (value,) = fmt.unpack_from(self._data, self._pos)
        self._pos = end
        return int(value)

    def u8(self, field: str) -> int:
        return self._unpack(_U8, field)

    def flag(self, field: str) -> bool:
        value = self.u8(field)
        if value not in (0, 1):
            raise self.fail(field, f"{value} is not a boolean (0 or 1)")
        return value == 1

    def u32(self, field: str) -> int:
        return self._unpack(_U32, field)

    def u64(self, field: str) -> int:
        return self._unpack(_U64, field)

    def i64(self, field: str) -> int:
        return self._unpack(_I64, field)

    def blob(self, field: str, check: Callable[[bytes], None] | None = None) -> bytes:
        length = self._unpack(_U16, field + " length")
        end = self._pos + length
        if end > len(self._data):
            raise self.fail(
                field,
                f"length {length} runs past the {len(self._data)}-byte {self._part} "
                f"(at offset {self._pos})",
            )
        value = self._data[self._pos : end]
        self._pos = end
        if check is not None:
            try:
                check(value)
            except ProtocolError as exc:
                raise self.fail(field, str(exc)) from None
        return value

    def path(self, field: str) -> bytes:
        return self.blob(field, check_relative)

    def entry_path(self, field: str) -> bytes:
        return self.blob(field, _check_entry_path)

    def text(self, field: str) -> str:
        raw = self.blob(field)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise self.fail(field, f"not UTF-8 ({exc.reason} at byte {exc.start})") from None

    def checked(self, field: str, value: int, check: Callable[[int], None]) -> int:
        try:
            check(value)
        except ProtocolError as exc:
            raise self.fail(field, str(exc)) from None
        return value

    @property
    def exhausted(self) -> bool:
        return self._pos >= len(self._data)

    def done(self) -> None:
        if self._pos != len(self._data):
            raise ProtocolError(
                f"{self._frame.type.name} frame (seq {self._frame.seq}): "
                f"{len(self._data) - self._pos} unexpected bytes after the last {self._part} field"
            )


# ---- encoding ------------------------------------------------------------------------------------


def _put_node(w: _Writer, node: NewNode) -> None:
    w.blob(node.path, "path")
    w.u32(node.mode, "mode")
    w.u32(node.uid, "uid")
    w.u32(node.gid, "gid")
    w.u64(node.rdev, "rdev")
    w.i64(node.atime_ns, "atime_ns")
    w.i64(node.mtime_ns, "mtime_ns")
    w.i64(node.parent_mtime_ns, "parent_mtime_ns")


def _put_entry(w: _Writer, entry: DirEntry) -> None:
    w.blob(entry.name, "entry name")
    w.u32(entry.mode, "entry mode")
    w.u32(entry.uid, "entry uid")
    w.u32(entry.gid, "entry gid")
    w.u64(entry.rdev, "entry rdev")
    w.u64(entry.size, "entry size")
    w.i64(entry.atime_ns, "entry atime_ns")
    w.i64(entry.mtime_ns, "entry mtime_ns")
    w.blob(entry.target, "entry target")
    w.u8(entry.link_to is not None, "entry has link_to")
    w.blob(entry.link_to or b"", "entry link_to")


def encode(msg: Message) -> tuple[FrameType, bytes, bytes]:
    """``(type, header, payload)`` of ``msg``; ValueError names a field that does not fit."""
    w = _Writer(type(msg).__name__)
    payload = b""
    if isinstance(msg, Create | Mknod | Mkdir | Symlink):
        frame_type = frame_type_of(msg)
        _put_node(w, msg.node)
        if isinstance(msg, Symlink):
            w.blob(msg.target, "target")
    elif isinstance(msg, Link):
        frame_type = FrameType.LINK
        w.blob(msg.existing, "existing")
        w.blob(msg.new, "new")
        w.i64(msg.parent_mtime_ns, "parent_mtime_ns")
    elif isinstance(msg, Unlink | Rmdir):
        frame_type = FrameType.UNLINK if isinstance(msg, Unlink) else FrameType.RMDIR
        w.blob(msg.path, "path")
        w.i64(msg.parent_mtime_ns, "parent_mtime_ns")
    elif isinstance(msg, Rename):
        frame_type = FrameType.RENAME
        w.blob(msg.old, "old")
        w.blob(msg.new, "new")
        w.u32(msg.flags, "flags")
        w.i64(msg.old_parent_mtime_ns, "old_parent_mtime_ns")
        w.i64(msg.new_parent_mtime_ns, "new_parent_mtime_ns")
    elif isinstance(msg, Write):
        frame_type = FrameType.WRITE
        w.blob(msg.path, "path")
        w.u64(msg.offset, "offset")
        w.i64(msg.mtime_ns, "mtime_ns")
        payload = msg.data
    elif isinstance(msg, Truncate):
        frame_type = FrameType.TRUNCATE
        w.blob(msg.path, "path")
        w.u64(msg.size, "size")
        w.i64(msg.mtime_ns, "mtime_ns")
    elif isinstance(msg, Fallocate):
        frame_type = FrameType.FALLOCATE
        w.blob(msg.path, "path")
        w.u32(msg.mode, "mode")
        w.u64(msg.offset, "offset")
        w.u64(msg.length, "length")
        w.i64(msg.mtime_ns, "mtime_ns")
    elif isinstance(msg, SetAttr):
        frame_type = FrameType.SETATTR
        _put_setattr(w, msg)
    elif isinstance(msg, SetXattr):
        frame_type = FrameType.SETXATTR
        w.blob(msg.path, "path")
        w.blob(msg.name, "name")
        payload = msg.value
    elif isinstance(msg, RemoveXattr):
        frame_type = FrameType.REMOVEXATTR
        w.blob(msg.path, "path")
        w.blob(msg.name, "name")
    elif isinstance(msg, Fsync):
        frame_type = FrameType.FSYNC
        w.blob(msg.path, "path")
        w.u8(msg.datasync, "datasync")
    elif isinstance(msg, ResyncBegin):
        frame_type = FrameType.RESYNC_BEGIN
        w.text(msg.kind, "kind")
        w.text(msg.generation, "generation")
    elif isinstance(msg, DirListing):
        frame_type = FrameType.DIRLIST
        w.blob(msg.path, "path")
        w.u32(msg.mode, "mode")
        w.u32(msg.uid, "uid")
        w.u32(msg.gid, "gid")
        w.u8(msg.more, "more")
        entries = _Writer("DirEntry")
        for entry in msg.entries:
            _put_entry(entries, entry)
        payload = entries.getvalue()
    elif isinstance(msg, Hashes):
        frame_type = FrameType.HASHES
        _check_hashes(msg)
        w.blob(msg.path, "path")
        w.u32(msg.block_size, "block_size")
        w.u64(msg.size, "size")
        payload = b"".join(msg.digests)
    elif isinstance(msg, ResyncEnd):
        frame_type = FrameType.RESYNC_END
        w.text(msg.kind, "kind")
        w.u64(msg.files, "files")
        w.u64(msg.bytes, "bytes")
    else:  # pragma: no cover - the union is exhaustive; mypy checks callers
        raise TypeError(f"not a replication message: {msg!r}")
    return frame_type, w.getvalue(), payload


def _put_setattr(w: _Writer, msg: SetAttr) -> None:
    present = (
        (msg.mode is not None) * _HAS_MODE
        | (msg.uid is not None) * _HAS_UID
        | (msg.gid is not None) * _HAS_GID
        | (msg.atime_ns is not None) * _HAS_ATIME
        | (msg.mtime_ns is not None) * _HAS_MTIME
    )
    w.blob(msg.path, "path")
    w.u8(present, "which")
    # Absent fields are sent as 0: one fixed layout, the "which" bits say what counts.
    w.u32(msg.mode or 0, "mode")
    w.u32(msg.uid or 0, "uid")
    w.u32(msg.gid or 0, "gid")
    w.i64(msg.atime_ns or 0, "atime_ns")
    w.i64(msg.mtime_ns or 0, "mtime_ns")


# ---- decoding ------------------------------------------------------------------------------------


def _get_node(r: _Reader) -> NewNode:
    return NewNode(
        path=r.entry_path("path"),
        mode=r.u32("mode"),
        uid=r.u32("uid"),
        gid=r.u32("gid"),
        rdev=r.u64("rdev"),
        atime_ns=r.i64("atime_ns"),
        mtime_ns=r.i64("mtime_ns"),
        parent_mtime_ns=r.i64("parent_mtime_ns"),
    )


def _get_entry(r: _Reader, index: int) -> DirEntry:
    f = f"entries[{index}]."
    name = r.blob(f + "name", _check_name)
    mode = r.u32(f + "mode")
    uid = r.u32(f + "uid")
    gid = r.u32(f + "gid")
    rdev = r.u64(f + "rdev")
    size = r.u64(f + "size")
    atime_ns = r.i64(f + "atime_ns")
    mtime_ns = r.i64(f + "mtime_ns")
    target = r.blob(f + "target")
    if stat.S_ISLNK(mode):
        try:
            _check_no_nul(target)
        except ProtocolError as exc:
            raise r.fail(f + "target", f"symlink target {exc}") from None
    has_link = r.flag(f + "has link_to")
    link_to = r.blob(f + "link_to", _check_entry_path if has_link else None)
    if not has_link and link_to:
        raise r.fail(f + "link_to", "given while 'has link_to' is 0")
    return DirEntry(
        name, mode, uid, gid, rdev, size, atime_ns, mtime_ns, target, link_to if has_link else None
    )


def _decode_node_message(frame: Frame, r: _Reader) -> Message:
    node = _get_node(r)
    if frame.type is FrameType.CREATE:
        return Create(node)
    if frame.type is FrameType.MKNOD:
        return Mknod(node)
    if frame.type is FrameType.MKDIR:
        return Mkdir(node)
    target = r.blob("target")
    try:
        _check_no_nul(target)
    except ProtocolError as exc:
        raise r.fail("target", f"symlink target {exc}") from None
    return Symlink(node, target)


def _decode_header(frame: Frame, r: _Reader) -> Message:
    t = frame.type
    if t in (FrameType.CREATE, FrameType.MKNOD, FrameType.MKDIR, FrameType.SYMLINK):
        return _decode_node_message(frame, r)
    if t is FrameType.LINK:
        return Link(r.entry_path("existing"), r.entry_path("new"), r.i64("parent_mtime_ns"))
    if t is FrameType.UNLINK:
        return Unlink(r.entry_path("path"), r.i64("parent_mtime_ns"))
    if t is FrameType.RMDIR:
        return Rmdir(r.entry_path("path"), r.i64("parent_mtime_ns"))
    if t is FrameType.RENAME:
        old, new = r.entry_path("old"), r.entry_path("new")
        flags = r.checked("flags", r.u32("flags"), _check_rename_flags)
        return Rename(old, new, flags, r.i64("old_parent_mtime_ns"), r.i64("new_parent_mtime_ns"))
    if t is FrameType.WRITE:
        return Write(r.entry_path("path"), r.u64("offset"), r.i64("mtime_ns"), frame.payload)
    if t is FrameType.TRUNCATE:
        return Truncate(r.entry_path("path"), r.u64("size"), r.i64("mtime_ns"))
    if t is FrameType.FALLOCATE:
        return Fallocate(
            r.entry_path("path"), r.u32("mode"), r.u64("offset"), r.u64("length"), r.i64("mtime_ns")
        )
    if t is FrameType.SETATTR:
        return _decode_setattr(r)
    if t is FrameType.SETXATTR:
        return SetXattr(r.path("path"), r.blob("name", _check_no_nul), frame.payload)
    if t is FrameType.REMOVEXATTR:
        return RemoveXattr(r.path("path"), r.blob("name", _check_no_nul))
    if t is FrameType.FSYNC:
        return Fsync(r.path("path"), r.flag("datasync"))
    if t is FrameType.RESYNC_BEGIN:
        return ResyncBegin(r.text("kind"), r.text("generation"))
    if t is FrameType.DIRLIST:
        return _decode_dirlist(frame, r)
    if t is FrameType.HASHES:
        return _decode_hashes(frame, r)
    if t is FrameType.RESYNC_END:
        return ResyncEnd(r.text("kind"), r.u64("files"), r.u64("bytes"))
    raise ProtocolError(f"{t.name} frame (seq {frame.seq}) is not a replication request")


def _decode_setattr(r: _Reader) -> SetAttr:
    path = r.path("path")
    which = r.u8("which")
    if which & ~_HAS_ALL:
        raise r.fail("which", f"unknown bits {which & ~_HAS_ALL:#04x} in {which:#04x}")
    mode, uid, gid = r.u32("mode"), r.u32("uid"), r.u32("gid")
    atime_ns, mtime_ns = r.i64("atime_ns"), r.i64("mtime_ns")
    values = {"mode": mode, "uid": uid, "gid": gid, "atime_ns": atime_ns, "mtime_ns": mtime_ns}
    for bit, field in zip(_SETATTR_BITS, values, strict=True):
        if not which & bit and values[field]:
            raise r.fail(field, f"{values[field]} given while absent from 'which' ({which:#04x})")
    return SetAttr(
        path,
        mode if which & _HAS_MODE else None,
        uid if which & _HAS_UID else None,
        gid if which & _HAS_GID else None,
        atime_ns if which & _HAS_ATIME else None,
        mtime_ns if which & _HAS_MTIME else None,
    )


def _decode_dirlist(frame: Frame, r: _Reader) -> DirListing:
    path = r.path("path")
    mode, uid, gid = r.u32("mode"), r.u32("uid"), r.u32("gid")
    more = r.flag("more")
    entries_reader = _Reader(frame, frame.payload, "payload")
    entries: list[DirEntry] = []
    while not entries_reader.exhausted:
        entries.append(_get_entry(entries_reader, len(entries)))
    return DirListing(path, mode, uid, gid, tuple(entries), more)


def _check_hashes(msg: Hashes) -> None:
    what = f"Hashes of {msg.path!r}"
    if msg.block_size < 1:
        raise ValueError(f"{what}: block_size {msg.block_size} must be at least 1")
    expected = block_count(msg.size, msg.block_size)
    if len(msg.digests) != expected:
        raise ValueError(
            f"{what}: {len(msg.digests)} digests for {msg.size} bytes in blocks of "
            f"{msg.block_size}, expected {expected}"
        )
    for index, digest in enumerate(msg.digests):
        if len(digest) != DIGEST_SIZE:
            raise ValueError(
                f"{what}: digests[{index}] is {len(digest)} bytes long, not {DIGEST_SIZE}"
            )


def _decode_hashes(frame: Frame, r: _Reader) -> Hashes:
    path = r.entry_path("path")
    block_size = r.u32("block_size")
    if block_size < 1:
        raise r.fail("block_size", "0: a block holds at least 1 byte")
    size = r.u64("size")
    payload = frame.payload
    expected = block_count(size, block_size)
    if len(payload) != expected * DIGEST_SIZE:
        raise ProtocolError(
            f"HASHES frame (seq {frame.seq}), payload: {len(payload)} bytes, but {size} bytes in "
            f"blocks of {block_size} need {expected} digests of {DIGEST_SIZE} bytes"
        )
    digests = tuple(payload[i : i + DIGEST_SIZE] for i in range(0, len(payload), DIGEST_SIZE))
    return Hashes(path, block_size, size, digests)


# Frames whose payload is the message's bulk data; every other request must have none.
_PAYLOAD_TYPES = frozenset(
    {FrameType.WRITE, FrameType.SETXATTR, FrameType.DIRLIST, FrameType.HASHES}
)


def decode(frame: Frame) -> Message:
    """The message a request frame carries; ProtocolError (located) if it is malformed."""
    r = _Reader(frame, frame.header, "header")
    message = _decode_header(frame, r)
    r.done()
    if frame.payload and frame.type not in _PAYLOAD_TYPES:
        raise ProtocolError(
            f"{frame.type.name} frame (seq {frame.seq}): unexpected {len(frame.payload)}-byte "
            "payload (this type has none)"
        )
    return message


# ---- NEED: the answer to HASHES (a control frame) ------------------------------------------------


def encode_need(need: Need) -> Frame:
    """The ``NEED`` control frame of ``need``; ValueError names what does not fit or is unsorted."""
    w = _Writer("Need")
    w.blob(need.path, "path")
    indexes = _Writer("Need")
    previous = -1
    for position, block in enumerate(need.blocks):
        indexes.u32(block, f"blocks[{position}]")
        if block <= previous:
            raise ValueError(
                f"Need of {need.path!r}: blocks[{position}] = {block} after {previous} "
                "(they must be increasing)"
            )
        previous = block
    if not 0 <= need.seq < 2**64:
        raise ValueError(f"Need of {need.path!r}: seq {need.seq} does not fit in 64 bits")
    return Frame(FrameType.NEED, need.seq, w.getvalue(), indexes.getvalue())


def decode_need(frame: Frame) -> Need:
    """The :class:`Need` a ``NEED`` frame carries; ProtocolError (located) if it is malformed."""
    if frame.type is not FrameType.NEED:
        raise ProtocolError(f"{frame.type.name} frame (seq {frame.seq}) is not a NEED frame")
    r = _Reader(frame, frame.header, "header")
    path = r.entry_path("path")
    r.done()
    if len(frame.payload) % _U32.size:
        raise ProtocolError(
            f"NEED frame (seq {frame.seq}), payload: {len(frame.payload)} bytes is not a whole "
            f"number of {_U32.size}-byte block indexes"
        )
    blocks = tuple(index for (index,) in _U32.iter_unpack(frame.payload))
    for position in range(1, len(blocks)):
        if blocks[position] <= blocks[position - 1]:
            raise ProtocolError(
                f"NEED frame (seq {frame.seq}), payload field blocks[{position}]: "
                f"{blocks[position]} after {blocks[position - 1]} (they must be increasing)"
            )
    return Need(frame.seq, path, blocks)


# ---- directory listings split to fit frames ------------------------------------------------------


def _entry_size(entry: DirEntry) -> int:
    w = _Writer("DirEntry")
    _put_entry(w, entry)
    return len(w.getvalue())


def dirlisting_frames(
    path: bytes,
    mode: int,
    uid: int,
    gid: int,
    entries: Iterable[DirEntry],
    limit: int = wire.MAX_FRAME - 4096,
) -> list[DirListing]:
    """The listing of directory ``path`` as DIRLIST messages whose frames each fit in ``limit``.

    ``limit`` bounds a frame's header plus payload (the default leaves room under
    :data:`wire.MAX_FRAME` for the framing itself). All messages but the last have ``more=True``;
    an empty directory is one message. ValueError if a single entry is larger than ``limit``."""
    header_size = len(encode(DirListing(path, mode, uid, gid, (), False))[1])
    room = limit - header_size
    chunks: list[list[DirEntry]] = [[]]
    used = 0
    for entry in entries:
        size = _entry_size(entry)
        if size > room:
            raise ValueError(
                f"directory listing of {path!r}: entry {entry.name!r} needs {size} bytes, "
                f"more than the {room} a {limit}-byte frame leaves"
            )
        if used + size > room and chunks[-1]:
            chunks.append([])
            used = 0
        chunks[-1].append(entry)
        used += size
    last = len(chunks) - 1
    return [
        DirListing(path, mode, uid, gid, tuple(chunk), i != last) for i, chunk in enumerate(chunks)
    ]


def entries_of(listings: Sequence[DirListing]) -> tuple[DirEntry, ...]:
    """All entries of a directory's DIRLIST messages, in order."""
    return tuple(entry for listing in listings for entry in listing.entries)
