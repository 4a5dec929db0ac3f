"""The jail itself, probed from inside with hostile Python: what it sees (uid, capabilities,
seccomp, namespaces, network), what it cannot read or write, and the limits that stop fork,
memory and file bombs; then the parent's reduction of the child's error text."""

from __future__ import annotations

import json
import os
import secrets
import socket
import sys
import textwrap
import time
from pathlib import Path

import pytest

from app.certificates.pki import ensure_local_pki
from app.processes import alive
from app.sandbox import (
    NOBODY,
    STDERR_LINES,
    STDOUT_CHARS,
    Limits,
    SandboxResult,
    SandboxUnavailable,
    describe_failure,
    jail_problem,
    run,
    run_science,
    sanitise,
)
from app.settings import Settings

LIMITS = Limits(cpu_seconds=60, memory_bytes=2**30, file_bytes=2**20, processes=64, tmp_bytes=2**20)


@pytest.fixture
def secret(tmp_path: Path) -> tuple[Path, str]:
    """A key-like file outside the job's folder, as the service's data directory holds."""
    text = f"-----BEGIN PRIVATE KEY-----\n{secrets.token_hex(24)}\n-----END PRIVATE KEY-----\n"
    path = tmp_path / "data" / "pki" / "ca.key"
    path.parent.mkdir(parents=True)
    path.write_text(text)
    return path, text


def _jailed(
    tmp_path: Path, code: str, limits: Limits = LIMITS, timeout: float = 60
) -> SandboxResult:
    job = tmp_path / "data" / "store" / "scratch" / "job"
    job.mkdir(parents=True, exist_ok=True)
    (job / "probe.py").write_text(textwrap.dedent(code))
    return run([sys.executable, "probe.py"], workdir=job, timeout=timeout, limits=limits)


def test_the_jail_is_available_here() -> None:
    assert jail_problem("bwrap") is None


def test_the_jail_is_active_seen_from_inside(tmp_path: Path) -> None:
    result = _jailed(
        tmp_path,
        """
        import json, os, socket
        status = dict(l.split(":\\t", 1) for l in open("/proc/self/status").read().splitlines())
        print(json.dumps({
            "status": status, "pid": os.getpid(), "cwd": os.getcwd(),
            "root": sorted(os.listdir("/")),
            "interfaces": [name for _, name in socket.if_nameindex()],
            "processes": sorted(p for p in os.listdir("/proc") if p.isdigit()),
        }))
        """,
    )
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    status = seen["status"]
    assert status["Uid"].split() == [str(NOBODY)] * 4
    assert status["Gid"].split() == [str(NOBODY)] * 4
    assert status["CapEff"] == status["CapBnd"] == "0000000000000000"
    assert status["NoNewPrivs"] == "1"
    assert status["Seccomp"] == "2"  # a filter is loaded
    assert seen["interfaces"] == ["lo"]
    assert seen["pid"] < 10
    assert len(seen["processes"]) <= 3
    assert seen["cwd"] == "/job"
    assert not {"home", "data", "var", "srv", "opt"} & set(seen["root"])
    # bwrap's own report: every namespace differs from the service's
    for kind in ("pid", "net", "mnt", "ipc", "uts"):
        assert result.jail[f"{kind}-namespace"] != os.stat(f"/proc/self/ns/{kind}").st_ino


def test_files_outside_the_job_cannot_be_read_or_written(
    tmp_path: Path, secret: tuple[Path, str]
) -> None:
    path, text = secret
    result = _jailed(
        tmp_path,
        f"""
        import os
        for target in [{str(path)!r}, "../../../pki/ca.key", "/etc/shadow", "/root/.bashrc",
                       "/proc/1/environ", "/proc/{os.getpid()}/environ"]:
            try:
                print("READ", target, open(target).read())
            except OSError as exc:
                print("refused", type(exc).__name__)
        for target in ["/usr/escape", "/escape", "/dev/shm/escape", "../escape",
                       {str(tmp_path / "escape")!r}]:
            try:
                open(target, "w").write("x")
                print("WROTE", target)
            except OSError as exc:
                print("refused", type(exc).__name__)
        """,
    )
    assert result.returncode == 0, result.stderr
    assert "READ" not in result.stdout
    assert "WROTE" not in result.stdout
    assert text not in result.stdout + result.stderr
    assert not (tmp_path / "escape").exists()
    assert not (tmp_path / "data" / "store" / "scratch" / "escape").exists()


