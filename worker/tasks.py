"""Thin tasks that take ids, open their own sessions, and run ``recon-audit audit`` (which
calls ``run_suite``) in the sandbox.

``run_audit(audit_id)`` marks the audit running and, with ``fan_out`` (the default), sends one
``run_shard(audit_id, test)`` per test of the protocol, so several workers (on several GPU
machines) share one audit; the last shard to finish merges the shards' results
(:func:`reconstruction.suite.merge_results`), renders the report and stores the results once.
Without fan-out the audit runs whole in one task.

The sandboxed runs write results and figures only (``--no-pdf``); the trusted worker renders
the certificate (its id is the audit's id; the subject shows the manifest from the database) and
signs it (:func:`app.certificates.service.sign_report`) right before the files are stored, in
both paths, so the stored ``report.pdf`` is always the signed certificate.

Exactly once: a worker claims the audit or shard it runs (a lease, :mod:`app.audits.leases`),
renewed while it runs; a finished one is left alone, and one held by a live worker too. A task
whose worker died is run again: delivered again by Redis (visibility timeout), or sent again by
any worker's sweep for lost leases (at start and every half lease; the embedded broker loses a
taken message with its worker). Results are written once (the results table is keyed by the
audit and refuses updates).
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import worker_process_init, worker_ready
from PIL import Image
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from app import checkpoints, events
from app.audits import leases
from app.certificates.identity import Certificate
from app.certificates.service import SignedReport, sign_report
from app.db import get_engine, session_factory, utcnow
from app.networks.service import materialise, safe_name
from app.orm import FINISHED, Audit, AuditResult, AuditShard, ImageSet, Network
from app.report import write_documents
from app.sandbox import SandboxUnavailable, describe_failure, run_cli, sanitise
from app.settings import get_settings
from app.storage import Store
from reconstruction.protocols import parse_protocol
from reconstruction.suite import TESTS, merge_results
from worker.celery_app import app

__all__ = ["requeue_interrupted", "run_audit", "run_shard"]

logger = logging.getLogger(__name__)
ACTOR = "worker"
#: seconds between progress writes
PROGRESS_EVERY = 1.0
#: what a jailed run's outputs may weigh: results.json, and each figure (bytes, pixels)
MAX_RESULTS_BYTES = 64 * 2**20
MAX_FIGURE_BYTES = 16 * 2**20
MAX_FIGURE_PIXELS = 8192 * 8192


def _fail(audit_id: str, message: str) -> None:
    with session_factory()() as session:
        audit = session.get(Audit, audit_id)
        if audit is None or audit.status in FINISHED:
            return
        audit.status, audit.error, audit.finished_at = "failed", message[:4000], utcnow()
        audit.lease_owner = audit.lease_expires = None
        events.record(session, ACTOR, "audit.failed", f"audit:{audit_id}", {"error": message[:500]})
        session.commit()


class Cancelled(Exception):
    """The audit was cancelled while it ran: its run stops at the next progress check."""


def _tests(protocol_yaml: str) -> list[str]:
    protocol = parse_protocol(protocol_yaml)
    enabled = {
        "perturbation": protocol.perturbation,
        "structural": protocol.structural,
        "sampling": protocol.sampling,
    }
    return [name for name in TESTS if enabled[name] is not None]


class _Progress:
    """Writes a run's progress (``stage``, ``done``/``total``) to the audit row, or to its
    shard's row and the audit's mean, at most once per second."""

    def __init__(self, audit_id: str, test: str | None, stages: int) -> None:
        self.audit_id, self.test, self.stages = audit_id, test, stages
        self.order: list[str] = []
        self.last = 0.0

    def __call__(self, update: dict[str, Any]) -> None:
        stage = str(update["stage"])
        if stage not in self.order:
            self.order.append(stage)
        now = time.monotonic()
        done, total = int(update["done"]), max(int(update["total"]), 1)
        if now - self.last < PROGRESS_EVERY and done < total:
            return
        self.last = now
        percent = round(min(99.0, 100 * (len(self.order) - 1 + done / total) / self.stages), 1)
        with session_factory()() as session:
            audit = session.get(Audit, self.audit_id)
            if audit is not None and audit.status == "cancelled":
                raise Cancelled(self.audit_id)
            if audit is None or audit.status != "running":
                return
            if self.test is None:
                audit.stage, audit.percent = stage, percent
            else:
                shards = session.scalars(
                    select(AuditShard).where(AuditShard.audit_id == self.audit_id)
                ).all()
                for shard in shards:
                    if shard.test == self.test:
                        shard.percent = percent
                audit.percent = round(min(99.0, sum(s.percent for s in shards) / len(shards)), 1)
                audit.stage = ", ".join(s.test for s in shards if s.status == "running") or stage
            session.commit()


def _store_outputs(store: Store, out: Path, pattern: str = "*") -> dict[str, str]:
    """Store the regular files of ``out`` (never what a link points to)."""
    files: dict[str, str] = {}
    for path in sorted(p for p in out.rglob(pattern) if p.is_file() and not p.is_symlink()):
        files[path.relative_to(out).as_posix()] = store.add(path)
    return files


def _run(store: Store, audit_id: str, workdir: Path, extra: list[str], test: str | None) -> Path:
    """Copy the verified inputs into ``workdir`` and run the audit CLI in the sandbox; returns
    its output folder. Raises ``RuntimeError`` with the CLI's message when it fails."""
    settings = get_settings()
    with session_factory()() as session:
        audit = session.get(Audit, audit_id)
        assert audit is not None
        network = session.get(Network, audit.network_id)
        assert network is not None
        image_set = None if audit.image_set == "builtin" else session.get(ImageSet, audit.image_set)
        protocol_yaml = audit.protocol_yaml
    (workdir / "model").mkdir()
    model, manifest = materialise(store, network, workdir / "model")
    (workdir / "protocol.yaml").write_text(protocol_yaml)
    # paths relative to the job's folder, which is the jail's working directory
    args = ["audit", _inside(model, workdir), "--manifest", _inside(manifest, workdir)]
    args += ["--protocol", "protocol.yaml"]
    if image_set is not None:
        (workdir / "images").mkdir()
        for image in image_set.images:
            target = workdir / "images" / safe_name(image["name"], "images")
            store.copy_out(image["sha256"], target)
            args += ["--images", _inside(target, workdir)]
        # one selection for the whole set (recorded with each of its files)
        selection = next((i["slices"] for i in image_set.images if "slices" in i), None)
        if selection is not None:
            args += ["--slices", selection]
    args += ["--device", settings.device, "--out", "out", "--progress", "json", *extra]
    stages = 1 if test is not None else len(_tests(protocol_yaml))
    result = run_cli(
        args,
        workdir=workdir,
        timeout=settings.audit_time_limit,
        limits=settings.sandbox_limits(),
        bwrap=settings.sandbox_bwrap,
        gpu=settings.device.startswith("cuda"),
        on_progress=_Progress(audit_id, test, stages),
    )
    if result.returncode != 0:
        raise RuntimeError(describe_failure(result, "the audit run failed"))
    return workdir / "out"


