"""evidence store schema

Revision ID: 0001
Revises: (none)
Create Date: 2026-11-23 03:05:36.674615
"""
from alembic import op
import sqlalchemy as sa


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('audit_runs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('run_key', sa.String(length=250), nullable=False),
    sa.Column('kind', sa.String(length=40), nullable=False),
    sa.Column('code_version', sa.String(length=80), nullable=False),
    sa.Column('config', sa.JSON(), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_audit_runs')),
    sa.UniqueConstraint('run_key', name=op.f('uq_audit_runs_run_key'))
    )
    op.create_table('data_subjects',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('pseudonym', sa.String(length=40), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=True),
    sa.Column('aliases', sa.JSON(), nullable=True),
    sa.Column('legal_basis', sa.String(length=200), nullable=True),
    sa.Column('sex', sa.String(length=1), nullable=True),
    sa.Column('registered_by', sa.String(length=100), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('erased_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_data_subjects')),
    sa.UniqueConstraint('pseudonym', name=op.f('uq_data_subjects_pseudonym'))
    )
    op.create_table('image_blobs',
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('data', sa.LargeBinary(), nullable=True),
    sa.Column('media_type', sa.String(length=40), nullable=False),
    sa.Column('width', sa.Integer(), nullable=False),
    sa.Column('height', sa.Integer(), nullable=False),
    sa.Column('size_bytes', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('sha256', name=op.f('pk_image_blobs'))
    )
    op.create_table('models',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('kind', sa.String(length=20), nullable=False),
    sa.Column('role', sa.String(length=20), nullable=False),
    sa.Column('architecture', sa.String(length=200), nullable=True),
    sa.Column('weights_path', sa.Text(), nullable=True),
    sa.Column('endpoint_url', sa.Text(), nullable=True),
    sa.Column('adapter', sa.JSON(), nullable=True),
    sa.Column('credential_name', sa.String(length=200), nullable=True),
    sa.Column('capabilities', sa.JSON(), nullable=False),
    sa.Column('query_budget', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_models')),
    sa.UniqueConstraint('name', name=op.f('uq_models_name'))
    )
    op.create_table('query_cache',
    sa.Column('model_version', sa.String(length=64), nullable=False),
    sa.Column('input_sha256', sa.String(length=64), nullable=False),
    sa.Column('kind', sa.String(length=20), nullable=False),
    sa.Column('dim', sa.Integer(), nullable=False),
    sa.Column('vector', sa.LargeBinary(), nullable=False),
    sa.Column('response_sha256', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('model_version', 'input_sha256', 'kind', name=op.f('pk_query_cache'))
    )
    op.create_table('reports',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('case_id', sa.String(length=120), nullable=False),
    sa.Column('kind', sa.String(length=40), nullable=False),
    sa.Column('path', sa.Text(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('chain_head', sa.String(length=64), nullable=True),
    sa.Column('finding_ids', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_reports')),
    sa.UniqueConstraint('case_id', name=op.f('uq_reports_case_id'))
    )
    op.create_table('enrolment_artefacts',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('model_id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=40), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('payload', sa.LargeBinary(), nullable=False),
    sa.Column('meta', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['model_id'], ['models.id'], name=op.f('fk_enrolment_artefacts_model_id_models')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_enrolment_artefacts')),
    sa.UniqueConstraint('model_id', 'kind', 'sha256', name=op.f('uq_enrolment_artefacts_model_id'))
    )
    op.create_table('model_versions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('model_id', sa.Integer(), nullable=False),
    sa.Column('version', sa.String(length=64), nullable=False),
    sa.Column('how', sa.String(length=20), nullable=False),
    sa.Column('embedding_dim', sa.Integer(), nullable=True),
    sa.Column('preprocess', sa.JSON(), nullable=True),
    sa.Column('first_seen', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_seen', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['model_id'], ['models.id'], name=op.f('fk_model_versions_model_id_models')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_model_versions')),
    sa.UniqueConstraint('model_id', 'version', name=op.f('uq_model_versions_model_id'))
    )
    op.create_table('subject_images',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('subject_id', sa.Integer(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('role', sa.String(length=20), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['sha256'], ['image_blobs.sha256'], name=op.f('fk_subject_images_sha256_image_blobs')),
    sa.ForeignKeyConstraint(['subject_id'], ['data_subjects.id'], name=op.f('fk_subject_images_subject_id_data_subjects'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_subject_images')),
    sa.UniqueConstraint('subject_id', 'sha256', name=op.f('uq_subject_images_subject_id'))
    )
    op.create_table('evidence_items',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.Column('model_version_id', sa.Integer(), nullable=True),
    sa.Column('kind', sa.String(length=20), nullable=False),
    sa.Column('input_sha256', sa.String(length=64), nullable=False),
    sa.Column('response_sha256', sa.String(length=64), nullable=False),
    sa.Column('cached', sa.Boolean(), nullable=False),
    sa.Column('requested_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('latency_ms', sa.Float(), nullable=False),
    sa.Column('prev_hash', sa.String(length=64), nullable=False),
    sa.Column('row_hash', sa.String(length=64), nullable=False),
    sa.ForeignKeyConstraint(['model_version_id'], ['model_versions.id'], name=op.f('fk_evidence_items_model_version_id_model_versions')),
    sa.ForeignKeyConstraint(['run_id'], ['audit_runs.id'], name=op.f('fk_evidence_items_run_id_audit_runs')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_evidence_items')),
    sa.UniqueConstraint('run_id', 'seq', name=op.f('uq_evidence_items_run_id'))
    )
    op.create_table('findings',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('method', sa.String(length=40), nullable=False),
    sa.Column('method_version', sa.String(length=20), nullable=False),
    sa.Column('target_key', sa.String(length=80), nullable=False),
    sa.Column('subject_id', sa.Integer(), nullable=True),
    sa.Column('model_version_id', sa.Integer(), nullable=False),
    sa.Column('hypothesis', sa.Text(), nullable=False),
    sa.Column('statistic', sa.Float(), nullable=True),
    sa.Column('null_description', sa.Text(), nullable=False),
    sa.Column('p_value', sa.Float(), nullable=True),
    sa.Column('alpha', sa.Float(), nullable=False),
    sa.Column('decision', sa.String(length=40), nullable=False),
    sa.Column('effect_size', sa.Float(), nullable=True),
    sa.Column('parameters', sa.JSON(), nullable=False),
    sa.Column('details', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['model_version_id'], ['model_versions.id'], name=op.f('fk_findings_model_version_id_model_versions')),
    sa.ForeignKeyConstraint(['run_id'], ['audit_runs.id'], name=op.f('fk_findings_run_id_audit_runs')),
    sa.ForeignKeyConstraint(['subject_id'], ['data_subjects.id'], name=op.f('fk_findings_subject_id_data_subjects')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_findings')),
    sa.UniqueConstraint('run_id', 'method', 'target_key', 'model_version_id', name=op.f('uq_findings_run_id'))
    )


def downgrade() -> None:
    op.drop_table('findings')
    op.drop_table('evidence_items')
    op.drop_table('subject_images')
    op.drop_table('model_versions')
    op.drop_table('enrolment_artefacts')
    op.drop_table('reports')
    op.drop_table('query_cache')
    op.drop_table('models')
    op.drop_table('image_blobs')
    op.drop_table('data_subjects')
    op.drop_table('audit_runs')
