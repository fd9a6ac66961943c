"""Subjects: the list, the registration form, a subject's page, its photos, and erasure.

Registration uses the CLI's validation (``audit_lib.images.check_image_bytes`` for every
file, ``audit_lib.registry.add_subject`` for the rest) and shows each error next to its
field. Erasure uses ``audit_lib.registry.erase_subject`` after a confirmation step.
Image checks, thumbnails and queries run in the thread pool (plain ``def`` handlers or
``run_in_threadpool``), never on the event loop. Ids in paths are bounded (``RowId``): a
number no row can have is a 404, not a database error.
"""

from __future__ import annotations

import io

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException

from audit_lib import registry
from audit_lib.images import decode_rgb
from audit_lib.registry import RegistryError
from audit_lib.store import session_scope
from audit_lib.store.models import SubjectImage
from audit_lib.web import audit_log
from audit_lib.web.deps import (CurrentUser, DpoUser, RowId, check_csrf, client_of, render,
                                web_settings)
from audit_lib.web.findings_view import (latest_findings_by_subject, latest_per_model,
                                         subject_findings, subject_reports)
from audit_lib.web.uploads import check_uploads, read_uploads, uploaded_files
from audit_lib.web.users import SignedInUser

router = APIRouter(tags=["subjects"])

MAX_TEXT = {"name": 200, "legal_basis": 200}
MAX_ALIASES = 20
MAX_ALIAS_CHARS = 200
THUMBNAIL_PX = 160
FIELDS = ("name", "aliases", "legal_basis", "sex", "photos", "claimed")
# RegistryError messages start with the field they are about.
MESSAGE_PREFIX_FIELD = {"name:": "name", "legal basis:": "legal_basis", "sex:": "sex",
                        "photos:": "photos"}
RESEND_FILES = "Files are not kept after a refused form: choose them again."


class _Refused(Exception):
    """Rolls back a registration that add_subject accepted but a file check refused."""


def _not_found(what: str) -> HTTPException:
    return HTTPException(status_code=404, detail=f"{what}: not found")


@router.get("/")
def home(user: CurrentUser) -> Response:
    return RedirectResponse("/subjects", status_code=303)


@router.get("/subjects")
def list_subjects(request: Request, user: CurrentUser) -> Response:
    """Every subject with its latest finding per model and method."""
    with session_scope() as s:
        subjects = registry.list_subjects(s)
        rows = [{"id": x.id, "pseudonym": x.pseudonym, "name": x.name, "erased": x.is_erased,
                 "created_at": x.created_at, "registered_by": x.registered_by,
                 "n_reference": sum(1 for i in x.images if i.role == "reference"),
                 "n_claimed": sum(1 for i in x.images if i.role == "claimed")} for x in subjects]
        findings = latest_findings_by_subject(s)
    erased = request.query_params.get("erased")
    return render(request, "subjects.html", {
        "subjects": rows, "findings": findings,
        "erased_pseudonym": next((r["pseudonym"] for r in rows
                                  if erased and erased.isdigit() and r["id"] == int(erased)), None)})


def _form_context(values: dict[str, str], errors: dict[str, list[str]]) -> dict:
    return {"values": values, "errors": errors, "fields": FIELDS}


@router.get("/subjects/new")
def new_subject_form(request: Request, user: DpoUser) -> Response:
    """The registration form (DPOs only)."""
    return render(request, "subject_new.html", _form_context({}, {}))


def _field_of(message: str, label_field: dict[str, str]) -> str:
    for prefix, field in MESSAGE_PREFIX_FIELD.items():
        if message.startswith(prefix):
            return field
    for label, field in label_field.items():
        if message.startswith(f"{label}: "):
            return field
    return "form"


@router.post("/subjects")
async def register_subject(request: Request, user: DpoUser) -> Response:
    """Register a subject from the form; on any error, nothing is written and the form
    comes back with each message beside its field."""
    settings = web_settings(request)
    form = await request.form(max_files=settings.max_files, max_fields=40)
    try:
        check_csrf(request, form)
        photo_files = await read_uploads(uploaded_files(form, "photos"))
        claimed_files = await read_uploads(uploaded_files(form, "claimed"))
        return await run_in_threadpool(_register, request, user, form, photo_files, claimed_files)
    finally:
        await form.close()  # uploaded files' temporary spools go at once


