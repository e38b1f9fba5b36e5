"""Findings of a configuration check, all of them, with their location.

Validation never stops at the first problem: every rule adds an :class:`Issue` to one
:class:`ConfigReport`, and the caller decides what to do with it (``hakit confcheck`` prints it,
``hakit config`` refuses to activate a module while ``report.errors`` is not empty, the daemon
raises :class:`ConfigInvalid`).

An issue reads like a compiler diagnostic so that editors and humans can jump to it::

    userconfig.xml:12: error: <safe/service/heart/heartbeat> @name='repli': no lan 'repli'
    in cluster.xml (hint: ...)

(one line in reality).
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from hakit.errors import UserConfigError


class Severity(enum.Enum):
    """How bad an issue is: an ERROR makes the file unusable, a WARNING does not."""

    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True)
class Issue:
    """One finding, located as precisely as the input allows.

    ``element`` is the element path (``safe/service/heart/heartbeat``), ``attribute`` and ``value``
    the offending attribute and its raw text, ``hint`` what to do about it. ``code`` is a stable,
    machine-readable identifier of the rule (``template-placeholder``, ``unknown-attribute`` ...)
    so that tools and tests do not depend on the wording of ``message``.
    """

    severity: Severity
    file: str
    line: int | None
    element: str
    attribute: str | None
    value: str | None
    message: str
    hint: str | None = None
    code: str = ""

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        subject = []
        if self.element:
            subject.append(f"<{self.element}>")
        if self.attribute:
            subject.append(f"@{self.attribute}='{self.value if self.value is not None else ''}'")
        text = f"{where}: {self.severity.value}: "
        if subject:
            text += " ".join(subject) + ": "
        text += self.message
        if self.hint:
            text += f" (hint: {self.hint})"
        return text

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (used by ``hakit confcheck --json`` and the API)."""
        data = asdict(self)
        data["severity"] = self.severity.value
        return data


class ConfigInvalid(UserConfigError):
    """A configuration file has errors; ``report`` holds all of them."""

    def __init__(self, report: ConfigReport) -> None:
        self.report = report
        lines = [str(issue) for issue in report.errors]
        count = len(lines)
        head = f"{count} configuration error{'s' if count != 1 else ''}"
        super().__init__(head + ":\n" + "\n".join(lines) if lines else head)


@dataclass
class ConfigReport:
    """Every issue found while loading one or more configuration files, in the order found.

    ``file`` is the default file name given to issues added without an explicit one.
    """

    file: str = ""
    issues: list[Issue] = field(default_factory=list)

    @property
    def errors(self) -> list[Issue]:
        """The issues of severity ERROR, in order."""
        return [i for i in self.issues if i.severity is Severity.ERROR]

    @property
    def warnings(self) -> list[Issue]:
        """The issues of severity WARNING, in order."""
        return [i for i in self.issues if i.severity is Severity.WARNING]

    @property
    def ok(self) -> bool:
        """True when there is no error (warnings allowed)."""
        return not self.errors

    def __iter__(self) -> Iterator[Issue]:
        return iter(self.issues)

    def __len__(self) -> int:
        return len(self.issues)

    def add(self, issue: Issue) -> Issue:
        """Append an already built issue."""
        self.issues.append(issue)
        return issue

    def add_error(
        self,
        message: str,
        *,
        line: int | None = None,
        element: str = "",
        attribute: str | None = None,
        value: str | None = None,
        hint: str | None = None,
        code: str = "",
        file: str | None = None,
    ) -> Issue:
        """Record an error (the configuration cannot be used as is)."""
        return self.add(
            Issue(
                Severity.ERROR,
                self.file if file is None else file,
                line,
                element,
                attribute,
                value,
                message,
                hint,
                code,
            )
        )

    def add_warning(
        self,
        message: str,
        *,
        line: int | None = None,
        element: str = "",
        attribute: str | None = None,
        value: str | None = None,
        hint: str | None = None,
        code: str = "",
        file: str | None = None,
    ) -> Issue:
        """Record a warning (the configuration works, but something is ignored or doubtful)."""
        return self.add(
            Issue(
                Severity.WARNING,
                self.file if file is None else file,
                line,
                element,
                attribute,
                value,
                message,
                hint,
                code,
            )
        )

    def extend(self, other: ConfigReport) -> None:
        """Append the issues of another report (e.g. cluster.xml's, when checking a module)."""
        self.issues.extend(other.issues)

    def raise_if_errors(self) -> None:
        """Raise :class:`ConfigInvalid` listing every error, if there is any."""
        if self.errors:
            raise ConfigInvalid(self)

    def summary(self) -> str:
        """One line: ``FILE: 2 errors, 1 warning`` (or ``FILE: OK``)."""
        n_err, n_warn = len(self.errors), len(self.warnings)
        name = self.file or "configuration"
        if not n_err and not n_warn:
            return f"{name}: OK"
        parts = [
            f"{n_err} error{'s' if n_err != 1 else ''}",
            f"{n_warn} warning{'s' if n_warn != 1 else ''}",
        ]
        return f"{name}: " + ", ".join(parts)

    def render(self) -> str:
        """Every issue on its own line, then the summary line (what ``hakit confcheck`` prints)."""
        return "\n".join([*(str(i) for i in self.issues), self.summary()])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: the issues plus counts."""
        return {
            "file": self.file,
            "ok": self.ok,
            "errors": len(self.errors),
            "warnings": len(self.warnings),
            "issues": [i.to_dict() for i in self.issues],
        }
