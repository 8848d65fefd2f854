"""The code sandbox: one candidate per containment rule, contained by each layer that claims the
rule and escaping once those layers are off (where escaping is harmless: a file in /tmp, a
connection to our own listener, our own environment variable, ``/bin/true``, our own ``sleep``).

Every run checks that the candidate's process group is gone and its working directory removed.
A candidate "escapes" by passing its test, so a contained one fails it.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import textwrap
import time
import tracemalloc
import uuid
from pathlib import Path

import pytest
import uvloop

from bon_server.sandbox import (
    Layers,
    Limits,
    SandboxError,
    extract_program,
    run_tests,
    run_tests_sync,
    sandbox_layers,
    split_tests,
)
from bon_server.sandbox.isolation import plan

REPO = Path(__file__).resolve().parents[1]
ALL = Layers()
NONE = Layers(bwrap=False, unshare=False, user=False, rlimits=False, audit=False)
BWRAP_ONLY = Layers(unshare=False, user=False, rlimits=False, audit=False)
UNSHARE_ONLY = Layers(bwrap=False, user=False, rlimits=False, audit=False)
AUDIT_ONLY = Layers(bwrap=False, unshare=False, user=False, rlimits=False)
RLIMITS_ONLY = Layers(bwrap=False, unshare=False, user=False, audit=False)
KERNEL_ONLY = Layers(audit=False)  # bwrap, the fresh uid and its RLIMIT_NPROC: no audit hook


def needs(layers: Layers) -> Layers:
    """Skip where this machine lacks a layer the case relies on (probed on first use)."""
    chosen = plan(layers)
    if layers.bwrap and not layers.unshare and not chosen.bwrap:
        pytest.skip("bubblewrap is not usable here")
    if layers.unshare and not layers.bwrap and not chosen.unshare:
        pytest.skip("unshare is not usable here")
    if layers == KERNEL_ONLY and not sandbox_layers(KERNEL_ONLY)["nproc"]:
        pytest.skip("no per-candidate RLIMIT_NPROC here (needs root and bwrap)")
    return layers


def gone(pgid: int, within_s: float = 5.0) -> bool:
    """The group has no process left (killed ones are reaped within moments)."""
    end = time.monotonic() + within_s
    while True:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        if time.monotonic() > end:
            return False
        time.sleep(0.02)


# the event loops a server runs the sandbox on: uvicorn's default is uvloop where it is
# installed, whose pipe transports are not asyncio's classes (a payload once went unwritten)
LOOPS = pytest.mark.parametrize("run", [asyncio.run, uvloop.run], ids=["asyncio", "uvloop"])


def sandboxed(program: str, tests: list[str], limits: Limits = Limits(),
              layers: Layers = ALL, run=asyncio.run):
    """The report, after checking that nothing of the run is left: no process, no workdir."""
    started: list[tuple[int, str]] = []

    def on_start(pgid: int) -> None:
        started.append((pgid, os.readlink(f"/proc/{pgid}/cwd")))

    async def go():
        return await asyncio.wait_for(
            run_tests(textwrap.dedent(program), tests, limits, layers=layers,
                      on_start=on_start),
            limits.wall_s + 15)  # a hang fails the test instead of the run

    report = run(go())
    [(pgid, workdir)] = started
    assert gone(pgid), "a process of the candidate's group is still alive"
    assert not os.path.exists(workdir)
    return report


# ------------------------------------------------------------------ the harness itself


@LOOPS
def test_a_right_program_passes_and_a_wrong_one_fails(run):
    tests = ["assert add(1, 2) == 3", "assert add(2, 0) == 2"]
    right = sandboxed("def add(a, b):\n    return a + b\n", tests, run=run)
    assert (right.passed, right.failed, right.errored, right.first_error) == (2, 0, 0, None)
    assert right.total == 2 and right.fraction == 1.0 and not right.timed_out
    wrong = sandboxed("def add(a, b):\n    return a - b\n", tests)
    assert (wrong.passed, wrong.failed, wrong.errored) == (1, 1, 0)
    assert wrong.first_error == "AssertionError" and wrong.fraction == 0.5


def test_errors_are_not_failures_and_the_namespace_carries_over():
    report = sandboxed("import math\nstate = []\n", [
        "state.append(1)", "assert state == [1], 'carried'", "1 / 0", "assert (", "assert 1",
    ])
    assert (report.passed, report.failed, report.errored) == (3, 0, 2)
    assert report.first_error == "ZeroDivisionError: division by zero"


def test_a_syntax_error_in_the_program_errors_every_test():
    report = sandboxed("def f(:\n    pass\n", ["assert f", "assert True", "assert False"])
    assert (report.passed, report.failed, report.errored) == (0, 0, 3)
    assert report.first_error.startswith("SyntaxError")


def test_a_program_that_raises_errors_every_test():
    report = sandboxed("raise AssertionError('at import')\n", ["assert True", "assert True"])
    assert (report.passed, report.failed, report.errored) == (0, 0, 2)
    assert report.first_error == "AssertionError: at import"


@pytest.mark.parametrize("layers", [ALL, Layers(bwrap=False)], ids=["all", "all-but-bwrap"])
def test_common_stdlib_code_runs_in_the_sandbox(layers):
    # frame-peeking stdlib (namedtuple, typing, logging, enum) falls back instead of failing;
    # asyncio (types.coroutine, a socketpair), pathlib and files in the working directory work
    program = """
        import asyncio, collections, dataclasses, enum, logging, pathlib, subprocess, tempfile
        import typing
        Point = collections.namedtuple("Point", "x y")
        T = typing.TypeVar("T")
        Color = enum.Enum("Color", "RED GREEN")
        @dataclasses.dataclass
        class Box:
            size: int
        def work():
            logging.getLogger("x").warning("a warning")
            pathlib.Path("out.txt").write_text("kept")
            pathlib.Path("touched").touch()  # os.open, relative
            asyncio.run(asyncio.sleep(0))
            with open("out.txt") as f, tempfile.TemporaryFile() as t:
                t.write(b"x")
                return Point(1, 2).x + Box(3).size + len(f.read()) + Color.RED.value
    """
    report = sandboxed(program, ["assert work() == 9"], layers=layers)
    assert report.passed == 1, report


def test_stdout_and_stderr_are_kept_and_the_environment_is_empty():
    report = sandboxed("import os, sys\nprint(sorted(os.environ))\n"
                       "print('err', file=sys.stderr)\n", ["assert True"])
    assert report.passed == 1
    # TMPDIR (the working directory), PWD (bwrap), LC_CTYPE (Python's own C.UTF-8 coercion)
    assert set(eval(report.stdout)) <= {"TMPDIR", "PWD", "LC_CTYPE"}
    assert report.stderr == "err\n"


def test_no_tests_no_run_and_a_script_string_is_one_test():
    assert asyncio.run(run_tests("x = 1", [])).total == 0
    assert asyncio.run(run_tests("x = 1", [])).fraction == 0.0
    report = run_tests_sync("x = 1", "assert x == 1\nassert x + 1 == 2\n")
    assert (report.passed, report.total) == (1, 1)


def test_run_tests_sync_inside_a_running_loop():
    async def inside():
        return run_tests_sync("x = 2", ["assert x == 2"])
    assert asyncio.run(inside()).passed == 1


def test_a_sandbox_that_never_starts_is_an_error_not_a_report(monkeypatch):
    from bon_server.sandbox import runner

    monkeypatch.setattr(runner, "STARTUP_GRACE_S", 0.001)  # no interpreter starts that fast
    with pytest.raises(SandboxError, match="never started"):
        asyncio.run(run_tests("x = 1", ["assert x"], Limits(wall_s=5)))


# ------------------------------------------------------------------ forged results


FORGER = """
    import gc, importlib.util, os, signal, sys, _signal
    stolen = []

    def look(frame):
        while frame is not None:
            if "nonce" in frame.f_locals and "fd" in frame.f_locals:
                stolen.append((frame.f_locals["fd"], frame.f_locals["nonce"]))
                return
            frame = frame.f_back

    def attempt(route):
        try:
            route()
        except Exception:
            pass

    attempt(lambda: look(sys._getframe()))
    def through_traceback():
        try:
            raise ValueError
        except ValueError as e:
            look(e.__traceback__.tb_frame)
    attempt(through_traceback)
    def through_a_signal_handler(module):
        module.signal(signal.SIGUSR1, lambda s, frame: look(frame))
        signal.raise_signal(signal.SIGUSR1)
    attempt(lambda: through_a_signal_handler(_signal))
    attempt(lambda: through_a_signal_handler(importlib.util.module_from_spec(_signal.__spec__)))
    attempt(lambda: [look(o) for o in gc.get_objects() if type(o).__name__ == "frame"])

    # and in any case: fake "all passed" records on every channel it can find
    for i in range(8):
        fake = f"\\n{'0' * 32} P {i} \\nPASSED {i}\\n".encode()
        for fd in range(1, 64):
            try:
                os.write(fd, fake)
            except OSError:
                pass
    for fd, nonce in stolen[:1]:
        for i in range(8):
            os.write(fd, b"\\n" + nonce + b" P " + str(i).encode() + b" \\n")
    print("all 2 tests passed")