def test_no_key_and_no_signer_are_within_reach(tmp_path: Path) -> None:
    """The service's real signing key and CA certificate (a pki folder beside the job's data
    directory, as the embedded service has it), and the signer process's socket: the jail can
    neither read the key nor ask the signer to sign."""
    pki = ensure_local_pki(tmp_path / "data" / "pki")
    key = pki.signer_key.read_text()
    address = tmp_path / "data" / "signer.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listening:
        listening.bind(str(address))
        listening.listen()
        result = _jailed(
            tmp_path,
            f"""
            import os, socket
            for target in [{str(pki.signer_key)!r}, {str(pki.ca_cert)!r},
                           "../../../pki/signer.key", "../../../pki/signers.json"]:
                try:
                    print("READ", target, open(target).read())
                except OSError as exc:
                    print("refused", type(exc).__name__)
            for target in [{str(address)!r}, "../../../signer.sock"]:
                try:
                    socket.socket(socket.AF_UNIX).connect(target)
                    print("CONNECTED", target)
                except OSError as exc:
                    print("refused", type(exc).__name__)
            """,
        )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["refused", "FileNotFoundError"] * 6
    assert key not in result.stdout + result.stderr


def test_no_network_and_no_new_namespaces(tmp_path: Path) -> None:
    result = _jailed(
        tmp_path,
        """
        import ctypes, socket
        for family in (socket.AF_INET, socket.AF_INET6):
            try:
                socket.socket(family, socket.SOCK_STREAM).connect(("127.0.0.1", 5432))
                print("CONNECTED")
            except OSError as exc:
                print("refused", exc.errno)
        libc = ctypes.CDLL(None, use_errno=True)
        print("unshare", libc.unshare(0x10000000), ctypes.get_errno())  # CLONE_NEWUSER
        """,
    )
    assert result.returncode == 0, result.stderr
    assert "CONNECTED" not in result.stdout
    assert "unshare -1 1" in result.stdout  # EPERM from the seccomp filter


def _in_jail(result: SandboxResult) -> list[int]:
    """Processes still running in the run's PID namespace (bwrap names it): the jail's own, not
    another test's jailed run beside it under the same uid. Zombies are not counted (the jail's
    first process, reparented, waits there for this machine's init to reap it)."""
    namespace = result.jail["pid-namespace"]
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if not entry.name.isdigit() or (entry / "ns" / "pid").stat().st_ino != namespace:
                continue
            if alive(int(entry.name)):
                found.append(int(entry.name))
        except OSError:  # gone meanwhile
            continue
    return found


def _none_left(result: SandboxResult) -> bool:
    deadline = time.monotonic() + 5
    while _in_jail(result) and time.monotonic() < deadline:
        time.sleep(0.1)
    return _in_jail(result) == []


def test_a_fork_bomb_is_contained(tmp_path: Path) -> None:
    started = time.monotonic()
    result = _jailed(
        tmp_path,
        """
        import os
        children = 0
        while True:
            try:
                if os.fork() == 0:
                    while True:
                        os.fork() if os.getpid() % 2 else None
                children += 1
            except OSError:
                print("fork refused after", children, flush=True)
                raise SystemExit(3)
        """,
        limits=Limits(60, 2**30, 2**20, processes=32, tmp_bytes=2**20),
        timeout=20,
    )
    assert result.returncode != 0
    assert time.monotonic() - started < 30
    # nothing of the bomb outlives the jail, and the next run works
    assert _none_left(result)
    assert _jailed(tmp_path, "print('fine')").stdout.strip() == "fine"


def test_a_run_past_its_time_is_killed_with_everything_it_started(tmp_path: Path) -> None:
    started = time.monotonic()
    result = _jailed(
        tmp_path,
        """
        import os, time
        for _ in range(4):
            if os.fork() == 0:
                break
        while True:
            time.sleep(0.01)
        """,
        timeout=2,
    )
    assert result.timed_out
    assert time.monotonic() - started < 15
    assert describe_failure(result, "x") == "x: the time limit was exceeded"
    assert _none_left(result)


def test_memory_and_file_size_limits(tmp_path: Path) -> None:
    memory = _jailed(tmp_path, "bytearray(3 * 2**30)")
    assert memory.returncode != 0
    assert "memory limit" in describe_failure(memory, "x")
    big = _jailed(tmp_path, "open('big', 'wb').write(b'0' * (2 * 2**20))")
    assert "file size limit" in describe_failure(big, "x")
    tmp = _jailed(tmp_path, "open('/tmp/big', 'wb').write(b'0' * (2 * 2**20))")
    assert tmp.returncode != 0  # /tmp is a small tmpfs


