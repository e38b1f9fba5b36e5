"""docs/design/config-compat.md lists every setting hakit does not plainly support."""

from __future__ import annotations

from pathlib import Path

from hakit.config.schema import ELEMENTS, Support

DOC = Path(__file__).resolve().parents[3] / "docs" / "design" / "config-compat.md"
# Schema keys whose XML tag differs from the key.
TAGS = {"farm_node": "node", "farm_lan": "lan"}


def test_every_non_supported_setting_is_documented() -> None:
    text = DOC.read_text()
    missing: list[str] = []
    for key, element in ELEMENTS.items():
        tag = TAGS.get(key, key)
        if element.support is not Support.SUPPORTED and f"<{tag}" not in text:
            missing.append(f"<{tag}>")
        for name, attr in element.attrs.items():
            if attr.support is not Support.SUPPORTED and f"<{tag} {name}" not in text:
                missing.append(f"<{tag} {name}>")
            for value in (*attr.refused, *attr.warned):
                if f"{name}='{value}'" not in text:
                    missing.append(f"<{tag} {name}='{value}'>")
    assert missing == []
