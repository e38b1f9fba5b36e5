"""``hakit module ...`` and ``hakit config -m NAME``: module management on this node.

Thin shell over :mod:`hakit.modules`: parse the arguments, call the service function, say what
happened and what to do next. Errors are :mod:`hakit.errors` exceptions (``main`` prints them).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import click

from hakit.cli.client import ApiClient, DaemonUnreachable
from hakit.config.report import ConfigInvalid
from hakit.errors import HakitError, NotFoundError, UserConfigError
from hakit.modules import (
    TEMPLATE_KINDS,
    check_module_name,
    configure,
    install,
    list_modules,
    package,
    ports,
    template_archive,
    uninstall,
    write_template,
)
from hakit.modules.ids import load_ids
from hakit.paths import NodePaths

_NAME = click.option("-m", "name", required=True, metavar="NAME", help="Module name.")


def _paths() -> NodePaths:
    return NodePaths.from_env()


def _warn(lines: list[str]) -> None:
    for line in lines:
        click.echo(f"warning: {line}", err=True)


@click.group("module")
def module() -> None:
    """Install, list, package and remove application modules on this node."""


@module.command("install")
@_NAME
@click.argument("safe_file", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--template",
    type=click.Choice(TEMPLATE_KINDS),
    help="Install a built-in generic module instead of a file.",
)
@click.option("-M", "module_id", type=int, metavar="ID", help="Module id (default: smallest free).")
@click.option(
    "-r", "--replace", is_flag=True, help="Install over an existing module (keeps its id)."
)
def install_cmd(
    name: str, safe_file: Path | None, template: str | None, module_id: int | None, replace: bool
) -> None:
    """Install module NAME from SAFE_FILE (a .safe archive) or from a built-in template."""
    if (safe_file is None) == (template is None):
        raise UserConfigError("give either a .safe file or --template mirror|farm (one of them)")
    check_module_name(name)
    if template is not None:
        result = install(
            _paths(),
            name,
            io.BytesIO(template_archive(template)),
            module_id,
            replace,
            label=f"template {template}",
        )
        origin = f"template {template}"
    else:
        assert safe_file is not None
        result = install(_paths(), name, safe_file, module_id, replace)
        origin = str(safe_file)
    _warn(result.warnings)
    verb = "reinstalled" if result.replaced else "installed"
    click.echo(
        f"{verb} module {name} (id {result.module_id}) from {origin} into {result.source_dir}; "
        f"edit {result.source_dir / 'conf' / 'userconfig.xml'} if needed, then apply it with "
        f"`hakit config -m {name}`"
    )


@module.command("uninstall")
@_NAME
def uninstall_cmd(name: str) -> None:
    """Remove module NAME from this node (an archive of it is kept in the backup directory)."""
    result = uninstall(_paths(), name)
    _warn(result.warnings)
    held = f" (id {result.module_id} is free again)" if result.module_id is not None else ""
    saved = f"; saved as {result.backup_file}" if result.backup_file else ""
    click.echo(f"uninstalled module {name}{held}{saved}")


@module.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_cmd(as_json: bool) -> None:
    """List the modules of this node with their id, mode and configuration status."""
    rows = list_modules(_paths())
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in rows], indent=2))
        return
    if not rows:
        click.echo("no module installed (install one with `hakit module install`)")
        return
    click.echo(f"{'NAME':<32} {'ID':>4}  {'MODE':<7} STATUS")
    for row in rows:
        if not row.configured:
            status = "not configured (run `hakit config -m " + row.name + "`)"
        elif row.modified:
            status = "modified since last config"
        else:
            status = f"configured {row.configured_at or ''}".rstrip()
        if row.problems:
            status += "; " + "; ".join(row.problems)
        ident = str(row.module_id) if row.module_id is not None else "-"
        click.echo(f"{row.name:<32} {ident:>4}  {row.mode or '?':<7} {status}")


@module.command("package")
@_NAME
@click.argument("out_file", type=click.Path(dir_okay=False, path_type=Path))
def package_cmd(name: str, out_file: Path) -> None:
    """Pack the source of module NAME into OUT_FILE (a .safe archive)."""
    result = package(_paths(), name, out_file)
    _warn(result.warnings)
    click.echo(f"packaged module {name} into {result.out_file}")


@module.command("template")
@click.argument("kind", type=click.Choice(TEMPLATE_KINDS))
@click.argument("out_file", type=click.Path(dir_okay=False, path_type=Path))
def template_cmd(kind: str, out_file: Path) -> None:
    """Write the built-in generic KIND module (mirror or farm) to OUT_FILE."""
    written = write_template(kind, out_file)
    click.echo(
        f"wrote the generic {kind} module to {written}; install it with "
        f"`hakit module install -m NAME {written}`, then fill in its conf/userconfig.xml"
    )


@module.command("getports")
@click.option("-m", "name", metavar="NAME", help="Module name.")
@click.option("-i", "module_id", type=int, metavar="ID", help="Module id.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def getports_cmd(name: str | None, module_id: int | None, as_json: bool) -> None:
    """Print the ports of module NAME (or of module id ID), as computed from its id."""
    if (name is None) == (module_id is None):
        raise UserConfigError("give either -m NAME or -i ID")
    if name is not None:
        check_module_name(name)
        paths = _paths()
        module_id = load_ids(paths.module_ids).get(name)
        if module_id is None:
            raise NotFoundError(
                f"module {name!r} is not installed on this node (see `hakit module list`)"
            )
    assert module_id is not None
    result = ports(module_id)
    if as_json:
        click.echo(json.dumps(result.as_dict()))
        return
    click.echo(f"module id {result.module_id}")
    click.echo(f"heartbeat   UDP {result.heartbeat}")
    click.echo(f"replication TCP {result.replication}")
    click.echo(f"farm        UDP {result.farm}")


@click.command("config")
@_NAME
def config_cmd(name: str) -> None:
    """Check module NAME's conf/userconfig.xml and make it the module's active configuration."""
    try:
        result = configure(_paths(), name)
    except ConfigInvalid as exc:
        click.echo(exc.report.render(), err=True)
        n = len(exc.report.errors)
        raise UserConfigError(
            f"module {name} not configured: {n} error{'s' if n != 1 else ''} (listed above); "
            "nothing was changed, the previous active configuration still applies"
        ) from None
    for issue in result.report.warnings:
        click.echo(str(issue), err=True)
    _warn(result.warnings)
    p = result.effective_ports
    if result.mode == "farm":
        used = f"farm UDP {p['farm_udp']}"
    else:
        used = f"heartbeat UDP {p['heartbeat_udp']}, replication TCP {p['replication_tcp']}"
    click.echo(
        f"configured module {name} (id {result.module_id}, {result.mode}), active copy at "
        f"{result.active_dir}; ports: {used}"
    )
    click.echo(_reload_engine(name))


def _reload_engine(name: str) -> str:
    """Ask the local hakitd to (re)start the module's engine on the new active copy now.

    Without a running daemon nothing is lost: hakitd starts the engine from the active copy when
    it starts (and it notices a changed copy by itself within a few seconds).
    """
    try:
        with ApiClient() as api:
            api.post(f"modules/{name}/reload")
    except DaemonUnreachable:
        return "hakitd is not running here: the module's engine starts with it"
    except HakitError as exc:
        return f"the running hakitd will pick up the new configuration by itself ({exc})"
    return "hakitd restarted the module's engine on the new configuration"


commands: list[click.Command] = [module, config_cmd]
