"""Run untrusted models only in a jail: a child process under bubblewrap (``bwrap``), with its
own mount, PID, network, IPC and UTS namespaces, an unprivileged uid, a seccomp filter, resource
limits, and an environment that holds no secrets.

Inside the jail the filesystem is a fresh tmpfs holding, read-only, ``/usr``, the Python
installation, the virtual environment and the project's packages, and, writable, the job's own
folder at ``/job`` (the model, manifest and images copied in, the outputs written there) and a
size-capped ``/tmp``. Nothing of the data directory (database, store, signing keys), of
``/etc`` (but its ``alternatives`` and ``fonts``), ``/home`` or ``/root`` (but the Python
installation, where it lives there) is mounted; the network namespace holds only ``lo``.

When the service runs as root, bwrap keeps only the capabilities to change uid and hands over
to ``setpriv``, which drops to uid/gid 65534 (``nobody``) with no capabilities, so the limit on
processes applies (Linux exempts root from ``RLIMIT_NPROC``); otherwise bwrap maps uid 65534 in a
new user namespace onto the service's user. Either way ``no_new_privs`` is set and the seccomp
filter (:func:`seccomp_filter`) refuses mounts, namespaces, ptrace, kernel keyrings, BPF, module
loading and IP sockets.

Upload validation runs ``python -m reconstruction.run inspect`` this way, and every audit
``python -m reconstruction.run audit`` (:func:`run_science`: the science library only; the
jail holds no ``app`` package and no templates); :func:`run` takes any command. The parent
reads the child's JSON output and progress lines; :func:`describe_failure` reduces the child's
error output to a fixed vocabulary and a short sanitised excerpt (the whole output goes to the
service log only).
"""

from __future__ import annotations

import ctypes
import errno
import json
import logging
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import IO, Any

from app.errors import Unavailable

__all__ = [
    "JOB",
    "NOBODY",
    "PROGRESS_PREFIX",
    "STDERR_LINES",
    "STDOUT_CHARS",
    "Limits",
    "SandboxResult",
    "SandboxUnavailable",
    "describe_failure",
    "jail_problem",
    "run",
    "run_limited",
    "run_science",
    "sanitise",
    "seccomp_filter",
]

log = logging.getLogger(__name__)

#: lines the child writes on stderr to report progress: ``{"progress": {...}}``
PROGRESS_PREFIX = '{"progress":'
#: what the parent keeps of a jailed run's output (the rest is read and dropped): the head of
#: stdout, the last lines of stderr, each line cut
STDOUT_CHARS = 4 * 2**20
STDERR_LINES = 2000
LINE_CHARS = 8192
PR_SET_PDEATHSIG = 1
#: where the job's folder appears inside the jail (no host path is ever shown to the child)
JOB = "/job"
#: the uid and gid the jailed process runs as
NOBODY = 65534
#: environment variables passed through to the child (everything else is dropped)
PASSED = ("LANG", "LC_ALL", "TZ", "RECON_AUDIT_COMPILE", "OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES")
#: syscalls the jailed process may not make (refused with EPERM): mounts, namespaces, tracing
#: and other processes' memory, kernel keyrings, BPF, perf, module and kernel loading, clocks,
#: swap, reboot, handles to files by inode (as Docker's default seccomp profile)
DENIED_SYSCALLS = (
    "acct", "add_key", "bpf", "clock_adjtime", "clock_settime", "delete_module",
    "finit_module", "fsconfig", "fsmount", "fsopen", "fspick", "init_module", "ioperm", "iopl",
    "kcmp", "kexec_file_load", "kexec_load", "keyctl", "lookup_dcookie", "mount",
    "mount_setattr", "move_mount", "name_to_handle_at", "nfsservctl", "open_by_handle_at",
    "open_tree", "perf_event_open", "pivot_root", "process_vm_readv", "process_vm_writev",
    "ptrace", "quotactl", "reboot", "request_key", "setns", "settimeofday", "swapoff", "swapon",
    "syslog", "umount2", "unshare", "uselib", "userfaultfd",
)  # fmt: skip
#: socket families refused (IPv4, IPv6, raw packets): the network namespace has only ``lo``
DENIED_SOCKET_FAMILIES = (2, 10, 17)
#: clone flags that create namespaces: NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET,
#: NEWTIME
CLONE_NAMESPACES = (
    0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000, 0x80,
)  # fmt: skip


