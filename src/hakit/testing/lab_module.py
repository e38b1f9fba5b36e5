"""The mirror module used by lab tests and benchmarks: a heartbeat, a VIP, optional replication.

One template for every lab scenario (tests/integration, bench/) so they exercise the same
configuration: ``mirror_userconfig(vip=..., rfs=...)`` gives the ``userconfig.xml`` text and
``write_safe(out, userconfig, scripts)`` packs it with its ``bin/`` scripts as a ``.safe``.
"""

from __future__ import annotations

import zipfile
from collections.abc import Mapping
from pathlib import Path

USERCONFIG = """<!DOCTYPE safe>
<safe>
  <service mode="mirror" failover="{failover}" defaultprim="{defaultprim}">
    <heart pulse="{pulse}" timeout="{timeout}">
      <heartbeat name="default"/>
    </heart>
    <vip>
      <interface_list>
        <interface check="on">
          <real_interface>
            <virtual_addr addr="{vip}" where="one_side_alias"/>
          </real_interface>
        </interface>
      </interface_list>
    </vip>
    <user nicestoptimeout="10s" forcestoptimeout="10s"/>
    {rfs}
  </service>
</safe>
"""


def mirror_userconfig(
    *,
    vip: str,
    pulse: str = "200ms",
    timeout: str = "2s",
    failover: str = "on",
    defaultprim: str = "alone",
    rfs: str = "",
) -> str:
    """The module's ``userconfig.xml`` (``rfs``: an ``<rfs>`` element, or nothing)."""
    return USERCONFIG.format(
        vip=vip, pulse=pulse, timeout=timeout, failover=failover, defaultprim=defaultprim, rfs=rfs
    )


def replicated(directory: str, attrs: str = "") -> str:
    """An ``<rfs>`` element replicating ``directory`` (``attrs``: e.g. ``' async="none"'``)."""
    return f'<rfs{attrs}><replicated dir="{directory}"/></rfs>'


def write_safe(out: Path, userconfig: str, scripts: Mapping[str, str] | None = None) -> Path:
    """Write the ``.safe`` archive (configuration + executable ``bin/`` scripts) at ``out``."""
    with zipfile.ZipFile(out, "w") as z:
        z.writestr("conf/userconfig.xml", userconfig)
        for name, text in (scripts or {}).items():
            info = zipfile.ZipInfo(f"bin/{name}")
            info.external_attr = 0o100755 << 16
            z.writestr(info, text)
    return out
