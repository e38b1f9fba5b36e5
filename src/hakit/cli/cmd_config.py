"""``hakit confcheck``: check a userconfig.xml or cluster.xml and print every issue.

Accepted inputs: a ``userconfig.xml`` (SafeKit or hakit), a ``cluster.xml`` (recognised by its
``<cluster>`` root), a module directory (its ``conf/userconfig.xml``) or a ``.safe`` archive.
Exit status: 0 when there is no error (warnings allowed), 2 otherwise.
"""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import click

from hakit.config.cluster import ClusterConfig, load_cluster, parse_cluster
from hakit.config.report import ConfigReport
from hakit.config.userconfig import parse_userconfig
from hakit.errors import UserConfigError

_MODULE_CONF = "conf/userconfig.xml"
_CLUSTER_ROOT = re.compile(
    rb"^(\xef\xbb\xbf)?\s*(<\?xml[^>]*\?>\s*)?(<!--.*?-->\s*|<!DOCTYPE[^>]*>\s*)*<cluster\b",
    re.DOTALL,
)


def _read_input(path: Path) -> tuple[bytes | None, str, ConfigReport | None]:
    """The bytes to check and the name to show; a report when the input cannot be read."""
    try:
        if path.is_dir():
            conf = path / _MODULE_CONF
            return conf.read_bytes(), str(conf), None
        if zipfile.is_zipfile(path):
            name = f"{path}!{_MODULE_CONF}"
            with zipfile.ZipFile(path) as archive:
                try:
                    return archive.read(_MODULE_CONF), name, None
                except KeyError:
                    report = ConfigReport(file=str(path))
                    report.add_error(
                        f"the archive has no {_MODULE_CONF}",
                        hint="a .safe module holds conf/userconfig.xml and bin/",
                        code="unreadable",
                    )
                    return None, str(path), report
        return path.read_bytes(), str(path), None
    except (OSError, zipfile.BadZipFile) as exc:
        report = ConfigReport(file=str(path))
        report.add_error(
            f"cannot read the file: {exc}",
            hint="check the path and the permissions",
            code="unreadable",
        )
        return None, str(path), report


def check_file(path: Path, cluster_path: Path | None = None) -> ConfigReport:
    """Every issue of ``path`` (and of ``cluster_path`` when given), in one report."""
    report = ConfigReport(file=str(path))
    cluster: ClusterConfig | None = None
    if cluster_path is not None:
        cluster, cluster_report = load_cluster(cluster_path)
        report.extend(cluster_report)
        if cluster is None:
            report.add_warning(
                "cluster.xml has errors: the checks against it are skipped",
                file=str(cluster_path),
                code="cluster-skipped",
            )
    data, name, failure = _read_input(path)
    if failure is not None or data is None:
        report.extend(failure or ConfigReport())
        return report
    report.file = name
    if _CLUSTER_ROOT.match(data):
        _, file_report = parse_cluster(data, name)
    else:
        _, file_report = parse_userconfig(data, name, cluster)
    report.extend(file_report)
    return report


@click.command("confcheck")
@click.argument("file", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--cluster",
    "cluster_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="cluster.xml to check lan and node names against",
)
@click.option("--json", "as_json", is_flag=True, help="print the issues as JSON")
def confcheck(file: Path, cluster_path: Path | None, as_json: bool) -> None:
    """Check FILE (userconfig.xml, cluster.xml, module directory or .safe) and print every issue.

    Exits 0 when there is no error (warnings allowed), 2 otherwise.
    """
    report = check_file(file, cluster_path)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        click.echo(report.render())
    if not report.ok:
        # SystemExit rather than ctx.exit(): hakit's main() runs click with
        # standalone_mode=False, where click turns ctx.exit() into a return value it drops.
        raise SystemExit(UserConfigError.exit_code)


commands: list[click.Command] = [confcheck]