"""


def test_a_candidate_cannot_forge_its_results():
    report = sandboxed(FORGER, ["assert False", "assert 1 == 2"])
    assert (report.passed, report.failed) == (0, 2)
    assert report.first_error == "AssertionError"


def test_without_the_audit_hook_the_forger_reaches_the_nonce():
    report = sandboxed(FORGER, ["assert False", "assert 1 == 2"], layers=Layers(audit=False))
    assert report.passed == 2  # the audit hook is what keeps frames (and the nonce) away


ROUTES = """
    import _imp, gc, importlib.util, marshal, os, sys, types, _posixsubprocess, _signal
    def tb():
        try:
            raise ValueError
        except ValueError as e:
            return e.__traceback__.tb_frame
    def gen():
        yield
    def directory_fd():
        os.close(os.open(".", os.O_RDONLY))
        return True
    ROUTES = {
        "sys._getframe": lambda: sys._getframe(),
        "tb_frame": tb,
        "gi_frame": lambda: gen().gi_frame,
        "gc.get_objects": lambda: gc.get_objects(),
        "a second _signal": lambda: importlib.util.module_from_spec(_signal.__spec__),
        "a second posix": lambda: _imp.create_builtin(types.SimpleNamespace(name="posix")),
        "sys.modules and re-import": lambda: (sys.modules.pop("posix"), __import__("posix")),
        "marshal.loads": lambda: marshal.loads(marshal.dumps(compile("1", "x", "eval"))),
        "code.replace": lambda: (lambda: 1).__code__.replace(co_name="x"),
        "ctypes": lambda: __import__("ctypes"),
        "/proc/self/status": lambda: open("/proc/self/status").read(),
        "/dev/fd/0": lambda: open("/dev/fd/0").read() or True,
        "sys.settrace": lambda: sys.settrace(None) or True,
        "os.mknod": lambda: os.mknod("node") or True,
        "a directory's fd": directory_fd,
        "fork_exec": lambda: _posixsubprocess.fork_exec.__name__ != "_refuse" or None,
    }
    def attempt():
        leaked = []
        for name, route in ROUTES.items():
            try:
                if route() is not None:
                    leaked.append(name)
            except Exception:
                pass
        print(leaked)
        return leaked
