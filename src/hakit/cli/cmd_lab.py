"""``hakit lab ...``: the test lab (nodes and a client as namespaces on this machine).

Every command acts on the lab named by ``HAKIT_LAB`` (default ``hakit``), is idempotent and needs
root. See docs/lab.md.
"""

from __future__ import annotations

import json

import click

from hakit.lab import Lab, LabStatus
from hakit.lab.plan import DEFAULT_SUBNET, compress_ranges


@click.group("lab")
def lab_group() -> None:
    """Test lab: cluster nodes as namespaces on this machine (HAKIT_LAB names it)."""


@lab_group.command("up")
@click.option("--nodes", type=int, default=2, show_default=True, help="Number of nodes.")
@click.option("--client", is_flag=True, help="Also create a host `client` (no hakitd).")
@click.option("--subnet", help=f"Lab subnet, at least a /24 (default {DEFAULT_SUBNET}).")
@click.option("--no-hakitd", is_flag=True, help="Bare hosts: do not start hakitd on the nodes.")
def up_cmd(nodes: int, client: bool, subnet: str | None, no_hakitd: bool) -> None:
    """Create hosts node1..nodeN, write their cluster.xml and key, start hakitd on each node."""
    lab = Lab()
    result = lab.up(nodes=nodes, client=client, subnet=subnet, hakitd=not no_hakitd)
    shape = result.state.shape.describe()
    if result.created:
        click.echo(f"lab {lab.name} is up: {shape}")
    else:
        click.echo(f"lab {lab.name} is already up with {shape}: nothing to do")
    _print_status(lab.status())


@lab_group.command("status")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status_cmd(as_json: bool) -> None:
    """Show the subnet, each host and its hakitd, and the addresses free for virtual IPs."""
    status = Lab().status()
    if as_json:
        click.echo(json.dumps(status.to_dict(), indent=2))
    else:
        _print_status(status)


@lab_group.command(
    "exec", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False}
)
@click.argument("host")
@click.argument("argv", nargs=-1, type=click.UNPROCESSED)
def exec_cmd(host: str, argv: tuple[str, ...]) -> None:
    """Run a command on HOST (a shell if none): hakit commands there act on that node.

    Example: hakit lab exec node1 -- hakit cluster state
    """
    args = list(argv)
    if args[:1] == ["--"]:  # click keeps the separator when options are not interspersed
        args = args[1:]
    Lab().exec(host, args)


@lab_group.command("kill")
@click.argument("host")
def kill_cmd(host: str) -> None:
    """Power loss of HOST: SIGKILL all its processes and cut its NIC (`lab start` powers on)."""
    killed = Lab().kill(host)
    click.echo(f"{host}: powered off ({killed} processes killed)")


@lab_group.command("freeze")
@click.argument("host")
def freeze_cmd(host: str) -> None:
    """SIGSTOP every process of HOST (a hung server: its kernel still answers)."""
    count = Lab().freeze(host)
    click.echo(f"{host}: frozen ({count} processes stopped)")


@lab_group.command("thaw")
@click.argument("host")
def thaw_cmd(host: str) -> None:
    """SIGCONT every process of HOST."""
    count = Lab().thaw(host)
    click.echo(f"{host}: thawed ({count} processes resumed)")


@lab_group.command("link")
@click.argument("host")
@click.argument("state", type=click.Choice(["down", "up"]))
def link_cmd(host: str, state: str) -> None:
    """Pull (down) or plug (up) HOST's network cable at the switch."""
    Lab().link(host, up=state == "up")
    click.echo(f"{host}: link {state}")


@lab_group.command("start")
@click.argument("host")
def start_cmd(host: str) -> None:
    """Power HOST on after a kill, or start its hakitd if it does not run."""
    click.echo(Lab().start(host))


@lab_group.command("down")
def down_cmd() -> None:
    """Remove the lab: processes, namespaces, mounts, bridge, files (also a crashed run's)."""
    lab = Lab()
    removed = lab.down()
    if removed:
        click.echo(f"lab {lab.name} removed: " + "; ".join(removed))
    else:
        click.echo(f"no lab {lab.name}: nothing to remove")


def _print_status(status: LabStatus) -> None:
    click.echo(f"lab {status.lab}: subnet {status.subnet}, files in {status.state_dir}")
    rows = [("HOST", "ADDRESS", "NAMESPACE", "STATE", "LINK", "PROCS", "HAKITD")]
    for h in status.hosts:
        if not h.alive:
            state = "broken"
        elif not h.powered:
            state = "off"
        elif h.frozen:
            state = "frozen"
        else:
            state = "on"
        if h.role != "node" or not status.hakitd:
            hakitd = "-"
        else:
            hakitd = f"running (pid {h.hakitd_pid})" if h.hakitd_pid else "not running"
        link = "up" if h.link_up else "down"
        rows.append((h.name, h.addr, h.netns, state, link, str(h.processes), hakitd))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    click.echo(f"free for virtual IPs: {compress_ranges(list(status.vip_free))}")


commands: list[click.Command] = [lab_group]
