"""Run untrusted candidate programs against unit tests: the sandbox of the code world.

A candidate program is untrusted input: a policy wrote it, a user may have steered the policy,
and it runs on the server. ``run_tests(program, tests, limits)`` execs the program once in a
fresh interpreter, runs each test snippet after it in the same namespace, and returns a
``TestReport`` (passed, failed = AssertionError, errored = anything else, the first error's
last traceback line, timed_out). ``extract_program`` takes the program out of a completion,
``split_tests`` normalises a dataset's tests, ``sandbox_layers()`` says what this machine
gives (for /health and logs).

Like OpenAI human-eval's ``execution.py`` and bigcode-evaluation-harness, this runs model code
on the host; unlike them it does not stop at rlimits and monkeypatching. The layers, each
switchable (``Layers``) so that the tests can show what each one stops on its own:

=============  ============================================  =====================================
layer          stops                                          cannot stop
=============  ============================================  =====================================
always         one process group per candidate, SIGKILLed     what a process outside the group
               on every way out (return, exception, cancel,   does (something that escaped it by
               wall clock); ``python -I -S`` (no env vars,    setsid: only without namespaces
               no user site, no site-packages); an empty      and with both the audit hook and
               environment (TMPDIR = the working directory);  RLIMIT_NPROC bypassed)
               a fresh working directory, removed after
bwrap          network (own net namespace: its own loopback   the kernel's attack surface (no
(bubblewrap,   and nothing else); other processes (own        seccomp filter); reads of what it
used when it   pid namespace, the harness is its pid 1);      binds (/usr and the interpreter's
works here)    the file system: a read-only view of /usr,     prefix, world-readable anyway);
               /lib*, the interpreter's prefix and            timing and CPU-cache side channels
               ld.so.cache only (no /proc, /home, /root,
               /work, /etc); writes only to a size-capped
               tmpfs working directory; no capabilities;
               no new privileges; dies with the server
unshare        without bwrap: network, other processes and    the file system (no mount view:
(util-linux)   their /proc (net, pid, ipc, uts namespaces);   only the audit hook and the fresh
               setpriv: no new privileges, capabilities off   uid guard it)
user           as root: a fresh uid per candidate (2^30 +    writes to world-writable places
               random), so the kernel's file permissions      (/tmp, /dev/shm) where bwrap does
               apply, other processes cannot be signalled,    not hide them; used only where that
               and RLIMIT_NPROC counts this candidate         uid can run the interpreter (always
               alone (root ignores RLIMIT_NPROC)              under bwrap)
rlimits        CPU time (SIGXCPU: a TimeoutError in the       memory outside the address space
               test, SIGKILL a second later), address space   (a tmpfs file: bwrap caps its size);
               (MemoryError), file size (EFBIG), open files,  wall time (the parent's clock does)
               processes and threads (with the fresh uid)
audit          Python audit hooks (PEP 578) in the harness:   native code: a hook is a second
(harness)      process creation (os.system, subprocess,       layer, not a boundary. ctypes,
               fork, exec, spawn), signals (os.kill),         cffi, sqlite3 and other modules
               sockets but a local socketpair, writes         that reach C or the file system
               outside the working directory (paths           directly are refused at import,
               resolved, links refused), reads of /proc,      but a bug in any C extension, or a
               frame introspection (sys._getframe,            race between a check and the call
               tb_frame, gi_frame, gc.get_objects, signal     (with threads), gets past it. As
               handler frames), code objects built by hand    root without bwrap, the file system
               and marshal.loads (crafted bytecode reads      is protected by this hook alone
               memory), raising its own rlimits, a second     (and the fresh uid where it runs)
               copy of a sanitised builtin module
=============  ============================================  =====================================

Results come back on a pipe of their own, not stdout: the parent hands the harness the pipe's
fd and a 128-bit nonce on stdin before any untrusted code runs, and counts only records that
carry the nonce. The nonce lives in the harness's frame, which the audit hook keeps out of
reach, so a candidate that prints (or writes to every fd) "all passed" still fails. A test that
never ends costs its share of the wall clock (a SIGALRM; the remaining tests still run); one
that ignores the alarm hits the wall, and every test without a result is errored with
TimeoutError. Output beyond ``output_bytes`` is read and dropped as it arrives.

What no layer here stops: a candidate that games weak tests through Python itself (an object
whose ``__eq__`` is always True, a redefined name the tests use); timing side channels; denial
of service within its limits (the caller bounds how many run at once: ``run_tests`` keeps no
state). Not tested on a non-root server (bwrap then needs unprivileged user namespaces).
"""

from .isolation import Layers, sandbox_layers
from .programs import extract_program, split_tests
from .runner import Limits, SandboxError, TestReport, run_tests, run_tests_sync

__all__ = [
    "Layers", "Limits", "SandboxError", "TestReport", "extract_program", "run_tests",
    "run_tests_sync", "sandbox_layers", "split_tests",
]
