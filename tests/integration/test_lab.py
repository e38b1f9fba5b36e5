"""The test lab behaves like separate servers on one switch.

Each test tells one story: what the lab is asked to do, and what a program running on the hosts
observes. Most use bare hosts (``hakitd=False``) so that they test the lab, not the daemon; the
last one runs the real hakitd on three nodes.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from hakit.errors import HakitError, LocalSystemError, UserConfigError
from hakit.lab import HostState, Lab, LabShape, LabState, procs, wait_for
from hakit.lab.lab import is_hakitd
from hakit.lab.plan import cluster_xml, compress_ranges, lab_namespaces
from hakit.lab.state import load_state, save_state

HAKIT = str(Path(sys.executable).parent / "hakit")


def ping(lab: Lab, src: str, dst_addr: str) -> bool:
    """One ping from host ``src``; True if answered within 1 s."""
    return lab.run(src, ["ping", "-c1", "-W1", "-q", dst_addr]).returncode == 0


def process_states(lab: Lab, host: str) -> set[str]:
    """States (R, S, T...) of ``host``'s processes; those exiting meanwhile are left out."""
    stats = [procs.stat(pid) for pid in lab.processes(host)]
    return {st.state for st in stats if st is not None}


def addr(lab: Lab, host: str) -> str:
    state = lab.require().host(host)
    assert state is not None
    return state.addr


