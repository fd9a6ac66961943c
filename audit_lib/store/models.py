"""The evidence store's schema as SQLAlchemy 2 typed models.

Schema changes go through Alembic migrations in ``migrations/``; a test checks that the
models and the migrations agree.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    """Timezone-aware now, the only clock the store uses."""
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class DataSubject(Base):
    """A person registered by a DPO. After erasure only the pseudonym and hashes remain."""

    __tablename__ = "data_subjects"

    id: Mapped[int] = mapped_column(primary_key=True)
    pseudonym: Mapped[str] = mapped_column(String(40), unique=True)
    name: Mapped[str | None] = mapped_column(String(200))
    aliases: Mapped[list[Any] | None] = mapped_column(JSON)
    legal_basis: Mapped[str | None] = mapped_column(String(200))
    sex: Mapped[str | None] = mapped_column(String(1))
    registered_by: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    erased_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    images: Mapped[list[SubjectImage]] = relationship(
        back_populates="subject", cascade="all, delete-orphan", order_by="SubjectImage.id"
    )

    @property
    def is_erased(self) -> bool:
        return self.erased_at is not None


class ImageBlob(Base):
    """Image bytes stored once per sha256; ``data`` is emptied when no live subject needs it."""

    __tablename__ = "image_blobs"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    data: Mapped[bytes | None] = mapped_column(LargeBinary)
    media_type: Mapped[str] = mapped_column(String(40))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    size_bytes: Mapped[int] = mapped_column(Integer)


class SubjectImage(Base):
    """A subject's photo: ``reference`` (who they are) or ``claimed`` (maybe scraped)."""

    __tablename__ = "subject_images"
    __table_args__ = (UniqueConstraint("subject_id", "sha256"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    subject_id: Mapped[int] = mapped_column(ForeignKey("data_subjects.id", ondelete="CASCADE"))
    sha256: Mapped[str] = mapped_column(ForeignKey("image_blobs.sha256"))
    role: Mapped[str] = mapped_column(String(20))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    subject: Mapped[DataSubject] = relationship(back_populates="images")
    blob: Mapped[ImageBlob] = relationship()


class AuditedModel(Base):
    """A model under audit: a local checkpoint or a remote embedding API; owned or suspect."""

    __tablename__ = "models"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    kind: Mapped[str] = mapped_column(String(20))  # checkpoint | api
    role: Mapped[str] = mapped_column(String(20))  # owned | suspect | reference
    architecture: Mapped[str | None] = mapped_column(String(200))
    weights_path: Mapped[str | None] = mapped_column(Text)
    endpoint_url: Mapped[str | None] = mapped_column(Text)
    adapter: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    credential_name: Mapped[str | None] = mapped_column(String(200))
    capabilities: Mapped[list[Any]] = mapped_column(JSON)
    query_budget: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # retired: no new audits; its findings stay
    retired_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    versions: Mapped[list[ModelVersion]] = relationship(
        back_populates="model", order_by="ModelVersion.id"
    )


class ModelImageSet(Base):
    """An image folder registered for a model: the owner's own images (``owner``), the
    attacker-side public images (``public``) or a labelled downstream set (``downstream``,
    one sub-folder per class). The files live under the data folder; the database keeps
    the manifest (every file's relative path, sha256 and label) and its hash. The newest
    row of a (model, role) is the current one; older rows stay for the findings that
    name them."""

    __tablename__ = "model_image_sets"
    __table_args__ = (UniqueConstraint("model_id", "role", "manifest_sha256"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"))
    role: Mapped[str] = mapped_column(String(20))  # owner | public | downstream
    folder: Mapped[str] = mapped_column(Text)  # relative to the data folder
    manifest_sha256: Mapped[str] = mapped_column(String(64))
    n_images: Mapped[int] = mapped_column(Integer)
    classes: Mapped[list[Any] | None] = mapped_column(JSON)
    manifest: Mapped[list[Any]] = mapped_column(JSON)  # [{"path", "sha256", "label"}]
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ModelReferenceImage(Base):
    """A known non-member of a model's training set (membership inference ranks claimed
    images against these); the bytes are stored once in ``image_blobs``."""

    __tablename__ = "model_reference_images"
    __table_args__ = (UniqueConstraint("model_id", "sha256"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"))
    sha256: Mapped[str] = mapped_column(ForeignKey("image_blobs.sha256"))
    name: Mapped[str] = mapped_column(String(255))  # the file name it was registered from
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    blob: Mapped[ImageBlob] = relationship()


class ModelVersion(Base):
    """A model's identity at a point in time: weights sha256, or an API's canary hash."""

    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("model_id", "version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"))
    version: Mapped[str] = mapped_column(String(64))
    how: Mapped[str] = mapped_column(String(20))  # weights | canary
    embedding_dim: Mapped[int | None] = mapped_column(Integer)
    preprocess: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    first_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    model: Mapped[AuditedModel] = relationship(back_populates="versions")


class EnrolmentArtefact(Base):
    """An owned model's committed artefact (watermark key, fingerprint, verifier, nulls)."""

    __tablename__ = "enrolment_artefacts"
    __table_args__ = (UniqueConstraint("model_id", "kind", "sha256"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"))
    kind: Mapped[str] = mapped_column(String(40))
    sha256: Mapped[str] = mapped_column(String(64))
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    meta: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class AuditRun(Base):
    """One audit (an Airflow run or a CLI invocation): its code version and configuration."""

    __tablename__ = "audit_runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    run_key: Mapped[str] = mapped_column(String(250), unique=True)
    kind: Mapped[str] = mapped_column(String(40))
    code_version: Mapped[str] = mapped_column(String(80))
    config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    status: Mapped[str] = mapped_column(String(20), default="running")


class Finding(Base):
    """A method's calibrated result; one per run, method, target and version."""

    __tablename__ = "findings"
    __table_args__ = (UniqueConstraint("run_id", "method", "target_key", "model_version_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("audit_runs.id"))
    method: Mapped[str] = mapped_column(String(40))
    method_version: Mapped[str] = mapped_column(String(20))
    target_key: Mapped[str] = mapped_column(String(80))  # subject:ID | suspect:ID | model:ID
    subject_id: Mapped[int | None] = mapped_column(ForeignKey("data_subjects.id"))
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))
    hypothesis: Mapped[str] = mapped_column(Text)
    statistic: Mapped[float | None] = mapped_column(Float)
    null_description: Mapped[str] = mapped_column(Text)
    p_value: Mapped[float | None] = mapped_column(Float)
    alpha: Mapped[float] = mapped_column(Float)
    decision: Mapped[str] = mapped_column(String(40))
    effect_size: Mapped[float | None] = mapped_column(Float)
    parameters: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class EvidenceItem(Base):
    """One query behind a finding; append-only and hash-chained per audit run."""

    __tablename__ = "evidence_items"
    __table_args__ = (UniqueConstraint("run_id", "seq"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("audit_runs.id"))
    seq: Mapped[int] = mapped_column(Integer)
    model_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    kind: Mapped[str] = mapped_column(String(20))  # image | text | canary
    input_sha256: Mapped[str] = mapped_column(String(64))
    response_sha256: Mapped[str] = mapped_column(String(64))
    cached: Mapped[bool] = mapped_column(default=False)
    requested_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    latency_ms: Mapped[float] = mapped_column(Float, default=0.0)
    prev_hash: Mapped[str] = mapped_column(String(64))
    row_hash: Mapped[str] = mapped_column(String(64))


class QueryCacheEntry(Base):
    """An answer already paid for: (model version, input sha256, kind) -> float32 vector."""

    __tablename__ = "query_cache"

    model_version: Mapped[str] = mapped_column(String(64), primary_key=True)
    input_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(20), primary_key=True)
    dim: Mapped[int] = mapped_column(Integer)
    vector: Mapped[bytes] = mapped_column(LargeBinary)
    response_sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Report(Base):
    """A rendered PDF evidence report and the chain head it was rendered against."""

    __tablename__ = "reports"

    id: Mapped[int] = mapped_column(primary_key=True)
    case_id: Mapped[str] = mapped_column(String(120), unique=True)
    kind: Mapped[str] = mapped_column(String(40))
    path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    chain_head: Mapped[str | None] = mapped_column(String(64))
    finding_ids: Mapped[list[Any]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class WebUser(Base):
    """A person who signs in to the DPO web app (``audit_lib.web``); ``role`` is ``dpo``
    (register, view, erase) or ``viewer`` (view only). ``password_hash`` is a salted scrypt
    hash (``audit_lib.web.passwords``), never the password."""

    __tablename__ = "web_users"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(100), unique=True)
    password_hash: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(20))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_login_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class WebAuditEvent(Base):
    """Who did what in the web app: sign-ins, subjects registered, viewed and erased,
    reports downloaded. Append-only; names subjects by id and pseudonym only, so an
    erasure leaves no personal field behind here."""

    __tablename__ = "web_audit_log"

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    username: Mapped[str | None] = mapped_column(String(100))
    action: Mapped[str] = mapped_column(String(40))
    subject_id: Mapped[int | None] = mapped_column(ForeignKey("data_subjects.id"))
    target: Mapped[str | None] = mapped_column(String(120))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    client: Mapped[str | None] = mapped_column(String(64))


class PurgedRun(Base):
    """A run whose evidence and findings were purged as a whole (retention), recorded
    before the rows go. The database lets evidence and findings rows be deleted only for a
    run recorded here, and refuses new evidence for a purged run key, so a chain cannot be
    deleted and re-inserted forged (migration 0005). Never updated or deleted."""

    __tablename__ = "purged_runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(Integer)  # not a foreign key: the mark outlives the run row
    run_key: Mapped[str] = mapped_column(String(250), unique=True)
    chain_head: Mapped[str] = mapped_column(String(64))
    length: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(Text)
    purged_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ReportWithdrawal(Base):
    """The tombstone of a withdrawn report: its file was deleted and is never served again.
    Records which report, when and why; never a name. Never updated or deleted."""

    __tablename__ = "report_withdrawals"

    id: Mapped[int] = mapped_column(primary_key=True)
    report_id: Mapped[int] = mapped_column(ForeignKey("reports.id"), unique=True)
    reason: Mapped[str] = mapped_column(Text)
    withdrawn_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ErasureRecord(Base):
    """What an erasure removed (counts) and what it kept and why (a legal hold, an image
    another subject or model still uses). Names the subject by pseudonym only."""

    __tablename__ = "erasure_records"

    id: Mapped[int] = mapped_column(primary_key=True)
    subject_id: Mapped[int] = mapped_column(ForeignKey("data_subjects.id"))
    pseudonym: Mapped[str] = mapped_column(String(40))
    removed: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    kept: Mapped[list[Any]] = mapped_column(JSON, default=list)  # [{"what", "why"}]
    erased_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class CaseHold(Base):
    """A legal hold on a case (``subject:ID``, ``ownership:OWNED:SUSPECT``, ``run:KEY``):
    while ``released_at`` is empty, the case's evidence and reports survive erasure and
    retention clean-up (GDPR Art. 17(3)(e))."""

    __tablename__ = "case_holds"

    id: Mapped[int] = mapped_column(primary_key=True)
    case: Mapped[str] = mapped_column(String(120))
    reason: Mapped[str] = mapped_column(Text)
    set_by: Mapped[str | None] = mapped_column(String(100))
    set_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    released_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ReportDecision(Base):
    """A person's decision on a draft report: ``approved`` (released: signed, offered to the
    DPO) or ``rejected`` (kept as a draft, never signed, never offered). Insert-only (the
    database refuses UPDATE) and hash-chained across the table, so who released what, when
    and with which comment cannot be changed quietly. One decision per report."""

    __tablename__ = "report_decisions"

    id: Mapped[int] = mapped_column(primary_key=True)
    report_id: Mapped[int] = mapped_column(ForeignKey("reports.id"), unique=True)
    decision: Mapped[str] = mapped_column(String(20))  # approved | rejected
    decided_by: Mapped[str] = mapped_column(String(100))
    decided_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    comment: Mapped[str | None] = mapped_column(Text)
    released_path: Mapped[str | None] = mapped_column(Text)
    released_sha256: Mapped[str | None] = mapped_column(String(64))
    signature: Mapped[str | None] = mapped_column(Text)  # how the released PDF was signed
    dag_run: Mapped[str | None] = mapped_column(String(250))
    prev_hash: Mapped[str] = mapped_column(String(64))
    row_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class WebSession(Base):
    """A signed-in session of the DPO web app, held server-side so that signing out or a
    password change ends it at once (the cookie alone cannot be recalled). ``id`` is the
    sha256 of the random token the cookie carries, never the token itself."""

    __tablename__ = "web_sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("web_users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
