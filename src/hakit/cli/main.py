"""The ``hakit`` command: a thin shell over hakit's service layer and the node's REST API.

Each ``cmd_*`` module contributes its click commands through a ``commands`` list; errors of the
:mod:`hakit.errors` hierarchy become one line on stderr and a documented exit code:

====  ==========================================================
0     success
1     generic failure
2     invalid configuration or arguments (fix the input and retry)
3     a named module, node or file does not exist
4     the local system refused (permissions, missing tool, busy)
5     a peer or the local daemon could not be reached or misbehaved
====  ==========================================================
"""

from __future__ import annotations

import sys

import click

from hakit import __version__
from hakit.cli import (
    cmd_cluster,
    cmd_config,
    cmd_control,
    cmd_lab,
    cmd_module,
    cmd_rfs,
    cmd_rfsdiff,
)
from hakit.errors import HakitError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="hakit")
def cli() -> None:
    """hakit: high-availability clustering for Linux."""


for _module in (cmd_config, cmd_cluster, cmd_module, cmd_control, cmd_lab, cmd_rfs, cmd_rfsdiff):
    for _command in _module.commands:
        cli.add_command(_command)


def main() -> None:
    """Entry point of the ``hakit`` console script."""
    try:
        # With standalone_mode=False click returns the code given to ctx.exit(n) instead of exiting.
        rc = cli.main(standalone_mode=False)
    except HakitError as exc:
        click.echo(f"hakit: {exc}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("hakit: aborted", err=True)
        sys.exit(1)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    sys.exit(rc if isinstance(rc, int) else 0)