class SandboxUnavailable(Unavailable):
    """The jail cannot run on this machine; untrusted code is then refused, never run bare."""


@dataclass(frozen=True)
class Limits:
    """Per jailed run: CPU seconds, memory (``RLIMIT_DATA``: heap and private mappings, which
    leaves CUDA's address-space reservations alone), the largest file it may write, the number
    of processes and threads of the jail's uid, and the size of its ``/tmp``."""

    cpu_seconds: int
    memory_bytes: int
    file_bytes: int
    processes: int
    tmp_bytes: int


@dataclass(frozen=True)
class SandboxResult:
    returncode: int
    stdout: str
    stderr: str
    timed_out: bool = False
    #: bwrap's report on the child it started: its namespaces' ids (``--info-fd``)
    jail: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------- the jail
def seccomp_filter() -> IO[bytes]:
    """The compiled BPF program (libseccomp, through ``pyseccomp``) in an unlinked file."""
    import pyseccomp

    rules = pyseccomp.SyscallFilter(defaction=pyseccomp.ALLOW)
    for name in DENIED_SYSCALLS:
        rules.add_rule(pyseccomp.ERRNO(errno.EPERM), name)
    for family in DENIED_SOCKET_FAMILIES:
        rules.add_rule(
            pyseccomp.ERRNO(errno.EAFNOSUPPORT), "socket", pyseccomp.Arg(0, pyseccomp.EQ, family)
        )
    for flag in CLONE_NAMESPACES:
        rules.add_rule(
            pyseccomp.ERRNO(errno.EPERM), "clone", pyseccomp.Arg(0, pyseccomp.MASKED_EQ, flag, flag)
        )
    # clone3 passes its flags in memory, out of a filter's reach: ENOSYS makes libc use clone
    rules.add_rule(pyseccomp.ERRNO(errno.ENOSYS), "clone3")
    program = tempfile.TemporaryFile()
    rules.export_bpf(program)
    program.seek(0)
    return program


def _python_trees() -> list[Path]:
    """What the interpreter needs, read-only: its installation (``sys.base_prefix``), the
    virtual environment, and the science library (``reconstruction/``; not the service's
    ``app/``, nor its templates)."""
    import reconstruction

    trees = [Path(sys.base_prefix).resolve(), Path(sys.prefix).resolve()]
    trees.append(Path(reconstruction.__file__).resolve().parent)
    return [t for t in dict.fromkeys(trees) if not _under(t, Path("/usr"))]


def _under(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _parents(path: Path, made: set[Path]) -> Iterator[str]:
    """``--dir`` for each folder above ``path`` not made yet, world-readable (bwrap would make
    them 0700 as root)."""
    for parent in reversed(path.parents):
        if parent != Path("/") and parent not in made:
            made.add(parent)
            yield from ("--perms", "0755", "--dir", str(parent))


def _bwrap_args(
    bwrap: str, workdir: Path, limits: Limits, seccomp_fd: int, info_fd: int, gpu: bool
) -> list[str]:
    args = [bwrap, "--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts"]
    args += ["--unshare-cgroup-try", "--die-with-parent", "--new-session"]
    if os.geteuid() == 0:
        # root: keep only what setpriv needs to become nobody (see the module's docstring)
        args += ["--cap-drop", "ALL"]
        args += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "--cap-add", "CAP_SETPCAP"]
    else:
        args += ["--unshare-user", "--uid", str(NOBODY), "--gid", str(NOBODY)]
        args += ["--cap-drop", "ALL"]
    args += ["--ro-bind", "/usr", "/usr"]
    for link in ("bin", "sbin", "lib", "lib64", "lib32"):
        target = Path("/") / link
        if target.is_symlink():
            args += ["--symlink", os.readlink(target), str(target)]
        elif target.is_dir():
            args += ["--ro-bind", str(target), str(target)]
    # the private /tmp first: the interpreter or the project may live under /tmp (a CI clone),
    # and a tmpfs mounted after their binds would hide them
    args += ["--size", str(limits.tmp_bytes), "--perms", "1777", "--tmpfs", "/tmp"]
    made: set[Path] = {Path("/tmp")}
    # of /etc only what holds no secrets and is needed: the compilers' links (torch.compile)
    # and fontconfig's configuration (the figures' text)
    for shared in (Path("/etc/alternatives"), Path("/etc/fonts")):
        if shared.is_dir():
            args += [*_parents(shared, made), "--ro-bind", str(shared), str(shared)]
    for tree in _python_trees():
        args += [*_parents(tree, made), "--ro-bind", str(tree), str(tree)]
    args += ["--proc", "/proc", "--dev", "/dev", "--remount-ro", "/dev"]
    if gpu:
        for node in sorted(Path("/dev").glob("nvidia*")):
            args += ["--dev-bind", str(node), str(node)]
    args += ["--bind", str(workdir), JOB, "--remount-ro", "/", "--chdir", JOB]
    args += ["--seccomp", str(seccomp_fd), "--info-fd", str(info_fd), "--"]
    if os.geteuid() == 0:
        args += [_setpriv(), "--reuid", str(NOBODY), "--regid", str(NOBODY), "--clear-groups"]
        args += ["--bounding-set", "-all", "--inh-caps", "-all", "--"]
    return args


