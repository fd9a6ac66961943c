"""web users and audit log (the DPO web app, audit_lib/web)

Two new tables, nothing else touched: ``web_users`` (sign-in with roles, scrypt password
hashes) and ``web_audit_log`` (who registered, viewed and erased what).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 03:09:59.253822
"""
from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('web_users',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('username', sa.String(length=100), nullable=False),
    sa.Column('password_hash', sa.String(length=200), nullable=False),
    sa.Column('role', sa.String(length=20), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_login_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_web_users')),
    sa.UniqueConstraint('username', name=op.f('uq_web_users_username'))
    )
    op.create_table('web_audit_log',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('username', sa.String(length=100), nullable=True),
    sa.Column('action', sa.String(length=40), nullable=False),
    sa.Column('subject_id', sa.Integer(), nullable=True),
    sa.Column('target', sa.String(length=120), nullable=True),
    sa.Column('detail', sa.JSON(), nullable=False),
    sa.Column('client', sa.String(length=64), nullable=True),
    sa.ForeignKeyConstraint(['subject_id'], ['data_subjects.id'], name=op.f('fk_web_audit_log_subject_id_data_subjects')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_web_audit_log'))
    )


def downgrade() -> None:
    op.drop_table('web_audit_log')
    op.drop_table('web_users')