def _inside(path: Path, workdir: Path) -> str:
    return path.relative_to(workdir).as_posix()


def _message(exc: Exception) -> str:
    """What an audit's failure says: the jail's own reduced message, else the exception's type
    and a sanitised excerpt (no paths, no long tokens)."""
    if isinstance(exc, RuntimeError | SandboxUnavailable):
        return str(exc)
    return f"{type(exc).__name__}: {sanitise(str(exc))}"


def _certify(
    store: Store, audit_id: str, results: dict[str, Any], figures: dict[str, Path], out: Path
) -> tuple[dict[str, str], SignedReport]:
    """Render the certificate from the results and the figures in ``out``, sign it (the last
    step) and store every file of ``out``; returns the stored files and the signature."""
    with session_factory()() as session:
        audit = session.get(Audit, audit_id)
        assert audit is not None
        network = session.get(Network, audit.network_id)
        manifest = dict(network.manifest) if network is not None else None
        head = events.chain_head(session)
    certificate = Certificate(
        id=audit_id, audit_id=audit_id, manifest=manifest, event_chain=head.as_dict()
    )
    written = write_documents(results, figures, out, pdf=True, certificate=certificate)
    assert written.pdf is not None
    signed = sign_report(get_settings(), written.pdf, written.approval_box)
    checkpoints.write(get_settings(), head, f"certificate audit:{audit_id}")
    return _store_outputs(store, out), signed