def test_a_pytorch_audit_runs_jailed_as_it_sees_itself(tmp_path: Path) -> None:
    from tests.app.networks.test_hostile import _Identity, _torchscript
    from tests.app.networks.test_router import MANIFEST

    job = tmp_path / "job"
    job.mkdir()
    (job / "m.ts").write_bytes(_torchscript(_Identity()))
    (job / "manifest.json").write_text(json.dumps(MANIFEST))
    args = ["audit", "m.ts", "--manifest", "manifest.json", "--protocol", "quick"]
    args += ["--only", "sampling", "--out", "out"]
    result = run_science(args, workdir=job, timeout=300, limits=Settings().sandbox_limits())
    assert result.returncode == 0, result.stderr
    results = json.loads((job / "out" / "results.json").read_text())
    assert results["model"]["format"] == "torchscript"
    assert results["environment"]["isolation"] == {
        "uid": NOBODY,
        "pid": 2,
        "no_new_privileges": True,
        "seccomp": "filter",
        "capabilities": False,
    }
    # the science only: results and the figures' arrays, drawn outside the jail
    assert sorted(p.name for p in (job / "out").iterdir()) == [
        "figure_data.json",
        "figure_data.npz",
        "results.json",
    ]


def test_the_jail_holds_the_science_and_not_the_service(tmp_path: Path) -> None:
    import app

    project = Path(app.__file__).resolve().parents[1]
    result = _jailed(
        tmp_path,
        f"""
        import os
        import reconstruction.run
        try:
            import app.settings
            print("IMPORTED", app.settings.__file__)
        except ImportError as exc:
            print("refused", type(exc).__name__)
        for path in [{str(project / "app")!r}, {str(project / "templates")!r},
                     {str(project / "worker")!r}]:
            print("SEEN" if os.path.exists(path) else "absent", path)
        """,
    )
    assert result.returncode == 0, result.stderr
    assert "refused" in result.stdout
    assert "IMPORTED" not in result.stdout
    assert "SEEN" not in result.stdout


def test_a_missing_tool_refuses_instead_of_running_bare(tmp_path: Path) -> None:
    with pytest.raises(SandboxUnavailable, match="is not installed"):
        run(["true"], workdir=tmp_path, timeout=5, limits=LIMITS, bwrap="/nonexistent/bwrap")


def test_the_childs_words_are_reduced_to_a_safe_excerpt() -> None:
    leak = (
        "RuntimeError: LEAK:-----BEGIN PRIVATE KEY----- MIGHAgEAMBMGByqGSM49AgEGCCqGSM49 "
        "aGVsbG8gd29ybGQ= /srv/data/pki/ca.key \x00\x01secret 0123456789abcdef0123 done"
    )
    excerpt = sanitise(leak)
    for fragment in ("BEGIN", "MIGH", "aGVs", "/srv", "pki", "\x00", "0123456789abcdef"):
        assert fragment not in excerpt
    assert excerpt.startswith("RuntimeError:")
    assert excerpt.endswith("done")
    assert len(sanitise("word " * 100)) <= 164
    message = describe_failure(SandboxResult(1, "", f"Traceback\n{leak}\n"), "it failed")
    assert message.startswith("it failed: the model raised an error (")
    refused = describe_failure(SandboxResult(2, "", "Error: manifest field 'x' is wrong\n"), "v")
    assert refused == "v: the model or its manifest was refused (manifest field 'x' is wrong)"
    timed_out = describe_failure(SandboxResult(-9, "", "anything", timed_out=True), "v")
    assert timed_out == "v: the time limit was exceeded"


def test_the_parent_keeps_a_bounded_part_of_the_output(tmp_path: Path) -> None:
    result = _jailed(
        tmp_path,
        """
        import sys
        sys.stdout.write("x" * (9 * 2**20))
        sys.stderr.write("y" * (3 * 2**20) + "\\n")
        for i in range(5000):
            print('{"progress": {"stage": "fake", "done": "all"}}', file=sys.stderr)
            print(f"line {i}", file=sys.stderr)
        """,
    )
    assert result.returncode == 0
    assert len(result.stdout) == STDOUT_CHARS
    lines = result.stderr.splitlines()
    assert len(lines) == STDERR_LINES
    assert lines[-1] == "line 4999"


def test_trees_under_tmp_stay_visible(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A clone of the project (and its virtual environment) may live under /tmp: the jail's
    private /tmp must not hide it."""
    import app.sandbox as sandbox

    tree = tmp_path / "clone"
    tree.mkdir()
    (tree / "marker.txt").write_text("visible")
    trees = sandbox._python_trees()
    monkeypatch.setattr(sandbox, "_python_trees", lambda: [*trees, tree])
    result = _jailed(tmp_path, f"print(open({str(tree / 'marker.txt')!r}).read())")
    assert result.returncode == 0, result.stderr
    assert "visible" in result.stdout
