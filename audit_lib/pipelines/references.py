"""Reference non-members for membership inference: images that cannot be in a model's
training set, against which claimed images are ranked. One source for the CLI
(``encoder-audit audit privacy``) and the ``privacy_audit`` DAG.

They are registered per model in the evidence store (``encoder-audit models references
add --model M --images DIR``: table ``model_reference_images``, bytes in ``image_blobs``),
after the same untrusted-image checks as subjects' uploads. There is no other source.

How many are needed: with n claimed images and m references, the smallest per-image
rank p-value is 1/(m+1), so the smallest Holm-adjusted p-value is n/(m+1); a per-image
decision at level alpha needs m >= n/alpha - 1 (:func:`holm_references_needed`). The
collection-level Mann-Whitney test has no such floor.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path


log = logging.getLogger(__name__)

def _stored(model_ref: int | str, db_url: str | None) -> list[bytes]:
    from audit_lib import registry
    from audit_lib.store import session_scope

    with session_scope(db_url) as session:
        model = registry.get_model(session, model_ref)
        return [data for _, _, data in registry.reference_images(session, model) if data is not None]


def load_reference_nonmembers(model_ref: int | str, *, db_url: str | None = None) -> list[bytes]:
    """The image bytes of the model's registered reference non-members, in registration
    order. Raises ValueError naming the command that registers them when there are none."""
    stored = _stored(model_ref, db_url)
    if stored:
        return stored
    from audit_lib import registry
    from audit_lib.store import session_scope

    with session_scope(db_url) as session:
        name = registry.get_model(session, model_ref).name
    raise ValueError(f"model {name}: no reference non-members; register images that cannot be in "
                     f"its training set with `encoder-audit models references add --model {name} "
                     "--images DIR`")


def has_reference_nonmembers(model_ref: int | str, *, db_url: str | None = None) -> bool:
    """Whether :func:`load_reference_nonmembers` has images for the model."""
    from sqlalchemy import select

    from audit_lib import registry
    from audit_lib.store import session_scope
    from audit_lib.store.models import ModelReferenceImage

    with session_scope(db_url) as session:
        model = registry.get_model(session, model_ref)
        return session.scalar(select(ModelReferenceImage.id).where(ModelReferenceImage.model_id == model.id)
                              .limit(1)) is not None


def write_reference_nonmembers(model_name: str, images: list[tuple[str, bytes]], *,
                               db_url: str | None = None) -> None:
    """Register (file name, bytes) pairs as the model's reference set in the store (the
    demo, the zoo wiring and the benchmark), after the untrusted-image checks."""
    from audit_lib import registry
    from audit_lib.images import check_image_bytes
    from audit_lib.registry import ImageLimits
    from audit_lib.store import session_scope

    for name, _ in images:
        if Path(name).name != name or name.startswith("."):
            raise ValueError(f"reference image name {name!r} is not a plain file name")
    limits = ImageLimits.from_settings().as_kwargs()
    checked = [check_image_bytes(data, name=name, **limits) for name, data in images]
    with session_scope(db_url) as session:
        registry.add_reference_images(session, registry.get_model(session, model_name), checked)


def holm_references_needed(n_claimed: int, alpha: float) -> int:
    """The fewest reference non-members with which a per-image Holm decision at ``alpha``
    is reachable for ``n_claimed`` images: the smallest Holm-adjusted rank p-value is
    n/(m+1), so m >= n/alpha - 1."""
    if n_claimed <= 0:
        return 0
    return max(0, math.ceil(n_claimed / alpha - 1e-9) - 1)


def holm_warning(n_claimed: int, n_references: int, alpha: float) -> str | None:
    """A sentence saying why no claimed image can be called a member on its own, or None
    when the reference set is large enough."""
    need = holm_references_needed(n_claimed, alpha)
    if n_claimed <= 0 or n_references >= need:
        return None
    floor = n_claimed / (n_references + 1)
    return (f"{n_references} reference non-members are too few for a per-image decision on "
            f"{n_claimed} claimed images at alpha = {alpha:g}: the smallest Holm-adjusted p-value is "
            f"{n_claimed}/{n_references + 1} = {floor:.3g}; at least {need} are needed (the "
            "collection-level test is unaffected)")