def _regular(path: Path) -> Path:
    """``path`` when it is a regular file, not a symbolic link (the sandbox wrote it)."""
    if path.is_symlink() or not path.is_file():
        raise RuntimeError(f"the audit run did not write {path.name} as a regular file")
    return path


def _results(out: Path) -> dict[str, Any]:
    """The ``results.json`` a jailed run wrote: a regular file, of bounded size."""
    path = _regular(out / "results.json")
    if path.stat().st_size > MAX_RESULTS_BYTES:
        raise RuntimeError(f"the audit run wrote a results.json over {MAX_RESULTS_BYTES} bytes")
    results: dict[str, Any] = json.loads(path.read_text())
    return results


def _sandbox_figures(out: Path) -> list[Path]:
    """The PNG figures a jailed run wrote: regular files only, no links, each of bounded size
    and pixel count (the PDF renderer decodes them in the worker)."""
    folder = out / "figures"
    if folder.is_symlink() or not folder.is_dir():
        return []
    figures = sorted(p for p in folder.glob("*.png") if p.is_file() and not p.is_symlink())
    for figure in figures:
        with Image.open(figure) as image:
            width, height = image.size
        if figure.stat().st_size > MAX_FIGURE_BYTES or width * height > MAX_FIGURE_PIXELS:
            raise RuntimeError(f"the audit run wrote an oversized figure ({figure.name})")
    return figures


def _figures(out: Path, names: list[str]) -> dict[str, Path]:
    """The figures (relative names like ``figures/x.png``) in the report's order."""
    return {Path(name).stem: out / name for name in sorted(names, key=_figure_order)}


def _finish(
    audit_id: str, results: dict[str, Any], files: dict[str, str], signed: SignedReport
) -> None:
    """Store the results once and mark the audit succeeded."""
    with session_factory()() as session:
        audit = session.get(Audit, audit_id, with_for_update=True)
        if audit is None or audit.status == "cancelled":
            return
        stored = True
        try:
            session.add(
                AuditResult(
                    audit_id=audit_id,
                    results=results,
                    results_sha256=files["results.json"],
                    files=files,
                )
            )
            session.flush()
        except IntegrityError:  # another delivery stored them first
            session.rollback()
            stored = False
        audit = session.get(Audit, audit_id)
        assert audit is not None
        if audit.status in FINISHED:
            session.commit()
            return
        if stored:
            events.record(session, ACTOR, "certificate.signed", f"audit:{audit_id}", signed.event())
        audit.status, audit.stage, audit.percent = "succeeded", "done", 100.0
        audit.verdicts, audit.finished_at = results["verdicts"], utcnow()
        audit.lease_owner = audit.lease_expires = None
        events.record(
            session,
            ACTOR,
            "audit.succeeded",
            f"audit:{audit_id}",
            {"verdicts": results["verdicts"], "results_sha256": files["results.json"]},
        )
        session.commit()


