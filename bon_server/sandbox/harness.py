"""The sandboxed side: ``python -I -S -c <this file's source>``, one process per candidate.

Standard library only, and never imported by the server: ``runner`` reads this file's text.

stdin holds one JSON object (the program, the tests, the result pipe's fd, a random nonce, the
limits, the workdir), read to its end before any untrusted code runs; then fd 0 is /dev/null.
In order: rlimits; a fresh uid (when the parent asks); the "ready" record; the audit hook;
the program, exec'd once in a fresh module ``__candidate__``; each test in that namespace.

Records go to the result pipe as ``\\n<nonce> <kind> <index> <message>\\n``: kinds R (ready:
set up, untrusted code next), P (passed), F (AssertionError), E (any other exception), T (a
time limit). The leading newline keeps junk a candidate wrote to the pipe from gluing itself
to a real record; the nonce keeps it from writing a record at all.

The candidate shares this interpreter, so everything the harness touches after untrusted code
starts is bound to a local name of ``main`` first: a candidate may monkeypatch builtins and
modules (``os.write = spy``), not our locals, and the audit hook keeps it away from frames.
"""

# all loaded before the audit hook: _posixsubprocess so that ``import subprocess`` still works
# (its fork_exec is replaced, and a second copy refused), pathlib so the hook can read paths
import _imp
import _posixsubprocess
import _signal
import _thread
import json
import os
import pathlib
import resource
import signal
import stat
import sys
import time
import types

EXIT_SETUP_FAILED = 120
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
MESSAGE_CHARS = 500

# Each stops a way to run code outside Python or another process, to reach a frame (where the
# nonce lives), or to leave the sandbox; the module docstring of bon_server.sandbox says more.
BLOCKED_EVENTS = frozenset({
    "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty",
    "subprocess.Popen", "pty.spawn", "os.startfile",
    "os.kill", "os.killpg", "resource.setrlimit", "resource.prlimit",
    "os.symlink", "os.link",
    "sys._current_frames", "sys._current_exceptions", "sys.settrace", "sys.setprofile",
    "sys.addaudithook", "sys.monitoring.register_callback",
    "gc.get_objects", "gc.get_referrers", "gc.get_referents",
    "marshal.load", "sqlite3.connect", "sqlite3.enable_load_extension",
    "sqlite3.load_extension", "ctypes.dlopen", "ctypes.dlsym", "ctypes.cdata",
    "ctypes.addressof", "ctypes.call_function", "ctypes.string_at", "ctypes.wstring_at",
    "webbrowser.open",
})
BLOCKED_MODULES = frozenset({
    "ctypes", "_ctypes", "cffi", "_cffi_backend", "_posixsubprocess", "_sqlite3", "sqlite3",
    "_dbm", "_gdbm", "_multiprocessing", "_posixshmem", "_xxsubinterpreters",
    "_xxinterpchannels", "_testcapi", "_testinternalcapi", "_testbuffer", "_testmultiphase",
    "_testsinglephase", "_testimportmultiple", "_testclinic", "_tkinter",
})
FRAME_ATTRIBUTES = frozenset({"tb_frame", "gi_frame", "cr_frame", "ag_frame", "f_back"})
# event -> (indices of path arguments, indices of dir_fd arguments): writes, all of them
PATH_EVENTS = {
    "os.mkdir": ((0,), (2,)), "os.rmdir": ((0,), (1,)), "os.remove": ((0,), (1,)),
    "os.rename": ((0, 1), (2, 3)), "os.chmod": ((0,), (2,)), "os.chown": ((0,), (3,)),
    "os.utime": ((0,), (3,)), "os.setxattr": ((0,), ()),
    "os.removexattr": ((0,), ()), "os.truncate": ((0,), ()), "shutil.rmtree": ((0,), (1,)),
    "os.chdir": ((0,), ()),
}
# calls no audit event covers: renice, pin or signal another process by pid; make a device
# node (a disk, as root) or a fifo anywhere
REMOVED = tuple((module, name) for module in ("posix", "os") for name in (
    "setpriority", "sched_setaffinity", "sched_setscheduler", "sched_setparam", "pidfd_open",
    "chroot", "mknod", "mkfifo",
)) + (("_signal", "pidfd_send_signal"), ("signal", "pidfd_send_signal"))


class Expired(TimeoutError):
    """A time limit: the test's share of the wall time, or the CPU limit."""


def read_config() -> dict:
    chunks = []
    while chunk := os.read(0, 1 << 16):
        chunks.append(chunk)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    return json.loads(b"".join(chunks))