def _register(request: Request, user: SignedInUser, form: FormData,
              photo_files: list[tuple[str | None, bytes]],
              claimed_files: list[tuple[str | None, bytes]]) -> Response:
    values = {k: str(form.get(k) or "") for k in ("name", "aliases", "legal_basis", "sex")}
    errors: dict[str, list[str]] = {}

    def add_error(field: str, message: str) -> None:
        errors.setdefault(field, []).append(message)

    for field, limit in MAX_TEXT.items():
        if len(values[field]) > limit:
            add_error(field, f"{field.replace('_', ' ')}: at most {limit} characters")
    aliases = [a.strip() for a in values["aliases"].splitlines() if a.strip()]
    if len(aliases) > MAX_ALIASES or any(len(a) > MAX_ALIAS_CHARS for a in aliases):
        add_error("aliases", f"aliases: at most {MAX_ALIASES}, one per line, "
                             f"{MAX_ALIAS_CHARS} characters each")
    taken: set[str] = set()
    photos, photo_errors = check_uploads(photo_files, taken)
    claimed, claimed_errors = check_uploads(claimed_files, taken)
    for message in photo_errors:
        add_error("photos", message)
    for message in claimed_errors:
        add_error("claimed", message)
    label_field = {im.name: "photos" for im in photos} | {im.name: "claimed" for im in claimed}
    subject_id = None

    def write() -> int:
        with session_scope() as s:
            subject = registry.add_subject(
                s, name=values["name"][:MAX_TEXT["name"]], aliases=aliases,
                legal_basis=values["legal_basis"][:MAX_TEXT["legal_basis"]],
                sex=values["sex"] or None, photos=photos, claimed=claimed,
                registered_by=user.username)
            if errors:
                raise _Refused
            audit_log.record(s, "subject_registered", username=user.username,
                             subject_id=subject.id, target=subject.pseudonym,
                             detail={"reference": len(photos), "claimed": len(claimed)},
                             client=client_of(request))
            return subject.id

    try:
        try:
            subject_id = write()
        except IntegrityError:
            # Two registrations of the same photo at the same moment: both saw no stored
            # copy and both inserted it; the loser rolled back whole. Once more finds the
            # winner's copy and shares it.
            subject_id = write()
    except RegistryError as exc:
        field = _field_of(str(exc), label_field)
        if not (field == "photos" and "photos" in errors):  # "no photo" repeats a file error
            add_error(field, str(exc))
    except _Refused:
        pass
    if subject_id is not None:
        return RedirectResponse(f"/subjects/{subject_id}?registered=1", status_code=303)
    if any(f in errors for f in ("photos", "claimed")) or photos or claimed:
        add_error("form", RESEND_FILES)
    with session_scope() as s:
        audit_log.record(s, "subject_register_refused", username=user.username,
                         detail={"fields": sorted(errors)}, client=client_of(request))
    return render(request, "subject_new.html", _form_context(values, errors), status_code=400)


@router.get("/subjects/{subject_id}")
def show_subject(request: Request, subject_id: RowId, user: CurrentUser) -> Response:
    """A subject's details, findings in plain words, and report links (logged as viewed)."""
    with session_scope() as s:
        try:
            subject = registry.get_subject(s, subject_id)
        except RegistryError:
            raise _not_found(f"subject {subject_id}") from None
        findings = subject_findings(s, subject_id)
        reports = subject_reports(s, subject_id, {f.id for f in findings})
        images = [{"id": i.id, "role": i.role, "sha256": i.sha256,
                   "width": i.blob.width, "height": i.blob.height} for i in subject.images]
        view = {"id": subject.id, "pseudonym": subject.pseudonym, "name": subject.name,
                "aliases": subject.aliases or [], "legal_basis": subject.legal_basis,
                "sex": subject.sex, "registered_by": subject.registered_by,
                "created_at": subject.created_at, "erased_at": subject.erased_at,
                "erased": subject.is_erased}
        audit_log.record(s, "subject_viewed", username=user.username, subject_id=subject.id,
                         target=subject.pseudonym, client=client_of(request))
    return render(request, "subject.html", {
        "subject": view, "images": images, "findings": findings,
        "latest": latest_per_model(findings), "reports": reports,
        "registered": request.query_params.get("registered") == "1"})


@router.get("/subjects/{subject_id}/images/{image_id}.png")
def subject_image(subject_id: RowId, image_id: RowId, user: DpoUser) -> Response:
    """A small PNG of one of a live subject's photos (DPOs only; decoded from the store,
    re-encoded, so the browser never sees the uploaded bytes)."""
    with session_scope() as s:
        image = s.scalar(select(SubjectImage).where(SubjectImage.id == image_id,
                                                    SubjectImage.subject_id == subject_id))
        if image is None or image.subject.is_erased or image.blob.data is None:
            raise _not_found(f"image {image_id}")
        data = image.blob.data
    picture = decode_rgb(data)
    picture.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
    out = io.BytesIO()
    picture.save(out, "PNG")
    return Response(out.getvalue(), media_type="image/png")


@router.get("/subjects/{subject_id}/erase")
def erase_form(request: Request, subject_id: RowId, user: DpoUser) -> Response:
    """The confirmation step before an erasure."""
    with session_scope() as s:
        try:
            subject = registry.get_subject(s, subject_id)
        except RegistryError:
            raise _not_found(f"subject {subject_id}") from None
        view = {"id": subject.id, "pseudonym": subject.pseudonym, "name": subject.name,
                "erased": subject.is_erased, "n_images": len(subject.images)}
    return render(request, "erase_confirm.html", {"subject": view, "error": None})


@router.post("/subjects/{subject_id}/erase")
async def erase(request: Request, subject_id: RowId, user: DpoUser) -> Response:
    """Erase the subject once the DPO has ticked the confirmation box."""
    form = await request.form(max_files=0, max_fields=5)
    check_csrf(request, form)
    return await run_in_threadpool(_erase, request, subject_id, user, form)


def _erase(request: Request, subject_id: int, user: SignedInUser, form: FormData) -> Response:
    with session_scope() as s:
        try:
            subject = registry.get_subject(s, subject_id)
        except RegistryError:
            raise _not_found(f"subject {subject_id}") from None
        view = {"id": subject.id, "pseudonym": subject.pseudonym, "name": subject.name,
                "erased": subject.is_erased, "n_images": len(subject.images)}
        if form.get("confirm") != "yes":
            return render(request, "erase_confirm.html", {
                "subject": view, "error": "Tick the box to confirm: an erasure cannot be undone."},
                status_code=400)
        try:
            registry.erase_subject(s, subject_id)
        except RegistryError as exc:
            return render(request, "erase_confirm.html", {"subject": view, "error": str(exc)},
                          status_code=409)
        audit_log.record(s, "subject_erased", username=user.username, subject_id=subject_id,
                         target=view["pseudonym"], client=client_of(request))
    return RedirectResponse(f"/subjects?erased={subject_id}", status_code=303)
