"""``<macro name value>`` and ``%NAME%`` expansion.

SafeKit replaces ``%NAME%`` anywhere after the macro definitions; a name that is not a macro is
looked up in the environment (macros win on conflict). What is still unresolved is an error: the
value would reach a script or the kernel with a literal ``%NAME%`` in it.

The expander also remembers which macros fed a value, so that an empty template macro
(``<macro name="VIRTUAL_IP" value=""/>``) can be named in the error about the empty VIP.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

_REFERENCE = re.compile(r"%([A-Za-z_][A-Za-z0-9_.\-]*)%")


@dataclass(frozen=True)
class Expansion:
    """The result of expanding one text."""

    text: str
    macros: tuple[str, ...] = ()  # macro names used, in order
    unresolved: tuple[str, ...] = ()  # names found neither in macros nor in the environment


@dataclass
class Expander:
    """Expands ``%NAME%`` with the macros defined so far, then the environment."""

    environ: Mapping[str, str]
    macros: dict[str, str] = field(default_factory=dict)

    def define(self, name: str, raw_value: str) -> Expansion:
        """Define a macro; its value may use earlier macros. Returns the value's expansion."""
        expansion = self.expand(raw_value)
        self.macros[name] = expansion.text
        return expansion

    def expand(self, text: str) -> Expansion:
        """Replace every resolvable ``%NAME%`` in ``text`` (a single pass, like SafeKit)."""
        if "%" not in text:
            return Expansion(text)
        used: list[str] = []
        missing: list[str] = []

        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            if name in self.macros:
                used.append(name)
                return self.macros[name]
            if name in self.environ:
                return self.environ[name]
            missing.append(name)
            return match.group(0)

        return Expansion(_REFERENCE.sub(replace, text), tuple(used), tuple(missing))

    def empty_macros(self, names: tuple[str, ...]) -> list[str]:
        """Those of ``names`` whose value is empty (template macros left to fill in)."""
        return [n for n in names if not self.macros.get(n, "").strip()]
