"""The classic failover-rule language of ``<failover>`` (SafeKit 8.2 reference §3.11)::

    label: if (expression) then action;

``action`` is ``stop() | stopstart() | wait() | restart() | swap()`` (or a resource assignment
``rfs.uptodate = up`` as in SafeKit's own rules); an expression combines comparisons
``[local.|remote.]class.id == state`` (``id`` may be ``*`` = all or ``?`` = any one; state
``init | up | down | unknown``) and ``cluster() == up|down`` with ``! && ||`` and parentheses.
``/* */`` and ``//`` comments are allowed between rules.

The Lua syntax of SafeKit >= 7.5 is recognised (so that it is refused by name) but not parsed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from hakit.config.model import FailoverRule

ACTIONS = ("stop", "stopstart", "wait", "restart", "swap")
STATES = ("init", "up", "down", "unknown")

_COMMENT = re.compile(r"/\*.*?\*/|//[^\n]*", re.DOTALL)
_RULE = re.compile(
    r"\s*(?P<label>[A-Za-z_][\w.\-]*)\s*:\s*if\b(?P<cond>.*?)\bthen\b(?P<action>[^;]*);",
    re.DOTALL,
)
_TOKEN = re.compile(
    r"\s*(?:(?P<op>&&|\|\||==|!=|!|\(|\))|(?P<call>cluster\s*\(\s*\))|"
    r"(?P<word>[A-Za-z_][\w\-]*(?:\.(?:[\w\-]+|\*|\?))+|[A-Za-z_][\w\-]*))"
)
_RESOURCE = re.compile(r"^(?:(?:local|remote)\.)?[A-Za-z_][\w\-]*\.(?:[\w\-.]+|\*|\?)$")
_ASSIGN = re.compile(r"^(?P<res>[A-Za-z_][\w\-]*\.[\w\-.]+)\s*=\s*(?P<state>\w+)$")
_LUA_MARKERS = re.compile(r"--\s*Lua|\bRules\s*[=.]|\bif_then\s*\(")


@dataclass(frozen=True)
class RuleProblem:
    """A syntax problem; ``offset`` is the character position in the rules text."""

    offset: int
    message: str


def is_lua(text: str) -> bool:
    """True when ``text`` holds SafeKit's Lua rule syntax."""
    return bool(_LUA_MARKERS.search(text))


def parse_rules(text: str) -> tuple[list[FailoverRule], list[RuleProblem]]:
    """Parse every rule of ``text``; report each part that is not a valid rule."""
    # Comments are blanked (not removed) so that offsets still point into the original text.
    clean = _COMMENT.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), text)
    rules: list[FailoverRule] = []
    problems: list[RuleProblem] = []
    position = 0
    while position < len(clean):
        if not clean[position:].strip():
            break
        match = _RULE.match(clean, position)
        if match is None:
            start = position + len(clean[position:]) - len(clean[position:].lstrip())
            snippet = clean[start:].strip().splitlines()[0][:60]
            problems.append(
                RuleProblem(
                    start,
                    f"not a rule: '{snippet}' (expected 'label: if (expression) then action;')",
                )
            )
            break
        label, cond, action = match["label"], match["cond"].strip(), match["action"].strip()
        for message in _check_condition(cond):
            problems.append(RuleProblem(match.start("cond"), f"rule {label}: {message}"))
        if (bad_action := _check_action(action)) is not None:
            problems.append(RuleProblem(match.start("action"), f"rule {label}: {bad_action}"))
        rules.append(FailoverRule(label=label, condition=cond, action=action))
        position = match.end()
    labels = [r.label for r in rules]
    for label in sorted({x for x in labels if labels.count(x) > 1}):
        problems.append(RuleProblem(0, f"rule label {label} is used more than once"))
    return rules, problems


def _check_action(action: str) -> str | None:
    call = re.fullmatch(r"(\w+)\s*\(\s*\)", action)
    if call:
        if call.group(1) in ACTIONS:
            return None
        return f"unknown action {call.group(1)}() (expected one of: {', '.join(ACTIONS)})"
    assign = _ASSIGN.match(action)
    if assign:
        if assign["state"] in STATES:
            return None
        return f"a resource can be set to {', '.join(STATES)}, not '{assign['state']}'"
    return f"'{action}' is not an action (expected one of: {', '.join(a + '()' for a in ACTIONS)})"


def _tokens(text: str) -> list[str] | str:
    tokens: list[str] = []
    position = 0
    while position < len(text):
        if not text[position:].strip():
            break
        match = _TOKEN.match(text, position)
        if match is None or match.end() == position:
            return f"unexpected '{text[position:].strip()[:20]}' in the condition"
        tokens.append(re.sub(r"\s+", "", match.group(match.lastgroup or 0)))
        position = match.end()
    return tokens


def _check_condition(cond: str) -> list[str]:
    if not (cond.startswith("(") and cond.endswith(")")):
        return ["the condition must be in parentheses: if (expression) then ..."]
    tokens = _tokens(cond)
    if isinstance(tokens, str):
        return [tokens]
    parser = _Expression(tokens)
    try:
        parser.expression()
        if parser.position != len(tokens):
            raise _SyntaxError(f"unexpected '{tokens[parser.position]}'")
    except _SyntaxError as exc:
        return [str(exc)]
    return []


class _SyntaxError(Exception):
    pass


class _Expression:
    """Recursive-descent check: or := and ('||' and)*; and := not ('&&' not)*;
    not := '!' not | '(' or ')' | operand ('=='|'!=') state."""

    def __init__(self, tokens: list[str]) -> None:
        self.tokens = tokens
        self.position = 0

    def peek(self) -> str | None:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def take(self) -> str:
        token = self.peek()
        if token is None:
            raise _SyntaxError("the condition ends too early")
        self.position += 1
        return token

    def expression(self) -> None:
        self.conjunction()
        while self.peek() == "||":
            self.take()
            self.conjunction()

    def conjunction(self) -> None:
        self.negation()
        while self.peek() == "&&":
            self.take()
            self.negation()

    def negation(self) -> None:
        token = self.peek()
        if token == "!":
            self.take()
            self.negation()
        elif token == "(":
            self.take()
            self.expression()
            if self.peek() != ")":
                raise _SyntaxError("missing ')'")
            self.take()
        else:
            self.comparison()

    def comparison(self) -> None:
        operand = self.take()
        if operand != "cluster()" and not _RESOURCE.match(operand):
            raise _SyntaxError(
                f"'{operand}' is not a resource ([local.|remote.]class.id, e.g. tcp.http)"
            )
        operator = self.take()
        if operator not in ("==", "!="):
            raise _SyntaxError(f"expected == or != after {operand}, found '{operator}'")
        state = self.take()
        if state not in STATES:
            raise _SyntaxError(f"'{state}' is not a state (expected {', '.join(STATES)})")