def _setpriv() -> str:
    found = shutil.which("setpriv", path="/usr/bin:/bin")
    if found is None:
        raise SandboxUnavailable("setpriv (util-linux) is missing, so the jail cannot drop root")
    return found


def _jail_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k in PASSED}
    home = f"{JOB}/.home"
    env.update(
        PATH=f"{Path(sys.prefix).resolve()}/bin:/usr/local/bin:/usr/bin:/bin",
        HOME=home,
        USER="nobody",
        LOGNAME="nobody",
        TMPDIR="/tmp",
        PYTHONDONTWRITEBYTECODE="1",
        MPLCONFIGDIR=f"{home}/mpl",
    )
    return env


def _limits(limits: Limits) -> Callable[[], None]:
    def apply() -> None:
        # die with the worker: a killed worker must not leave an orphaned audit running
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_DATA, (limits.memory_bytes, limits.memory_bytes))
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_bytes, limits.file_bytes))
        resource.setrlimit(resource.RLIMIT_NPROC, (limits.processes, limits.processes))

    return apply


def _hand_over(workdir: Path) -> None:
    """As root: the jail's uid gets the job's folder and its ``.home`` (its only writable
    places); the inputs in it stay root's, readable, so what is stored afterwards is never the
    jail's to change. The folder is searchable by bwrap, which enters it after dropping its
    capabilities (the scratch folder above stays 0700)."""
    if os.geteuid() != 0:
        return
    for folder, dirs, files in os.walk(workdir):
        for name in dirs:
            os.chmod(os.path.join(folder, name), 0o755)
        for name in files:
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                os.chmod(path, os.stat(path).st_mode | 0o444)
    for mine in (workdir, workdir / ".home"):
        os.chown(mine, NOBODY, NOBODY)
    os.chmod(workdir, 0o711)


@lru_cache
def jail_problem(bwrap: str) -> str | None:
    """Why the jail cannot run here (``None``: it can), from one trial run of Python in it."""
    if shutil.which(bwrap) is None:
        return f"bubblewrap ({bwrap}) is not installed"
    try:
        with tempfile.TemporaryDirectory(prefix="jail-probe-") as folder:
            result = run(
                [sys.executable, "-c", "import reconstruction"],
                workdir=Path(folder),
                timeout=60,
                limits=Limits(60, 2**30, 2**20, 4096, 2**20),
                bwrap=bwrap,
                probe=False,
            )
    except (OSError, ImportError, SandboxUnavailable) as exc:
        return f"the jail cannot start: {exc}"
    if result.returncode != 0:
        return f"the jail cannot start: {sanitise(result.stderr)}"
    return None


