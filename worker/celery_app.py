"""The Celery application: Redis in production (``BROKER_URL``), kombu's filesystem transport
(no server) in the embedded default. Tasks are acknowledged late and rejected when their worker
dies, so an audit interrupted by a crash is delivered again."""

from __future__ import annotations

from celery import Celery

from app.settings import get_settings

__all__ = ["app"]


def make_app() -> Celery:
    settings = get_settings()
    celery = Celery("recon_audit", broker=settings.broker, include=["worker.tasks"])
    options: dict[str, object] = {"visibility_timeout": settings.broker_visibility_timeout}
    if settings.embedded_broker:
        folder = settings.broker_folder
        for sub in ("queue", "processed", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        options = {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "processed_folder": str(folder / "processed"),
            "control_folder": str(folder / "control"),
            "store_processed": False,
        }
    celery.conf.update(
        broker_transport_options=options,
        broker_connection_retry_on_startup=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_soft_time_limit=settings.audit_soft_time_limit,
        task_time_limit=settings.audit_time_limit,
        task_ignore_result=True,
        task_default_queue=settings.queue,
        worker_hijack_root_logger=False,
    )
    return celery


app = make_app()