"""


def test_the_audit_hook_closes_each_route_around_the_harness():
    # frames (where the nonce lives), native code, crafted bytecode, sanitised modules
    report = sandboxed(ROUTES, ["assert attempt() == []"], layers=AUDIT_ONLY)
    assert report.passed == 1, report.stdout


def test_without_the_audit_hook_every_route_is_open():
    report = sandboxed(ROUTES, ["assert len(attempt()) == len(ROUTES)"], layers=NONE)
    assert report.passed == 1, report.stdout


# ------------------------------------------------------------------ containment, one rule each


def writer(*targets: str) -> str:
    return f"""
        import os, pathlib
        TARGETS = {list(targets)!r}
        def attempt():
            wrote = []
            for path in TARGETS:
                for write in (lambda: open(path, "w").write("escaped"),
                              lambda: pathlib.Path(path).write_text("escaped"),
                              lambda: os.close(os.open(path, os.O_WRONLY | os.O_CREAT))):
                    try:
                        write()
                        wrote.append(path)
                    except OSError:
                        pass
            return wrote
    """


@pytest.mark.parametrize("layers", [ALL, BWRAP_ONLY, AUDIT_ONLY], ids=["all", "bwrap", "audit"])
def test_writing_outside_the_working_directory(layers):
    targets = [f"/tmp/bon-escape-{uuid.uuid4().hex}", str(REPO / f"bon-escape-{uuid.uuid4().hex}")]
    try:
        report = sandboxed(writer(*targets), ["assert attempt()"], layers=needs(layers))
        assert report.passed == 0 and report.failed == 1
        assert not any(os.path.exists(t) for t in targets)
    finally:
        for target in targets:
            Path(target).unlink(missing_ok=True)


def test_writing_outside_escapes_without_those_layers():
    target = f"/tmp/bon-escape-{uuid.uuid4().hex}"
    try:
        report = sandboxed(writer(target), ["assert attempt()"], layers=NONE)
        assert report.passed == 1 and Path(target).read_text() == "escaped"
    finally:
        Path(target).unlink(missing_ok=True)


@pytest.fixture
def listener():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        server.setblocking(False)
        yield server


def connector(port: int) -> str:
    return f"""
        import socket
        def attempt():
            try:
                socket.create_connection(("127.0.0.1", {port}), timeout=2).close()
                return True
            except OSError:
                return False
    """


def accepted(server: socket.socket) -> bool:
    try:
        connection, _ = server.accept()
    except BlockingIOError:
        return False
    connection.close()
    return True


@pytest.mark.parametrize("layers", [ALL, BWRAP_ONLY, UNSHARE_ONLY, AUDIT_ONLY],
                         ids=["all", "bwrap", "unshare", "audit"])
def test_connecting_out(listener, layers):
    report = sandboxed(connector(listener.getsockname()[1]), ["assert attempt()"],
                       layers=needs(layers))
    assert report.passed == 0 and report.failed == 1
    assert not accepted(listener)


def test_connecting_out_escapes_without_those_layers(listener):
    report = sandboxed(connector(listener.getsockname()[1]), ["assert attempt()"], layers=NONE)
    assert report.passed == 1 and accepted(listener)


ENV_READER = """
    import os
    def attempt():
        seen = os.environ.get("BON_SANDBOX_SECRET", "")
        try:  # the server's own environment, through /proc
            seen += open("/proc/%d/environ" % PID, "rb").read().decode("latin-1")
        except OSError:
            pass
        print(seen)
        return bool(seen)