def set_limits(limits: dict) -> None:
    cpu = max(1, int(-(-limits["cpu_s"] // 1)))  # RLIMIT_CPU counts whole seconds
    for name, soft, hard in (
        ("RLIMIT_CORE", 0, 0),
        ("RLIMIT_CPU", cpu, cpu + 1),  # SIGXCPU at soft (a TimeoutError), SIGKILL at hard
        ("RLIMIT_AS", limits["memory_bytes"], limits["memory_bytes"]),
        ("RLIMIT_FSIZE", limits["file_bytes"], limits["file_bytes"]),
        ("RLIMIT_NOFILE", limits["open_files"], limits["open_files"]),
        ("RLIMIT_NPROC", limits["processes"], limits["processes"]),
    ):
        resource.setrlimit(getattr(resource, name), (soft, hard))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG (an OSError) instead of death


def drop_user(uid: int) -> None:
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)  # as uid 0 before: clears every capability


def make_hook(workdir: str):  # one closure, on purpose: nothing to monkeypatch
    """The audit hook. Everything it calls is bound here, so a candidate that replaces
    ``os.path.realpath`` or ``str`` does not change what it checks."""
    lstat, stat_, readlink, getcwd = os.lstat, os.stat, os.readlink, os.getcwd
    open_, read, close, rdonly = os.open, os.read, os.close, os.O_RDONLY
    getframe, thread = sys._getframe, _thread.get_ident
    is_link, is_dir = stat.S_ISLNK, stat.S_ISDIR
    no_dir_fds = os.O_DIRECTORY | getattr(os, "O_PATH", 0)
    # types.coroutine (asyncio uses it) may replace a code object's flags; nothing else may
    # build code (crafted bytecode reads memory)
    coroutine_code = types.coroutine.__code__
    # marshal.loads only on the bytes of a .pyc of the standard library, just opened (the
    # import system's way); never on bytes of the candidate's making
    stdlib = os.path.realpath(os.path.dirname(os.__file__)) + "/"
    pyc = [""]
    busy = [0]  # the thread in which the hook itself reads a frame or a file
    af_unix = 1  # socket.AF_UNIX, without importing socket
    type_, str_, bytes_, int_, len_ = type, str, bytes, int, len
    # a pathlib path counts when nothing in its class chain was swapped: then its _str slot
    # holds what the OS was given (PurePath.__str__ fills it on the way to open). Where a
    # Python keeps no such slot, pathlib paths are refused (str paths still work).
    pure_path = pathlib.PurePath
    originals = {name: pure_path.__dict__.get(name) for name in ("__str__", "__fspath__", "_str")}
    path_mros = {kind: kind.__mro__ for kind in (pathlib.PosixPath, pathlib.PurePosixPath)}
    if not hasattr(originals["_str"], "__get__"):
        path_mros = {}
    inside = workdir.rstrip("/") + "/"
    blocked_events, blocked_modules = BLOCKED_EVENTS, BLOCKED_MODULES
    frame_attributes, path_events, write_flags = FRAME_ATTRIBUTES, PATH_EVENTS, WRITE_FLAGS
    preloaded = frozenset(sys.modules)  # a re-import would bring back what was removed

    def deny(event: str, detail: object = "") -> None:
        raise PermissionError(f"sandbox: {event} {detail}".rstrip())

    def text(path: object, event: str) -> str:
        """The path as the OS sees it; only types whose conversion a candidate cannot swap
        between the call and this check."""
        kind = type_(path)
        if kind is str_:
            return path  # type: ignore[return-value]
        if kind is bytes_:
            return path.decode("utf-8", "surrogateescape")  # type: ignore[union-attr]
        mro = path_mros.get(kind)
        if mro is not None and kind.__mro__ is mro and all(
            (cls.__dict__.get(name) is originals[name]) if cls is pure_path
            else name not in cls.__dict__
            for cls in mro for name in originals
        ):
            try:
                value = originals["_str"].__get__(path)
            except AttributeError:
                value = None
            if type_(value) is str_:
                return value  # type: ignore[return-value]
        deny(event, f"on a path of type {kind.__name__}")
        return ""

    def resolve(path: str) -> tuple[str, bool]:
        """realpath from bound primitives (symlinks followed, a missing tail kept as is), and
        whether the walk went through /proc (/dev/fd/N is /proc/self/fd/N: a reopened pipe)."""
        if not path.startswith("/"):
            path = getcwd() + "/" + path
        pending = path.split("/")[::-1]
        parts: list[str] = []
        hops, proc = 0, False
        while pending:
            proc = proc or parts[:1] == ["proc"]
            part = pending.pop()
            if part in ("", "."):
                continue
            if part == "..":
                if parts:
                    parts.pop()
                continue
            here = "/" + "/".join(parts + [part])
            try:
                link = is_link(lstat(here).st_mode)
            except (OSError, ValueError):
                link = False
            if not link:
                parts.append(part)
                continue
            hops += 1
            if hops > 40:
                deny("open", "through too many symlinks")
            target = readlink(here)
            if target.startswith("/"):
                parts = []
            pending.extend(target.split("/")[::-1])
        return "/" + "/".join(parts), proc or parts[:1] == ["proc"]

    def writable(path: object, event: str) -> str:
        real, _ = resolve(text(path, event))
        if real != inside[:-1] and not real.startswith(inside) and real != "/dev/null":
            deny(event, f"outside the working directory: {real}")
        return real

    def on_open(path: object, mode: object, flags: int) -> None:
        if type_(path) is int_:
            return  # an fd already open: its opening was checked
        name = text(path, "open")
        if flags & write_flags:
            real = writable(name, "open")
        else:
            real, proc = resolve(name)
            if proc:  # /proc/self/mem, /proc/self/fd/N (the result pipe, reopened to read)
                deny("open", f"of {name}")
        if mode is None:
            # os.open: its dir_fd is not in the event, so no fd of a directory to use as one
            try:
                directory = is_dir(stat_(real).st_mode)
            except (OSError, ValueError):
                directory = False
            if directory or flags & no_dir_fds:
                deny("open", f"of a directory with os.open: {name}")
        pyc[0] = real if mode == "r" and real.endswith(".pyc") and real.startswith(stdlib) else ""

    def from_stdlib_pyc(data: object) -> bool:
        """``data`` is the body of the .pyc just opened (after its 16-byte header)."""
        path, pyc[0] = pyc[0], ""
        if not path or type_(data) is not bytes_:
            return False
        chunks = []
        fd = open_(path, rdonly)
        try:
            while chunk := read(fd, 1 << 20):
                chunks.append(chunk)
        finally:
            close(fd)
        return b"".join(chunks)[16:] == data

    def hook(event: str, args: tuple) -> None:
        if busy[0] == thread():
            return  # the hook's own open and sys._getframe
        if event == "open":
            on_open(*args[:3])
            return
        if event == "marshal.loads":
            busy[0] = thread()
            try:
                ok = from_stdlib_pyc(args[0] if args else None)
            finally:
                busy[0] = 0
            if not ok:
                deny(event)
            return
        pyc[0] = ""
        if event in blocked_events:
            deny(event)
        if event == "sys._getframe":
            raise ValueError("sandbox: frame introspection is blocked")  # stdlib falls back
        if event == "code.__new__":
            busy[0] = thread()
            try:
                caller = getframe(1).f_code  # 0 is this hook; code.replace has no frame
            finally:
                busy[0] = 0
            if caller is not coroutine_code:
                deny(event)
            return
        if event == "object.__getattr__":
            if len_(args) > 1 and args[1] in frame_attributes:
                raise AttributeError(f"sandbox: {args[1]} is blocked")
            return
        if event == "import":
            name = args[0]
            if type_(name) is not str_ or name in preloaded or any(
                    part in blocked_modules for part in name.split(".")):
                raise ImportError(f"sandbox: import of {name} is blocked")
            return
        if event.startswith("socket."):
            # a socketpair (asyncio's self-pipe) is local; connect, bind, send-to are not
            if event == "socket.gethostname" or (event == "socket.__new__" and len_(args) > 1
                                                 and args[1] == af_unix):
                return
            deny(event)
        spec = path_events.get(event)
        if spec is not None:
            paths, dir_fds = spec
            for i in dir_fds:
                if len_(args) > i and args[i] not in (None, -1):
                    deny(event, "with dir_fd")
            for i in paths:
                if type_(args[i]) is int_ and event != "os.truncate":
                    deny(event, "on an fd")
                if type_(args[i]) is not int_:
                    writable(args[i], event)

    return hook


def gated(real, admit):
    """``real`` behind ``admit``, which may refuse or rewrite the arguments. The only
    reference to ``real`` lives in a suspended generator's frame, which the hook keeps
    unreachable (gi_frame); a closure cell would not do (``__closure__`` is readable)."""

    def gate():
        outcome: tuple = (True, None)
        while True:
            args = yield outcome
            try:
                outcome = (True, real(*admit(*args)))
            except BaseException as e:  # handed to the caller
                outcome = (False, e)

    door = gate()
    next(door)

    def call(*args):
        ok, value = door.send(args)
        if ok:
            return value
        raise value

    return call


def seal_frames_and_modules() -> None:
    """Close two ways to a frame that no audit event covers: a signal handler gets the
    interrupted frame (its f_back reaches ours), and ``importlib.util.module_from_spec``
    builds a fresh ``_signal`` (or ``posix``) with its originals, without an import event."""
    callable_, type_, str_, namespace = callable, type, str, types.SimpleNamespace
    preloaded = frozenset(sys.modules)

    def frameless(signum, handler):
        if callable_(handler):
            handler = (lambda h: lambda s, _frame: h(s, None))(handler)
        return signum, handler

    def fresh(spec, *_rest):
        name = spec.name
        if type_(name) is not str_ or name in preloaded:
            raise ImportError(f"sandbox: a second copy of {name} is blocked")
        return (namespace(name=name),)  # read once: a spec cannot change its name later

    _signal.signal = gated(_signal.signal, frameless)  # signal.signal calls it
    _imp.create_builtin = gated(_imp.create_builtin, fresh)


def describe(error: BaseException, name: str = "", type_=type, str_=str) -> str:
    """The last line of the error's traceback: ``Name: message`` (candidate text, cut)."""
    try:
        name = name or type_(error).__name__
        message = str_(error)
    except BaseException:  # a candidate's __str__ may raise anything
        name, message = "Exception", "<unprintable>"
    if type_(name) is not str_ or type_(message) is not str_:
        name, message = "Exception", "<unprintable>"
    line = f"{name}: {message}" if message else name
    return line.replace("\r", " ").replace("\n", " ")[:MESSAGE_CHARS]


def main() -> None:  # the whole run, so that its secrets stay in this frame
    config = read_config()
    fd, nonce = config["fd"], config["nonce"].encode("ascii")
    tests, deadline, audit, workdir = (
        config["tests"], time.monotonic() + config["wall_s"] - 0.05, config["audit"],
        config["workdir"])
    # from here on, only locals: a candidate's ``builtins.str = spy`` must not relabel records
    write, str_, type_, len_, range_, max_ = os.write, str, type, len, range, max

    def emit(kind: bytes, index: int, message: str = "") -> None:
        record = b"\n" + nonce + b" " + kind + b" " + str_(index).encode() + b" "
        write(fd, record + message.encode("utf-8", "replace") + b"\n")

    try:
        if config["rlimits"]:
            set_limits(config["limits"])
        if config["uid"] is not None:
            drop_user(config["uid"])
    except OSError as e:
        sys.stderr.write(f"sandbox setup failed: {e!r}\n")
        sys.exit(EXIT_SETUP_FAILED)
    emit(b"R", -1)

    codes: list = []
    for i, source in enumerate(tests):
        try:
            codes.append(compile(source, f"<test {i}>", "exec"))
        except BaseException as e:  # SyntaxError, MemoryError, RecursionError
            codes.append(describe(e))
    try:
        program = compile(config["program"], "<program>", "exec")
    except BaseException as e:
        program = describe(e)
    del config, tests
    sys.dont_write_bytecode = True  # no .pyc of the candidate's own modules
    module = types.ModuleType("__candidate__")
    sys.modules["__candidate__"] = module
    namespace = module.__dict__

    armed = [False]
    expired, xcpu = Expired, signal.SIGXCPU

    def expire(signum: int, _frame: object) -> None:
        if armed[0]:
            armed[0] = False
            raise expired("CPU time limit exceeded" if signum == xcpu
                          else "the test's share of the wall time ran out")

    signal.signal(signal.SIGALRM, expire)
    signal.signal(signal.SIGXCPU, expire)
    if audit:
        for module_name, attribute in REMOVED:
            vars(sys.modules[module_name]).pop(attribute, None)
        _posixsubprocess.fork_exec = _refuse
        seal_frames_and_modules()
        sys.addaudithook(make_hook(workdir))

    run, setitimer, monotonic, timer = exec, signal.setitimer, time.monotonic, signal.ITIMER_REAL
    assertion, base, describe_ = AssertionError, BaseException, describe

    def attempt(code: object, budget: float) -> tuple[bytes, str]:
        try:
            try:
                armed[0] = True
                setitimer(timer, max_(budget, 0.001))
                run(code, namespace)
            finally:
                armed[0] = False
                setitimer(timer, 0)
        except expired as e:
            return b"T", describe_(e, "TimeoutError")
        except assertion as e:
            return b"F", describe_(e)
        except base as e:  # a test's outcome, whatever it raised
            return b"E", describe_(e)
        return b"P", ""

    count = len_(codes)
    if type_(program) is str_:
        for i in range_(count):
            emit(b"E", i, program)
        return
    # the program gets all the time left; each test then an equal share of what remains
    kind, message = attempt(program, deadline - monotonic())
    if kind != b"P":
        for i in range_(count):
            emit(b"E" if kind == b"F" else kind, i, message)
        return
    for i in range_(count):
        code = codes[i]
        if type_(code) is str_:
            emit(b"E", i, code)
            continue
        kind, message = attempt(code, (deadline - monotonic()) / (count - i))
        emit(kind, i, message)


def _refuse(*_args: object, **_kwargs: object) -> None:
    raise PermissionError("sandbox: process creation is blocked")


if __name__ == "__main__":
    main()
