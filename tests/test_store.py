"""The schema: migrations run on PostgreSQL and SQLite and agree with the models."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from audit_lib.store.db import get_engine
from audit_lib.store.models import Base

TABLES = {"data_subjects", "subject_images", "image_blobs", "models", "model_versions",
          "enrolment_artefacts", "audit_runs", "findings", "evidence_items", "query_cache",
          "reports", "purged_runs", "report_withdrawals", "erasure_records", "case_holds"}


def test_migrations_create_every_table(db_url):
    names = set(inspect(get_engine(db_url)).get_table_names())
    assert TABLES <= names
    assert "alembic_version" in names


def test_models_and_migrations_agree(db_url):
    with get_engine(db_url).connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(ctx, Base.metadata)
    assert diff == [], f"models and migrations differ: {diff}"


def test_downgrade_then_upgrade(tmp_path):
    from audit_lib.store import upgrade
    from alembic import command
    from audit_lib.store.db import alembic_config

    url = f"sqlite:///{tmp_path / 'x.sqlite'}"
    upgrade(url)
    command.downgrade(alembic_config(url), "base")
    assert set(inspect(get_engine(url)).get_table_names()) <= {"alembic_version"}
    upgrade(url)
    assert TABLES <= set(inspect(get_engine(url)).get_table_names())
