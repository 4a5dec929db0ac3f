"""outbox: whether an audit's task was handed to the broker (``enqueued``)

An audit is stored with ``enqueued`` false in the transaction that creates it, and marked once
its task was sent; the workers' sweep sends what stayed unsent (a broker that failed between
the commit and the send), on every broker. Audits stored before this revision were sent.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # a plain ADD COLUMN (SQLite takes it with a constant default): a batch operation would
    # rebuild the table on SQLite and drop its finished-audit triggers with it
    op.add_column(
        "audits", sa.Column("enqueued", sa.Boolean(), nullable=False, server_default=sa.true())
    )


def downgrade() -> None:
    op.drop_column("audits", "enqueued")
