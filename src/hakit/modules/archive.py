"""``.safe`` module archives: reading them defensively, writing them deterministically.

A ``.safe`` file is a zip archive holding ``conf/userconfig.xml`` and the module's scripts under
``bin/``. Real SafeKit archives also carry ``conf/userconfig.xml.template``, ``manifest.xml`` and an
obsolete ``web/`` directory: those are accepted and kept (``web/`` with a warning).

Theory of operation (reading). An archive comes from outside (a download, a colleague, a backup), and
it is unpacked as root, so every entry is checked *before* anything is written:

* names must be relative, use ``/``, hold no ``..``/``.``/empty component and no control character;
* only ``conf/``, ``bin/``, ``web/`` and ``manifest.xml`` may appear at the top;
* entries must be regular files or directories (no symbolic link, device, fifo or socket);
* encrypted entries, duplicate names and a file that is also used as a directory are refused;
* the sum of the declared sizes and the number of entries are bounded (a zip bomb guard), and the
  bytes actually inflated are counted again while extracting, because a header can lie.

Files are created with ``O_EXCL | O_NOFOLLOW`` inside a fresh directory, so even a bug in the checks
above could not make a write land outside it.

Modes: only the executable bit survives (0755 or 0644; never setuid, never group-writable). A file
under ``bin/`` is made executable when its entry says so, when the entry carries no Unix mode (zip
written on Windows), or when it starts with ``#!``: SafeKit runs every script of ``bin/`` directly.

Writing (``hakit module package``, backups, last configurations): entries sorted by name, a fixed
timestamp, Unix modes recorded; the same tree always gives the same bytes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import stat
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from hakit.errors import NotFoundError, UserConfigError

MAX_TOTAL_BYTES = 256 * 1024 * 1024
"""Refuse archives whose files add up to more than this once inflated."""

MAX_ENTRIES = 10_000
"""Refuse archives with more entries than this."""

USERCONFIG = "conf/userconfig.xml"
"""The one entry every module archive must have."""

TOP_DIRECTORIES = ("conf", "bin", "web")
"""Directories allowed at the top of an archive (``web/`` is obsolete but tolerated)."""

TOP_FILES = ("manifest.xml",)
"""Files allowed at the top of an archive."""

# Fixed timestamp of written entries: the zip format cannot store anything earlier.
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
_CHUNK = 1024 * 1024
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_DRIVE = re.compile(r"^[A-Za-z]:")


class ArchiveError(UserConfigError):
    """A ``.safe`` archive is unreadable or holds something hakit refuses to install."""


@dataclass(frozen=True)
class Member:
    """One checked archive entry: its normalised relative path, kind and install mode."""

    path: str
    is_dir: bool
    mode: int
    size: int
    info: zipfile.ZipInfo


@dataclass
class SafeListing:
    """The checked content of an archive, plus warnings (e.g. an obsolete ``web/``)."""

    label: str
    members: list[Member]
    warnings: list[str] = field(default_factory=list)

    @property
    def total_size(self) -> int:
        return sum(m.size for m in self.members)


@dataclass(frozen=True)
class TreeEntry:
    """One entry of a module tree on disk, as packaged and signed."""

    path: str
    is_dir: bool
    mode: int
    source: Path


def _label(source: Path | IO[bytes], label: str | None) -> str:
    if label is not None:
        return label
    if isinstance(source, Path):
        return str(source)
    return getattr(source, "name", None) or "<archive>"


def _unix_mode(info: zipfile.ZipInfo) -> int:
    """The Unix mode stored in the entry, 0 when the archive did not record one."""
    if info.create_system != 3:  # 3 = Unix; other systems store no st_mode
        return 0
    return (info.external_attr >> 16) & 0xFFFF


def _check_name(label: str, raw: str) -> tuple[list[str], bool]:
    """Split an entry name into components, refusing anything that could escape the module."""

    def refuse(why: str) -> ArchiveError:
        return ArchiveError(f"{label}: entry {raw!r} {why}; the archive was not installed")

    if not raw or _CONTROL.search(raw):
        raise refuse("has an empty name or a control character in its name")
    if "\\" in raw:
        raise refuse("uses '\\' in its name (zip names must use '/'; rebuild the archive on Linux)")
    if raw.startswith("/") or _DRIVE.match(raw):
        raise refuse("is an absolute path (entries must be relative: conf/..., bin/...)")
    is_dir = raw.endswith("/")
    parts = raw.rstrip("/").split("/")
    if ".." in parts:
        raise refuse("contains '..' (path traversal)")
    if any(p in ("", ".") for p in parts):
        raise refuse("has an empty or '.' path component")
    return parts, is_dir


def _check_member(label: str, info: zipfile.ZipInfo) -> Member:
    parts, named_dir = _check_name(label, info.filename)
    path = "/".join(parts)
    raw_mode = _unix_mode(info)
    kind = stat.S_IFMT(raw_mode)
    if kind == stat.S_IFLNK:
        raise ArchiveError(
            f"{label}: entry {info.filename!r} is a symbolic link; module archives may only "
            "hold regular files and directories (replace the link by the file it points to)"
        )
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        raise ArchiveError(
            f"{label}: entry {info.filename!r} is a device, fifo or socket "
            f"(mode {raw_mode:#o}); module archives may only hold regular files and directories"
        )
    is_dir = named_dir or kind == stat.S_IFDIR or bool(info.external_attr & 0x10 and not kind)
    if info.flag_bits & 0x1:
        raise ArchiveError(f"{label}: entry {info.filename!r} is encrypted; hakit cannot read it")
    top = parts[0]
    if len(parts) == 1 and not is_dir and top in TOP_FILES:
        pass
    elif top not in TOP_DIRECTORIES or (len(parts) == 1 and not is_dir):
        allowed = ", ".join([*(d + "/" for d in TOP_DIRECTORIES), *TOP_FILES])
        raise ArchiveError(
            f"{label}: entry {info.filename!r} is outside the module layout "
            f"(allowed at the top: {allowed})"
        )
    if is_dir:
        return Member(path, True, 0o755, 0, info)
    executable = bool(raw_mode & 0o111) or (top == "bin" and not raw_mode)
    return Member(path, False, 0o755 if executable else 0o644, info.file_size, info)


def _open_zip(source: Path | IO[bytes], label: str) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(source)
    except FileNotFoundError:
        raise NotFoundError(f"{label}: no such file") from None
    except IsADirectoryError:
        raise ArchiveError(f"{label}: is a directory, not a .safe archive") from None
    except PermissionError as exc:
        raise ArchiveError(f"{label}: cannot read it ({exc.strerror})") from None
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise ArchiveError(
            f"{label}: not a readable zip archive ({exc}); a .safe module is a zip holding "
            "conf/userconfig.xml and bin/*"
        ) from None


def _is_script(zf: zipfile.ZipFile, member: Member, label: str) -> bool:
    """Whether a file starts with ``#!`` (read after the entry passed every check)."""
    if member.size < 2:
        return False
    try:
        with zf.open(member.info) as stream:
            return stream.read(2) == b"#!"
    except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError) as exc:
        raise ArchiveError(
            f"{label}: entry {member.info.filename!r} is unreadable ({exc})"
        ) from None


