"""An audit's life after its creation, every state change in one place: started (a worker
claims it), fanned out to one shard per test, running (progress), failed, cancelled (seen at
the next progress check), merged, certified and finished; and recovered when its worker was
lost. The Celery tasks (``worker/tasks.py``) only take ids and call :func:`run_audit` and
:func:`run_shard`.

``run_audit(audit_id)`` marks the audit running and, with ``fan_out`` (the default), sends one
``run_shard(audit_id, test)`` per test of the protocol, so several workers (on several GPU
machines) share one audit; the last shard to finish merges the shards' results
(:func:`reconstruction.suite.merge_results`), renders the report and stores the results once.
Without fan-out the audit runs whole in one task.

The jailed runs write results and figures only (:mod:`app.audits.runs`); the trusted worker
renders the certificate (its id is the audit's id; the subject shows the manifest from the
database) and signs it (:func:`app.certificates.service.sign_report`) right before the files
are stored, in both paths, so the stored ``report.pdf`` is always the signed certificate.

Exactly once: a worker claims the audit or shard it runs (a lease, :mod:`app.audits.leases`),
renewed while it runs; a finished one is left alone, and one held by a live worker too. A task
whose worker died is run again: delivered again by Redis (visibility timeout), or sent again by
any worker's sweep (:func:`requeue_interrupted`) for lost leases and, on the embedded broker,
for lost messages. Results are written once (the results table is keyed by the audit and
refuses updates).
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy.orm import Session

from app import checkpoints, events, queue
from app.audits import leases, repository, service
from app.audits.runs import draw, message, run_jailed
from app.certificates.identity import Certificate
from app.certificates.service import SignedReport, sign_report
from app.db import session_factory, utcnow
from app.orm import FINISHED, Audit, AuditShard, ImageSet, Network
from app.report import write_documents
from app.settings import get_settings
from app.storage import Store
from reconstruction.data import BUILTIN_IMAGES
from reconstruction.figure_data import ARRAYS, STRUCTURE
from reconstruction.instability.registry import TESTS
from reconstruction.protocols import parse_protocol
from reconstruction.suite import merge_results, parse_shard, shard_names

__all__ = ["Stopped", "requeue_interrupted", "run_audit", "run_shard"]

logger = logging.getLogger(__name__)
ACTOR = "worker"
#: seconds between progress writes
PROGRESS_EVERY = 1.0


class Stopped(Exception):
    """The audit ended while this run went on (cancelled, or failed in another of its shards):
    the run stops at its next progress check."""


def shards_of(session: Session, audit: Audit) -> list[str]:
    """The shards the audit fans out to (:func:`reconstruction.suite.shard_names`): per test,
    or per test and unit of its images, as many units as its images fill (an image set whose
    count is not recorded: as many as the protocol allows, those beyond its images empty)."""
    protocol = parse_protocol(audit.protocol_yaml)
    most = protocol.images.max_images
    return shard_names(protocol, min(most, _images_in(session, audit) or most))


def _images_in(session: Session, audit: Audit) -> int | None:
    """How many images the audit's set holds (None: not recorded, an early upload's)."""
    if audit.image_set == "builtin":
        return BUILTIN_IMAGES
    image_set = session.get_one(ImageSet, audit.image_set)
    counts = [entry.get("images") for entry in image_set.images]
    if all(isinstance(count, int) for count in counts):
        return sum(int(count) for count in counts if count is not None)
    return None


class _Progress:
    """Writes a run's progress (``stage``, ``done``/``total``) to the audit row, or to its
    shard's row (``shard``: its name) and the audit's mean, at most once per second; raises
    :class:`Stopped` when the audit ended meanwhile (cancelled, or failed in another shard)."""

    def __init__(self, audit_id: str, shard: str | None, stages: int) -> None:
        self.audit_id, self.shard, self.stages = audit_id, shard, stages
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
            if audit is not None and audit.status in FINISHED:
                raise Stopped(audit.status)
            if audit is None or audit.status != "running":
                return
            if self.shard is None:
                audit.stage, audit.percent = stage, percent
            else:
                shards = repository.shards(session, self.audit_id)
                for shard in shards:
                    if shard.test == self.shard:
                        shard.percent = percent
                audit.percent = round(min(99.0, sum(s.percent for s in shards) / len(shards)), 1)
                running = [parse_shard(s.test)[0] for s in shards if s.status == "running"]
                audit.stage = ", ".join(dict.fromkeys(running)) or stage
            session.commit()


def fail(audit_id: str, error: str) -> None:
    """The audit failed (unless it is finished already), with ``error``; logged."""
    with session_factory()() as session:
        audit = session.get(Audit, audit_id)
        if audit is None or audit.status in FINISHED:
            return
        audit.status, audit.error, audit.finished_at = "failed", error[:4000], utcnow()
        audit.lease_owner = audit.lease_expires = None
        events.record(session, ACTOR, "audit.failed", f"audit:{audit_id}", {"error": error[:500]})
        session.commit()


def run_audit(audit_id: str) -> str:
    """Start an audit (claim it), then run it whole or fan it out; what happened, in a word.
    An audit fanned out already (running, no worker holding it, its shards made) is left to its
    shards, or merged when they all succeeded (the sweep's task for shards that no one merged):
    a second message neither counts an attempt nor starts it again."""
    settings = get_settings()
    with session_factory()() as session:
        audit = session.get(Audit, audit_id)
        fanned_out = audit is not None and audit.status == "running" and not audit.lease_owner
        shards = repository.shards(session, audit_id) if fanned_out else []
    if shards:
        if any(s.status != "succeeded" for s in shards):
            return "fanned out already"
        return _merge_if_complete(Store(settings.store_dir), audit_id)
    with session_factory()() as session:
        audit = session.get(Audit, audit_id)
        if audit is None or audit.status in FINISHED:
            return "nothing to do"
        if repository.result_of(session, audit_id) is not None:  # stored, status not yet written
            audit.status, audit.percent, audit.finished_at = "succeeded", 100.0, utcnow()
            audit.lease_owner = audit.lease_expires = None
            session.commit()
            return "succeeded"
        owner = leases.claim(session, audit)
        if owner is None:
            return "held by another worker"
        tests = shards_of(session, audit)
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
        backlog = repository.running_audits(session, audit.owner_id) - 1
        if fan_out:
            known = {s.test: s for s in repository.shards(session, audit_id)}
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
            with _failing(
                audit_id, "the audit", "sending its tests to the workers failed: "
            ) as ended:
                for test in pending:
                    queue.enqueue_shard(audit_id, test, tests.index(test), backlog)
            return ended.word or "fanned out"
        return _run_whole(store, audit_id, len({parse_shard(t)[0] for t in tests}))


class _Ended:
    """How a guarded step ended when it did not complete: ``word`` says it stopped (the audit
    ended meanwhile) or ``failed`` (see :func:`_failing`), else empty."""

    word = ""


@contextlib.contextmanager
def _failing(audit_id: str, what: str, prefix: str = "") -> Iterator[_Ended]:
    """Run the block; a run of an audit that ended meanwhile stops; past the soft time limit
    the audit fails (``what`` exceeded its time limit), and on any other error too (the error's
    message after ``prefix``). Nothing is raised: the caller reads the word."""
    ended = _Ended()
    try:
        yield ended
    except Stopped as stopped:
        ended.word = f"stopped: the audit is {stopped}"
    except SoftTimeLimitExceeded:
        fail(audit_id, f"{what} exceeded its time limit")
        ended.word = "failed"
    except Exception as exc:
        fail(audit_id, prefix + message(exc))
        ended.word = "failed"


@contextlib.contextmanager
def _folders(store: Store, *prefixes: str) -> Iterator[list[Path]]:
    """Fresh scratch folders of the worker's own, one per prefix, removed afterwards (those made
    before a failing one too)."""
    made: list[Path] = []
    try:
        for prefix in prefixes:
            made.append(store.workdir(prefix))
        yield made
    finally:
        for folder in made:
            shutil.rmtree(folder, ignore_errors=True)


def _run_whole(store: Store, audit_id: str, stages: int) -> str:
    """The audit in one task: every test in one jailed run, then the certificate. The
    certificate is written in a folder of the worker's own, never in one the sandboxed run could
    have prepared (links planted there would redirect the worker's writes)."""
    folders = _folders(store, f"audit-{audit_id}-", f"certificate-{audit_id}-")
    with _failing(audit_id, "the audit") as ended, folders as (workdir, clean):
        outputs = run_jailed(store, audit_id, workdir, None, _Progress(audit_id, None, stages))
        drawn = outputs.draw(clean / "figures")
        figures = _figures(clean, [f"figures/{path.name}" for path in drawn.values()])
        files, signed = _certify(store, audit_id, outputs.results, figures, clean)
        _finish(audit_id, outputs.results, files, signed)
    return ended.word or "succeeded"


def run_shard(audit_id: str, test: str) -> str:
    """Run one shard of a fanned-out audit (claim it; ``test``: its name, a test or a unit of
    a test's images or a part of it there, :func:`reconstruction.suite.parse_shard`), store
    its results and figure arrays, and merge the audit when it was the last; what happened,
    in a word."""
    settings = get_settings()
    with session_factory()() as session:
        audit = session.get(Audit, audit_id)
        shard = repository.shard(session, audit_id, test)
        if audit is None or shard is None or audit.status in FINISHED:
            return "nothing to do"
        owner = None if shard.status == "succeeded" else leases.claim(session, shard)
        if owner is None and shard.status != "succeeded":
            return "held by another worker"
        shard_id = shard.id
    store = Store(settings.store_dir)
    if owner is not None:
        with leases.holding(AuditShard, shard_id, owner):
            label = test.replace("/", "-").replace("@", "-")
            folders = _folders(store, f"shard-{audit_id}-{label}-")
            what = f"the {parse_shard(test).title()}"
            with _failing(audit_id, what, f"{test}: ") as ended, folders as (workdir,):
                outputs = run_jailed(store, audit_id, workdir, test, _Progress(audit_id, test, 1))
                # the arrays are drawn once, when the shards are merged (in a process of its own)
                arrays = {name: store.add(outputs.out / name) for name in (STRUCTURE, ARRAYS)}
            if ended.word:
                return ended.word
            with session_factory()() as session:
                shard = session.get_one(AuditShard, shard_id)
                shard.status, shard.percent = "succeeded", 100.0
                shard.results, shard.files = outputs.results, arrays
                session.commit()
    return _merge_if_complete(store, audit_id)


def _merge_if_complete(store: Store, audit_id: str, owner: str | None = None) -> str:
    """The last shard to finish merges all of them, renders the report and stores it once,
    holding the audit's lease meanwhile (``owner``: the caller holds it already)."""
    with session_factory()() as session:
        audit = session.get(Audit, audit_id)
        if audit is None or audit.status in FINISHED:
            return "nothing to do"
        shards = repository.shards(session, audit_id)
        if any(s.status != "succeeded" for s in shards):
            return "shard stored"
        parts = [(s.results, s.files or {}) for s in sorted(shards, key=_shard_order)]
        claimed = None if owner is not None else leases.claim(session, audit, count=False)
        if owner is None and claimed is None:
            return "merged by another worker"
    if claimed is None:
        return _merge(store, audit_id, parts)
    with leases.holding(Audit, audit_id, claimed):
        return _merge(store, audit_id, parts)


def _shard_order(shard: AuditShard) -> tuple[int, int, str]:
    """Shards in the report's order: by test, then by unit and part."""
    test, unit, part = parse_shard(shard.test)
    return TESTS.index(test), -1 if unit is None else unit, part or ""


def _merge(
    store: Store, audit_id: str, parts: list[tuple[dict[str, Any] | None, dict[str, str]]]
) -> str:
    """Merge the shards' results (:func:`reconstruction.suite.merge_results`), draw the
    figures from all their arrays at once (:func:`app.audits.runs.draw`) and certify."""
    failing = _failing(audit_id, "merging the shards", "merging the shards failed: ")
    folders = _folders(store, f"merge-{audit_id}-", f"parts-{audit_id}-")
    with failing as ended, folders as (workdir, scratch):
        merged = merge_results([results for results, _ in parts if results is not None])
        runs = []
        for k, (results, files) in enumerate(parts):
            run = scratch / f"shard-{k}"
            run.mkdir()
            (run / "results.json").write_text(json.dumps(results))
            for name in (STRUCTURE, ARRAYS):
                store.copy_out(files[name], run / name)
            runs.append(run)
        drawn = draw(runs, workdir / "figures")
        figures = _figures(workdir, [f"figures/{path.name}" for path in drawn.values()])
        files, signed = _certify(store, audit_id, merged, figures, workdir)
        _finish(audit_id, merged, files, signed)
    return ended.word or "merged"


def _figures(out: Path, names: list[str]) -> dict[str, Path]:
    """The figures (relative names like ``figures/x.png``) in the report's order."""
    return {Path(name).stem: out / name for name in sorted(names, key=_figure_order)}


def _figure_order(name: str) -> tuple[int, str]:
    """Figures in the report's order: by test, then by name."""
    stem = Path(name).stem
    for index, test in enumerate(TESTS):
        if stem.startswith(test):
            return index, stem
    return len(TESTS), stem


def _certify(
    store: Store, audit_id: str, results: dict[str, Any], figures: dict[str, Path], out: Path
) -> tuple[dict[str, str], SignedReport]:
    """Render the certificate from the results and the figures in ``out``, sign it (the last
    step) and store every file of ``out``; returns the stored files and the signature."""
    with session_factory()() as session:
        audit = session.get_one(Audit, audit_id)
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
    files = {
        path.relative_to(out).as_posix(): store.add(path)
        for path in sorted(out.rglob("*"))
        if path.is_file() and not path.is_symlink()
    }
    return files, signed


def _finish(
    audit_id: str, results: dict[str, Any], files: dict[str, str], signed: SignedReport
) -> None:
    """Store the results once and mark the audit succeeded; then anchor the log's head, its
    ``audit.succeeded`` included, in a signed checkpoint (the certificate, signed before it,
    carries the head before it), so the newest audit is anchored outside the database too."""
    with session_factory()() as session:
        audit = session.get(Audit, audit_id, with_for_update=True)
        if audit is None or audit.status == "cancelled":
            return
        stored = repository.store_result(session, audit_id, results, files)
        audit = session.get_one(Audit, audit_id)
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
            {
                "verdicts": results["verdicts"],
                "results_sha256": files["results.json"],
                "results_content_sha256": events.results_digest(results),
            },
        )
        session.commit()
        head = events.chain_head(session)
    checkpoints.write(get_settings(), head, f"audit.succeeded audit:{audit_id}")