def run_limited(command: Sequence[str], *, timeout: float, limits: Limits) -> SandboxResult:
    """A *trusted* command outside the jail (the service's own code on a jailed run's data)
    under the jail's resource limits: CPU time, memory, file size, a wall-clock ``timeout``
    (then SIGKILL to its process group), and it dies with its parent. Its output is kept to
    the caps of :func:`run`."""
    process = subprocess.Popen(
        list(command),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
        start_new_session=True,
        preexec_fn=_limits(limits),
    )
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        return SandboxResult(-signal.SIGKILL, out[:STDOUT_CHARS], err[-STDOUT_CHARS:], True)
    return SandboxResult(process.returncode, out[:STDOUT_CHARS], err[-STDOUT_CHARS:])


def run(
    command: Sequence[str],
    *,
    workdir: Path,
    timeout: float,
    limits: Limits,
    bwrap: str = "bwrap",
    gpu: bool = False,
    on_progress: Callable[[dict[str, object]], None] | None = None,
    probe: bool = True,
) -> SandboxResult:
    """``command`` in the jail, with ``workdir`` as its folder (``/job``, the working directory;
    paths in ``command`` are relative to it), under ``limits`` and a wall-clock ``timeout``;
    progress lines on stderr are passed to ``on_progress`` as they arrive.

    Raises :class:`SandboxUnavailable` when the jail cannot run on this machine."""
    if probe and (problem := jail_problem(bwrap)) is not None:
        raise SandboxUnavailable(
            f"untrusted models run only in a jail, and it is unavailable: {problem}"
        )
    (workdir / ".home").mkdir(exist_ok=True)
    _hand_over(workdir)
    info_read, info_write = os.pipe()
    with seccomp_filter() as program:
        try:
            argv = _bwrap_args(bwrap, workdir, limits, program.fileno(), info_write, gpu)
            process = subprocess.Popen(
                [*argv, *command],
                cwd="/",
                env=_jail_env(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                errors="replace",
                start_new_session=True,
                pass_fds=(program.fileno(), info_write),
                preexec_fn=_limits(limits),
            )
        finally:
            os.close(info_write)
    return _collect(process, timeout, info_read, on_progress)


def _collect(
    process: subprocess.Popen[str],
    timeout: float,
    info_fd: int,
    on_progress: Callable[[dict[str, object]], None] | None,
) -> SandboxResult:
    out_chunks: list[str] = []
    err_lines: deque[str] = deque(maxlen=STDERR_LINES)
    info: list[bytes] = []
    killed: list[bool] = []

    def pump_stdout() -> None:
        assert process.stdout is not None
        kept = 0
        while chunk := process.stdout.read(1 << 16):  # drained to the end, kept to a cap
            if kept < STDOUT_CHARS:
                out_chunks.append(chunk[: STDOUT_CHARS - kept])
                kept += len(out_chunks[-1])

    def pump_info() -> None:
        with os.fdopen(info_fd, "rb") as stream:
            info.append(stream.read(1 << 16))

    def kill() -> None:
        killed.append(True)
        os.killpg(process.pid, signal.SIGKILL)

    readers = [threading.Thread(target=f, daemon=True) for f in (pump_stdout, pump_info)]
    for reader in readers:
        reader.start()
    watchdog = threading.Timer(timeout, kill)
    watchdog.start()
    try:
        assert process.stderr is not None
        while line := process.stderr.readline(LINE_CHARS):
            if line.startswith(PROGRESS_PREFIX):
                update = _progress(line)
                if on_progress is not None and update is not None:
                    on_progress(update)
                continue
            err_lines.append(line)
        process.wait()
    finally:
        watchdog.cancel()
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    for reader in readers:
        reader.join(timeout=10)
    try:
        jail = json.loads(b"".join(info) or b"{}")
    except ValueError:
        jail = {}
    return SandboxResult(
        process.returncode, "".join(out_chunks), "".join(err_lines), bool(killed), jail
    )


def _progress(line: str) -> dict[str, object] | None:
    """A progress line's ``{"stage", "done", "total"}``; ``None`` when it is malformed (the
    jailed process can write anything on stderr)."""
    try:
        update = json.loads(line)["progress"]
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(update, dict) or not isinstance(update.get("stage"), str):
        return None
    if not all(isinstance(update.get(k), int) for k in ("done", "total")):
        return None
    return {"stage": update["stage"][:100], "done": update["done"], "total": update["total"]}


def run_science(
    args: Sequence[str],
    *,
    workdir: Path,
    timeout: float,
    limits: Limits,
    bwrap: str = "bwrap",
    gpu: bool = False,
    on_progress: Callable[[dict[str, object]], None] | None = None,
) -> SandboxResult:
    """``python -m reconstruction.run ARGS`` in the jail (see :func:`run`): the science only,
    with no ``app`` package to import there."""
    return run(
        [str(Path(sys.executable).absolute()), "-m", "reconstruction.run", *args],
        workdir=workdir,
        timeout=timeout,
        limits=limits,
        bwrap=bwrap,
        gpu=gpu,
        on_progress=on_progress,
    )


# ------------------------------------------------------------------ what the parent reports
#: the longest excerpt of the child's own words that an API message may carry
EXCERPT_CHARS = 160
#: longer words are dropped from excerpts (keys, hashes, encoded file content)
WORD_CHARS = 24
_WORD = re.compile(r"[A-Za-z0-9_.,:;()'\[\]=<>+-]+")
#: runs that look encoded (hex, base64): letters and digits mixed, twelve or more
_ENCODED = re.compile(r"^(?=.*[0-9])(?=.*[A-Za-z])[A-Za-z0-9+=]{12,}$|^.*[+=].*[+=].*$")
_SIGNALS = {
    signal.SIGXCPU: "the CPU time limit was exceeded",
    signal.SIGXFSZ: "the file size limit was exceeded",
    signal.SIGSEGV: "the run crashed",
    signal.SIGABRT: "the run aborted",
    signal.SIGBUS: "the run crashed",
    signal.SIGKILL: "the run was killed",
}
_MEMORY = (
    "MemoryError",
    "bad_alloc",
    "Cannot allocate memory",
    "can't allocate memory",
    "Failed to allocate memory",
    "out of memory",
)


def sanitise(text: str) -> str:
    """Words of ``text`` that cannot carry file content: printable ASCII words of at most
    ``WORD_CHARS`` characters, with no path separators, PEM markers or encoded runs; at most
    ``EXCERPT_CHARS`` characters in all."""
    kept: list[str] = []
    for word in text.split():
        if len(word) > WORD_CHARS or "/" in word or "\\" in word or "--" in word:
            continue
        if not _WORD.fullmatch(word) or _ENCODED.match(word):
            continue
        kept.append(word)
    excerpt = " ".join(kept)
    if len(excerpt) > EXCERPT_CHARS:
        excerpt = excerpt[:EXCERPT_CHARS].rsplit(" ", 1)[0] + " ..."
    return excerpt


def describe_failure(result: SandboxResult, what: str) -> str:
    """A failed run in the service's own words: ``what`` failed, a category from a fixed
    vocabulary, and a sanitised excerpt of the child's last error line. The child's whole
    error output is logged (the service log only)."""
    log.warning(
        "%s: jailed run exited with %s (timed out: %s); its stderr:\n%s",
        what,
        result.returncode,
        result.timed_out,
        result.stderr[-20000:],
    )
    lines = [line.strip() for line in result.stderr.splitlines() if line.strip()]
    cli_error = next((line for line in reversed(lines) if line.startswith("Error: ")), None)
    last = cli_error.removeprefix("Error: ") if cli_error else (lines[-1] if lines else "")
    if result.timed_out:
        category = "the time limit was exceeded"
    elif result.returncode < 0 and -result.returncode in _SIGNALS:
        category = _SIGNALS[signal.Signals(-result.returncode)]
    elif any(marker in result.stderr for marker in _MEMORY):
        category = "the memory limit was exceeded"
    elif "File too large" in result.stderr:  # EFBIG: RLIMIT_FSIZE, where SIGXFSZ is ignored
        category = "the file size limit was exceeded"
    elif cli_error is not None:
        category = "the model or its manifest was refused"
    else:
        category = "the model raised an error"
    excerpt = sanitise(last) if not result.timed_out else ""
    return f"{what}: {category}" + (f" ({excerpt})" if excerpt else "")