def _list(zf: zipfile.ZipFile, label: str, max_total: int, max_entries: int) -> SafeListing:
    infos = zf.infolist()
    if len(infos) > max_entries:
        raise ArchiveError(
            f"{label}: {len(infos)} entries, more than the {max_entries} a module may hold "
            "(refused as a possible zip bomb)"
        )
    declared = sum(i.file_size for i in infos)
    if declared > max_total:
        raise ArchiveError(
            f"{label}: {declared} bytes once unpacked, more than the {max_total} allowed "
            "(refused as a possible zip bomb)"
        )
    members: list[Member] = []
    seen: dict[str, Member] = {}
    for info in infos:
        member = _check_member(label, info)
        if (
            member.path.startswith("bin/")
            and member.mode == 0o644
            and _is_script(zf, member, label)
        ):
            member = dataclasses.replace(member, mode=0o755)
        if member.path in seen:
            raise ArchiveError(f"{label}: entry {member.path!r} appears twice in the archive")
        seen[member.path] = member
        members.append(member)
    # A name used both as a file and as the parent of other entries cannot be unpacked.
    for member in members:
        parent = member.path.rpartition("/")[0]
        while parent:
            found = seen.get(parent)
            if found is not None and not found.is_dir:
                raise ArchiveError(
                    f"{label}: entry {member.path!r} lies under {parent!r}, which is a file"
                )
            parent = parent.rpartition("/")[0]
    config = seen.get(USERCONFIG)
    if config is None or config.is_dir:
        raise ArchiveError(
            f"{label}: missing entry {USERCONFIG!r}; a module archive must hold its "
            "configuration there (and its scripts under bin/)"
        )
    listing = SafeListing(label, members)
    if any(m.path.split("/")[0] == "web" for m in members):
        listing.warnings.append(
            f"{label}: web/ is obsolete since SafeKit 8.0; hakit keeps it in the module "
            "source but never uses it"
        )
    return listing


