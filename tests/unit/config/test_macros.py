"""Macro expansion: macros first, then the environment; unresolved names reported."""

from __future__ import annotations

from hakit.config.macros import Expander


def test_macros_win_over_the_environment() -> None:
    expander = Expander({"X": "env", "HOME": "/root"})
    expander.define("X", "macro")
    result = expander.expand("%X%:%HOME%")
    assert result.text == "macro:/root"
    assert result.macros == ("X",)
    assert result.unresolved == ()


def test_macro_values_use_earlier_macros() -> None:
    expander = Expander({})
    expander.define("BASE", "/var/lib")
    assert expander.define("DIR", "%BASE%/app").text == "/var/lib/app"
    assert expander.expand("%DIR%").text == "/var/lib/app"


def test_unresolved_names_are_kept_and_listed() -> None:
    result = Expander({}).expand("a %NOPE% b")
    assert result.text == "a %NOPE% b"
    assert result.unresolved == ("NOPE",)


def test_lone_percent_signs_are_not_references() -> None:
    assert Expander({}).expand("50% of 100%").unresolved == ()


def test_empty_macros_are_found() -> None:
    expander = Expander({})
    expander.define("VIP", "")
    expander.define("PORT", "80")
    assert expander.empty_macros(("VIP", "PORT")) == ["VIP"]
