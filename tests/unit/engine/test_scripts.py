"""Script runner: real bash scripts in a temporary node root; the fake runner's contract."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from hakit.config.model import User, Var
from hakit.engine.scripts import (
    InstallDirs,
    ModuleDirs,
    ScriptRequest,
    ScriptResult,
    ScriptStatus,
    SubprocessScriptRunner,
    UserLogging,
    latest_userlog,
    list_userlogs,
    live_group_members,
    script_environment,
    trim_userlogs,
    userlog_name,
)
from hakit.errors import UserConfigError
from hakit.paths import NodePaths
from hakit.testing.fake_scripts import FakeScriptRunner, Outcome

MODULE = "mirror"
WHEN = datetime(2021, 8, 6, 8, 40, 20)


@pytest.fixture
def paths(tmp_path: Path) -> NodePaths:
    paths = NodePaths(tmp_path / "root")
    ModuleDirs.of(paths, MODULE).userbin.mkdir(parents=True)
    return paths


@pytest.fixture
def install(tmp_path: Path) -> InstallDirs:
    return InstallDirs(prefix=tmp_path / "prefix", bin=tmp_path / "prefix" / "bin")


@pytest.fixture
def runner(paths: NodePaths, install: InstallDirs) -> SubprocessScriptRunner:
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "FROM_DAEMON": "yes"}
    return SubprocessScriptRunner(
        paths, grace=0.5, install=install, base_env=base, wall=lambda: WHEN
    )


@pytest.fixture(autouse=True)
def no_stray_processes() -> Iterator[list[int]]:
    """Groups a test deliberately leaves running; killed at the end whatever the outcome."""
    groups: list[int] = []
    yield groups
    for pgid in groups:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)


def write_script(paths: NodePaths, name: str, body: str, mode: int = 0o755) -> Path:
    path = ModuleDirs.of(paths, MODULE).userbin / name
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(mode)
    return path


def uservar(paths: NodePaths) -> Path:
    return ModuleDirs.of(paths, MODULE).uservar


def run(runner: SubprocessScriptRunner, request: ScriptRequest) -> ScriptResult:
    return asyncio.run(runner.run(request))


def alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie (an init that never reaps keeps zombies)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except FileNotFoundError:
        return False
    return stat[stat.rfind(b")") + 2 :].split()[0] not in (b"Z", b"X")


# --- arguments, environment, output ---------------------------------------------------------------


def test_arguments_in_order_force_first_and_log_named_per_safekit(
    paths: NodePaths, runner: SubprocessScriptRunner
) -> None:
    write_script(paths, "stop_prim", 'echo "argc=$# args=$*"\necho "to stderr" >&2\n')
    graceful = ScriptRequest.transition(MODULE, "stop_prim", "ALONE", "WAIT", "stop", timeout=5)
    first = run(runner, graceful)
    second = run(runner, graceful.forced(timeout=5))

    assert graceful.args == ("ALONE", "WAIT", "stop")
    assert second.request.args == ("force", "ALONE", "WAIT", "stop")
    assert first.status is second.status is ScriptStatus.OK
    expected = uservar(paths) / "userlog_2021_08_06T084020_stop_prim.ulog"
    assert first.log_path == second.log_path == expected
    lines = expected.read_text().splitlines()
    # Both runs fell in the same second: one file, each run framed by hakit's own lines.
    assert lines == [
        "[hakit] 2021-08-06 08:40:20 stop_prim ALONE WAIT stop",
        "argc=3 args=ALONE WAIT stop",
        "to stderr",
        f"[hakit] {first.describe()}",
        "[hakit] 2021-08-06 08:40:20 stop_prim force ALONE WAIT stop",
        "argc=4 args=force ALONE WAIT stop",
        "to stderr",
        f"[hakit] {second.describe()}",
    ]
    assert latest_userlog(uservar(paths), "stop_prim") == expected
    assert [log.script for log in list_userlogs(uservar(paths))] == ["stop_prim"]


def test_environment_has_safekit_variables_vars_and_base_env(
    paths: NodePaths, runner: SubprocessScriptRunner, install: InstallDirs
) -> None:
    write_script(paths, "start_prim", "pwd\nenv\n")
    user = User(vars=(Var("SERVICES", "postgresql nginx"), Var("PGDATA", "/srv/pg data")))
    request = ScriptRequest.transition(MODULE, "start_prim", "WAIT", "ALONE", "start", user=user)
    result = run(runner, request)

    assert result.ok and result.log_path is not None
    lines = result.log_path.read_text().splitlines()
    env = dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith("["))
    dirs = ModuleDirs.of(paths, MODULE)
    assert lines[1] == str(dirs.uservar)  # working directory
    assert env["SAFE"] == str(install.prefix)
    assert env["SAFEBIN"] == str(install.bin)
    assert env["SAFEMODULE"] == MODULE
    assert env["SAFEUSERBIN"] == str(paths.root / "var/lib/hakit/active/mirror/bin")
    assert env["SAFEUSERCONF"] == str(paths.root / "var/lib/hakit/active/mirror/conf")
    assert env["SAFEVAR"] == str(paths.root / "var/lib/hakit")
    assert env["SAFEUSERVAR"] == str(paths.root / "var/lib/hakit/state/mirror")
    assert env["HAKIT_ROOT"] == str(paths.root)
    assert env["SERVICES"] == "postgresql nginx"
    assert env["PGDATA"] == "/srv/pg data"
    assert env["FROM_DAEMON"] == "yes"
    assert env["PATH"] == os.environ.get("PATH", "/usr/bin:/bin")


def test_variables_cannot_shadow_hakit_ones_and_must_be_valid_names(
    paths: NodePaths, install: InstallDirs
) -> None:
    for name in ("SAFEMODULE", "1ABC", "A-B", ""):
        request = ScriptRequest(MODULE, "start_prim", env={name: "x"})
        with pytest.raises(UserConfigError, match=f"<var name={name!r}>"):
            script_environment(request, paths, install, {})
    nul = ScriptRequest(MODULE, "start_prim", env={"A": "x\0y"})
    with pytest.raises(UserConfigError, match="NUL"):
        script_environment(nul, paths, install, {})
    # A daemon started without PATH still gives scripts a usable one.
    env = script_environment(ScriptRequest(MODULE, "start_prim"), paths, install, {})
    assert "/usr/bin" in env["PATH"].split(":")


def test_script_names_must_stay_in_the_bin_directory() -> None:
    for name in ("../x", "/bin/sh", "..", ".hidden", "a b", ""):
        with pytest.raises(UserConfigError, match="plain file name"):
            ScriptRequest(MODULE, name)


def test_exit_codes_and_signals(paths: NodePaths, runner: SubprocessScriptRunner) -> None:
    write_script(paths, "start_prim", "exit 0\n")
    write_script(paths, "start_both", "exit 3\n")
    write_script(paths, "transition", "kill -KILL $$\n")

    ok = run(runner, ScriptRequest(MODULE, "start_prim"))
    failed = run(runner, ScriptRequest(MODULE, "start_both", ("WAIT", "ALONE", "start")))
    killed = run(runner, ScriptRequest(MODULE, "transition"))

    assert (ok.status, ok.exit_code, ok.signal) == (ScriptStatus.OK, 0, None)
    assert (failed.status, failed.exit_code, failed.signal) == (ScriptStatus.FAILED, 3, None)
    assert failed.describe().startswith("Script start_both WAIT ALONE start: exit code 3 after")
    assert (killed.status, killed.exit_code, killed.signal) == (ScriptStatus.FAILED, None, 9)
    assert "killed by SIGKILL" in killed.describe()
    assert not ok.timed_out and ok.pid is not None and ok.duration >= 0


def test_logging_none_writes_no_file(paths: NodePaths, runner: SubprocessScriptRunner) -> None:
    write_script(paths, "start_prim", "echo secret\n")
    request = ScriptRequest(MODULE, "start_prim", logging=UserLogging.NONE)
    result = run(runner, request)
    assert result.ok and result.log_path is None
    assert list(uservar(paths).iterdir()) == []


def test_a_log_that_cannot_be_opened_does_not_stop_the_script(
    paths: NodePaths, runner: SubprocessScriptRunner, caplog: pytest.LogCaptureFixture
) -> None:
    write_script(paths, "start_prim", 'touch "$SAFEUSERVAR/ran"\n')
    (uservar(paths) / userlog_name("start_prim", WHEN)).mkdir(parents=True)  # in the way
    result = run(runner, ScriptRequest(MODULE, "start_prim"))
    assert result.ok and result.log_path is None
    assert (uservar(paths) / "ran").exists()
    assert "cannot open the log" in caplog.text and "output discarded" in caplog.text


def test_latest_log_follows_the_newest_run(paths: NodePaths, install: InstallDirs) -> None:
    write_script(paths, "start_prim", "echo run\n")
    times = iter([datetime(2021, 8, 6, 8, 40, 20), datetime(2021, 8, 6, 9, 0, 1)])
    runner = SubprocessScriptRunner(paths, install=install, wall=lambda: next(times))
    first = run(runner, ScriptRequest(MODULE, "start_prim"))
    second = run(runner, ScriptRequest(MODULE, "start_prim"))
    assert first.log_path is not None and second.log_path is not None
    assert second.log_path.name == "userlog_2021_08_06T090001_start_prim.ulog"
    assert latest_userlog(uservar(paths), "start_prim") == second.log_path
    assert (uservar(paths) / "last_start_prim.ulog").is_symlink()
    assert [log.path for log in list_userlogs(uservar(paths), "start_prim")] == [
        first.log_path,
        second.log_path,
    ]
    assert latest_userlog(uservar(paths), "stop_prim") is None


# --- scripts that cannot run ----------------------------------------------------------------------


def test_absent_script_is_reported_not_run(
    paths: NodePaths, runner: SubprocessScriptRunner
) -> None:
    result = run(runner, ScriptRequest(MODULE, "start_second", ("WAIT", "SECOND", "start")))
    assert result.status is ScriptStatus.ABSENT
    assert result.pid is None and result.log_path is None
    assert result.describe() == "Script start_second WAIT SECOND start: absent, skipped"
    assert not uservar(paths).exists() or list(uservar(paths).iterdir()) == []


def test_unrunnable_scripts_give_clear_errors(
    paths: NodePaths, runner: SubprocessScriptRunner
) -> None:
    write_script(paths, "start_prim", "exit 0\n", mode=0o644)
    (ModuleDirs.of(paths, MODULE).userbin / "start_both").mkdir()
    (ModuleDirs.of(paths, MODULE).userbin / "start_sec").symlink_to("nowhere")
    bad_interpreter = write_script(paths, "transition", "")
    bad_interpreter.write_text("#!/nonexistent/interpreter\necho hi\n")

    not_exec = run(runner, ScriptRequest(MODULE, "start_prim"))
    directory = run(runner, ScriptRequest(MODULE, "start_both"))
    dangling = run(runner, ScriptRequest(MODULE, "start_sec"))
    no_interp = run(runner, ScriptRequest(MODULE, "transition"))

    assert not_exec.status is ScriptStatus.NOT_EXECUTABLE
    assert not_exec.error is not None and "chmod +x" in not_exec.error
    assert "start_prim" in not_exec.describe()
    assert directory.status is ScriptStatus.NOT_EXECUTABLE
    assert directory.error is not None and "not a regular file" in directory.error
    assert dangling.status is ScriptStatus.NOT_EXECUTABLE
    assert dangling.error is not None and "does not exist" in dangling.error
    assert no_interp.status is ScriptStatus.START_FAILED
    assert no_interp.error is not None and "#!" in no_interp.error
    assert no_interp.log_path is not None
    assert no_interp.error in no_interp.log_path.read_text()


# --- timeouts, cancellation, process groups -------------------------------------------------------

SPAWNER = """
sleep 1000 &
echo $! > "$SAFEUSERVAR/child.pid"
bash -c 'sleep 1000' &
wait
"""


def test_timeout_kills_the_whole_process_group(
    paths: NodePaths, runner: SubprocessScriptRunner
) -> None:
    write_script(paths, "stop_prim", SPAWNER)
    request = ScriptRequest.transition(MODULE, "stop_prim", "ALONE", "WAIT", "stop", timeout=0.5)
    result = run(runner, request)

    assert result.status is ScriptStatus.TIMED_OUT and result.timed_out
    assert result.pid is not None and result.signal == signal.SIGTERM
    assert live_group_members(result.pid) == []
    child = int((uservar(paths) / "child.pid").read_text())
    assert not alive(child)
    assert result.log_path is not None
    assert result.log_path.read_text().splitlines()[-1] == (
        f"[hakit] Script stop_prim ALONE WAIT stop: timed out after 0.5 s, "
        f"process group {result.pid} killed"
    )


def test_script_ignoring_sigterm_gets_sigkill(
    paths: NodePaths, runner: SubprocessScriptRunner
) -> None:
    # Ignored signals are inherited: the children ignore SIGTERM too.
    write_script(paths, "stop_prim", "trap '' TERM\n" + SPAWNER)
    result = run(runner, ScriptRequest(MODULE, "stop_prim", timeout=0.3))
    assert result.status is ScriptStatus.TIMED_OUT
    assert result.pid is not None and result.signal == signal.SIGKILL
    assert live_group_members(result.pid) == []
    assert not alive(int((uservar(paths) / "child.pid").read_text()))


def test_cancellation_kills_the_group(paths: NodePaths, runner: SubprocessScriptRunner) -> None:
    write_script(paths, "start_prim", SPAWNER)
    pid_file = uservar(paths) / "child.pid"

    async def scenario() -> None:
        task = asyncio.create_task(runner.run(ScriptRequest(MODULE, "start_prim")))
        while not pid_file.exists() or not pid_file.read_text().strip():
            await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert not alive(int(pid_file.read_text()))
    log = uservar(paths) / userlog_name("start_prim", WHEN)
    footer = log.read_text().splitlines()[-1]
    assert footer.startswith("[hakit] cancelled, process group ")
    assert live_group_members(int(footer.split()[-2])) == []


def test_normal_exit_leaves_the_started_daemon_running(
    paths: NodePaths, runner: SubprocessScriptRunner, no_stray_processes: list[int]
) -> None:
    # start_prim starts the application and exits 0: the application must survive it.
    write_script(paths, "start_prim", 'sleep 1000 &\necho $! > "$SAFEUSERVAR/daemon.pid"\n')
    result = run(runner, ScriptRequest(MODULE, "start_prim"))
    assert result.pid is not None
    no_stray_processes.append(result.pid)
    assert result.ok
    daemon = int((uservar(paths) / "daemon.pid").read_text())
    assert alive(daemon)
    assert live_group_members(result.pid) == [daemon]


# --- userlog trimming -----------------------------------------------------------------------------


def make_log(directory: Path, script: str, when: datetime, content: bytes) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / userlog_name(script, when)
    path.write_bytes(content)
    return path


def test_trim_removes_oldest_logs_first(tmp_path: Path) -> None:
    old = make_log(tmp_path, "start_prim", datetime(2021, 1, 1), b"a" * 1024)
    mid = make_log(tmp_path, "stop_prim", datetime(2021, 1, 2), b"b" * 1024)
    new = make_log(tmp_path, "start_prim", datetime(2021, 1, 3), b"c" * 1024)
    (tmp_path / "last_start_prim.ulog").symlink_to(new.name)
    (tmp_path / "last_stop_prim.ulog").symlink_to(mid.name)
    (tmp_path / "module.db").write_bytes(b"x" * 10_000)  # not a userlog: never touched

    report = trim_userlogs(tmp_path, limit_kb=2)

    assert report.removed == (old,)
    assert report.truncated == ()
    assert (report.bytes_before, report.bytes_after) == (3072, 2048)
    assert not old.exists() and mid.exists() and new.exists()
    assert (tmp_path / "module.db").stat().st_size == 10_000
    assert latest_userlog(tmp_path, "start_prim") == new


def test_trim_keeps_the_tail_of_the_newest_log_from_a_line_start(tmp_path: Path) -> None:
    old = make_log(tmp_path, "stop_prim", datetime(2021, 1, 1), b"old\n")
    (tmp_path / "last_stop_prim.ulog").symlink_to(old.name)
    lines = b"".join(b"line %04d\n" % i for i in range(300))  # 3000 bytes, 10 per line
    new = make_log(tmp_path, "start_prim", datetime(2021, 1, 2), lines)

    report = trim_userlogs(tmp_path, limit_kb=1)

    assert report.removed == (old,) and report.truncated == (new,)
    kept = new.read_bytes()
    assert len(kept) <= 1024 and report.bytes_after == len(kept)
    assert kept.startswith(b"line ") and kept.endswith(b"line 0299\n")
    assert kept == b"".join(b"line %04d\n" % i for i in range(300 - len(kept) // 10, 300))
    assert not (tmp_path / "last_stop_prim.ulog").is_symlink()  # pointed to a removed log


def test_trim_under_the_limit_changes_nothing_and_zero_removes_all(tmp_path: Path) -> None:
    log = make_log(tmp_path, "start_prim", datetime(2021, 1, 1), b"x" * 100)
    assert not trim_userlogs(tmp_path, limit_kb=2048).changed
    assert log.exists()
    assert trim_userlogs(tmp_path, limit_kb=0).removed == (log,)
    assert not trim_userlogs(tmp_path / "missing", limit_kb=1).changed
    with pytest.raises(ValueError, match="userlogsize"):
        trim_userlogs(tmp_path, limit_kb=-1)


# --- requests -------------------------------------------------------------------------------------


def test_requests_from_user_section() -> None:
    user = User(vars=(Var("A", "1"),), logging="none")
    request = ScriptRequest.transition(
        MODULE, "stop_both", "UP", "WAIT", "stop", user=user, force=True, env={"B": "2"}
    )
    assert request.args == ("force", "UP", "WAIT", "stop")
    assert dict(request.env) == {"A": "1", "B": "2"}
    assert hash(request) == hash(
        ScriptRequest.transition(MODULE, "stop_both", "UP", "WAIT", "stop", user=user, force=True)
    )  # a value: usable in sets and as a dict key
    with pytest.raises(TypeError):
        request.env["A"] = "changed"  # type: ignore[index]
    assert request.logging is UserLogging.NONE
    assert request.forced(timeout=1).args == request.args  # force is never doubled
    assert request.command_line == "stop_both force UP WAIT stop"
    with pytest.raises(ValueError, match="timeout"):
        ScriptRequest(MODULE, "stop_both", timeout=0)


# --- the fake runner ------------------------------------------------------------------------------


def test_fake_runner_records_calls_and_plays_outcomes_in_order() -> None:
    fake = FakeScriptRunner().script("stop_prim", Outcome.exits(1), Outcome.exits(0))
    fake.script("start_prim", Outcome.killed_by(9))
    graceful = ScriptRequest.transition(MODULE, "stop_prim", "ALONE", "WAIT", "stop", timeout=5)

    async def scenario() -> list[ScriptResult]:
        return [
            await fake.run(graceful),
            await fake.run(graceful.forced(timeout=5)),
            await fake.run(graceful.forced(timeout=5)),  # the last outcome repeats
            await fake.run(ScriptRequest(MODULE, "stop_sec")),
            await fake.run(ScriptRequest(MODULE, "start_prim")),
        ]

    results = asyncio.run(scenario())
    assert [r.status for r in results] == [
        ScriptStatus.FAILED,
        ScriptStatus.OK,
        ScriptStatus.OK,
        ScriptStatus.ABSENT,
        ScriptStatus.FAILED,
    ]
    assert results[-1].signal == 9
    assert fake.calls == [
        "stop_prim ALONE WAIT stop",
        "stop_prim force ALONE WAIT stop",
        "stop_prim force ALONE WAIT stop",
        "stop_sec",
        "start_prim",
    ]
    assert "stop_sec" not in fake.ran


def test_fake_runner_hangs_until_timeout_release_or_cancel() -> None:
    fake = FakeScriptRunner().script("stop_prim", Outcome.hangs())
    fake.script("start_prim", Outcome.hangs()).script("prestart", Outcome.unrunnable())

    async def scenario() -> None:
        timed = await fake.run(ScriptRequest(MODULE, "stop_prim", timeout=300))
        assert timed.timed_out and timed.duration == 300

        task = asyncio.create_task(fake.run(ScriptRequest(MODULE, "start_prim")))
        await asyncio.sleep(0)
        assert fake.hanging == {"start_prim"}
        fake.release("start_prim", exit_code=2)
        assert (await task).exit_code == 2

        task = asyncio.create_task(fake.run(ScriptRequest(MODULE, "start_prim")))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert [r.script for r in fake.cancelled] == ["start_prim"]
        assert fake.hanging == frozenset()
        with pytest.raises(AssertionError, match="not hanging"):
            fake.release("start_prim")
        unrunnable = await fake.run(ScriptRequest(MODULE, "prestart"))
        assert unrunnable.status is ScriptStatus.NOT_EXECUTABLE

    asyncio.run(scenario())