@app.task(name="worker.tasks.run_audit", acks_late=True, reject_on_worker_lost=True)
def run_audit(audit_id: str) -> str:
    settings = get_settings()
    with session_factory()() as session:
        audit = session.get(Audit, audit_id)
        if audit is None or audit.status in FINISHED:
            return "nothing to do"
        if session.get(AuditResult, audit_id) is not None:  # stored, status not yet written
            audit.status, audit.percent, audit.finished_at = "succeeded", 100.0, utcnow()
            audit.lease_owner = audit.lease_expires = None
            session.commit()
            return "succeeded"
        owner = leases.claim(session, audit)
        if owner is None:
            return "held by another worker"
        tests = _tests(audit.protocol_yaml)
        audit.stage, audit.percent = "starting", 0.0
        audit.started_at = utcnow()
        fan_out = settings.fan_out and len(tests) > 1
        known: dict[str, AuditShard] = {}
        events.record(
            session,
            ACTOR,
            "audit.started",
            f"audit:{audit_id}",
            {"attempt": audit.attempts, "shards": tests if fan_out else None},
        )
        if fan_out:
            query = select(AuditShard).where(AuditShard.audit_id == audit_id)
            known = {s.test: s for s in session.scalars(query)}
            for test in tests:
                if test not in known:
                    session.add(AuditShard(audit_id=audit_id, test=test))
        session.commit()
    store = Store(settings.store_dir)
    with leases.holding(Audit, audit_id, owner):
        if fan_out:
            pending = [t for t in tests if known.get(t) is None or known[t].status != "succeeded"]
            if not pending:  # every shard ran; the worker that was to merge them was lost
                return _merge_if_complete(store, audit_id, owner)
            for test in pending:
                app.send_task("worker.tasks.run_shard", args=[audit_id, test])
            return "fanned out"
        return _run_whole(store, audit_id)


def _run_whole(store: Store, audit_id: str) -> str:
    """The audit in one task: every test in one jailed run, then the certificate."""
    workdir = store.workdir(f"audit-{audit_id}-")
    # the certificate is written in a folder of the worker's own, never in one the sandboxed
    # run could have prepared (links planted there would redirect the worker's writes)
    clean = store.workdir(f"certificate-{audit_id}-")
    try:
        out = _run(store, audit_id, workdir, ["--no-pdf"], None)
        results = _results(out)
        (clean / "figures").mkdir()
        names = []
        for figure in _sandbox_figures(out):
            shutil.copyfile(figure, clean / "figures" / figure.name)
            names.append(f"figures/{figure.name}")
        files, signed = _certify(store, audit_id, results, _figures(clean, names), clean)
        _finish(audit_id, results, files, signed)
        return "succeeded"
    except Cancelled:
        return "cancelled"
    except SoftTimeLimitExceeded:
        _fail(audit_id, "the audit exceeded its time limit")
        return "failed"
    except Exception as exc:
        _fail(audit_id, _message(exc))
        return "failed"
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        shutil.rmtree(clean, ignore_errors=True)


@app.task(name="worker.tasks.run_shard", acks_late=True, reject_on_worker_lost=True)
def run_shard(audit_id: str, test: str) -> str:
    settings = get_settings()
    with session_factory()() as session:
        audit = session.get(Audit, audit_id)
        shard = session.scalars(
            select(AuditShard).where(AuditShard.audit_id == audit_id, AuditShard.test == test)
        ).first()
        if audit is None or shard is None or audit.status in FINISHED:
            return "nothing to do"
        owner = None if shard.status == "succeeded" else leases.claim(session, shard)
        if owner is None and shard.status != "succeeded":
            return "held by another worker"
        shard_id = shard.id
    store = Store(settings.store_dir)
    if owner is not None:
        with leases.holding(AuditShard, shard_id, owner):
            workdir = store.workdir(f"shard-{audit_id}-{test}-")
            try:
                out = _run(store, audit_id, workdir, ["--only", test, "--no-pdf"], test)
                results = _results(out)
                figures = {f"figures/{p.name}": store.add(p) for p in _sandbox_figures(out)}
            except Cancelled:
                return "cancelled"
            except SoftTimeLimitExceeded:
                _fail(audit_id, f"the {test} test exceeded its time limit")
                return "failed"
            except Exception as exc:
                _fail(audit_id, f"{test}: {_message(exc)}")
                return "failed"
            finally:
                shutil.rmtree(workdir, ignore_errors=True)
            with session_factory()() as session:
                shard = session.get_one(AuditShard, shard_id)
                shard.status, shard.percent, shard.results, shard.files = (
                    "succeeded",
                    100.0,
                    results,
                    figures,
                )
                session.commit()
    return _merge_if_complete(store, audit_id)


