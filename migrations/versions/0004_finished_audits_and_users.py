"""finished audits are immutable; users can be disabled

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

#: an audit in one of these states is finished: its row refuses UPDATE and DELETE
FINISHED = ("succeeded", "failed", "cancelled")
_FINISHED_SQL = ", ".join(f"'{status}'" for status in FINISHED)


def upgrade() -> None:
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.add_column(sa.Column("disabled_at", sa.DateTime(timezone=True), nullable=True))
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            f"""
            CREATE FUNCTION recon_audit_refuse_finished_change() RETURNS trigger AS $$
            BEGIN
                IF OLD.status IN ({_FINISHED_SQL}) THEN
                    RAISE EXCEPTION 'audit % is finished (%): % refused', OLD.id, OLD.status,
                        TG_OP;
                END IF;
                IF TG_OP = 'DELETE' THEN
                    RETURN OLD;
                END IF;
                RETURN NEW;
            END;
            $$ LANGUAGE plpgsql
            """
        )
        op.execute(
            "CREATE TRIGGER audits_finished_immutable BEFORE UPDATE OR DELETE ON audits "
            "FOR EACH ROW EXECUTE FUNCTION recon_audit_refuse_finished_change()"
        )
    elif op.get_bind().dialect.name == "sqlite":
        for verb in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER audits_finished_no_{verb.lower()} BEFORE {verb} ON audits "
                f"WHEN OLD.status IN ({_FINISHED_SQL}) "
                f"BEGIN SELECT RAISE(ABORT, 'a finished audit is immutable: {verb} refused'); END"
            )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS audits_finished_immutable ON audits")
        op.execute("DROP FUNCTION IF EXISTS recon_audit_refuse_finished_change()")
    elif op.get_bind().dialect.name == "sqlite":
        for verb in ("update", "delete"):
            op.execute(f"DROP TRIGGER IF EXISTS audits_finished_no_{verb}")
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_column("disabled_at")
