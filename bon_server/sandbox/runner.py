"""Run a program and its tests in the sandbox: one process group per candidate, killed at the end.

``run_tests`` owns a candidate's whole life: a fresh working directory, the result pipe and its
nonce, the process (through bwrap or unshare when this machine has them), the wall clock, the
capped output, the group's SIGKILL on every way out (return, exception, cancellation), and the
report. It keeps no state between calls; how many run at once is the caller's business.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import hmac
import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import cast

from . import isolation
from .isolation import Layers
from .programs import split_tests

GRACE_S = 2.0  # after the group's SIGKILL, for its pipes to close
RESULT_BYTES = 1 << 16  # the result pipe kept, plus RESULT_BYTES_PER_TEST a test
RESULT_BYTES_PER_TEST = 1 << 10
KILLED_BY_CPU = frozenset({-signal.SIGXCPU, -signal.SIGKILL,
                           128 + signal.SIGXCPU, 128 + signal.SIGKILL})  # 128+: through bwrap


STARTUP_GRACE_S = 10.0  # for the sandboxed interpreter to start (a loaded machine is slow)


class SandboxError(RuntimeError):
    """The sandbox itself failed (it never got to run the candidate): a fault of this
    machine, not of the candidate, so not a report."""


@dataclass(frozen=True, slots=True)
class Limits:
    cpu_s: float = 5.0  # RLIMIT_CPU per candidate (whole seconds, rounded up)
    wall_s: float = 10.0  # wall clock per candidate, whole group killed after
    memory_bytes: int = 1 << 30  # RLIMIT_AS (default 1 GiB)
    file_bytes: int = 1 << 20  # RLIMIT_FSIZE
    open_files: int = 64  # RLIMIT_NOFILE
    output_bytes: int = 1 << 16  # stdout/stderr kept (the rest read and dropped, never buffered)
    processes: int = 1  # RLIMIT_NPROC under the fresh uid; threads count: 1 = the interpreter
    disk_bytes: int = 16 << 20  # the working directory's tmpfs under bwrap


@dataclass(frozen=True, slots=True)
class TestReport:
    __test__ = False  # not a pytest class

    passed: int
    failed: int
    errored: int
    # the last line of the first failing/erroring test's traceback ("AssertionError",
    # "TimeoutError: ...", "MemoryError")
    first_error: str | None
    timed_out: bool = False  # a time limit (a test's share of wall_s, wall_s, cpu_s) hit
    stdout: str = ""  # the first output_bytes of each
    stderr: str = ""

    @property
    def total(self) -> int:
        return self.passed + self.failed + self.errored

    @property
    def fraction(self) -> float:
        return self.passed / self.total if self.total else 0.0


@functools.cache
def _harness_source() -> str:
    return Path(__file__).with_name("harness.py").read_text()


class _Process(asyncio.SubprocessProtocol):
    """stdout and stderr kept up to a cap, the rest dropped as it arrives."""

    def __init__(self, cap: int) -> None:
        loop = asyncio.get_running_loop()
        self.cap = cap
        self.kept = {1: bytearray(), 2: bytearray()}
        self.exited: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()  # exited, pipes closed

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        kept = self.kept.get(fd)
        if kept is not None and len(kept) < self.cap:
            kept += data[: self.cap - len(kept)]

    def process_exited(self) -> None:
        if not self.exited.done():
            self.exited.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


class _Pipe(asyncio.Protocol):
    """The result pipe, kept up to a cap; ``ready`` resolves at the harness's ready record."""

    def __init__(self, cap: int, nonce: bytes) -> None:
        self.cap = cap
        self.data = bytearray()
        self.marker = nonce + b" R "
        loop = asyncio.get_running_loop()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.ready: asyncio.Future[None] = loop.create_future()

    def data_received(self, data: bytes) -> None:
        if len(self.data) < self.cap:
            self.data += data[: self.cap - len(self.data)]
        if not self.ready.done() and self.marker in self.data:
            self.ready.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


def _records(data: bytes, nonce: bytes, count: int) -> tuple[bool, dict[int, tuple[str, str]]]:
    """(ready, index -> (kind, message)) from the lines that carry the nonce; the first
    record of a test counts."""
    ready, outcomes = False, {}
    for line in bytes(data).split(b"\n"):
        parts = line.split(b" ", 3)
        if len(parts) < 3 or not hmac.compare_digest(parts[0], nonce):
            continue
        kind = parts[1].decode("ascii", "replace")
        if kind == "R":
            ready = True
            continue
        try:
            index = int(parts[2])
        except ValueError:
            continue
        if kind in ("P", "F", "E", "T") and 0 <= index < count and index not in outcomes:
            message = parts[3].decode("utf-8", "replace") if len(parts) > 3 else ""
            outcomes[index] = (kind, message)
    return ready, outcomes


def _reap(transport: asyncio.SubprocessTransport) -> None:
    """Wait for the killed harness here when the loop has not seen it exit (a request cancelled
    again while it waited): a SIGKILLed process exits at once, and a Popen never waited for
    is a zombie until collected, and a ResourceWarning then."""
    popen = transport.get_extra_info("subprocess")
    if popen is not None and transport.get_returncode() is None:
        with contextlib.suppress(subprocess.TimeoutExpired, ChildProcessError):
            popen.wait(timeout=GRACE_S)


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def _report(outcomes: dict[int, tuple[str, str]], count: int, missing: tuple[str, str],
            stdout: bytes, stderr: bytes) -> TestReport:
    tally = {"P": 0, "F": 0, "E": 0}
    first_error, timed_out = None, False
    for i in range(count):
        kind, message = outcomes.get(i, missing)
        timed_out |= kind == "T"
        tally["E" if kind == "T" else kind] += 1
        if kind != "P" and first_error is None:
            first_error = message or "Exception"
    return TestReport(tally["P"], tally["F"], tally["E"], first_error, timed_out,
                      stdout.decode("utf-8", "replace"), stderr.decode("utf-8", "replace"))


