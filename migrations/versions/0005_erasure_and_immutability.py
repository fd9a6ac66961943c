"""erasure records, legal holds, report withdrawals, purged runs; evidence that cannot be rewritten

- New tables: ``purged_runs`` (a run's evidence purged as a whole, recorded first),
  ``report_withdrawals`` (tombstones of withdrawn reports), ``erasure_records`` (what an
  erasure removed and kept, and why) and ``case_holds`` (legal holds on cases).
- Triggers on PostgreSQL and SQLite: findings are never updated; evidence rows and findings
  are deleted only for a run recorded in ``purged_runs``, and a purged run key takes no new
  evidence, so deleting a run's whole chain and inserting a forged one in one transaction
  is refused; a report row's file, hash, chain head and findings never change and the row
  is never deleted (a report is withdrawn instead); tombstone tables are never changed.
- Grants (PostgreSQL): the application role (``AUDIT_APP_DB_ROLE``, default
  ``encoder_audit_app``, created here NOLOGIN if missing and the migrating role may create
  roles; ``scripts/setup.sh`` creates it with a login) may SELECT and INSERT evidence,
  findings, reports and the tombstone tables but never UPDATE or DELETE them; it has full
  rights on every other table, now and (default privileges) in later migrations. The
  migrating role owns the tables: it alone can purge a run (retention).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 13:30:00
"""
import os

from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None

APP_ROLE = os.environ.get("AUDIT_APP_DB_ROLE", "encoder_audit_app")
PROTECTED = ("evidence_items", "findings", "reports", "purged_runs", "report_withdrawals",
             "erasure_records")
REPORT_FIXED = "case_id, kind, path, sha256, chain_head, finding_ids, created_at"
TOMBSTONES = ("purged_runs", "report_withdrawals", "erasure_records")

PG_FUNCTIONS = {
    "audit_refuse_change": """
    CREATE OR REPLACE FUNCTION audit_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION '% is append-only: rows cannot be %', TG_TABLE_NAME, lower(TG_OP) || 'd'
            USING ERRCODE = 'insufficient_privilege';
    END $$
    """,
    "audit_refuse_unpurged_delete": """
    CREATE OR REPLACE FUNCTION audit_refuse_unpurged_delete() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF NOT EXISTS (SELECT 1 FROM purged_runs p WHERE p.run_id = OLD.run_id) THEN
            RAISE EXCEPTION '% is append-only: rows of run % can only be deleted by a recorded purge',
                TG_TABLE_NAME, OLD.run_id USING ERRCODE = 'insufficient_privilege';
        END IF;
        RETURN OLD;
    END $$
    """,
    "audit_refuse_purged_insert": """
    CREATE OR REPLACE FUNCTION audit_refuse_purged_insert() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF EXISTS (SELECT 1 FROM purged_runs p JOIN audit_runs r ON r.run_key = p.run_key
                   WHERE r.id = NEW.run_id) THEN
            RAISE EXCEPTION 'evidence_items is append-only: run % was purged and takes no new evidence',
                NEW.run_id USING ERRCODE = 'insufficient_privilege';
        END IF;
        RETURN NEW;
    END $$
    """,
}
PG_TRIGGERS = [
    ("evidence_items_no_unpurged_delete", "evidence_items",
     "BEFORE DELETE ON evidence_items FOR EACH ROW EXECUTE FUNCTION audit_refuse_unpurged_delete()"),
    ("evidence_items_no_purged_insert", "evidence_items",
     "BEFORE INSERT ON evidence_items FOR EACH ROW EXECUTE FUNCTION audit_refuse_purged_insert()"),
    ("findings_no_update", "findings",
     "BEFORE UPDATE ON findings FOR EACH ROW EXECUTE FUNCTION audit_refuse_change()"),
    ("findings_no_unpurged_delete", "findings",
     "BEFORE DELETE ON findings FOR EACH ROW EXECUTE FUNCTION audit_refuse_unpurged_delete()"),
    ("reports_no_update", "reports",
     f"BEFORE UPDATE OF {REPORT_FIXED} ON reports FOR EACH ROW EXECUTE FUNCTION audit_refuse_change()"),
    ("reports_no_delete", "reports",
     "BEFORE DELETE ON reports FOR EACH ROW EXECUTE FUNCTION audit_refuse_change()"),
] + [(f"{t}_no_change", t, f"BEFORE UPDATE OR DELETE ON {t} FOR EACH ROW EXECUTE FUNCTION audit_refuse_change()")
     for t in TOMBSTONES]


