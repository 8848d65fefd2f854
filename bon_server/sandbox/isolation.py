"""The OS layers around a candidate's interpreter: which this machine has, and the command line.

Probed once per process, on first use (a sandboxed ``python -c pass`` through each wrapper,
and one as a fresh uid that imports and writes), so a machine where bubblewrap is installed but
cannot create namespaces falls back instead of failing every candidate. ``sandbox_layers()``
reports the outcome for /health and logs; calling it at startup also keeps the probes (about
0.3 s) out of the first request.
"""

from __future__ import annotations

import functools
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass

# a fresh uid per candidate, far above the ranges distributions and subuid maps hand out
UID_BASE = 1 << 30
UID_SPAN = 1 << 24
PROBE_TIMEOUT_S = 20.0


@dataclass(frozen=True, slots=True)
class Layers:
    """Which layers to use where this machine has them; each can be turned off (tests show
    what each one stops by turning the others off)."""

    bwrap: bool = True  # bubblewrap: no network, own pids, a read-only view, a tmpfs workdir
    unshare: bool = True  # without bwrap: util-linux unshare (net, pid) + setpriv (no caps)
    user: bool = True  # as root: a fresh unprivileged uid per candidate
    rlimits: bool = True  # CPU, memory, file size, open files, processes
    audit: bool = True  # Python audit hooks in the harness
    empty_env: bool = True  # False: the server's environment goes through (tests only)


@dataclass(frozen=True, slots=True)
class Plan:
    """What one candidate gets: the layers in force and the uid (None: not dropped)."""

    bwrap: bool
    unshare: bool
    uid: int | None
    layers: Layers


def python_executable() -> str:
    """The server's own interpreter past any venv symlink: same version, and with ``-I -S``
    the venv's packages are not the candidate's business."""
    return os.path.realpath(sys.executable)


def harness_argv(source: str) -> list[str]:
    return [python_executable(), "-I", "-S", "-c", source]


def _bind_args() -> list[str]:
    """A read-only view of what the interpreter needs, nothing else: not /root, /home, /etc,
    /work or /proc (whose /proc/self/fd would reopen the result pipe)."""
    args: list[str] = []
    for top in ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    args += ["--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache"]
    needed = {os.path.realpath(sys.base_prefix), os.path.dirname(python_executable())}
    for path in sorted(needed):
        if not any(path == top or path.startswith(top + "/") for top in ("/usr", "/bin")):
            args += [*_parents(path), "--ro-bind", path, path]
    return args


def _parents(path: str) -> list[str]:
    """bwrap makes a missing parent 0700, which the fresh uid could not cross (pyenv's
    /root/.pyenv/...): make each one 0755 first."""
    args: list[str] = []
    parts = path.strip("/").split("/")[:-1]
    for i in range(len(parts)):
        args += ["--perms", "0755", "--dir", "/" + "/".join(parts[: i + 1])]
    return args


def bwrap_argv(bwrap: str, workdir: str, disk_bytes: int, drop_user: bool) -> list[str]:
    caps: list[str] = []
    if os.geteuid() == 0:  # as root bwrap keeps every capability unless told
        caps = ["--cap-drop", "ALL"]
        if drop_user:  # the harness needs these two to become the fresh uid, then has none
            caps += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    # no --new-session: it would leave our process group (there is no terminal to steal);
    # --as-pid-1: no reaper of bwrap's own, which would outlive it as a zombie of pid 1
    return [
        bwrap, "--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
        "--unshare-cgroup-try", "--die-with-parent", "--as-pid-1", *caps, *_bind_args(),
        "--dev", "/dev", "--remount-ro", "/dev",
        *_parents(workdir), "--perms", "1777", "--size", str(disk_bytes), "--tmpfs", workdir,
        "--chdir", workdir, "--remount-ro", "/", "--",
    ]


def unshare_argv(unshare: str, setpriv: str | None, drop_user: bool) -> list[str]:
    argv = [unshare]
    if os.geteuid() != 0:
        argv += ["--user", "--map-root-user"]
    argv += ["--net", "--pid", "--ipc", "--uts", "--fork", "--kill-child", "--mount-proc", "--"]
    if setpriv is not None:
        keep = "-all,+setuid,+setgid" if drop_user else "-all"
        argv += [setpriv, "--no-new-privs", "--inh-caps=-all", f"--bounding-set={keep}", "--"]
    return argv


