"""Fixtures of the module tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from hakit.paths import NodePaths


@pytest.fixture
def paths(tmp_path: Path) -> NodePaths:
    """An empty node root."""
    return NodePaths(tmp_path / "node")
