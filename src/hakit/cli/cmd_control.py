"""(placeholder: module control commands, filled by the engine integration)"""

from __future__ import annotations

import click

commands: list[click.Command] = []
