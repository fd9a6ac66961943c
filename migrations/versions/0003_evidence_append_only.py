"""evidence rows append-only in the database

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 12:00:00

Defence in depth beside the hash chain (audit_lib/evidence.py): the database itself
refuses to change evidence.

- PostgreSQL: UPDATE of an ``evidence_items`` row is refused (row trigger). DELETE is
  refused when it would leave a run's chain partial (statement trigger over the deleted
  rows): a run's evidence can only be removed as a whole (a retention purge, or wiping a
  test database), never row by row; reports of a purged run then fail verification.
  TRUNCATE is a table owner's privilege and is not intercepted.
- SQLite (the embedded, single-user default): UPDATE is refused by a trigger. DELETE is
  not intercepted (SQLite has no statement triggers to tell a purge from a cut); the chain
  and the report's recorded head detect a removed row.

A superuser can still bypass triggers (``SET session_replication_role = replica``); that
is what the hash chain and the chain head printed in every report are for.
"""
from alembic import op


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

PG_FUNCTIONS = [
    """
    CREATE OR REPLACE FUNCTION evidence_items_refuse_update() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION 'evidence_items is append-only: row % of run % cannot be updated',
            OLD.seq, OLD.run_id USING ERRCODE = 'insufficient_privilege';
    END $$
    """,
    """
    CREATE OR REPLACE FUNCTION evidence_items_refuse_partial_delete() RETURNS trigger
    LANGUAGE plpgsql AS $$
    DECLARE bad_run integer;
    BEGIN
        SELECT o.run_id INTO bad_run FROM old_rows o
            WHERE EXISTS (SELECT 1 FROM evidence_items e WHERE e.run_id = o.run_id) LIMIT 1;
        IF bad_run IS NOT NULL THEN
            RAISE EXCEPTION 'evidence_items is append-only: rows of run % can only be removed '
                'together with the whole run''s chain', bad_run USING ERRCODE = 'insufficient_privilege';
        END IF;
        RETURN NULL;
    END $$
    """,
]
PG_TRIGGERS = [
    """
    CREATE TRIGGER evidence_items_no_update BEFORE UPDATE ON evidence_items
        FOR EACH ROW EXECUTE FUNCTION evidence_items_refuse_update()
    """,
    """
    CREATE TRIGGER evidence_items_no_partial_delete AFTER DELETE ON evidence_items
        REFERENCING OLD TABLE AS old_rows
        FOR EACH STATEMENT EXECUTE FUNCTION evidence_items_refuse_partial_delete()
    """,
]
SQLITE_TRIGGER = """
    CREATE TRIGGER evidence_items_no_update BEFORE UPDATE ON evidence_items
    BEGIN
        SELECT RAISE(ABORT, 'evidence_items is append-only: rows cannot be updated');
    END
"""


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        for sql in PG_FUNCTIONS + PG_TRIGGERS:
            op.execute(sql)
    elif dialect == "sqlite":
        op.execute(SQLITE_TRIGGER)


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS evidence_items_no_partial_delete ON evidence_items")
        op.execute("DROP TRIGGER IF EXISTS evidence_items_no_update ON evidence_items")
        op.execute("DROP FUNCTION IF EXISTS evidence_items_refuse_partial_delete()")
        op.execute("DROP FUNCTION IF EXISTS evidence_items_refuse_update()")
    elif dialect == "sqlite":
        op.execute("DROP TRIGGER IF EXISTS evidence_items_no_update")
