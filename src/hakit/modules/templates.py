"""The built-in generic module templates: ``mirror`` and ``farm``.

Each template is a directory shipped as package data (``hakit/modules/templates/<kind>/``) with a
commented ``conf/userconfig.xml`` whose site-specific values are left empty (the configuration
check reports them as template placeholders until they are filled) and bash scripts under
``bin/``. :func:`template_archive` packs one into a ``.safe`` archive on demand, so that
``hakit module template`` and ``hakit module install --template`` use the same code path as any
other archive.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

from hakit.errors import NotFoundError
from hakit.modules import _fs
from hakit.modules.archive import write_entries

TEMPLATE_KINDS = ("mirror", "farm")
"""Names of the built-in templates."""


def _root(kind: str) -> Traversable:
    if kind not in TEMPLATE_KINDS:
        raise NotFoundError(
            f"no built-in module template {kind!r}; choose one of: {', '.join(TEMPLATE_KINDS)}"
        )
    return resources.files("hakit.modules").joinpath("templates", kind)


def _walk(node: Traversable, rel: str) -> Iterator[tuple[str, bool, int, bytes]]:
    for child in sorted(node.iterdir(), key=lambda c: c.name):
        path = f"{rel}/{child.name}" if rel else child.name
        if child.is_dir():
            yield path, True, 0o755, b""
            yield from _walk(child, path)
        else:
            # Every file of bin/ is a script; package data may lose its mode when installed.
            mode = 0o755 if path.startswith("bin/") else 0o644
            yield path, False, mode, child.read_bytes()


def template_files(kind: str) -> list[tuple[str, bool, int, bytes]]:
    """The entries of template ``kind``: ``(path, is_dir, mode, content)``, sorted by path."""
    return list(_walk(_root(kind), ""))


def template_archive(kind: str) -> bytes:
    """Template ``kind`` as the bytes of a ``.safe`` archive."""
    buffer = io.BytesIO()
    write_entries(buffer, template_files(kind))
    return buffer.getvalue()


def write_template(kind: str, out_file: Path) -> Path:
    """Write template ``kind`` as a ``.safe`` archive to ``out_file`` (atomically)."""
    data = template_archive(kind)
    out_file = out_file.absolute()
    if not out_file.parent.is_dir():
        raise NotFoundError(f"{out_file.parent}: no such directory")
    _fs.atomic_write(out_file, lambda out: out.write(data))
    return out_file
