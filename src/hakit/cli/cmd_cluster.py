"""(placeholder: filled by the subsystem that owns these commands)"""

from __future__ import annotations

import click

commands: list[click.Command] = []
