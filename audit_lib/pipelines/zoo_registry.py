"""Register the reference zoo's people and models in the evidence store, as a data
protection officer and a model owner would: the demo, the pipeline tests and the pipeline
benchmark start from this.

Privacy side (``register_privacy``):

- models: the tiny CLIP (image + text) and the SimCLR target (image), as suspects;
- subjects: ORL people of the tiny CLIP under their pseudonymous names: members (named in
  its training captions) and non-members (never trained on), each with their held-out
  photos (never trained on) as reference photos;
- claimed images for membership: member subjects claim images from the SimCLR target's
  member split, non-member subjects images from its non-member split (disjoint slices);
- reference non-members of the SimCLR target: further images of its non-member split,
  disjoint from every claimed image (``audit_lib.eval.privacy.mi_split`` draws them all).

Ownership side (``register_ownership``): the owner's encoder (the SimCLR target's weights)
as an owned model, and suspects: an independent encoder of the zoo (not a copy).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

LEGAL_BASIS = "GDPR Art. 6(1)(f): compliance audit of third-party encoders"


@dataclass
class PrivacyRegistration:
    """Ids of what ``register_privacy`` stored, with the ground truth for checks."""

    models: dict[str, int] = field(default_factory=dict)  # zoo entry name -> model id
    identity_members: list[int] = field(default_factory=list)  # subjects named in the CLIP's captions
    identity_nonmembers: list[int] = field(default_factory=list)  # subjects the CLIP never saw
    labels: dict[int, str] = field(default_factory=dict)  # subject id -> "pseudonym (name, member|non-member)"


def _checked(items: list[tuple[str, bytes]]) -> list[Any]:
    from audit_lib.images import check_image_bytes
    from audit_lib.registry import ImageLimits

    limits = ImageLimits.from_settings().as_kwargs()
    return [check_image_bytes(data, name=name, **limits) for name, data in items]


KNOWN_MEMBERS = ("s8", "s12")
"""Members whose names the ci tiny CLIP demonstrably learnt (most IDIA templates correct in
the identity-inference evaluation, tests/test_identity_inference.py); not every member's
name is learnt by so small a model (zero-shot member accuracy ~0.6 on held-out photos)."""
KNOWN_NONMEMBERS = ("s22", "s31")
"""Non-members: one seen with generic captions only (never named), one never trained on."""


def register_privacy(manifest: Any, *, members: Sequence[str] | None = KNOWN_MEMBERS,
                     nonmembers: Sequence[str] | None = KNOWN_NONMEMBERS, n_members: int = 2,
                     n_nonmembers: int = 2, claimed_per_subject: int = 20, n_references: int = 60, seed: int = 0,
                     db_url: str | None = None) -> PrivacyRegistration:
    """Register zoo models and people for a privacy audit (see the module doc). ``members``
    and ``nonmembers`` are ORL person ids; None takes the first ``n_members`` members and
    ``n_nonmembers`` people never trained on."""
    from audit_lib import registry
    from audit_lib.eval.privacy import mi_split
    from audit_lib.pipelines.references import write_reference_nonmembers
    from audit_lib.store import session_scope
    from audit_lib.zoo.build import registry_name
    from audit_lib.zoo.data import load_images

    clip = manifest.entry("tiny-clip")
    target = manifest.entry("simclr-target")
    people = {p.person_id: p for p in clip.people}
    if members is None:
        members = [p.person_id for p in clip.people if p.member][:n_members]
    if nonmembers is None:
        nonmembers = [p.person_id for p in clip.people if not p.member and p.caption_mode == "absent"][:n_nonmembers]
    unknown = [pid for pid in (*members, *nonmembers) if pid not in people]
    wrong = [pid for pid in members if pid in people and not people[pid].member] + \
        [pid for pid in nonmembers if pid in people and people[pid].member]
    if unknown or wrong or not members or not nonmembers:
        raise ValueError(f"zoo {manifest.profile}: people {unknown or wrong or 'none'}: not in the tiny CLIP's "
                         "data, or on the wrong side of its member split")
    members = [people[pid] for pid in members]
    nonmembers = [people[pid] for pid in nonmembers]
    n_claims = len(members) + len(nonmembers)
    split = mi_split(manifest, load_images(), n_each=claimed_per_subject * n_claims, n_references=n_references,
                     seed=seed)
    fit = min(len(split.members) // max(1, len(members)), len(split.test_nonmembers) // max(1, len(nonmembers)))
    if len(split.references) < 10 or fit < 1:
        raise ValueError(f"zoo {manifest.profile}: the SimCLR target's non-member split is too small")
    if fit < claimed_per_subject:
        log.warning("zoo %s: %d claimed images per subject fit (asked for %d)", manifest.profile, fit,
                    claimed_per_subject)
        claimed_per_subject = fit
    out = PrivacyRegistration()
    with session_scope(db_url) as s:
        for e in (clip, target):
            out.models[e.name] = registry.add_model(
                s, name=registry_name(manifest.profile, e.name), kind="checkpoint", role="suspect",
                capabilities=e.capabilities, architecture=e.architecture, weights_path=Path(e.weights_path)).id
        for k, p in enumerate(members + nonmembers):
            member = p.member
            pool = split.members if member else split.test_nonmembers
            j = k if member else k - len(members)
            claimed = pool[j * claimed_per_subject:(j + 1) * claimed_per_subject]
            photos = [(f"{p.person_id}-{Path(f).name}", Path(f).read_bytes()) for f in p.heldout_photos]
            subj = registry.add_subject(
                s, name=p.name, legal_basis=LEGAL_BASIS, sex=p.sex, photos=_checked(photos),
                claimed=_checked([(f"claimed-{i:03d}.png", b) for i, b in enumerate(claimed)]))
            (out.identity_members if member else out.identity_nonmembers).append(subj.id)
            out.labels[subj.id] = f"{subj.pseudonym} ({p.name}, {'member' if member else 'non-member'})"
    write_reference_nonmembers(registry_name(manifest.profile, target.name),
                               [(f"reference-{i:03d}.png", b) for i, b in enumerate(split.references)])
    log.info("registered %d subjects and models %s; %d reference non-members for %s", len(out.labels),
             sorted(out.models), len(split.references), target.name)
    return out


def register_ownership(manifest: Any, *, owned_name: str = "acme-encoder", db_url: str | None = None
                       ) -> dict[str, int]:
    """Register the owner's encoder (the SimCLR target's weights) as an owned checkpoint and
    the zoo's first independent encoder as a suspect. Returns name -> model id."""
    from audit_lib import registry
    from audit_lib.store import session_scope
    from audit_lib.zoo.build import registry_name

    target = manifest.entry("simclr-target")
    indep = manifest.by_role("independent")[0]
    with session_scope(db_url) as s:
        owned = registry.add_model(s, name=owned_name, kind="checkpoint", role="owned", capabilities="image",
                                   architecture=target.architecture, weights_path=Path(target.weights_path))
        suspect = registry.add_model(s, name=registry_name(manifest.profile, indep.name), kind="checkpoint",
                                     role="suspect", capabilities="image", architecture=indep.architecture,
                                     weights_path=Path(indep.weights_path))
        return {owned_name: owned.id, indep.name: suspect.id}


def register_copy(name: str, source_model_id: int, *, db_url: str | None = None) -> int:
    """Register a suspect that serves exactly the weights of ``source_model_id`` (a leaked
    copy of an owned model, as an infringer would publish it)."""
    from audit_lib import registry
    from audit_lib.store import session_scope
    from audit_lib.store.models import AuditedModel

    with session_scope(db_url) as s:
        src = s.get(AuditedModel, int(source_model_id))
        return registry.add_model(s, name=name, kind="checkpoint", role="suspect", capabilities=src.capabilities,
                                  architecture=src.architecture, weights_path=Path(src.weights_path)).id
