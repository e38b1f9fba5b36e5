"""The real SafeKit files of ../shared/compat: each loads, or is refused with precise reasons.

The files are vendor files used as test input only (read at run time, never copied).
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from hakit.cli.cmd_config import check_file
from hakit.config.cluster import load_cluster, parse_cluster
from hakit.config.userconfig import load_userconfig, parse_userconfig

REPO_ROOT = Path(__file__).resolve().parents[3]
COMPAT = REPO_ROOT.parent / "shared" / "compat"

pytestmark = pytest.mark.skipif(
    not COMPAT.is_dir(), reason=f"SafeKit compatibility corpus not found at {COMPAT}"
)


def corpus(pattern: str) -> list[Path]:
    return sorted(COMPAT.glob(pattern)) if COMPAT.is_dir() else []


# The generic (application-independent) Linux-capable files of the corpus.
GENERIC_LINUX = [
    "evidian_web_pages__farm.safe_linux_userconfig.xml",
    "aws_quickstart__userconfig-farm.xml",
    "aws_quickstart__userconfig-mirror-Linux.xml",
]
LINUX_FILES = (
    corpus("linux__*_userconfig.xml")
    + corpus("linux__*_userconfig.xml.template")
    + [COMPAT / name for name in GENERIC_LINUX]
)


def test_the_corpus_is_complete() -> None:
    assert len(corpus("*")) >= 60
    assert len(corpus("linux__*_userconfig.xml")) == 7
    assert len(corpus("*cluster.xml")) == 8


@pytest.mark.parametrize("path", corpus("*"), ids=lambda p: p.name)
def test_every_file_is_checked_without_exception(path: Path) -> None:
    report = check_file(path)
    for issue in report.issues:
        assert issue.message
        if path.suffix != ".md":
            assert issue.line is not None, str(issue)
        assert str(issue).startswith(str(path))


@pytest.mark.parametrize("path", corpus("*cluster.xml"), ids=lambda p: p.name)
def test_cluster_files_parse(path: Path) -> None:
    config, report = load_cluster(path)
    assert config is not None, report.render()
    assert len(config.node_names()) >= 2


@pytest.mark.parametrize("with_cluster", [False, True])
@pytest.mark.parametrize("path", LINUX_FILES, ids=lambda p: p.name)
def test_linux_files_load_or_only_miss_template_values(path: Path, with_cluster: bool) -> None:
    cluster = None
    if with_cluster:
        cluster, _ = load_cluster(COMPAT / "users_guide_82_examples__07_sec15.1.1_cluster.xml")
        assert cluster is not None
    config, report = load_userconfig(path, cluster, environ={})
    unexpected = [str(i) for i in report.errors if i.code != "template-placeholder"]
    assert unexpected == []
    assert (config is not None) == report.ok
    for issue in report.errors:
        assert "template" in issue.message


def test_placeholders_of_a_filled_in_linux_file_are_the_only_problem() -> None:
    path = COMPAT / "linux__postgresql_userconfig.xml"
    text = path.read_text().replace('addr=""', 'addr="10.0.0.100"')
    config, report = parse_userconfig(text, path.name, environ={})
    assert config is not None, report.render()
    assert config.rfs is not None and config.rfs.replicated[0].dir == "/var/lib/pgsql/data"
    assert config.errd is not None and config.errd.procs[0].service is True


@pytest.mark.parametrize("path", corpus("windows__*_userconfig.xml"), ids=lambda p: p.name)
def test_windows_files_are_never_silently_accepted(path: Path) -> None:
    _, report = load_userconfig(path, environ={})
    assert report.issues, "a Windows module must at least produce warnings on Linux"


def test_mangled_real_files_never_raise() -> None:
    """Seeded mutations of the corpus (values replaced, bytes cut, modes swapped, junk added)."""
    rng = random.Random(20261122)
    files = [p.read_bytes() for p in corpus("*.xml*")]
    cluster, _ = load_cluster(COMPAT / "users_guide_82_examples__07_sec15.1.1_cluster.xml")
    values = [
        b'""',
        b'"0"',
        b'"-1"',
        b'"%X%"',
        b'"*"',
        b'"1us"',
        b'"/"',
        b'"\xc3\xa9"',
        b'"99999999999999999999"',
        b'"0x10"',
    ]
    junk = [b"<x/>", b"<check/>", b"<rfs/>", b"<![CDATA[a: if (x.y == up) then stop();]]>"]
    for _ in range(400):
        data = bytearray(rng.choice(files))
        for _ in range(rng.randint(1, 4)):
            operation = rng.random()
            if operation < 0.4:
                starts = [i + 1 for i in range(len(data)) if data[i : i + 2] == b'="']
                start = rng.choice(starts) if starts else 0
                end = data.find(b'"', start + 1) if starts else -1
                if end > 0:
                    data[start : end + 1] = rng.choice(values)
            elif operation < 0.6:
                cut = rng.randrange(len(data))
                del data[cut : cut + rng.randint(1, 10)]
            elif operation < 0.8:
                data = data.replace(b'mode="mirror"', b'mode="farm"')
            else:
                at = rng.randrange(len(data))
                data[at:at] = rng.choice(junk)
        parse_userconfig(bytes(data), "mangled.xml", cluster if rng.random() < 0.5 else None, {})
        parse_cluster(bytes(data), "mangled.xml")
