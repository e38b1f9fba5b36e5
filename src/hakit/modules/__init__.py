"""Application modules on one node: ``.safe`` packages, ids and ports, activation.

Public surface (the CLI, the REST API and the console call these):

* :func:`install`, :func:`uninstall`, :func:`list_modules`, :func:`package` (:mod:`.store`);
* :func:`configure` (:mod:`.activate`): ``hakit config -m NAME``;
* :func:`ports` (:mod:`.ids`): the ports derived from a module id;
* :func:`template_archive`, :func:`write_template` (:mod:`.templates`): built-in ``mirror`` and
  ``farm`` modules;
* :func:`running_reason` (:mod:`.runstate`): the engine's answer to "is it running?";
* :func:`inspect_safe` (:mod:`.archive`): check an archive without installing it.

See ``docs/modules.md`` for the layout on disk and the rules.
"""

from __future__ import annotations

from hakit.modules.activate import ConfigureResult, configure
from hakit.modules.archive import ArchiveError, inspect_safe
from hakit.modules.ids import ModulePorts, check_module_name, ports
from hakit.modules.runstate import running_reason
from hakit.modules.store import (
    InstallResult,
    ModuleInfo,
    PackageResult,
    UninstallResult,
    install,
    lastconfig_dir,
    list_modules,
    package,
    uninstall,
)
from hakit.modules.templates import TEMPLATE_KINDS, template_archive, write_template

__all__ = [
    "TEMPLATE_KINDS",
    "ArchiveError",
    "ConfigureResult",
    "InstallResult",
    "ModuleInfo",
    "ModulePorts",
    "PackageResult",
    "UninstallResult",
    "check_module_name",
    "configure",
    "inspect_safe",
    "install",
    "lastconfig_dir",
    "list_modules",
    "package",
    "ports",
    "running_reason",
    "template_archive",
    "uninstall",
    "write_template",
]
