"""The deployment files (Dockerfile, docker-compose.yml, .dockerignore), checked statically
against the project: no Docker engine is needed. Paths the image copies exist and keep the
layout the code resolves its files with; the commands are real CLI commands with valid options;
the environment variables name real settings and give the service the URLs it is meant to use;
migrations gate the API and the worker; the worker reserves a GPU; the image does not run as
root and installs the Debian packages the reports need."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import click
import pytest
import yaml
from click.testing import CliRunner
from packaging.specifiers import SpecifierSet
from sqlalchemy.engine import make_url

from app.cli import main as cli
from app.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"
DOCKERIGNORE = ROOT / ".dockerignore"
SYSTEM_DEPS = ROOT / "scripts" / "ensure-system-deps.sh"

SERVICES = {"postgres", "redis", "migrate", "signer", "api", "worker", "worker-cpu"}
APP_SERVICES = ("migrate", "api", "worker", "worker-cpu")
#: the signer runs the same image, with none of the app services' database, store or jail
SIGNER = "signer"
DATA = "/data"
#: variables that configure the container runtime (or the jail's threads, which the sandbox
#: passes to the run: app.sandbox.PASSED) rather than the service
RUNTIME_VARIABLES = ("NVIDIA_", "OMP_NUM_THREADS")
#: the worker's grace period on stop: a quick audit takes about a minute on 2 CPU cores
#: (benchmarks/README.md); allow ten times that before the running audit is killed
MIN_GRACE_SECONDS = 600


# --- Dockerfile ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str
    rest: str
    workdir: PurePosixPath

    def args(self) -> list[str]:
        """Exec (JSON) form or shell-like words, flags (``--from=...``) included."""
        if self.rest.startswith("["):
            words = json.loads(self.rest)
            assert isinstance(words, list)
            return [str(w) for w in words]
        return shlex.split(self.rest)


@cache
def dockerfile() -> tuple[Instruction, ...]:
    """The instructions, continuation lines joined, comments dropped, each with the WORKDIR in
    effect where it appears."""
    out: list[Instruction] = []
    workdir = PurePosixPath("/")
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):  # also inside continued lines, as Docker does
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, rest = (pending + line).strip().partition(" ")
        pending = ""
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "WORKDIR":
            workdir = workdir / rest
        out.append(Instruction(keyword, rest, workdir))
    assert not pending, "the Dockerfile ends inside a continued line"
    return tuple(out)


def instructions(keyword: str) -> list[Instruction]:
    return [i for i in dockerfile() if i.keyword == keyword]


def index_of(keyword: str, contains: str) -> int:
    for n, instruction in enumerate(dockerfile()):
        if instruction.keyword == keyword and contains in instruction.rest:
            return n
    raise AssertionError(f"no {keyword} instruction with {contains!r}")


def copies() -> Iterator[tuple[str, PurePosixPath]]:
    """(source in the build context, where it lands in the image) for every COPY/ADD."""
    for instruction in dockerfile():
        if instruction.keyword not in ("COPY", "ADD"):
            continue
        if any(w.startswith("--from") for w in instruction.args()):
            continue  # from another stage or image, not from the build context
        words = [w for w in instruction.args() if not w.startswith("--")]
        assert len(words) >= 2, instruction
        *sources, dest = words
        target = instruction.workdir / dest
        for source in sources:
            path = source.rstrip("/") or "."
            if (ROOT / path).is_dir() or not (dest.endswith("/") or len(sources) > 1):
                yield path, target  # a folder's contents go into dest; one file may be renamed
            else:
                yield path, target / PurePosixPath(path).name


def env(instruction: Instruction) -> dict[str, str]:
    words = instruction.args()
    if len(words) == 2 and "=" not in words[0]:  # legacy `ENV KEY value`
        return {words[0]: words[1]}
    return dict(word.split("=", 1) for word in words)


def image_env() -> dict[str, str]:
    merged: dict[str, str] = {}
    for instruction in instructions("ENV"):
        merged.update(env(instruction))
    return merged


def run_commands() -> list[str]:
    """The shell commands of every RUN, split at ``&&`` and ``;``."""
    commands: list[str] = []
    for instruction in instructions("RUN"):
        commands += [c.strip() for c in re.split(r"&&|;", instruction.rest) if c.strip()]
    return commands


def apt_packages() -> set[str]:
    packages: set[str] = set()
    for command in run_commands():
        if "apt-get install" in command:
            words = command.split("apt-get install", 1)[1].split()
            packages |= {w for w in words if not w.startswith("-")}
    return packages


def project_root_in_image() -> PurePosixPath:
    destinations = dict(copies())
    return destinations["app"].parent


# --- docker-compose.yml -------------------------------------------------------------------


@cache
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(loaded, dict)
    return loaded


def service(name: str) -> dict[str, Any]:
    found = compose()["services"][name]
    assert isinstance(found, dict)
    return found


def service_env(name: str) -> dict[str, str]:
    raw = service(name).get("environment", {})
    if isinstance(raw, list):
        return dict(str(item).split("=", 1) for item in raw)
    return {str(k): str(v) for k, v in raw.items()}


def duration_seconds(text: str) -> float:
    """A compose duration (``1h30m``, ``90s``, ``15m``) in seconds."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", text)
    assert parts, f"not a duration: {text!r}"
    assert "".join(n + u for n, u in parts) == text, f"not a duration: {text!r}"
    return sum(float(n) * units[u] for n, u in parts)


