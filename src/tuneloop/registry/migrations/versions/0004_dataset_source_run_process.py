"""Dataset versions numbered per source, not per name; runs record their process.

Versions used to be numbered per name, so `a/tickets.jsonl` and `b/tickets.jsonl` became
versions 1 and 2 of one dataset. Now `source` (a resolved path, or a name the user gave)
says what the versions share. Rows written before this revision keep their numbers under
the source `name:<name>`, which is exactly how they were numbered.

Runs gain host, pid and heartbeat_at, so a run killed by `kill -9` shows as interrupted.

Revision ID: 0004
Revises: 0003
"""

import hashlib

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("datasets") as batch:
        batch.add_column(sa.Column("source", sa.Text(), nullable=True))
        batch.add_column(sa.Column("source_key", sa.String(64), nullable=True))
    datasets = sa.table(
        "datasets",
        sa.column("id", sa.Integer()),
        sa.column("name", sa.String()),
        sa.column("source", sa.Text()),
        sa.column("source_key", sa.String()),
    )
    conn = op.get_bind()
    for row_id, name in conn.execute(sa.select(datasets.c.id, datasets.c.name)).all():
        source = f"name:{name}"
        key = hashlib.sha256(source.encode("utf-8")).hexdigest()
        conn.execute(
            datasets.update().where(datasets.c.id == row_id).values(source=source, source_key=key)
        )
    with op.batch_alter_table("datasets") as batch:
        batch.alter_column("source", existing_type=sa.Text(), nullable=False)
        batch.alter_column("source_key", existing_type=sa.String(64), nullable=False)
        batch.drop_constraint("uq_dataset_name_version", type_="unique")
        batch.create_unique_constraint("uq_dataset_source_version", ["source_key", "version"])
        batch.create_index("ix_datasets_source_key", ["source_key"])
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("host", sa.String(255), nullable=True))
        batch.add_column(sa.Column("pid", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("heartbeat_at", sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("heartbeat_at")
        batch.drop_column("pid")
        batch.drop_column("host")
    with op.batch_alter_table("datasets") as batch:
        batch.drop_index("ix_datasets_source_key")
        batch.drop_constraint("uq_dataset_source_version", type_="unique")
        batch.create_unique_constraint("uq_dataset_name_version", ["name", "version"])
        batch.drop_column("source_key")
        batch.drop_column("source")