def _works(argv: list[str], workdir: str, source: str = "pass") -> bool:
    try:
        done = subprocess.run(argv + harness_argv(source), cwd=workdir, env={},
                              stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=PROBE_TIMEOUT_S, start_new_session=True)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def _as_fresh_user(workdir: str, uid: int) -> str:
    """A probe: become ``uid`` as the harness does, then import a module not loaded yet and
    write into the working directory (by its absolute path, as tempfile does)."""
    return (f"import os; os.setgroups([]); os.setresgid({uid}, {uid}, {uid}); "
            f"os.setresuid({uid}, {uid}, {uid}); import fractions; "
            f"open({workdir!r} + '/probe', 'w').write('ok')")


@functools.cache
def _bwrap() -> str | None:
    """bubblewrap's path, when it is installed and works here."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return None
    with tempfile.TemporaryDirectory(prefix="bon-sandbox-probe-") as workdir:
        ok = _works(bwrap_argv(bwrap, workdir, 1 << 20, os.geteuid() == 0), workdir)
    return bwrap if ok else None


@functools.cache
def _unshare() -> tuple[str, str | None] | None:
    unshare, setpriv = shutil.which("unshare"), shutil.which("setpriv")
    if unshare is None:
        return None
    with tempfile.TemporaryDirectory(prefix="bon-sandbox-probe-") as workdir:
        for tool in (setpriv, None) if setpriv else (None,):
            if _works(unshare_argv(unshare, tool, os.geteuid() == 0), workdir):
                return unshare, tool
    return None


@functools.cache
def _fresh_user_works(bwrap: bool) -> bool:
    """As root: can a fresh uid run the interpreter (inside bwrap, or bare)? Bare, it cannot
    where the interpreter lives under a private directory (pyenv's /root/.pyenv)."""
    if os.geteuid() != 0:
        return False
    uid = UID_BASE + UID_SPAN  # just past the candidates' range
    with tempfile.TemporaryDirectory(prefix="bon-sandbox-probe-") as workdir:
        os.chown(workdir, uid, uid)
        argv: list[str] = []
        if bwrap:
            path = _bwrap()
            assert path is not None
            argv = bwrap_argv(path, workdir, 1 << 20, drop_user=True)
        return _works(argv, workdir, _as_fresh_user(workdir, uid))


def plan(layers: Layers) -> Plan:
    bwrap = layers.bwrap and _bwrap() is not None
    unshare = not bwrap and layers.unshare and _unshare() is not None
    user = layers.user and _fresh_user_works(bwrap)
    uid = UID_BASE + secrets.randbelow(UID_SPAN) if user else None
    return Plan(bwrap=bwrap, unshare=unshare, uid=uid, layers=layers)


def wrapper_argv(plan: Plan, workdir: str, disk_bytes: int) -> list[str]:
    """What goes before the interpreter's own argv."""
    if plan.bwrap:
        bwrap = _bwrap()
        assert bwrap is not None
        return bwrap_argv(bwrap, workdir, disk_bytes, plan.uid is not None)
    if plan.unshare:
        found = _unshare()
        assert found is not None
        return unshare_argv(found[0], found[1], plan.uid is not None)
    return []


def sandbox_layers(layers: Layers = Layers()) -> dict[str, bool]:
    """Which layers a candidate gets on this machine (probes run once, on the first call)."""
    chosen = plan(layers)
    return {
        "bwrap": chosen.bwrap,
        "unshare": chosen.unshare,
        "namespaces": chosen.bwrap or chosen.unshare,  # network and pids
        "user": chosen.uid is not None,
        "rlimits": layers.rlimits,
        # root ignores RLIMIT_NPROC: it counts only under the fresh uid (or a non-root server)
        "nproc": layers.rlimits and (chosen.uid is not None or os.geteuid() != 0),
        "audit_hooks": layers.audit,
        "empty_env": layers.empty_env,
        "seccomp": False,
    }