def recon_audit_commands() -> list[list[str]]:
    """Every ``recon-audit ...`` command the image and the compose file run."""
    found = [i.args() for i in instructions("CMD") + instructions("ENTRYPOINT")]
    found += [list(map(str, service(name)["command"])) for name in (*APP_SERVICES, SIGNER)]
    return [words for words in found if words and words[0] == "recon-audit"]


def parsed(words: list[str]) -> dict[str, Any]:
    """The parameters click parses from ``recon-audit SUB ARGS``: unknown options and bad
    values raise, as they would when the container starts."""
    assert words[0] == "recon-audit"
    name, *args = words[1:]
    command = cli.get_command(click.Context(cli), name)
    assert command is not None, f"recon-audit has no command {name!r}"
    with command.make_context(name, args) as context:
        return dict(context.params)


# --- .dockerignore ------------------------------------------------------------------------


def _pattern(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern (Go filepath.Match plus ``**``) as a regular expression."""
    pattern = pattern.strip().strip("/")
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            body = pattern[i + 1 : end]
            out, i = out + "[" + ("^" + body[1:] if body.startswith("!") else body) + "]", end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


@cache
def ignore_rules() -> tuple[tuple[bool, re.Pattern[str]], ...]:
    rules = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            negated = line.startswith("!")
            rules.append((negated, _pattern(line.removeprefix("!"))))
    return tuple(rules)


def ignored(path: str) -> bool:
    """Whether the build context leaves ``path`` out (a pattern matching a parent folder
    leaves out everything below it; the last matching rule wins)."""
    parts = PurePosixPath(path).parts
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    result = False
    for negated, rule in ignore_rules():
        if any(rule.fullmatch(prefix) for prefix in prefixes):
            result = not negated
    return result


# --- tests: docker-compose.yml ------------------------------------------------------------


def test_compose_services_and_shape() -> None:
    assert "version" not in compose(), "the compose spec has no version key"
    assert set(compose()["services"]) == SERVICES
    assert "x-app" in compose(), "the app services share an x-app anchor"
    for name in SERVICES:
        for dependency in service(name).get("depends_on", {}):
            assert dependency in SERVICES, (name, dependency)


def test_app_services_run_one_image_built_from_this_dockerfile() -> None:
    images = {str(service(name)["image"]) for name in APP_SERVICES}
    builds = [service(name)["build"] for name in APP_SERVICES]
    assert len(images) == 1, images
    assert all(build == builds[0] for build in builds), builds
    build = builds[0]
    assert (ROOT / build["context"]).resolve() == ROOT
    assert (ROOT / build["context"] / build.get("dockerfile", "Dockerfile")).resolve() == (
        DOCKERFILE
    )
    declared = {i.rest.split("=", 1)[0] for i in instructions("ARG")}
    assert set(build.get("args", {})) <= declared, "build args the Dockerfile does not declare"
    assert service(SIGNER)["image"] == service("api")["image"]
    assert service(SIGNER)["build"] == builds[0]
    for name in SERVICES - {*APP_SERVICES, SIGNER}:
        assert "build" not in service(name)


def test_app_services_share_one_data_volume() -> None:
    mounts = set()
    for name in APP_SERVICES:
        targets = {}
        for volume in service(name)["volumes"]:
            source, target = str(volume).split(":")[:2]
            targets[target] = source
        assert DATA in targets, f"{name} does not mount {DATA}"
        mounts.add(targets[DATA])
        assert service_env(name).get("RECON_AUDIT_DATA_DIR", DATA) == DATA
    assert len(mounts) == 1, f"api and worker must see the same store: {mounts}"
    (volume,) = mounts
    assert volume in compose()["volumes"], "a named volume, not a host path"
    assert image_env()["RECON_AUDIT_DATA_DIR"] == DATA
    assert DATA in [w for i in instructions("VOLUME") for w in i.args()]
    postgres_volumes = [str(v).split(":")[0] for v in service("postgres")["volumes"]]
    assert all(v in compose()["volumes"] for v in postgres_volumes)


def _settings_variables() -> set[str]:
    names: set[str] = set()
    prefix = str(Settings.model_config.get("env_prefix", ""))
    for field_name, field in Settings.model_fields.items():
        names.add(f"{prefix}{field_name}".upper())
        choices = getattr(field.validation_alias, "choices", None)
        names |= {str(choice) for choice in choices or ()}
    return names


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_environment_configures_the_settings(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    variables = _settings_variables()
    given = service_env(name)
    for key in given:
        assert key in variables or key.startswith(RUNTIME_VARIABLES), (
            f"{name}: {key} is not a setting of app.settings.Settings"
        )
    for key in list(os.environ):
        if key in variables:
            monkeypatch.delenv(key)
    for key, value in given.items():
        monkeypatch.setenv(key, value)
    settings = Settings()

    assert settings.db_url == given["DATABASE_URL"]
    assert settings.broker == given["BROKER_URL"]
    assert not settings.embedded_broker
    assert settings.data_dir == Path(DATA)
    assert settings.store_dir == Path(DATA) / "store"
    # Redis hands an unacknowledged task to another worker after the visibility timeout, and
    # audits are acknowledged when they finish: the timeout must outlast the longest audit
    assert settings.broker_visibility_timeout > settings.audit_time_limit

    url = make_url(given["DATABASE_URL"])
    postgres = service_env("postgres")
    assert url.drivername == "postgresql+psycopg"
    assert (url.host, url.port) == ("postgres", 5432)
    assert url.username == postgres["POSTGRES_USER"]
    assert url.password == postgres["POSTGRES_PASSWORD"]
    assert url.database == postgres["POSTGRES_DB"]
    broker = urlsplit(given["BROKER_URL"])
    assert (broker.scheme, broker.hostname, broker.port) == ("redis", "redis", 6379)


def _mounts(name: str) -> dict[str, tuple[str, bool]]:
    """A service's volumes: mount point -> (volume, read-only)."""
    out = {}
    for volume in service(name).get("volumes", []):
        source, target, *mode = str(volume).split(":")
        out[target] = (source, mode == ["ro"])
    return out


def test_the_signing_key_is_mounted_into_the_signer_only(monkeypatch: pytest.MonkeyPatch) -> None:
    signer = service(SIGNER)
    assert list(map(str, signer["command"])) == ["recon-audit", "signer"]
    given = service_env(SIGNER)
    assert set(given) <= _settings_variables()
    for key in list(os.environ):
        if key in _settings_variables():
            monkeypatch.delenv(key)
    for key, value in given.items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    # no credentials: the signer needs no database or broker
    assert settings.database_url is None
    assert settings.broker_url is None
    mounts = _mounts(SIGNER)
    key_volume, read_only = mounts[str(settings.pki_dir)]
    assert key_volume in compose()["volumes"]
    assert not read_only
    assert DATA not in mounts, "the signer has no business with the store"
    assert "security_opt" not in signer or signer["security_opt"] == []  # no jail to make
    for name in SERVICES - {SIGNER}:
        volumes = {source for source, _ in _mounts(name).values()}
        assert key_volume not in volumes, f"{name} mounts the signing key's volume"
        assert "RECON_AUDIT_SIGNING_DIR" not in service_env(name)
    # the others reach it through its socket, and read its public files, read-only
    trust_volume = mounts[str(settings.trust_folder)][0]
    socket_volume = mounts[str(settings.signer_address.parent)][0]
    for name in APP_SERVICES:
        theirs = _mounts(name)
        app = Settings(
            trust_dir=Path(service_env(name)["RECON_AUDIT_TRUST_DIR"]),
            signer_socket=Path(service_env(name)["RECON_AUDIT_SIGNER_SOCKET"]),
        )
        assert theirs[str(app.trust_folder)] == (trust_volume, True), name
        assert theirs[str(app.signer_address.parent)] == (socket_volume, False), name
        assert app.signer_address == settings.signer_address
    for name in ("api", "worker", "worker-cpu"):
        assert service(name)["depends_on"][SIGNER]["condition"] == "service_healthy"
    assert "identity" in " ".join(signer["healthcheck"]["test"])
    assert parsed(list(map(str, service("api")["command"])))["with_signer"] is False
    # the image gives the volumes' mount points to its user, the key's folder private
    commands = run_commands()
    assert any(
        c.startswith("mkdir -p") and all(p in c.split() for p in ("/pki", "/trust", "/run/signer"))
        for c in commands
    )
    assert "chmod 0700 /pki" in commands


def test_worker_runs_audits_on_its_reserved_gpu() -> None:
    worker = service("worker")
    (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia"
    assert device["count"] == 1
    assert "gpu" in device["capabilities"]
    assert service_env("worker")["RECON_AUDIT_DEVICE"] == "cuda"
    # one audit at a time per GPU
    assert parsed(list(map(str, worker["command"])))["concurrency"] == device["count"]
    assert duration_seconds(str(worker["stop_grace_period"])) >= MIN_GRACE_SECONDS
    for name in ("api", "migrate", "worker-cpu"):
        assert "deploy" not in service(name), f"{name} needs no GPU"
        assert service_env(name).get("RECON_AUDIT_DEVICE", "cpu") == "cpu"


def test_cpu_workers_scale_with_one_thread_each() -> None:
    worker = service("worker-cpu")
    assert worker["profiles"] == ["cpu"]
    assert service_env("worker-cpu")["OMP_NUM_THREADS"] == "1"
    assert parsed(list(map(str, worker["command"])))["concurrency"] == 1
    # `--scale worker-cpu=N` needs no fixed name and no published port
    assert "container_name" not in worker
    assert "ports" not in worker
    assert duration_seconds(str(worker["stop_grace_period"])) >= MIN_GRACE_SECONDS


def test_migrations_gate_the_api_and_the_worker() -> None:
    migrate = service("migrate")
    assert parsed(list(map(str, migrate["command"]))) == {}
    assert list(map(str, migrate["command"]))[:2] == ["recon-audit", "migrate"]
    assert migrate["restart"] == "no", "a one-shot job (quote 'no': YAML reads it as false)"
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("api", "worker"):
        depends = service(name)["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully"
        assert depends["redis"]["condition"] == "service_healthy"


def test_backing_services_have_health_checks() -> None:
    assert "pg_isready" in " ".join(service("postgres")["healthcheck"]["test"])
    assert service("postgres")["image"].startswith("postgres:16")
    assert " ".join(service("redis")["healthcheck"]["test"][1:]) == "redis-cli ping"
    assert service("redis")["image"].startswith("redis:7")


def test_api_serves_on_the_published_port_with_a_health_check() -> None:
    api = service("api")
    params = parsed(list(map(str, api["command"])))
    assert params["host"] == "0.0.0.0"
    assert params["with_worker"] is False, "workers run in their own service"
    published = {str(p).split(":")[-1] for p in api["ports"]}
    assert str(params["port"]) in published
    test = " ".join(api["healthcheck"]["test"])
    assert f":{params['port']}/healthz" in test
    # the other roles run the same image, whose HEALTHCHECK asks the API
    for name in ("migrate", "worker"):
        assert service(name)["healthcheck"] == {"disable": True}


# --- tests: Dockerfile --------------------------------------------------------------------


def test_base_image_matches_the_supported_python() -> None:
    (base,) = instructions("FROM")
    assert base.rest == "python:3.11-slim-bookworm"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert SpecifierSet(project["requires-python"]).contains("3.11")


def test_every_copied_path_exists_and_is_in_the_build_context() -> None:
    sources = [source for source, _ in copies()]
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: no such path"
        assert not ignored(source), f"COPY {source}: left out by .dockerignore"
    tracked = subprocess.run(
        ["git", "ls-files", "--", *sources],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert tracked
    left_out = [path for path in tracked if ignored(path)]
    assert not left_out, f".dockerignore leaves out files the image needs: {left_out[:5]}"


def test_image_keeps_the_source_layout_the_code_resolves_paths_with() -> None:
    from app import report, service_cli

    # app/report/html.py and app/service_cli.py find these files beside their package folder
    needed = {
        report.TEMPLATES,
        service_cli.ROOT / "alembic.ini",
        service_cli.ROOT / "migrations",
    }
    root = project_root_in_image()
    destinations = dict(copies())
    for path in needed:
        relative = path.relative_to(ROOT).as_posix()
        assert relative in destinations, f"the image does not copy {relative}"
        assert destinations[relative] == root / relative
    for source, target in destinations.items():
        assert target == root / source, f"{source} lands at {target}, not under {root}"
    # installed from that tree (editable), so app/ is imported from it, not from a copy in
    # site-packages that has no templates/ or alembic.ini beside it
    editable = [
        c for c in run_commands() if "pip install" in c and re.search(r"(-e|--editable) ", c)
    ]
    assert editable, "the project must be installed editable from the source tree"
    install = next(i for i in instructions("RUN") if editable[0] in i.rest)
    assert install.workdir == root
    assert index_of("RUN", editable[0]) > max(
        index_of("COPY", source) for source in ("app/", "templates/", "migrations/")
    )


def test_sandboxed_runs_import_the_code_without_pythonpath() -> None:
    from app.sandbox import PASSED

    # audits run `python -m reconstruction.run` in the jail with only these variables (and a
    # PATH of the virtual environment's bin): the image must not rely on any other to make
    # `reconstruction` importable
    assert "PYTHONPATH" not in image_env()
    assert "PYTHONPATH" not in PASSED
    assert image_env()["PATH"].startswith(image_env()["VIRTUAL_ENV"] + "/bin")


def test_the_image_and_compose_let_the_jail_run() -> None:
    # bubblewrap and libseccomp (its filter, built by pyseccomp), as `make install` installs
    script = SYSTEM_DEPS.read_text()
    assert "missing+=(bubblewrap)" in script
    assert {"bubblewrap", "libseccomp2"} <= apt_packages()
    # bwrap makes namespaces and mounts a fresh /proc inside the container: Docker's default
    # seccomp and AppArmor profiles and its masked /proc paths forbid that (docs/security.md)
    for name in ("api", "worker"):
        options = set(service(name).get("security_opt", []))
        assert {"seccomp=unconfined", "apparmor=unconfined", "systempaths=unconfined"} <= (
            options
        ), name
        assert service_env(name).get("RECON_AUDIT_SANDBOX_BWRAP", "bwrap") == "bwrap"


def test_dependencies_install_in_a_cached_layer_before_the_source() -> None:
    first_copy = instructions("COPY")[0]
    assert set(first_copy.args()) <= {"pyproject.toml", "README.md", "./"}
    assert "pyproject.toml" in first_copy.args()
    deps = index_of("RUN", 'pip install --no-cache-dir ".${EXTRAS')
    assert index_of("COPY", "pyproject.toml") < deps < index_of("COPY", "app/")
    for command in run_commands():
        if re.search(r"\bpip install\b", command):
            assert "--no-cache-dir" in command, command
    args = {i.rest.split("=", 1)[0]: i.rest.split("=", 1)[1] for i in instructions("ARG")}
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert args["EXTRAS"] == "gpu"
    assert args["EXTRAS"] in extras


#: the first onnxruntime-gpu release on PyPI built for each CUDA major version torch ships on
ORT_FOR_CUDA = {"13": "1.27.0"}


def test_the_gpu_image_runs_onnxruntime_on_torchs_cuda() -> None:
    """The GPU extra's onnxruntime-gpu is built for the CUDA runtime torch's wheel brings."""
    from torch import version

    assert version.cuda is not None, "torch's PyPI wheel is the CUDA build on x86_64"
    first = ORT_FOR_CUDA[version.cuda.split(".")[0]]
    gpu = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"][
        "gpu"
    ]
    spec = next(
        SpecifierSet(r.removeprefix("onnxruntime-gpu"))
        for r in gpu
        if r.startswith("onnxruntime-gpu")
    )
    older = ".".join([first.split(".")[0], str(int(first.split(".")[1]) - 1), "0"])
    assert first in spec, spec
    assert older not in spec, spec


def test_image_installs_the_debian_packages_the_reports_need() -> None:
    script = SYSTEM_DEPS.read_text()
    needed = set(re.findall(r"missing\+=\(([^)\s]+)\)", script))
    assert needed >= {"libpango-1.0-0", "libpangoft2-1.0-0", "fonts-dejavu-core"}
    installed = apt_packages()
    assert needed <= installed, f"missing from the Dockerfile: {needed - installed}"
    assert "curl" in installed, "the HEALTHCHECK runs curl"
    for instruction in instructions("RUN"):
        if "apt-get install" in instruction.rest:
            assert "--no-install-recommends" in instruction.rest
            assert "rm -rf /var/lib/apt/lists/*" in instruction.rest


def test_compiled_wavelet_kernels_have_a_compiler(monkeypatch: pytest.MonkeyPatch) -> None:
    from reconstruction.wavelets import compile_enabled

    monkeypatch.delenv("RECON_AUDIT_COMPILE", raising=False)
    if compile_enabled() and image_env().get("RECON_AUDIT_COMPILE") != "0":
        # torch.compile's CPU backend builds C++ at run time
        assert apt_packages() & {"g++", "build-essential"}


def test_image_does_not_run_as_root() -> None:
    users = instructions("USER")
    assert users, "no USER: the container would run as root"
    user = users[-1].rest.split(":")[0]
    assert user not in ("root", "0")
    useradd = next(c for c in run_commands() if c.startswith("useradd"))
    uid = re.search(r"--uid (\d+)", useradd)
    assert uid is not None
    assert uid.group(1) == "10001"
    name = useradd.split()[-1]
    assert user in (name, uid.group(1)), "USER is the user the image creates"
    assert f"chown {name}:{name} {DATA}" in run_commands(), "the data volume belongs to it"


def test_cmd_and_healthcheck_serve_the_api() -> None:
    (cmd,) = instructions("CMD")
    params = parsed(cmd.args())
    assert cmd.args()[:2] == ["recon-audit", "serve"]
    assert params["with_worker"] is False
    assert params["host"] == "0.0.0.0"
    exposed = [w for i in instructions("EXPOSE") for w in i.args()]
    assert exposed == [str(params["port"])]
    assert cmd.args() == list(map(str, service("api")["command"]))
    (check,) = instructions("HEALTHCHECK")
    assert f"curl -fsS http://127.0.0.1:{params['port']}/healthz" in check.rest


def test_health_endpoints_exist() -> None:
    from app.main import create_app

    paths = {getattr(route, "path", None) for route in create_app().routes}
    assert {"/healthz", "/readyz"} <= paths


@pytest.mark.parametrize("sub", ["serve", "migrate", "worker", "signer"])
def test_commands_the_containers_run_are_cli_commands(sub: str) -> None:
    used = {words[1] for words in recon_audit_commands()}
    assert sub in used
    result = CliRunner().invoke(cli, [sub, "--help"])
    assert result.exit_code == 0, result.output
    for words in recon_audit_commands():
        if words[1] == sub:
            parsed(words)  # the options exist and their values are valid


# --- tests: .dockerignore -----------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        ".venv/bin/python",
        ".git/HEAD",
        "out/demo/ct/simulation.json",
        "data/recon-audit.db",
        "app/__pycache__/cli.cpython-311.pyc",
        "reconstruction/models/__pycache__/onnx_model.cpython-311.pyc",
        ".mypy_cache/3.11/app/cli.data.json",
        ".ruff_cache/CACHEDIR.TAG",
        ".pytest_cache/v/cache/nodeids",
        ".hypothesis/examples/x",
        "recon_audit.egg-info/PKG-INFO",
        "control/celery.exchange",
    ],
)
def test_dockerignore_leaves_out_local_state(path: str) -> None:
    assert ignored(path)


def test_dockerignore_matcher_follows_docker_semantics() -> None:
    # root-anchored: `data` does not hide a package folder called data deeper down
    assert not ignored("reconstruction/data/__init__.py")
    assert not ignored("app/cli.py")
    assert ignored("benchmarks/radon.json")
    assert not ignored("benchmarks/radon_vs_skimage.py")