def inspect_safe(
    source: Path | IO[bytes],
    *,
    label: str | None = None,
    max_total: int = MAX_TOTAL_BYTES,
    max_entries: int = MAX_ENTRIES,
) -> SafeListing:
    """Check every entry of a ``.safe`` archive without writing anything.

    Raises :class:`ArchiveError` (exit code 2) naming the archive and the offending entry, or
    :class:`~hakit.errors.NotFoundError` if the file does not exist.
    """
    name = _label(source, label)
    with _open_zip(source, name) as zf:
        return _list(zf, name, max_total, max_entries)


def extract_safe(
    source: Path | IO[bytes],
    dest: Path,
    *,
    label: str | None = None,
    max_total: int = MAX_TOTAL_BYTES,
    max_entries: int = MAX_ENTRIES,
) -> SafeListing:
    """Check a ``.safe`` archive, then unpack it into ``dest`` (an existing, empty directory).

    Nothing is written unless every entry passes the checks of :func:`inspect_safe`; while
    unpacking, the inflated bytes are counted against the declared sizes and ``max_total``.
    On error the caller removes ``dest`` (it may hold part of the archive).
    """
    name = _label(source, label)
    with _open_zip(source, name) as zf:
        listing = _list(zf, name, max_total, max_entries)
        total = 0
        for member in listing.members:
            target = dest.joinpath(*member.path.split("/"))
            if member.is_dir:
                target.mkdir(mode=0o755, parents=True, exist_ok=True)
                continue
            target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            total = _extract_file(zf, member, target, name, total, max_total)
    return listing


def _extract_file(
    zf: zipfile.ZipFile, member: Member, target: Path, label: str, total: int, max_total: int
) -> int:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(target, flags, member.mode)
    try:
        with zf.open(member.info) as stream, os.fdopen(fd, "wb", closefd=False) as out:
            written = 0
            while chunk := stream.read(_CHUNK):
                written += len(chunk)
                total += len(chunk)
                if written > member.size or total > max_total:
                    raise ArchiveError(
                        f"{label}: entry {member.info.filename!r} inflates beyond its declared "
                        "size (refused as a possible zip bomb)"
                    )
                out.write(chunk)
        os.fchmod(fd, member.mode)  # the umask must not decide whether a script runs
    except (zipfile.BadZipFile, ValueError, NotImplementedError, EOFError) as exc:
        raise ArchiveError(
            f"{label}: entry {member.info.filename!r} is corrupt ({exc}); the archive was "
            "not installed"
        ) from None
    finally:
        os.close(fd)
    return total