def hakit_cli(
    *args: str, cwd: str = "/", lab: Lab, **kw: object
) -> subprocess.CompletedProcess[str]:
    """Run the ``hakit`` command line on the real host, with the venv first on PATH."""
    path = os.pathsep.join([str(Path(HAKIT).parent), os.environ.get("PATH", "")])
    env = dict(os.environ, HAKIT_LAB=lab.name, PATH=path)
    return subprocess.run(
        [HAKIT, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60, **kw
    )  # type: ignore[call-overload]


# ---------------------------------------------------------------------- the plan (no system calls)


def test_addresses_follow_the_documented_plan() -> None:
    shape = LabShape.parse(nodes=3, client=True, subnet="10.50.0.0/16")
    assert shape.host_names() == ["node1", "node2", "node3", "client"]
    assert [shape.address(h) for h in shape.host_names()] == [
        "10.50.0.11",
        "10.50.0.12",
        "10.50.0.13",
        "10.50.0.250",
    ]
    vips = shape.vip_candidates()
    assert (vips[0], vips[-1], len(vips)) == ("10.50.0.100", "10.50.0.199", 100)
    assert compress_ranges(["10.0.0.100", "10.0.0.101", "10.0.0.103"]) == (
        "10.0.0.100-10.0.0.101, 10.0.0.103"
    )


@pytest.mark.parametrize(
    ("nodes", "subnet", "message"),
    [
        (0, None, "--nodes 0"),
        (90, None, "--nodes 90"),
        (2, "10.1.2.0/25", "at least a /24"),
        (2, "nonsense", "not an IPv4 network"),
    ],
)
def test_bad_shapes_are_refused_with_the_option_named(
    nodes: int, subnet: str | None, message: str
) -> None:
    with pytest.raises(UserConfigError, match=message):
        LabShape.parse(nodes=nodes, client=False, subnet=subnet)


def test_hakitd_is_recognised_however_it_was_started() -> None:
    assert is_hakitd(["/venv/bin/python3", "/venv/bin/hakitd"])
    assert is_hakitd(["/venv/bin/hakitd", "--http-port", "9010"])
    assert is_hakitd(["setsid", "-f", "/venv/bin/hakitd"])
    assert is_hakitd(["python", "-m", "hakit.daemon.main"])
    assert not is_hakitd(["pgrep", "hakitd"])
    assert not is_hakitd(["tail", "-f", "/run/hakit-node/var/log/hakit/hakitd.out"])
    assert not is_hakitd(["sleep", "10"])


def test_bad_lab_names_are_refused() -> None:
    for bad in ("", "Hakit", "a-b", "x" * 17, "1lab"):
        with pytest.raises(UserConfigError, match="HAKIT_LAB"):
            Lab(bad or "-")


def test_lab_namespaces_never_match_another_labs() -> None:
    existing = ["a-sw", "a-node1", "a-client", "ab-node1", "a-nodex", "a-node1x", "b-node1"]
    assert lab_namespaces("a", existing) == ["a-sw", "a-node1", "a-client"]


def test_generated_cluster_xml_is_valid_for_hakit() -> None:
    from hakit.config.cluster import parse_cluster

    shape = LabShape.parse(nodes=3, client=True, subnet=None)
    config, report = parse_cluster(cluster_xml(shape), "lab-cluster.xml")
    assert report.ok, [str(i) for i in report.issues]
    assert config is not None
    assert config.node_names() == ["node1", "node2", "node3"]
    assert config.addrs_of("node2") == {"default": "10.213.0.12"}


def test_state_file_round_trips_and_a_damaged_one_says_how_to_recover(tmp_path: Path) -> None:
    shape = LabShape.parse(nodes=1, client=True, subnet=None, hakitd=False)
    hosts = (
        HostState("node1", "node", "10.213.0.11", "x-node1", 10, 20),
        HostState("client", "client", "10.213.0.250", "x-client", 11, 21, powered=False),
    )
    state = LabState(lab="x", shape=shape, hosts=hosts)
    path = tmp_path / "lab.json"
    save_state(path, state)
    assert load_state(path) == state
    assert load_state(tmp_path / "absent.json") is None
    path.write_text('{"version": 1, "lab": "x"}')
    with pytest.raises(LocalSystemError, match=r"lab\.json: unreadable lab state.*hakit lab down"):
        load_state(path)


def test_wait_for_returns_the_first_truthy_value_or_names_what_it_waited_for() -> None:
    now = [0.0]
    answers = iter([None, 0, "ready"])

    def sleep(seconds: float) -> None:
        now[0] += seconds

    assert wait_for(lambda: next(answers), 5, "x", clock=lambda: now[0], sleep=sleep) == "ready"
    assert now[0] == pytest.approx(0.1)
    with pytest.raises(HakitError, match=r"timed out after 1 s waiting for node3 \(last: False\)"):
        wait_for(lambda: False, 1, "node3", clock=lambda: now[0], sleep=sleep)


# ---------------------------------------------------------------------- hosts are separate servers


def test_each_node_has_its_own_srv_and_root_while_tmp_is_shared(make_lab, tmp_path: Path) -> None:
    lab = make_lab(nodes=2, hakitd=False)
    host_srv_before = sorted(os.listdir("/srv"))
    lab.run("node1", ["sh", "-c", "echo one > /srv/who"], check=True)
    lab.run("node2", ["sh", "-c", "echo two > /srv/who"], check=True)
    assert lab.run("node1", ["cat", "/srv/who"]).stdout == "one\n"
    assert lab.run("node2", ["cat", "/srv/who"]).stdout == "two\n"
    assert (lab.node_srv("node1") / "who").read_text() == "one\n"
    assert sorted(os.listdir("/srv")) == host_srv_before  # the real /srv is untouched

    shared = tmp_path / "shared"
    lab.run("node1", ["sh", "-c", f"echo from-node1 > {shared}"], check=True)
    assert shared.read_text() == "from-node1\n"
    assert lab.run("node2", ["cat", str(shared)]).stdout == "from-node1\n"

    # HAKIT_ROOT is node-private too, and holds the lab's cluster configuration and key.
    for node in ("node1", "node2"):
        out = lab.run(node, ["sh", "-c", 'ls "$HAKIT_ROOT/etc/hakit"; echo $HAKIT_NODE'])
        assert out.stdout.split() == ["cluster.key", "cluster.xml", node]
    key = lab.node_root("node1") / "etc/hakit/cluster.key"
    assert key.stat().st_mode & 0o777 == 0o600
    assert key.read_text() == (lab.node_root("node2") / "etc/hakit/cluster.key").read_text()
    assert len(bytes.fromhex(key.read_text().strip())) == 32


def test_hostname_is_the_node_name(make_lab) -> None:
    lab = make_lab(nodes=2, client=True, hakitd=False)
    for host in ("node1", "node2", "client"):
        assert lab.run(host, ["hostname"]).stdout.strip() == host
    assert os.uname().nodename not in ("node1", "node2", "client")


def test_a_node_sees_only_its_own_processes(make_lab) -> None:
    lab = make_lab(nodes=2, hakitd=False)
    sleeper = lab.popen("node1", ["sleep", "300"])
    try:
        host_pids = wait_for(lambda: lab.processes("node1"), 5, "sleep to start on node1")
        on_node1 = lab.run("node1", ["ps", "-eo", "args="]).stdout
        on_node2 = lab.run("node2", ["ps", "-eo", "args="]).stdout
        assert "sleep 300" in on_node1
        assert "sleep 300" not in on_node2
        # /proc of node2 lists its init (the anchor) and the lister itself: nothing else.
        lister = "import os; print(*sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))"
        listing = lab.run("node2", [sys.executable, "-c", lister]).stdout.split()
        assert len(listing) == 2 and listing[0] == "1"
        # `kill` inside the node works with the node's own pids.
        node_pid = lab.run("node1", ["pgrep", "-x", "sleep"]).stdout.strip()
        assert int(node_pid) < 100 and int(node_pid) not in host_pids
        assert lab.run("node1", ["kill", node_pid]).returncode == 0
        assert sleeper.wait(timeout=10) != 0
    finally:
        if sleeper.poll() is None:
            os.killpg(sleeper.pid, signal.SIGKILL)
            sleeper.wait()


# ---------------------------------------------------------------------- the network


def test_nodes_reach_each_other_but_the_host_cannot_reach_the_lab(make_lab) -> None:
    lab = make_lab(nodes=2, client=True, hakitd=False)
    assert ping(lab, "node1", addr(lab, "node2"))
    assert ping(lab, "client", addr(lab, "node1"))
    routes = subprocess.run(["ip", "-4", "route", "show"], capture_output=True, text=True).stdout
    assert "10.213.0." not in routes
    addrs = subprocess.run(["ip", "-4", "addr", "show"], capture_output=True, text=True).stdout
    assert "10.213.0." not in addrs
    host_ping = subprocess.run(
        ["ping", "-c1", "-W1", "-q", addr(lab, "node1")], capture_output=True
    )
    assert host_ping.returncode != 0


def test_link_down_cuts_both_directions_and_link_up_restores(make_lab) -> None:
    lab = make_lab(nodes=2, hakitd=False)
    a1, a2 = addr(lab, "node1"), addr(lab, "node2")
    assert ping(lab, "node1", a2)
    lab.link("node2", up=False)
    assert not ping(lab, "node1", a2)
    assert not ping(lab, "node2", a1)
    assert [h.link_up for h in lab.status().hosts] == [True, False]
    lab.link("node2", up=False)  # idempotent
    lab.link("node2", up=True)
    wait_for(lambda: ping(lab, "node1", a2), 10, "node2 to answer again after link up")
    assert ping(lab, "node2", a1)


def test_status_reports_addresses_free_for_virtual_ips(make_lab) -> None:
    lab = make_lab(nodes=2, client=True, hakitd=False)
    assert len(lab.status().vip_free) == 100
    lab.run("node1", ["ip", "addr", "add", "10.213.0.150/24", "dev", "eth0"], check=True)
    free = lab.status().vip_free
    assert "10.213.0.150" not in free and len(free) == 99
    out = hakit_cli("lab", "status", "--json", lab=lab)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["subnet"] == "10.213.0.0/24"
    assert [(h["name"], h["addr"], h["netns"]) for h in data["hosts"]] == [
        ("node1", "10.213.0.11", f"{lab.name}-node1"),
        ("node2", "10.213.0.12", f"{lab.name}-node2"),
        ("client", "10.213.0.250", f"{lab.name}-client"),
    ]


# ---------------------------------------------------------------------- faults


def test_freeze_stops_every_process_and_thaw_resumes(make_lab) -> None:
    lab = make_lab(nodes=2, hakitd=False)
    worker = lab.popen("node1", ["sh", "-c", "sleep 300 & while :; do sleep 0.05; done"])
    try:
        wait_for(lambda: len(lab.processes("node1")) >= 2, 5, "the worker loop to run")
        assert lab.freeze("node1") >= 2
        assert process_states(lab, "node1") == {"T"}
        assert [h.frozen for h in lab.status().hosts] == [True, False]
        lab.thaw("node1")
        wait_for(lambda: "T" not in process_states(lab, "node1"), 5, "node1's processes to resume")
    finally:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()


def test_kill_is_a_power_loss_and_start_a_fresh_boot(make_lab) -> None:
    lab = make_lab(nodes=2, hakitd=False)
    a1 = addr(lab, "node1")
    anchor = lab.require().host("node1").anchor_pid  # type: ignore[union-attr]
    # A process tree that keeps forking, a private mount and a virtual IP: all gone after a crash.
    forker = lab.popen("node1", ["sh", "-c", "while :; do sleep 30 & sleep 0.01; done"])
    try:
        lab.run("node1", ["mkdir", "-p", "/srv/mnt"], check=True)
        lab.run("node1", ["mount", "-t", "tmpfs", "none", "/srv/mnt"], check=True)
        lab.run("node1", ["ip", "addr", "add", "10.213.0.120/24", "dev", "eth0"], check=True)
        lab.run("node1", ["sh", "-c", "echo kept > /srv/disk"], check=True)
        wait_for(lambda: len(lab.processes("node1")) >= 4, 5, "the forking loop to run")
        assert lab.kill("node1") >= 3  # the shell and its background sleeps, at least
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(forker.pid, signal.SIGKILL)
        forker.wait(timeout=10)
    assert lab.processes("node1") == []
    assert procs.is_alive(anchor, lab.require().host("node1").anchor_start)  # type: ignore[union-attr]
    assert not ping(lab, "node2", a1)  # a powered-off server answers nothing
    assert [h.powered for h in lab.status().hosts] == [False, True]

    assert lab.start("node1") == "node1: powered on"
    assert ping(lab, "node2", a1)
    assert lab.run("node1", ["cat", "/srv/disk"]).stdout == "kept\n"  # the disk survives
    mounts = lab.run("node1", ["cat", "/proc/self/mounts"]).stdout
    assert "/srv/mnt" not in mounts  # mounts of the previous life do not
    assert "10.213.0.120" not in lab.run("node1", ["ip", "-4", "addr"]).stdout  # nor its VIPs
    assert lab.run("node1", ["hostname"]).stdout.strip() == "node1"
    assert lab.start("node1") == "node1: already running (it runs no hakitd)"


def test_start_repairs_a_host_whose_anchor_was_killed_from_outside(make_lab) -> None:
    lab = make_lab(nodes=2, hakitd=False)
    os.kill(lab.require().host("node2").anchor_pid, signal.SIGKILL)  # type: ignore[union-attr]
    wait_for(lambda: not lab.status().hosts[1].alive, 5, "node2's anchor to die")
    with pytest.raises(LocalSystemError, match="lost its anchor"):
        lab.run("node2", ["true"])
    assert lab.start("node2") == "node2: powered on"
    assert ping(lab, "node1", addr(lab, "node2"))


# ---------------------------------------------------------------------- the command line


def test_exec_passes_exit_code_cwd_stdin_and_environment(make_lab) -> None:
    lab = make_lab(nodes=2, hakitd=False)
    lab.run("node1", ["sh", "-c", "echo node1-file > /srv/f"], check=True)
    out = hakit_cli("lab", "exec", "node1", "--", "sh", "-c", "exit 7", lab=lab)
    assert out.returncode == 7
    out = hakit_cli("lab", "exec", "node1", "--", "cat", "f", cwd="/srv", lab=lab)
    assert (out.returncode, out.stdout) == (0, "node1-file\n")
    out = hakit_cli("lab", "exec", "node2", "--", "cat", "f", cwd="/srv", lab=lab)
    assert out.returncode == 1 and "No such file" in out.stderr
    out = hakit_cli("lab", "exec", "node1", "--", "tr", "a-z", "A-Z", lab=lab, input="hello\n")
    assert out.stdout == "HELLO\n"
    script = 'echo "$HAKIT_ROOT $HAKIT_NODE $HAKIT_LAB_HOST $PWD"; command -v hakit'
    out = hakit_cli("lab", "exec", "node2", "--", "sh", "-c", script, cwd="/tmp", lab=lab)
    assert out.stdout.splitlines() == ["/run/hakit-node node2 node2 /tmp", HAKIT]
    out = hakit_cli("lab", "exec", "node9", "--", "true", lab=lab)
    assert out.returncode == 3 and "no host 'node9'" in out.stderr


def test_up_is_idempotent_and_refuses_another_shape(make_lab) -> None:
    lab = make_lab(nodes=2, hakitd=False)
    again = lab.up(nodes=2, hakitd=False)
    assert not again.created
    with pytest.raises(UserConfigError, match="hakit lab down"):
        lab.up(nodes=3, hakitd=False)
    out = hakit_cli("lab", "up", "--nodes", "2", "--no-hakitd", lab=lab)
    assert out.returncode == 0 and "already up" in out.stdout
    out = hakit_cli("lab", "up", "--nodes", "2", "--client", "--no-hakitd", lab=lab)
    assert out.returncode == 2 and "run `hakit lab down` first" in out.stderr


def test_up_fails_cleanly_when_hakitd_cannot_start(lab_name: str) -> None:
    lab = Lab(lab_name, environ=dict(os.environ, HAKIT_HTTP_PORT="99999"))
    lab.down()
    with pytest.raises(LocalSystemError, match=r"hakitd on node[12] exited during startup"):
        lab.up(nodes=2)
    assert lab.load() is None
    assert _lab_traces(lab, set()) == []


def test_up_without_a_daemon_in_this_installation_fails_before_creating_anything(
    lab_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hakit.lab.lab as lab_module

    monkeypatch.setattr(lab_module.importlib.util, "find_spec", lambda name: None)
    lab = Lab(lab_name)
    lab.down()
    with pytest.raises(LocalSystemError, match="hakitd is not available"):
        lab.up(nodes=2)
    assert lab.load() is None
    assert _lab_traces(lab, set()) == []


def test_commands_on_a_missing_lab_say_what_to_do(lab_name: str) -> None:
    lab = Lab(lab_name)
    lab.down()
    with pytest.raises(HakitError, match="hakit lab up"):
        lab.kill("node1")
    out = hakit_cli("lab", "status", lab=lab)
    assert out.returncode == 3 and "hakit lab up" in out.stderr
    assert lab.down() == []


# ---------------------------------------------------------------------- teardown


def _lab_traces(lab: Lab, mnt_namespaces: set[str]) -> list[str]:
    """Everything of ``lab`` still on the machine: namespaces, mounts, processes, files."""
    traces = []
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    traces += [f"netns {ns}" for ns in lab_namespaces(lab.name, netns.split())]
    for pid in procs.all_pids():
        needles = (f"{lab.dir}/", f"/run/netns/{lab.name}-")
        traces += [f"mount in {pid}: {m}" for m in procs.mountinfo_mentions(pid, needles)]
        if procs.ns_id(pid, "mnt") in mnt_namespaces and not procs.is_zombie(pid):
            traces.append(f"process {pid} in a node's mount namespace")
        argv = procs.cmdline(pid)
        if "hakit.lab.anchor" in argv and lab.name in argv:
            traces.append(f"anchor {pid}")
    if lab.dir.exists():
        traces.append(str(lab.dir))
    return traces


def test_down_leaves_nothing_behind(make_lab) -> None:
    lab = make_lab(nodes=2, client=True, hakitd=False)
    mnt = {procs.ns_id(h.anchor_pid, "mnt") or "" for h in lab.require().hosts}
    # A node process, and a process that joined only a node's network namespace.
    insider = lab.popen("node1", ["sleep", "300"])
    outsider = subprocess.Popen(["ip", "netns", "exec", f"{lab.name}-node2", "sleep", "300"])
    assert _lab_traces(lab, mnt) != []
    removed = lab.down()
    assert removed
    assert insider.wait(timeout=10) == -signal.SIGKILL
    assert outsider.wait(timeout=10) == -signal.SIGKILL
    assert _lab_traces(lab, mnt) == []
    assert lab.down() == []  # idempotent


def test_two_labs_coexist_on_one_subnet_and_go_independently(make_lab, lab_name: str) -> None:
    first = make_lab(nodes=2, hakitd=False)
    second = Lab(f"{lab_name}b")
    try:
        second.up(nodes=1, hakitd=False)
        first.run("node2", ["sh", "-c", "echo first > /srv/id"], check=True)
        # 10.213.0.11 is node1 of each lab; each lab only reaches its own.
        assert ping(first, "node2", "10.213.0.11")
        assert ping(second, "node1", "10.213.0.11")
        assert not ping(second, "node1", "10.213.0.12")  # first's node2 is not on this switch
        first_mnt = {procs.ns_id(h.anchor_pid, "mnt") or "" for h in first.require().hosts}
        first.down()
        # The second lab's hosts hold nothing that keeps the first lab's namespaces alive.
        assert _lab_traces(first, first_mnt) == []
        assert second.run("node1", ["hostname"]).stdout.strip() == "node1"
    finally:
        second.down()


def test_down_kills_a_stray_anchor_launcher_but_nothing_else_of_the_real_host(
    make_lab, lab_name: str
) -> None:
    make_lab(nodes=1, hakitd=False)
    # A launcher caught before it unshared: it runs in the real host's namespaces.
    code = "import time; time.sleep(120)"
    launcher = subprocess.Popen([sys.executable, "-c", code, "hakit.lab.anchor", "--lab", lab_name])
    bystander = subprocess.Popen(["sleep", "120"])
    try:
        Lab(lab_name).down()
        assert launcher.wait(timeout=10) == -signal.SIGKILL
        assert bystander.poll() is None
    finally:
        for proc in (launcher, bystander):
            proc.kill()
            proc.wait()


def test_down_removes_the_leftovers_of_a_crashed_run(make_lab) -> None:
    lab = make_lab(nodes=2, hakitd=False)
    mnt = {procs.ns_id(h.anchor_pid, "mnt") or "" for h in lab.require().hosts}
    lab.state_file.unlink()  # as if `lab up` had died before writing its state
    with pytest.raises(LocalSystemError, match=r"leftovers.*hakit lab down"):
        lab.up(nodes=2, hakitd=False)
    out = hakit_cli("lab", "down", lab=lab)
    assert out.returncode == 0 and "namespaces" in out.stdout
    assert _lab_traces(lab, mnt) == []


# ---------------------------------------------------------------------- with the real hakitd


def cluster_view(lab: Lab, host: str) -> dict[str, bool]:
    """Node name -> reachable, as ``hakit cluster state`` on ``host`` reports it ({} if no answer)."""
    out = lab.run(host, [HAKIT, "cluster", "state", "--json"], timeout=10)
    if out.returncode != 0:
        return {}
    return {n["name"]: bool(n["reachable"]) for n in json.loads(out.stdout)["nodes"]}


def test_hakitd_nodes_see_a_killed_node_go_within_5s_and_come_back(make_lab) -> None:
    lab = make_lab(nodes=3)
    assert all(h.hakitd_pid for h in lab.status().hosts)
    out = hakit_cli("lab", "exec", "node1", "--", HAKIT, "cluster", "state", lab=lab)
    assert out.returncode == 0, out.stderr
    assert "node2" in out.stdout and "node3" in out.stdout
    wait_for(
        lambda: cluster_view(lab, "node1") == {"node1": True, "node2": True, "node3": True},
        10,
        "node1 to see node2 and node3 reachable",
    )

    lab.kill("node3")
    wait_for(
        lambda: cluster_view(lab, "node1").get("node3") is False,
        5,  # the issue's acceptance criterion
        "node1 to see node3 unreachable after its power loss",
    )
    assert cluster_view(lab, "node1")["node2"] is True

    assert lab.start("node3") == "node3: powered on, hakitd started"
    wait_for(
        lambda: cluster_view(lab, "node1").get("node3") is True,
        10,
        "node1 to see node3 again after power on",
    )
    assert lab.start("node3") == "node3: hakitd already running"