def _merge_if_complete(store: Store, audit_id: str, owner: str | None = None) -> str:
    """The last shard to finish merges all of them, renders the report and stores it once,
    holding the audit's lease meanwhile (``owner``: the caller holds it already)."""
    with session_factory()() as session:
        audit = session.get(Audit, audit_id)
        if audit is None or audit.status in FINISHED:
            return "nothing to do"
        shards = session.scalars(select(AuditShard).where(AuditShard.audit_id == audit_id)).all()
        if any(s.status != "succeeded" for s in shards):
            return "shard stored"
        documents = [s.results for s in sorted(shards, key=lambda s: TESTS.index(s.test))]
        figure_files = {k: v for s in shards for k, v in (s.files or {}).items()}
        claimed = None if owner is not None else leases.claim(session, audit, count=False)
        if owner is None and claimed is None:
            return "merged by another worker"
    if claimed is None:
        return _merge(store, audit_id, documents, figure_files)
    with leases.holding(Audit, audit_id, claimed):
        return _merge(store, audit_id, documents, figure_files)


def _merge(
    store: Store,
    audit_id: str,
    documents: list[dict[str, Any] | None],
    figure_files: dict[str, str],
) -> str:
    workdir = store.workdir(f"merge-{audit_id}-")
    try:
        merged = merge_results([d for d in documents if d is not None])
        (workdir / "figures").mkdir()
        for name in figure_files:
            store.copy_out(figure_files[name], workdir / name)
        figures = _figures(workdir, list(figure_files))
        files, signed = _certify(store, audit_id, merged, figures, workdir)
        _finish(audit_id, merged, files, signed)
        return "merged"
    except Exception as exc:
        _fail(audit_id, f"merging the shards failed: {_message(exc)}")
        return "failed"
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def requeue_interrupted() -> int:
    """Send again every task whose worker was lost (:func:`app.audits.leases.interrupted`);
    how many."""
    with session_factory()() as session:
        found = leases.interrupted(session)
        session.commit()
    for item in found:
        if item.test is None:
            app.send_task("worker.tasks.run_audit", args=[item.audit_id])
        else:
            app.send_task("worker.tasks.run_shard", args=[item.audit_id, item.test])
        logger.warning("requeued %s of audit %s: its worker was lost", item.test, item.audit_id)
    return len(found)


@worker_ready.connect
def _sweep_for_lost_workers(**_kwargs: object) -> None:
    """In the worker's main process: requeue interrupted audits at start and every half lease."""
    every = get_settings().lease_seconds / 2

    def sweep() -> None:
        while True:
            try:
                requeue_interrupted()
            except Exception:  # the database may be away for a while: try again later
                logger.exception("the sweep for interrupted audits failed")
            time.sleep(every)

    threading.Thread(target=sweep, name="requeue-interrupted", daemon=True).start()


@worker_process_init.connect
def _own_connections(**_kwargs: object) -> None:
    """A pool process opens its own database connections, never the parent's (forked) ones."""
    get_engine().dispose(close=False)


def _figure_order(name: str) -> tuple[int, str]:
    """Figures in the report's order: by test, then by name."""
    stem = Path(name).stem
    for index, test in enumerate(TESTS):
        if stem.startswith(test):
            return index, stem
    return len(TESTS), stem