def walk_tree(root: Path) -> tuple[list[TreeEntry], list[str]]:
    """The entries of a module tree that belong in an archive, sorted, plus what was skipped.

    Only the archive layout is taken (``conf/``, ``bin/``, ``web/``, ``manifest.xml``); symbolic
    links and special files are skipped with a warning, since an archive may not hold them.
    """
    entries: list[TreeEntry] = []
    skipped: list[str] = []
    top_allowed = set(TOP_DIRECTORIES) | set(TOP_FILES)

    def visit(directory: Path, rel: str) -> None:
        for child in sorted(directory.iterdir(), key=lambda p: p.name):
            path = f"{rel}/{child.name}" if rel else child.name
            st = child.lstat()
            if not rel and child.name not in top_allowed:
                skipped.append(f"{child}: not part of a module archive (skipped)")
            elif stat.S_ISLNK(st.st_mode):
                skipped.append(f"{child}: symbolic link, not packaged")
            elif stat.S_ISDIR(st.st_mode):
                if not rel and child.name in TOP_FILES:
                    skipped.append(f"{child}: directory where a file is expected (skipped)")
                    continue
                entries.append(TreeEntry(path, True, 0o755, child))
                visit(child, path)
            elif stat.S_ISREG(st.st_mode):
                if not rel and child.name in TOP_DIRECTORIES:
                    skipped.append(f"{child}: file where a directory is expected (skipped)")
                    continue
                mode = 0o755 if st.st_mode & 0o111 else 0o644
                entries.append(TreeEntry(path, False, mode, child))
            else:
                skipped.append(f"{child}: special file, not packaged")

    visit(root, "")
    return entries, skipped


def tree_signature(root: Path) -> str:
    """SHA-256 of a module tree: names, kinds, executable bits and contents, in sorted order.

    Two trees have the same signature exactly when :func:`write_safe` would pack them into the
    same archive; ``hakit module list`` compares it to the one recorded at the last configuration.
    """
    entries, _ = walk_tree(root)
    digest = hashlib.sha256()
    for entry in entries:
        if entry.is_dir:
            digest.update(b"D" + entry.path.encode() + b"\0")
            continue
        digest.update(b"F" + entry.path.encode() + b"\0" + (b"x" if entry.mode & 0o111 else b"-"))
        content = hashlib.sha256()
        with entry.source.open("rb") as stream:
            while chunk := stream.read(_CHUNK):
                content.update(chunk)
        digest.update(content.digest())
    return digest.hexdigest()


def _zip_info(path: str, is_dir: bool, mode: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(path + "/" if is_dir else path, date_time=_ZIP_EPOCH)
    info.create_system = 3
    kind = stat.S_IFDIR if is_dir else stat.S_IFREG
    info.external_attr = ((kind | mode) << 16) | (0x10 if is_dir else 0)
    info.compress_type = zipfile.ZIP_STORED if is_dir else zipfile.ZIP_DEFLATED
    return info


def write_entries(out: IO[bytes], entries: Iterable[tuple[str, bool, int, bytes | Path]]) -> None:
    """Write ``(path, is_dir, mode, content)`` entries into a zip stream, in the given order."""
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path, is_dir, mode, content in entries:
            info = _zip_info(path, is_dir, mode)
            if is_dir:
                zf.writestr(info, b"")
            elif isinstance(content, bytes):
                zf.writestr(info, content)
            else:
                with content.open("rb") as src, zf.open(info, "w") as dst:
                    while chunk := src.read(_CHUNK):
                        dst.write(chunk)


def write_safe(root: Path, out: IO[bytes]) -> list[str]:
    """Pack a module tree into ``out`` deterministically; return what was skipped (warnings)."""
    entries, skipped = walk_tree(root)
    write_entries(out, ((e.path, e.is_dir, e.mode, e.source) for e in entries))
    return skipped
