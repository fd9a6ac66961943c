"""report decisions: who approved or rejected a draft report, insert-only

- ``report_decisions``: one row per report: ``approved`` (the released PDF's path, sha256
  and signature) or ``rejected``, who decided, when and their comment, hash-chained over
  the table (``prev_hash`` / ``row_hash``, audit_lib/pipelines/release.py).
- The database refuses UPDATE of a decision (PostgreSQL and SQLite triggers).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 13:30:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

PG_FUNCTION = """
    CREATE OR REPLACE FUNCTION report_decisions_refuse_update() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION 'report_decisions is insert-only: the decision on report % cannot be changed',
            OLD.report_id USING ERRCODE = 'insufficient_privilege';
    END $$
"""
PG_TRIGGER = """
    CREATE TRIGGER report_decisions_no_update BEFORE UPDATE ON report_decisions
        FOR EACH ROW EXECUTE FUNCTION report_decisions_refuse_update()
"""
SQLITE_TRIGGER = """
    CREATE TRIGGER report_decisions_no_update BEFORE UPDATE ON report_decisions
    BEGIN
        SELECT RAISE(ABORT, 'report_decisions is insert-only: a decision cannot be changed');
    END
"""


def upgrade() -> None:
    op.create_table('report_decisions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('report_id', sa.Integer(), nullable=False),
    sa.Column('decision', sa.String(length=20), nullable=False),
    sa.Column('decided_by', sa.String(length=100), nullable=False),
    sa.Column('decided_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('comment', sa.Text(), nullable=True),
    sa.Column('released_path', sa.Text(), nullable=True),
    sa.Column('released_sha256', sa.String(length=64), nullable=True),
    sa.Column('signature', sa.Text(), nullable=True),
    sa.Column('dag_run', sa.String(length=250), nullable=True),
    sa.Column('prev_hash', sa.String(length=64), nullable=False),
    sa.Column('row_hash', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['report_id'], ['reports.id'], name=op.f('fk_report_decisions_report_id_reports')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_report_decisions')),
    sa.UniqueConstraint('report_id', name=op.f('uq_report_decisions_report_id'))
    )
    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        op.execute(PG_FUNCTION)
        op.execute(PG_TRIGGER)
    elif dialect == "sqlite":
        op.execute(SQLITE_TRIGGER)


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS report_decisions_no_update ON report_decisions")
        op.execute("DROP FUNCTION IF EXISTS report_decisions_refuse_update()")
    elif dialect == "sqlite":
        op.execute("DROP TRIGGER IF EXISTS report_decisions_no_update")
    op.drop_table('report_decisions')
