"""model lifecycle and model data: retired models, registered image sets, reference non-members

- ``models.retired_at``: a retired model takes no new audits; its findings stay.
- ``model_image_sets``: hashed manifests of the image folders registered for a model (the
  owner's images, attacker-side public images, a labelled downstream set); the files stay
  under the data folder.
- ``model_reference_images``: known non-members per model for membership inference, the
  bytes stored once in ``image_blobs`` like subject images.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 09:40:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('models') as batch:
        batch.add_column(sa.Column('retired_at', sa.DateTime(timezone=True), nullable=True))
    op.create_table('model_image_sets',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('model_id', sa.Integer(), nullable=False),
    sa.Column('role', sa.String(length=20), nullable=False),
    sa.Column('folder', sa.Text(), nullable=False),
    sa.Column('manifest_sha256', sa.String(length=64), nullable=False),
    sa.Column('n_images', sa.Integer(), nullable=False),
    sa.Column('classes', sa.JSON(), nullable=True),
    sa.Column('manifest', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['model_id'], ['models.id'], name=op.f('fk_model_image_sets_model_id_models')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_model_image_sets')),
    sa.UniqueConstraint('model_id', 'role', 'manifest_sha256', name=op.f('uq_model_image_sets_model_id'))
    )
    op.create_table('model_reference_images',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('model_id', sa.Integer(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=255), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['model_id'], ['models.id'], name=op.f('fk_model_reference_images_model_id_models')),
    sa.ForeignKeyConstraint(['sha256'], ['image_blobs.sha256'], name=op.f('fk_model_reference_images_sha256_image_blobs')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_model_reference_images')),
    sa.UniqueConstraint('model_id', 'sha256', name=op.f('uq_model_reference_images_model_id'))
    )


def downgrade() -> None:
    op.drop_table('model_reference_images')
    op.drop_table('model_image_sets')
    with op.batch_alter_table('models') as batch:
        batch.drop_column('retired_at')
