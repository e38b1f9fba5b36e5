"""Generic pass over userconfig.xml: schema conformance and value conversion.

:func:`read_tree` walks the XML against :data:`hakit.config.schema.ELEMENTS`, expands macros,
converts every attribute to its typed value (defaults filled in) and reports, all in one run:
unknown elements and attributes (naming what is allowed), settings for another mode,
Windows-only/obsolete/unsupported settings, empty template placeholders, unresolved ``%X%``
and every value of the wrong type. The result is a tree of :class:`Node` that the builders of
:mod:`hakit.config.userconfig` turn into models without re-checking types.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from hakit.config.macros import Expander, Expansion
from hakit.config.report import ConfigReport
from hakit.config.schema import ELEMENTS, PLACEHOLDER_WORDS, Attr, Kind, Support
from hakit.config.units import DurationError, parse_duration
from hakit.config.values import address_problem, port_problem
from hakit.config.xmlsource import Element, XmlDocument, element_path, elements, line_of, tag_of

_VARNAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MAC = re.compile(r"^[0-9A-Fa-f]{2}([-:])[0-9A-Fa-f]{2}(\1[0-9A-Fa-f]{2}){4}$")


@dataclass
class Node:
    """A checked element: converted attribute values (defaults filled in) and child nodes.

    ``given`` lists the attributes present in the file (after expansion: ``raw``); ``bad`` those
    whose value was refused (their ``values`` entry holds the default).
    """

    key: str
    tag: str
    path: str
    line: int | None
    values: dict[str, object] = field(default_factory=dict)
    raw: dict[str, str] = field(default_factory=dict)
    bad: set[str] = field(default_factory=set)
    children: list[Node] = field(default_factory=list)
    text: str = ""

    def given(self, attr: str) -> bool:
        """True when the file sets ``attr`` (whatever its value)."""
        return attr in self.raw

    def child(self, tag: str) -> Node | None:
        """The first child element ``<tag>``, if any."""
        return next((c for c in self.children if c.tag == tag), None)

    def all(self, tag: str) -> list[Node]:
        """Every child element ``<tag>``, in file order."""
        return [c for c in self.children if c.tag == tag]

    def get_str(self, attr: str) -> str:
        """The text value of ``attr`` (default or given), ``""`` when it has none."""
        value = self.values.get(attr)
        return value if isinstance(value, str) else ""

    def opt_str(self, attr: str) -> str | None:
        """The text value of ``attr``, or None."""
        value = self.values.get(attr)
        return value if isinstance(value, str) else None

    def get_int(self, attr: str) -> int:
        """The integer value of ``attr`` (0 when it has none)."""
        value = self.values.get(attr)
        return value if isinstance(value, int) and not isinstance(value, bool) else 0

    def opt_int(self, attr: str) -> int | None:
        """The integer value of ``attr``, or None."""
        value = self.values.get(attr)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    def get_float(self, attr: str) -> float:
        """The number (durations: seconds) of ``attr`` (0.0 when it has none)."""
        value = self.values.get(attr)
        return float(value) if isinstance(value, int | float) else 0.0

    def opt_float(self, attr: str) -> float | None:
        """The number of ``attr``, or None (e.g. a heartbeat pulse that inherits)."""
        value = self.values.get(attr)
        return float(value) if isinstance(value, int | float) else None

    def get_bool(self, attr: str) -> bool:
        """The on/off or yes/no value of ``attr``."""
        return self.values.get(attr) is True

    def walk(self) -> Iterator[Node]:
        """This node and all its descendants, depth first."""
        yield self
        for child in self.children:
            yield from child.walk()


@dataclass
class Tree:
    """The outcome of the generic pass."""

    root: Node
    mode: str | None
    expander: Expander


class _Walker:
    def __init__(self, report: ConfigReport, expander: Expander, mode: str | None) -> None:
        self.report = report
        self.expander = expander
        self.mode = mode

    # -- reporting helpers ------------------------------------------------------------------
    def error(
        self,
        el: Element,
        message: str,
        *,
        attr: str | None = None,
        value: str | None = None,
        hint: str | None = None,
        code: str = "",
    ) -> None:
        self.report.add_error(
            message,
            line=line_of(el),
            element=element_path(el),
            attribute=attr,
            value=value,
            hint=hint,
            code=code,
        )

    def warning(
        self,
        el: Element,
        message: str,
        *,
        attr: str | None = None,
        value: str | None = None,
        hint: str | None = None,
        code: str = "",
    ) -> None:
        self.report.add_warning(
            message,
            line=line_of(el),
            element=element_path(el),
            attribute=attr,
            value=value,
            hint=hint,
            code=code,
        )

    def _support(
        self, el: Element, support: Support, note: str, attr: str | None, value: str | None
    ) -> None:
        what = f"@{attr}" if attr else f"<{tag_of(el)}>"
        if support is Support.WINDOWS:
            self.warning(
                el,
                f"{note}: hakit runs on Linux and ignores it",
                attr=attr,
                value=value,
                hint=f"remove {what} from the Linux module",
                code="windows-only",
            )
        elif support is Support.OBSOLETE:
            self.warning(
                el,
                f"obsolete: {note}; ignored",
                attr=attr,
                value=value,
                hint=f"remove {what}",
                code="obsolete",
            )
        elif support is Support.IGNORED:
            self.warning(
                el,
                f"ignored: {note}",
                attr=attr,
                value=value,
                hint=f"remove {what}",
                code="ignored",
            )
        elif support is Support.UNSUPPORTED:
            self.error(
                el,
                note,
                attr=attr,
                value=value,
                hint=f"remove {what}, or run this module with SafeKit",
                code="unsupported",
            )

    # -- the walk -----------------------------------------------------------------------------
    def node(self, el: Element, key: str) -> Node:
        spec = ELEMENTS[key]
        tag = tag_of(el)
        node = Node(key=key, tag=tag, path=element_path(el), line=line_of(el))
        if spec.support is not Support.SUPPORTED:
            self._support(el, spec.support, spec.note, None, None)
        if self.mode and self.mode not in spec.modes:
            self.error(
                el,
                f"<{tag}> is for {' and '.join(sorted(spec.modes))} modules only, "
                f"this module is a {self.mode}",
                hint=f"remove <{tag}> or change <service mode>",
                code="wrong-mode",
            )
        self._attributes(el, key, node)
        if spec.text:
            node.text = self._text(el)
        elif (el.text or "").strip():
            self.error(
                el,
                f"<{tag}> contains text '{(el.text or '').strip()[:40]}'",
                hint=f"<{tag}> holds only attributes and elements",
                code="unexpected-text",
            )
        seen: dict[str, Element] = {}
        for child_el in elements(el):
            child_tag = tag_of(child_el)
            child_spec = spec.children.get(child_tag)
            if child_spec is None:
                allowed = ", ".join(f"<{c}>" for c in spec.children) or "no element"
                self.error(
                    child_el,
                    f"unknown element <{child_tag}> in <{tag}>",
                    hint=f"<{tag}> accepts {allowed}",
                    code="unknown-element",
                )
                continue
            if not child_spec.many and child_tag in seen:
                self.error(
                    child_el,
                    f"<{child_tag}> appears twice in <{tag}> (first at line "
                    f"{line_of(seen[child_tag])})",
                    hint=f"merge the two <{child_tag}> elements",
                    code="duplicate-element",
                )
                continue
            seen[child_tag] = child_el
            node.children.append(self.node(child_el, child_spec.key))
        return node

    def _text(self, el: Element) -> str:
        # CDATA sections come back as text; comments between them are skipped.
        parts = [el.text or ""] + [child.tail or "" for child in el]
        text = "".join(parts)
        expansion = self.expander.expand(text)
        for name in expansion.unresolved:
            self.error(
                el,
                f"%{name}% is neither a macro nor an environment variable",
                hint=f"define <macro name='{name}' value='...'/>",
                code="unresolved-macro",
            )
        return expansion.text

    def _attributes(self, el: Element, key: str, node: Node) -> None:
        spec = ELEMENTS[key]
        tag = tag_of(el)
        for name, default_attr in spec.attrs.items():
            node.values[name] = default_attr.default
        for raw_name, raw_value in el.attrib.items():
            name = str(raw_name)
            found = spec.attrs.get(name)
            if found is None:
                allowed = ", ".join(spec.attrs) or "no attribute"
                self.error(
                    el,
                    f"unknown attribute '{name}' of <{tag}>",
                    attr=name,
                    value=str(raw_value),
                    hint=f"<{tag}> accepts: {allowed}",
                    code="unknown-attribute",
                )
                continue
            attr = found
            expansion = (
                Expansion(str(raw_value))
                if key == "macro"
                else self.expander.expand(str(raw_value))
            )
            value = expansion.text
            node.raw[name] = value
            if expansion.unresolved:
                for missing in expansion.unresolved:
                    self.error(
                        el,
                        f"%{missing}% is neither a macro nor an environment variable",
                        attr=name,
                        value=value,
                        hint=f"define <macro name='{missing}' value='...'/> before "
                        f"<service>, or set the environment variable",
                        code="unresolved-macro",
                    )
                node.bad.add(name)
                continue
            if attr.support is not Support.SUPPORTED:
                self._support(el, attr.support, attr.note, name, value)
            if self.mode and self.mode not in attr.modes:
                self.error(
                    el,
                    f"@{name} is for {' and '.join(sorted(attr.modes))} modules only, "
                    f"this module is a {self.mode}",
                    attr=name,
                    value=value,
                    hint=f"remove {name}",
                    code="wrong-mode",
                )
            converted = self._convert(el, name, attr, value, expansion)
            if converted is _BAD:
                node.bad.add(name)
                continue
            node.values[name] = converted
            key_value = value.strip().lower()
            if key_value in attr.refused:
                self.error(
                    el,
                    attr.refused[key_value],
                    attr=name,
                    value=value,
                    hint=f"remove {name}='{value}'",
                    code="unsupported",
                )
            if key_value in attr.warned:
                self.warning(
                    el, attr.warned[key_value], attr=name, value=value, code="windows-only"
                )
        for name, attr in spec.attrs.items():
            if attr.required and name not in el.attrib:
                fill = f" ({attr.fill})" if attr.fill else ""
                self.error(
                    el,
                    f"<{tag}> needs the attribute {name}{fill}",
                    attr=name,
                    code="missing-attribute",
                )
                node.bad.add(name)

    def _placeholder(
        self, el: Element, name: str, attr: Attr, value: str, expansion: Expansion
    ) -> bool:
        what = attr.what or f"the attribute {name}"
        fill = attr.fill or "the value it needs"
        stripped = value.strip()
        if not stripped:
            message = f"{what} is empty: this file is a template; fill in {name} with {fill}"
            empty = self.expander.empty_macros(expansion.macros)
            if empty:
                message += (
                    f" (the value comes from the macro {', '.join(empty)}, whose value "
                    f"is empty: set it in <macro name='{empty[0]}' value='...'/>)"
                )
        elif stripped in PLACEHOLDER_WORDS or stripped.endswith("_TO_BE_DEFINED"):
            message = (
                f"{what} is still the template placeholder '{stripped}': this file is a "
                f"template; fill in {name} with {fill}"
            )
        else:
            return False
        self.error(
            el,
            message,
            attr=name,
            value=value,
            code="template-placeholder",
            hint="edit the file, then check it again with 'hakit confcheck'",
        )
        return True

    def _convert(
        self, el: Element, name: str, attr: Attr, value: str, expansion: Expansion
    ) -> object:
        kind = attr.kind
        if kind is Kind.TEXT:
            return value
        if self._placeholder(el, name, attr, value, expansion):
            return _BAD
        text = value.strip()

        def bad(message: str, hint: str | None = None, code: str = "bad-value") -> object:
            self.error(el, message, attr=name, value=value, hint=hint, code=code)
            return _BAD

        if kind in (Kind.NAME, Kind.PATH):
            if text != value:
                self.warning(
                    el,
                    "leading/trailing spaces are ignored",
                    attr=name,
                    value=value,
                    hint=f"write {name}='{text}'",
                    code="trimmed",
                )
            return text
        if kind is Kind.VARNAME:
            if not _VARNAME.match(text):
                return bad(
                    "not a valid environment variable name",
                    "letters, digits and '_', not starting with a digit",
                )
            return text
        if kind is Kind.INT:
            try:
                number = int(text, 0) if text.lower().startswith("0x") else int(text)
            except ValueError:
                return bad("expected a whole number", code="bad-integer")
            if attr.minimum is not None and number < attr.minimum:
                return bad(f"must be at least {attr.minimum}", code="out-of-range")
            if attr.maximum is not None and number > attr.maximum:
                return bad(f"must be at most {attr.maximum}", code="out-of-range")
            return number
        if kind is Kind.DURATION:
            try:
                return parse_duration(value, attr.unit, name)
            except DurationError as exc:
                return bad(str(exc), f"e.g. {name}='10{attr.unit}'", code="bad-duration")
        if kind in (Kind.ONOFF, Kind.YESNO, Kind.ENUM):
            if kind is Kind.ENUM:
                words = attr.choices
            else:
                words = ("on", "off") if kind is Kind.ONOFF else ("yes", "no")
            if text.lower() not in words:
                return bad(f"expected one of: {', '.join(words)}", code="bad-enum")
            if text not in words:
                # SafeKit writes these in lower case; say so instead of silently folding case.
                self.warning(
                    el,
                    f"read as '{text.lower()}'",
                    attr=name,
                    value=value,
                    hint=f"write {name}='{text.lower()}'",
                    code="case",
                )
            chosen = text.lower()
            return chosen == words[0] if kind is not Kind.ENUM else chosen
        if kind is Kind.PORT:
            if attr.star and text == "*":
                return None
            try:
                port = int(text)
            except ValueError:
                return bad(
                    "expected a port number" + (" or '*'" if attr.star else ""), code="bad-port"
                )
            if problem := port_problem(port):
                return bad(problem, code="bad-port")
            return port
        if kind is Kind.ADDR:
            if problem := address_problem(text):
                return bad(problem, "an IPv4 or IPv6 address, or a DNS name", code="bad-address")
            return text
        if kind is Kind.REGEX:
            pattern = text[1:] if attr.negatable and text.startswith("!") else text
            try:
                re.compile(pattern)
            except re.error as exc:
                return bad(
                    f"the regular expression '{pattern}' does not compile: {exc}",
                    "write a POSIX extended regular expression",
                    code="bad-regex",
                )
            return text
        if kind is Kind.MAC:
            if not _MAC.match(text):
                return bad("expected a MAC address like 5A:FE:C0:A8:01:DE", code="bad-value")
            return text
        raise AssertionError(f"unhandled kind {kind}")  # a schema bug, not a user error


class _Bad:
    """Marker: the value was refused (the error is already reported)."""


_BAD = _Bad()


def _peek_mode(root: Element, expander: Expander) -> str | None:
    service = next((e for e in elements(root) if tag_of(e) == "service"), None)
    if service is None:
        return None
    mode = expander.expand(service.get("mode") or "").text.strip().lower()
    return mode if mode in ("mirror", "farm", "light") else None


def read_tree(document: XmlDocument, report: ConfigReport, environ: Mapping[str, str]) -> Tree:
    """Check ``document`` against the schema; every problem goes to ``report``."""
    root = document.root
    expander = Expander(environ)
    walker = _Walker(report, expander, None)
    # Macros first, in document order: values may use earlier macros, and %X% anywhere in the
    # service may use any of them.
    macro_elements: list[Element] = []
    for stray in document.strays:
        if tag_of(stray) == "macro":
            walker.warning(
                stray,
                "<macro> outside <safe>: not well-formed XML (it is accepted "
                "because the SafeKit User's Guide prints it so)",
                hint="move the <macro> elements inside <safe>",
                code="misplaced-macro",
            )
            macro_elements.append(stray)
        else:
            walker.error(
                stray,
                f"unknown top-level element <{tag_of(stray)}>",
                hint="a userconfig.xml holds one <safe> element",
                code="unknown-element",
            )
    macro_elements += [e for e in elements(root) if tag_of(e) == "macro"]
    seen: dict[str, Element] = {}
    for el in macro_elements:
        name = (el.get("name") or "").strip()
        if not name:
            continue  # reported by the walk (missing name)
        if name in seen:
            walker.error(
                el,
                f"macro {name} is defined twice (first at line {line_of(seen[name])})",
                attr="name",
                value=name,
                hint="keep one definition",
                code="duplicate-macro",
            )
            continue
        seen[name] = el
        expansion = expander.define(name, el.get("value") or "")
        for missing in expansion.unresolved:
            walker.error(
                el,
                f"%{missing}% is neither a macro defined earlier nor an environment variable",
                attr="value",
                value=el.get("value"),
                hint="define the macros it uses before it",
                code="unresolved-macro",
            )
    walker.mode = _peek_mode(root, expander)
    tree_root = walker.node(root, "safe")
    for stray in document.strays:
        if tag_of(stray) == "macro":
            tree_root.children.insert(0, walker.node(stray, "macro"))
    return Tree(tree_root, walker.mode, expander)