def _sqlite_triggers() -> list[tuple[str, str]]:
    def refuse(msg: str) -> str:
        return f"BEGIN SELECT RAISE(ABORT, '{msg}'); END"

    out = [
        ("evidence_items_no_unpurged_delete",
         "BEFORE DELETE ON evidence_items WHEN NOT EXISTS "
         "(SELECT 1 FROM purged_runs p WHERE p.run_id = OLD.run_id) "
         + refuse("evidence_items is append-only: rows can only be deleted by a recorded purge")),
        ("evidence_items_no_purged_insert",
         "BEFORE INSERT ON evidence_items WHEN EXISTS (SELECT 1 FROM purged_runs p JOIN audit_runs r "
         "ON r.run_key = p.run_key WHERE r.id = NEW.run_id) "
         + refuse("evidence_items is append-only: a purged run takes no new evidence")),
        ("findings_no_update", "BEFORE UPDATE ON findings "
         + refuse("findings is append-only: rows cannot be updated")),
        ("findings_no_unpurged_delete",
         "BEFORE DELETE ON findings WHEN NOT EXISTS "
         "(SELECT 1 FROM purged_runs p WHERE p.run_id = OLD.run_id) "
         + refuse("findings is append-only: rows can only be deleted by a recorded purge")),
        ("reports_no_update", f"BEFORE UPDATE OF {REPORT_FIXED} ON reports "
         + refuse("reports is append-only: a report row cannot be updated")),
        ("reports_no_delete", "BEFORE DELETE ON reports "
         + refuse("reports is append-only: a report is withdrawn, never deleted")),
    ]
    for t in TOMBSTONES:
        out.append((f"{t}_no_update", f"BEFORE UPDATE ON {t} " + refuse(f"{t} is append-only: rows cannot be updated")))
        out.append((f"{t}_no_delete", f"BEFORE DELETE ON {t} " + refuse(f"{t} is append-only: rows cannot be deleted")))
    return out


def _create_tables() -> None:
    op.create_table('purged_runs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('run_key', sa.String(length=250), nullable=False),
    sa.Column('chain_head', sa.String(length=64), nullable=False),
    sa.Column('length', sa.Integer(), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('purged_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_purged_runs')),
    sa.UniqueConstraint('run_key', name=op.f('uq_purged_runs_run_key'))
    )
    op.create_table('report_withdrawals',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('report_id', sa.Integer(), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('withdrawn_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['report_id'], ['reports.id'], name=op.f('fk_report_withdrawals_report_id_reports')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_report_withdrawals')),
    sa.UniqueConstraint('report_id', name=op.f('uq_report_withdrawals_report_id'))
    )
    op.create_table('erasure_records',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('subject_id', sa.Integer(), nullable=False),
    sa.Column('pseudonym', sa.String(length=40), nullable=False),
    sa.Column('removed', sa.JSON(), nullable=False),
    sa.Column('kept', sa.JSON(), nullable=False),
    sa.Column('erased_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['subject_id'], ['data_subjects.id'], name=op.f('fk_erasure_records_subject_id_data_subjects')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_erasure_records'))
    )
    op.create_table('case_holds',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('case', sa.String(length=120), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('set_by', sa.String(length=100), nullable=True),
    sa.Column('set_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('released_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_case_holds'))
    )


def _pg_grants() -> None:
    op.execute(f"""
    DO $$ BEGIN
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{APP_ROLE}')
           AND (SELECT rolsuper OR rolcreaterole FROM pg_roles WHERE rolname = current_user) THEN
            CREATE ROLE "{APP_ROLE}" NOLOGIN;
        END IF;
        IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{APP_ROLE}') THEN
            GRANT USAGE ON SCHEMA public TO "{APP_ROLE}";
            GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO "{APP_ROLE}";
            REVOKE UPDATE, DELETE, TRUNCATE ON {", ".join(PROTECTED)} FROM "{APP_ROLE}";
            GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO "{APP_ROLE}";
            ALTER DEFAULT PRIVILEGES IN SCHEMA public
                GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO "{APP_ROLE}";
            ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO "{APP_ROLE}";
        END IF;
    END $$
    """)


def upgrade() -> None:
    _create_tables()
    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        for sql in PG_FUNCTIONS.values():
            op.execute(sql)
        for name, _table, body in PG_TRIGGERS:
            op.execute(f"CREATE TRIGGER {name} {body}")
        _pg_grants()
    elif dialect == "sqlite":
        for name, body in _sqlite_triggers():
            op.execute(f"CREATE TRIGGER {name} {body}")


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        op.execute(f"""
        DO $$ BEGIN
            IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{APP_ROLE}') THEN
                ALTER DEFAULT PRIVILEGES IN SCHEMA public
                    REVOKE SELECT, INSERT, UPDATE, DELETE ON TABLES FROM "{APP_ROLE}";
                ALTER DEFAULT PRIVILEGES IN SCHEMA public REVOKE USAGE, SELECT ON SEQUENCES FROM "{APP_ROLE}";
                REVOKE ALL ON ALL TABLES IN SCHEMA public FROM "{APP_ROLE}";
                REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM "{APP_ROLE}";
            END IF;
        END $$
        """)
        for name, table, _body in PG_TRIGGERS:
            op.execute(f"DROP TRIGGER IF EXISTS {name} ON {table}")
        for fn in PG_FUNCTIONS:
            op.execute(f"DROP FUNCTION IF EXISTS {fn}()")
    elif dialect == "sqlite":
        for name, _body in _sqlite_triggers():
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
    op.drop_table('case_holds')
    op.drop_table('erasure_records')
    op.drop_table('report_withdrawals')
    op.drop_table('purged_runs')