_LOST_MESSAGES = leases.LostMessages()


def requeue_interrupted() -> int:
    """Send again every task whose worker was lost (:func:`app.audits.leases.interrupted`) and,
    on the embedded broker, every task whose message was lost with the worker that took it
    (:class:`app.audits.leases.LostMessages`, this process's memory); how many."""
    waiting = queue.waiting()
    with session_factory()() as session:
        found = leases.interrupted(session)
        session.commit()
        if waiting is not None:
            found += _LOST_MESSAGES.sweep(session, waiting)
            session.commit()
    for item in found:
        if item.test is None:
            queue.enqueue_audit(item.audit_id)
        else:
            queue.enqueue_shard(item.audit_id, item.test)
        logger.warning(
            "requeued %s of audit %s: %s", item.test or "the run", item.audit_id, item.why
        )
    return len(found) + send_outbox()


def send_outbox() -> int:
    """Send the audits the API stored but could not hand to the broker
    (:func:`app.audits.leases.never_sent`), each marked sent once it is; a broker still down
    leaves the rest to the next sweep (half a lease later). How many were sent."""
    sent = 0
    with session_factory()() as session:
        for audit_id in leases.never_sent(session, get_settings().outbox_grace_seconds):
            if not service.send(session, audit_id):
                break
            logger.warning("sent audit %s, which its creation left unsent", audit_id)
            sent += 1
    return sent