async def run_tests(program: str, tests: Sequence[str], limits: Limits = Limits(), *,
                    layers: Layers = Layers(),
                    on_start: Callable[[int], None] | None = None) -> TestReport:
    """Exec ``program`` once, then each test snippet in order in its namespace, sandboxed.

    Cancellable: cancelling kills the whole process group at once. ``layers`` turns layers
    off (tests); ``on_start`` gets the process group id once it exists (logs, tests).
    Raises ``SandboxError`` when the sandbox could not start the harness at all.
    """
    snippets = split_tests(tests) if isinstance(tests, str) else list(tests)
    if not snippets:
        return TestReport(0, 0, 0, None)
    loop = asyncio.get_running_loop()
    plan = isolation.plan(layers)
    nonce = secrets.token_hex(16)
    workdir = tempfile.mkdtemp(prefix="bon-sandbox-")
    read_fd, write_fd = os.pipe()
    transport: asyncio.SubprocessTransport | None = None
    results: asyncio.ReadTransport | None = None
    try:
        if plan.uid is not None:
            os.chown(workdir, plan.uid, plan.uid)
        reader = os.fdopen(read_fd, "rb", buffering=0)
        read_fd = -1
        try:
            results, pipe = await loop.connect_read_pipe(
                lambda: _Pipe(RESULT_BYTES + RESULT_BYTES_PER_TEST * len(snippets),
                              nonce.encode()), reader)
        except BaseException:
            reader.close()
            raise
        argv = (isolation.wrapper_argv(plan, workdir, limits.disk_bytes)
                + isolation.harness_argv(_harness_source()))
        env = {"TMPDIR": workdir}
        if not layers.empty_env:
            env = {**os.environ, **env}
        payload = json.dumps({
            "fd": write_fd, "nonce": nonce, "program": program, "tests": snippets,
            "wall_s": limits.wall_s, "limits": asdict(limits),
            "rlimits": layers.rlimits, "uid": plan.uid, "audit": layers.audit,
            "workdir": workdir,
        }).encode()
        transport, process = await loop.subprocess_exec(
            lambda: _Process(limits.output_bytes), *argv, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=workdir,
            env=env, start_new_session=True, pass_fds=(write_fd,))
        os.close(write_fd)
        write_fd = -1
        if on_start is not None:
            on_start(transport.get_pid())
        # not an isinstance check: uvloop's pipe transports (uvicorn's default loop) are not
        # asyncio.WriteTransport subclasses. None, or a failed write: the wrapper already
        # exited and closed its stdin (a SandboxError below)
        stdin = cast("asyncio.WriteTransport | None", transport.get_pipe_transport(0))
        if stdin is not None:
            try:
                stdin.write(payload)
                stdin.close()  # flushes, then EOF: the harness reads to the end
            except (OSError, RuntimeError):
                pass
        # wall_s is the candidate's, counted from the harness's ready record (as the harness
        # counts it): the interpreter's start on a loaded machine gets STARTUP_GRACE_S
        wall_hit = False
        await asyncio.wait([pipe.ready, process.exited], timeout=STARTUP_GRACE_S,
                           return_when=asyncio.FIRST_COMPLETED)
        slow_start = not pipe.ready.done() and not process.exited.done()
        if pipe.ready.done():
            try:
                async with asyncio.timeout(limits.wall_s):
                    await asyncio.shield(process.exited)  # a cancel must not cancel it
            except TimeoutError:
                wall_hit = True
        _kill_group(transport.get_pid())
        await asyncio.wait([process.closed, pipe.closed], timeout=GRACE_S)
    except BaseException:  # cancelled, most likely: kill at once, then let the watcher reap
        if transport is not None:
            _kill_group(transport.get_pid())
            await asyncio.wait([process.exited], timeout=GRACE_S)
        raise
    finally:
        if transport is not None:
            _kill_group(transport.get_pid())  # every way out: return, exception, cancel
            _reap(transport)
            transport.close()
        if results is not None:
            results.close()
        for fd in (read_fd, write_fd):
            if fd >= 0:
                os.close(fd)
        shutil.rmtree(workdir, ignore_errors=True)

    returncode = transport.get_returncode()
    stdout, stderr = bytes(process.kept[1]), bytes(process.kept[2])
    ready, outcomes = _records(pipe.data, nonce.encode(), len(snippets))
    if not ready:
        tail = stderr.decode("utf-8", "replace").strip().splitlines()[-3:]
        how = (f"was not ready in {STARTUP_GRACE_S:g} s" if slow_start
               else f"exited {returncode}")
        raise SandboxError(f"the sandbox never started the harness: it {how}: "
                           + " | ".join(tail))
    if wall_hit:
        missing = ("T", f"TimeoutError: wall time limit of {limits.wall_s:g} s exceeded")
    elif returncode in KILLED_BY_CPU and layers.rlimits:
        missing = ("T", f"TimeoutError: CPU time limit of {limits.cpu_s:g} s exceeded")
    else:
        missing = ("E", f"RuntimeError: the program exited (status {returncode}) before "
                        "this test finished")
    return _report(outcomes, len(snippets), missing, stdout, stderr)


def run_tests_sync(program: str, tests: Sequence[str], limits: Limits = Limits(), *,
                   layers: Layers = Layers()) -> TestReport:
    """``run_tests`` for training scripts and other synchronous callers; from inside a
    running event loop it runs on a helper thread (blocking this one)."""
    coroutine = run_tests(program, tests, limits, layers=layers)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()