"""


@pytest.mark.parametrize("layers", [
    ALL, Layers(bwrap=False, unshare=False, user=False, rlimits=False),
    Layers(unshare=False, user=False, rlimits=False, audit=False),
], ids=["all", "empty-env+audit", "empty-env+bwrap"])
def test_reading_the_environment(monkeypatch, layers):
    secret = uuid.uuid4().hex
    monkeypatch.setenv("BON_SANDBOX_SECRET", secret)
    report = sandboxed(ENV_READER.replace("PID", str(os.getpid())), ["assert attempt()"],
                       layers=needs(layers))
    assert report.passed == 0 and secret not in report.stdout


def test_reading_the_environment_escapes_without_an_empty_one(monkeypatch):
    secret = uuid.uuid4().hex
    monkeypatch.setenv("BON_SANDBOX_SECRET", secret)
    report = sandboxed(ENV_READER.replace("PID", "0"), ["assert attempt()"],
                       layers=Layers(empty_env=False))
    assert report.passed == 1 and secret in report.stdout


STARTERS = {
    "subprocess": """
        import subprocess
        def attempt():
            try:
                return subprocess.run(["/bin/true"]).returncode == 0
            except Exception:
                return False
    """,
    "os.system": """
        import os
        def attempt():
            try:
                return os.system("/bin/true") == 0
            except Exception:
                return False
    """,
    "os.fork": """
        import os
        def attempt():
            try:
                pid = os.fork()
            except Exception:
                return False
            if pid == 0:
                os._exit(0)
            return os.waitpid(pid, 0)[1] == 0
    """,
}


@pytest.mark.parametrize("how", sorted(STARTERS))
@pytest.mark.parametrize("layers", [ALL, AUDIT_ONLY, KERNEL_ONLY],
                         ids=["all", "audit", "nproc"])
def test_starting_a_process(how, layers):
    report = sandboxed(STARTERS[how], ["assert attempt()"], layers=needs(layers))
    assert report.passed == 0 and report.failed == 1


@pytest.mark.parametrize("how", sorted(STARTERS))
def test_starting_a_process_escapes_without_those_layers(how):
    assert sandboxed(STARTERS[how], ["assert attempt()"], layers=NONE).passed == 1


@pytest.fixture
def victim():
    process = subprocess.Popen(["sleep", "60"])
    yield process
    process.kill()
    process.wait()


def killer(pid: int) -> str:
    return f"""
        import os, signal
        def attempt():
            try:
                os.kill({pid}, signal.SIGKILL)
                return True
            except OSError:
                return False
    """


@pytest.mark.parametrize("layers", [ALL, BWRAP_ONLY, AUDIT_ONLY], ids=["all", "bwrap", "audit"])
def test_signalling_another_process(victim, layers):
    report = sandboxed(killer(victim.pid), ["assert attempt()"], layers=needs(layers))
    assert report.passed == 0 and victim.poll() is None


def test_signalling_another_process_escapes_without_those_layers(victim):
    assert sandboxed(killer(victim.pid), ["assert attempt()"], layers=NONE).passed == 1
    assert victim.wait(timeout=5) == -signal.SIGKILL


@pytest.mark.parametrize("layers", [ALL, RLIMITS_ONLY], ids=["all", "rlimits"])
def test_exceeding_memory(layers):
    # no escape twin: allocating 8 GiB for real is not harmless
    report = sandboxed("def attempt():\n    return len(bytearray(8 << 30))\n",
                       ["assert attempt() == 8 << 30", "assert True"], layers=layers)
    assert (report.passed, report.errored) == (1, 1)
    assert report.first_error == "MemoryError"


def test_exceeding_the_file_size_limit():
    report = sandboxed("def attempt():\n    open('big', 'wb').write(b'x' * (2 << 20))\n",
                       ["attempt()"])
    assert report.errored == 1 and "File too large" in report.first_error


STUBBORN_SPIN = """
    def attempt():
        while True:
            try:
                while True:
                    pass
            except BaseException:
                pass  # shrug off the TimeoutError, spin on
