"""datasets: the id of each table's paging copy (Parquet, bounded row groups)

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04

Datasets stored before this revision have no copy (NULL): their pages are read from the
uploaded file as before.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("datasets", schema=None) as batch_op:
        batch_op.add_column(sa.Column("paging_blob_id", sa.String(length=40), nullable=True))
        batch_op.create_foreign_key(batch_op.f("fk_datasets_paging_blob_id_blobs"), "blobs",
                                    ["paging_blob_id"], ["id"])
        batch_op.create_index(batch_op.f("ix_datasets_paging_blob_id"), ["paging_blob_id"],
                              unique=False)


def downgrade() -> None:
    with op.batch_alter_table("datasets", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_datasets_paging_blob_id"))
        batch_op.drop_constraint(batch_op.f("fk_datasets_paging_blob_id_blobs"),
                                 type_="foreignkey")
        batch_op.drop_column("paging_blob_id")
