"""A deterministic :class:`~hakit.engine.scripts.ScriptRunner` for engine tests: no processes.

Tell it what each script does, run the code under test, then assert on what was asked::

    runner = FakeScriptRunner()
    runner.script("stop_prim", Outcome.exits(1), Outcome.exits(0))  # graceful fails, force works
    ...
    assert runner.calls == ["stop_prim ALONE WAIT stop", "stop_prim force ALONE WAIT stop"]

A script nobody declared is absent (as in a module whose bin/ lacks it). An outcome list is used in
order, its last entry repeating. A hanging script with a timeout is reported as timed out at once
(the fake has no clock to wait on); without a timeout it waits until :meth:`release` or until the
caller cancels it, which is recorded in :attr:`cancelled`.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass

from hakit.engine.scripts import ScriptRequest, ScriptResult, ScriptStatus


@dataclass(frozen=True)
class Outcome:
    """What a fake script does when run."""

    exit_code: int | None = 0
    signal: int | None = None
    hang: bool = False
    not_executable: bool = False
    duration: float = 0.0

    @classmethod
    def exits(cls, code: int = 0, duration: float = 0.0) -> Outcome:
        """Exits by itself with ``code``."""
        return cls(exit_code=code, duration=duration)

    @classmethod
    def killed_by(cls, signal: int) -> Outcome:
        """Dies of ``signal`` (sent by someone else than the runner)."""
        return cls(exit_code=None, signal=signal)

    @classmethod
    def hangs(cls) -> Outcome:
        """Never exits by itself: times out, or waits for release or cancellation."""
        return cls(exit_code=None, hang=True)

    @classmethod
    def unrunnable(cls) -> Outcome:
        """Exists but is not executable."""
        return cls(exit_code=None, not_executable=True)


class FakeScriptRunner:
    """Records every request in order and answers from the declared outcomes."""

    def __init__(self) -> None:
        self.requests: list[ScriptRequest] = []
        self.cancelled: list[ScriptRequest] = []
        self._outcomes: dict[str, list[Outcome]] = {}
        self._hanging: dict[str, asyncio.Future[int]] = {}
        self._pids = itertools.count(1000)

    def script(self, name: str, *outcomes: Outcome) -> FakeScriptRunner:
        """Declare script ``name`` present; its runs take ``outcomes`` in order (default: exit 0)."""
        self._outcomes[name] = list(outcomes) or [Outcome.exits(0)]
        return self

    def remove(self, name: str) -> None:
        """Make ``name`` absent again."""
        self._outcomes.pop(name, None)

    @property
    def calls(self) -> list[str]:
        """The command lines run so far (``"stop_prim force ALONE WAIT stop"``), absent ones too."""
        return [request.command_line for request in self.requests]

    @property
    def ran(self) -> list[str]:
        """Command lines of the scripts that were present (absent ones left out)."""
        return [r.command_line for r in self.requests if r.script in self._outcomes]

    @property
    def hanging(self) -> frozenset[str]:
        """Names of the scripts currently waiting for :meth:`release` or cancellation."""
        return frozenset(self._hanging)

    def release(self, name: str, exit_code: int = 0) -> None:
        """Let the hanging script ``name`` exit with ``exit_code``."""
        try:
            future = self._hanging.pop(name)
        except KeyError:
            raise AssertionError(
                f"script {name} is not hanging (hanging: {sorted(self._hanging)})"
            ) from None
        future.set_result(exit_code)

    async def run(self, request: ScriptRequest) -> ScriptResult:
        """Record ``request`` and answer with the next outcome declared for its script."""
        self.requests.append(request)
        queue = self._outcomes.get(request.script)
        if queue is None:
            return ScriptResult(request, ScriptStatus.ABSENT)
        outcome = queue.pop(0) if len(queue) > 1 else queue[0]
        if outcome.not_executable:
            return ScriptResult(
                request, ScriptStatus.NOT_EXECUTABLE, error=f"{request.script} is not executable"
            )
        pid = next(self._pids)
        if outcome.hang:
            return await self._hang(request, pid)
        status = ScriptStatus.OK if outcome.exit_code == 0 else ScriptStatus.FAILED
        return ScriptResult(
            request,
            status,
            exit_code=outcome.exit_code,
            signal=outcome.signal,
            duration=outcome.duration,
            pid=pid,
        )

    async def _hang(self, request: ScriptRequest, pid: int) -> ScriptResult:
        if request.timeout is not None:
            return ScriptResult(
                request, ScriptStatus.TIMED_OUT, signal=15, duration=request.timeout, pid=pid
            )
        if request.script in self._hanging:
            raise AssertionError(f"script {request.script} is already hanging in this fake")
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._hanging[request.script] = future
        try:
            code = await future
        except asyncio.CancelledError:
            self._hanging.pop(request.script, None)
            self.cancelled.append(request)
            raise
        status = ScriptStatus.OK if code == 0 else ScriptStatus.FAILED
        return ScriptResult(request, status, exit_code=code, pid=pid)
