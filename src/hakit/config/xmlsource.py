"""Reading SafeKit XML safely, with every problem located.

The parser never resolves entities, never touches the network and refuses huge trees, so a
configuration file cannot make hakit read other files or exhaust memory. A syntax error becomes
one located :class:`~hakit.config.report.Issue` instead of a traceback.

One tolerance exists for real files: the SafeKit 8.2 User's Guide prints examples where
``<macro>`` elements sit *before* ``<safe>`` (two top-level elements: not well-formed XML). Such a
document is re-read inside a wrapper element that keeps line numbers, and the caller gets the
stray top-level elements to warn about.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from lxml import etree

from hakit.config.report import ConfigReport

Element = etree._Element

_WRAPPER = "hakit-document"
# The XML declaration and the DOCTYPE must come first in a document; inside the wrapper they would
# be illegal, so they are blanked out (same length, newlines kept) before wrapping.
_XML_DECL = re.compile(r"<\?xml[^>]*\?>")
_DOCTYPE = re.compile(r"<!DOCTYPE[^>\[]*(\[[^\]]*\])?\s*>", re.IGNORECASE)


@dataclass
class XmlDocument:
    """A parsed document: its root element and any extra top-level elements (legacy files)."""

    root: Element
    strays: list[Element] = field(default_factory=list)


def _parser() -> etree.XMLParser:
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        huge_tree=False,
        load_dtd=False,
        dtd_validation=False,
        remove_blank_text=False,
    )


def _blank(match: re.Match[str]) -> str:
    return re.sub(r"[^\n]", " ", match.group(0))


def _as_bytes(data: str | bytes) -> bytes:
    if isinstance(data, bytes):
        return data
    # A str is already decoded: its encoding declaration (if any) no longer applies.
    return _XML_DECL.sub(_blank, data, count=1).encode("utf-8")


def parse_xml(
    data: str | bytes, report: ConfigReport, *, root_tag: str, allow_strays: bool = False
) -> XmlDocument | None:
    """Parse ``data``; on failure add one located error to ``report`` and return None.

    ``root_tag`` is the expected root element. With ``allow_strays``, extra top-level elements
    next to it are tolerated and returned in ``XmlDocument.strays`` for the caller to judge.
    """
    raw = _as_bytes(data)
    try:
        root = etree.fromstring(raw, _parser())
    except etree.XMLSyntaxError as exc:
        if allow_strays and "Extra content at the end of the document" in str(exc.msg):
            document = _parse_wrapped(raw, report, root_tag)
            if document is not None:
                return document
        report.add_error(
            f"malformed XML: {exc.msg}",
            line=exc.lineno or None,
            hint="fix the XML syntax: one root element, every element closed, attribute values "
            "in straight quotes, '&' written '&amp;' and '<' written '&lt;'",
            code="xml-syntax",
        )
        return None
    if root.tag != root_tag:
        report.add_error(
            f"the root element is <{tag_of(root)}>, expected <{root_tag}>",
            line=line_of(root),
            element=tag_of(root),
            hint=f"is this the right file? a {root_tag} file starts with <{root_tag}>",
            code="wrong-root",
        )
        return None
    return XmlDocument(root)


def _parse_wrapped(raw: bytes, report: ConfigReport, root_tag: str) -> XmlDocument | None:
    text = raw.decode("utf-8", errors="replace")
    text = _XML_DECL.sub(_blank, text, count=1)
    text = _DOCTYPE.sub(_blank, text, count=1)
    # The wrapper opens on line 1 without adding a newline, so source lines stay exact.
    wrapped = f"<{_WRAPPER}>{text}</{_WRAPPER}>".encode()
    try:
        wrapper = etree.fromstring(wrapped, _parser())
    except etree.XMLSyntaxError:
        return None
    tops = list(elements(wrapper))
    roots = [e for e in tops if e.tag == root_tag]
    if len(roots) != 1:
        return None
    return XmlDocument(roots[0], [e for e in tops if e is not roots[0]])


def elements(parent: Element) -> Iterator[Element]:
    """Child elements only (comments and processing instructions skipped)."""
    for child in parent:
        if isinstance(child.tag, str):
            yield child


def element_path(element: Element) -> str:
    """``safe/service/heart/heartbeat[default]``: tags from the root, qualified by name/ident."""
    parts: list[str] = []
    node: Element | None = element
    while node is not None and node.tag != _WRAPPER:
        tag = str(node.tag)
        label = node.get("name") or node.get("ident")
        parts.append(f"{tag}[{label.strip()}]" if label and label.strip() else tag)
        node = node.getparent()
    return "/".join(reversed(parts))


def line_of(element: Element) -> int | None:
    """Source line of ``element`` (None when lxml does not know it)."""
    line = element.sourceline
    return line if isinstance(line, int) else None


def tag_of(element: Element) -> str:
    """The element's tag as text."""
    tag = element.tag
    return tag.decode() if isinstance(tag, bytes) else str(tag)
