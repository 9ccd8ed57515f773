"""Child processes that cannot outlive the scope that started them.

Every helper tool the bridge runs (``xcrun simctl``, ``idb``) goes through here,
so one place decides how a child ends: when the scope that owns it exits, for
whatever reason (done, crashed, timed out, cancelled), its whole process group
is sent SIGTERM, then SIGKILL after a grace period, and the child is reaped
before the scope is left. Children start in a session of their own, so a
Ctrl-C in the server's terminal reaches the server, which then stops them in
order, instead of reaching every helper at once.

Standard error is drained while the child runs (a full pipe would stall it),
keeping only its tail for error messages.
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import subprocess
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

import trio

from .._errors import DeviceError

log = logging.getLogger("bridge_actors.subprocess")

DEFAULT_GRACE = 2.0  # seconds between SIGTERM and SIGKILL
REAP_LIMIT = 5.0  # after SIGKILL; only a process stuck in the kernel takes longer
STDERR_TAIL_BYTES = 4096
STDERR_SETTLE = 0.5  # how long a finished child's last stderr bytes may take to arrive
MAX_OUTPUT_BYTES = 64 * 1024 * 1024
_READ_SIZE = 65536


class ToolNotFound(DeviceError):
    """The program could not be started at all (missing, or not executable)."""

    def __init__(self, tool: str, reason: str) -> None:
        super().__init__(f"{tool!r} {reason}")
        self.tool = tool


class CommandTimeout(DeviceError):
    """A command did not finish within its timeout; it was stopped and reaped."""

    def __init__(self, argv: Sequence[str], timeout: float) -> None:
        super().__init__(f"`{describe(argv)}` did not finish within {timeout:g} s")
        self.argv = tuple(argv)
        self.timeout = timeout


class CommandFailed(DeviceError):
    """A command exited with a non-zero status."""

    def __init__(self, argv: Sequence[str], returncode: int, stderr: str) -> None:
        detail = f": {stderr}" if stderr else ""
        super().__init__(f"`{describe(argv)}` exited with status {returncode}{detail}")
        self.argv = tuple(argv)
        self.returncode = returncode
        self.stderr = stderr


def describe(argv: Sequence[str], limit: int = 200) -> str:
    """A command line for messages: shell-quoted, and shortened if long."""
    text = shlex.join(argv)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True, slots=True)
class SubprocessStatistics:
    running: int
    started: int
    timed_out: int
    killed: int


class ProcessCensus:
    """Counts of the children one owner (a backend) started, for its statistics and
    for leak checks in tests. Each backend keeps its own, so a bridge reports its
    children only, not those of every bridge in the process."""

    def __init__(self) -> None:
        self.running: dict[int, tuple[str, ...]] = {}
        self.started = 0
        self.timed_out = 0
        self.killed = 0

    def statistics(self) -> SubprocessStatistics:
        return SubprocessStatistics(
            running=len(self.running),
            started=self.started,
            timed_out=self.timed_out,
            killed=self.killed,
        )

    def running_pids(self) -> frozenset[int]:
        """Children started here that have not been reaped yet."""
        return frozenset(self.running)


@dataclass(frozen=True, slots=True)
class CommandResult:
    argv: tuple[str, ...]
    returncode: int
    stdout: bytes
    stderr: str


class ChildProcess:
    """A running child: its stdout to read, its exit to await, the tail of its stderr."""

    def __init__(self, argv: Sequence[str], process: trio.Process) -> None:
        self.argv = tuple(argv)
        self.process = process
        assert process.stdout is not None
        self.stdout: trio.abc.ReceiveStream = process.stdout
        self._stderr_tail = bytearray()
        self._stderr_done = trio.Event()

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    def stderr_tail(self) -> str:
        return self._stderr_tail.decode("utf-8", "replace").strip()

    async def wait(self) -> int:
        """Wait for the child to exit (reaping it), and briefly for its last stderr bytes."""
        code = await self.process.wait()
        with trio.move_on_after(STDERR_SETTLE):
            await self._stderr_done.wait()
        return code

    async def _drain_stderr(self) -> None:
        stream = self.process.stderr
        assert stream is not None
        try:
            while chunk := await stream.receive_some(_READ_SIZE):
                self._stderr_tail += chunk
                del self._stderr_tail[:-STDERR_TAIL_BYTES]
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass
        finally:
            self._stderr_done.set()


def _signal_group(process: trio.Process, signum: int) -> None:
    """Signal the child's process group, so helpers it spawned stop with it.

    Only while the child is unreaped: its pid, which is also the group id,
    cannot have been reused before then.
    """
    if process.returncode is not None:
        return
    try:
        os.killpg(process.pid, signum)
    except ProcessLookupError:
        pass
    except PermissionError:
        process.send_signal(signum)


async def _stop(process: trio.Process, grace: float, census: ProcessCensus) -> None:
    """Terminate, kill after ``grace``, reap. Shielded: it runs during cancellation."""
    with trio.CancelScope(shield=True):
        if process.returncode is None:
            _signal_group(process, signal.SIGTERM)
            with trio.move_on_after(grace):
                await process.wait()
        if process.returncode is None:
            census.killed += 1
            _signal_group(process, signal.SIGKILL)
            with trio.move_on_after(REAP_LIMIT):
                await process.wait()
        if process.returncode is None:
            log.error("child %d ignored SIGKILL for %g s; left unreaped", process.pid, REAP_LIMIT)
        else:
            census.running.pop(process.pid, None)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                await stream.aclose()


async def _spawn(argv: Sequence[str], census: ProcessCensus) -> trio.Process:
    if not argv:
        raise ValueError("empty command")
    tool = argv[0]
    try:
        process = await trio.lowlevel.open_process(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
    except FileNotFoundError:
        where = "does not exist" if os.sep in tool else "not found on PATH"
        raise ToolNotFound(tool, where) from None
    except PermissionError:
        raise ToolNotFound(tool, "is not executable") from None
    except OSError as exc:
        raise ToolNotFound(tool, f"cannot be started: {exc.strerror or exc}") from None
    census.started += 1
    census.running[process.pid] = tuple(argv)
    return process


def _single(group: BaseExceptionGroup) -> BaseException | None:
    while isinstance(group, BaseExceptionGroup) and len(group.exceptions) == 1:
        group = group.exceptions[0]
    return None if isinstance(group, BaseExceptionGroup) else group


@asynccontextmanager
async def open_child(
    argv: Sequence[str], *, census: ProcessCensus, grace: float = DEFAULT_GRACE
) -> AsyncIterator[ChildProcess]:
    """Start ``argv`` with stdout piped to the body; stop and reap it when the body exits.

    Raises ToolNotFound if the program cannot be started. An exception from the
    body comes out as itself, not wrapped in a group, since the task draining
    stderr is an implementation detail.
    """
    process = await _spawn(argv, census)
    child = ChildProcess(argv, process)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(child._drain_stderr)
            try:
                yield child
            finally:
                await _stop(process, grace, census)
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        single = _single(group)
        if single is None:
            raise
        raise single from single.__cause__


async def run_command(
    argv: Sequence[str],
    *,
    timeout: float,  # noqa: ASYNC109
    census: ProcessCensus,
    grace: float = DEFAULT_GRACE,
    check: bool = True,
    max_output: int = MAX_OUTPUT_BYTES,
) -> CommandResult:
    """Run ``argv`` to completion and return its output.

    ``timeout`` is a parameter rather than the caller's cancel scope so that
    running out of time becomes a CommandTimeout naming the command.

    Raises ToolNotFound, CommandTimeout (the child was stopped and reaped),
    CommandFailed (non-zero exit, when ``check``), or DeviceError if it writes
    more than ``max_output`` bytes.
    """
    stdout = bytearray()
    with trio.move_on_after(timeout) as scope:
        async with open_child(argv, census=census, grace=grace) as child:
            while chunk := await child.stdout.receive_some(_READ_SIZE):
                stdout += chunk
                if len(stdout) > max_output:
                    raise DeviceError(f"`{describe(argv)}` wrote more than {max_output} bytes")
            returncode = await child.wait()
    if scope.cancelled_caught:
        census.timed_out += 1
        raise CommandTimeout(argv, timeout)
    stderr = child.stderr_tail()
    if check and returncode != 0:
        raise CommandFailed(argv, returncode, stderr)
    return CommandResult(tuple(argv), returncode, bytes(stdout), stderr)