"""


def test_exceeding_cpu():
    # SIGXCPU at 1 s is a TimeoutError in the test; it is caught, so SIGKILL at 2 s
    report = sandboxed(STUBBORN_SPIN, ["attempt()", "assert True"],
                       Limits(cpu_s=1, wall_s=30))
    assert (report.passed, report.errored) == (0, 2) and report.timed_out
    assert "CPU time limit" in report.first_error


def test_exceeding_cpu_without_rlimits_runs_until_the_wall():
    report = sandboxed(STUBBORN_SPIN, ["attempt()"], Limits(cpu_s=1, wall_s=2),
                       layers=Layers(rlimits=False))
    assert report.errored == 1 and report.timed_out
    assert report.first_error == "TimeoutError: wall time limit of 2 s exceeded"


def test_never_terminating_costs_only_its_share():
    report = sandboxed("import time\ndef attempt():\n    time.sleep(10 ** 6)\n",
                       ["attempt()", "assert True"], Limits(wall_s=3))
    assert (report.passed, report.errored) == (1, 1) and report.timed_out
    assert report.first_error.startswith("TimeoutError")


@LOOPS
def test_never_terminating_while_ignoring_the_alarm_hits_the_wall(run):
    program = """
        import signal, time
        def attempt():
            signal.signal(signal.SIGALRM, signal.SIG_IGN)
            time.sleep(10 ** 6)
    """
    start = time.monotonic()
    report = sandboxed(program, ["attempt()", "assert True"], Limits(wall_s=1.5), run=run)
    assert time.monotonic() - start < 1.5 + 10  # generous: a hang is what this rules out
    assert (report.passed, report.errored) == (0, 2) and report.timed_out
    assert report.first_error == "TimeoutError: wall time limit of 1.5 s exceeded"


@LOOPS
def test_printing_100_mb(run):
    program = """
        import sys
        def attempt():
            chunk = "x" * (1 << 20)
            for _ in range(100):
                sys.stdout.write(chunk)
            sys.stderr.write(chunk * 8)
            sys.stdout.flush()
    """
    tracemalloc.start()
    try:
        report = sandboxed(program, ["attempt()", "assert True"], run=run)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert report.passed == 2
    assert len(report.stdout) == len(report.stderr) == Limits().output_bytes
    assert peak < 16 << 20  # the server read 108 MiB and kept 128 KiB


@LOOPS
def test_cancelling_kills_the_whole_group_at_once(run):
    started: list[int] = []

    async def go() -> None:
        task = asyncio.create_task(run_tests(
            "import time\ndef attempt():\n    time.sleep(10 ** 6)\n", ["attempt()"],
            Limits(wall_s=60), on_start=started.append))
        while not started:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.5)  # the harness is up and sleeping
        os.killpg(started[0], 0)  # the group is alive before the cancel
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(asyncio.wait_for(go(), 30))
    assert gone(started[0])


# ------------------------------------------------------------------ layers, text


def test_sandbox_layers_says_what_is_active():
    layers = sandbox_layers()
    assert set(layers) >= {"bwrap", "namespaces", "user", "rlimits", "nproc", "audit_hooks"}
    assert all(isinstance(v, bool) for v in layers.values())
    if shutil.which("bwrap") is None:
        assert not layers["bwrap"]
    assert layers["namespaces"] == (layers["bwrap"] or layers["unshare"])
    assert sandbox_layers(NONE) == {**dict.fromkeys(layers, False), "empty_env": True}


@pytest.mark.parametrize("text, program", [
    ("```python\ndef f():\n    return 1\n```", "def f():\n    return 1\n"),
    ("Here:\n```\nx = 1\n```\nDone.", "x = 1\n"),
    ("```python\nx = 1\n```\nbetter:\n```py\nx = 2\n```\n", "x = 2\n"),
    ("```python\nx = 1\n```\noutput:\n```text\n1\n```", "x = 1\n"),
    ("```bash\nls\n```", "ls\n"),
    ("1. Step\n   ```python\n   x = 1\n   ```\n", "x = 1\n"),
    ("```python\r\nx = 1\r\n```\r\n", "x = 1\n"),
    ("```python\ndef f():\n    return 1", "def f():\n    return 1\n"),  # out of tokens
    ("def f():\n    return 1\n", "def f():\n    return 1\n"),  # no fence: the whole text
])
def test_extract_program(text, program):
    assert extract_program(text) == program


def test_split_tests():
    assert split_tests("assert f(1)\nassert f(2)\n") == ["assert f(1)\nassert f(2)\n"]
    assert split_tests(["assert a", "assert b"]) == ["assert a", "assert b"]
    assert split_tests("  \n") == []
    with pytest.raises(TypeError):
        split_tests(["assert a", 3])  # type: ignore[list-item]
