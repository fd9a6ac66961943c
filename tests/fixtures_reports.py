"""Fixtures for the evidence reports: findings that follow the methods' details
contract, and a way to tamper with evidence past the database's append-only triggers.

``make_case_findings`` is deliberately generic: it stores any list of ``FindingResult``
through the same calls the pipelines use (``start_run`` / ``append_evidence`` /
``store_finding``), so real method output can replace the hand-made results unchanged.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import text, update
from sqlalchemy.orm import Session

from audit_lib import evidence
from audit_lib.findings import FindingResult
from audit_lib.store.models import AuditedModel, DataSubject, EvidenceItem, ModelVersion


@contextmanager
def bypass_append_only(session: Session) -> Iterator[None]:
    """Inside the block the append-only triggers (migrations 0003, 0005) do not fire, as for
    a database superuser wiping or tampering: PostgreSQL's replica role; SQLite's triggers
    are dropped and re-created after."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SET LOCAL session_replication_role = replica"))
        yield
        session.execute(text("SET LOCAL session_replication_role = origin"))
        return
    saved = session.execute(text("SELECT name, sql FROM sqlite_master WHERE type = 'trigger'")).all()
    for name, _sql in saved:
        session.execute(text(f'DROP TRIGGER "{name}"'))
    yield
    for _name, sql in saved:
        session.execute(text(sql))


def force_update_evidence(session: Session, item_id: int, **values: object) -> None:
    """Change an evidence row as an attacker with database superuser rights could: past
    the append-only trigger (PostgreSQL: replica role; SQLite: drop and re-create it)."""
    stmt = update(EvidenceItem).where(EvidenceItem.id == item_id).values(**values)
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SET LOCAL session_replication_role = replica"))
        session.execute(stmt)
        session.execute(text("SET LOCAL session_replication_role = origin"))
        return
    ddl = session.scalar(text("SELECT sql FROM sqlite_master WHERE type = 'trigger' "
                              "AND name = 'evidence_items_no_update'"))
    if ddl:
        session.execute(text("DROP TRIGGER evidence_items_no_update"))
    session.execute(stmt)
    if ddl:
        session.execute(text(ddl))


def _h(*parts: object) -> str:
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()


def add_model_version(session: Session, name: str, *, role: str = "suspect",
                      capabilities: Sequence[str] = ("image", "text")) -> ModelVersion:
    """A registered checkpoint model with one version (weights sha256)."""
    m = AuditedModel(name=name, kind="checkpoint", role=role, capabilities=list(capabilities),
                     architecture="open_clip:tiny-clip-vit", weights_path=f"/models/{name}.safetensors")
    session.add(m)
    session.flush()
    mv = ModelVersion(model_id=m.id, version=_h("weights", name), how="weights", embedding_dim=64,
                      preprocess={"size": 64, "mean": [0.48, 0.46, 0.41], "std": [0.27, 0.26, 0.28]})
    session.add(mv)
    session.flush()
    return mv


def add_subject(session: Session, name: str = "Ada Quillfeather", **kw: object) -> DataSubject:
    """A data subject row (no images: reports need only the registry fields)."""
    s = DataSubject(pseudonym="subject-" + _h("p", name)[:12], name=name, aliases=[],
                    legal_basis="GDPR 6(1)(c)", sex="f", **kw)
    session.add(s)
    session.flush()
    return s


@dataclass
class StoredCase:
    """What ``make_case_findings`` stored: the run and the findings' ids."""

    run_key: str
    finding_ids: list[int] = field(default_factory=list)


def make_case_findings(session: Session, run_key: str, kind: str,
                       items: Sequence[tuple[FindingResult, str, int, int | None]],
                       *, n_queries: int = 6, seed: int = 0) -> StoredCase:
    """Store ``(result, target_key, model_version_id, subject_id)`` items in one run, each
    preceded by ``n_queries`` recorded queries (input/response hashes), as a method's
    handle would record them."""
    rng = np.random.default_rng(seed)
    run = evidence.start_run(session, run_key, kind, {"alpha": 0.05, "seed": 42, "profile": "ci"})
    out = StoredCase(run_key)
    for result, target_key, mv_id, subject_id in items:
        for q in range(n_queries):
            evidence.append_evidence(session, run, kind="image" if q % 3 else "text",
                                     input_sha256=_h(run_key, target_key, "in", q),
                                     response_sha256=_h(run_key, target_key, "out", q),
                                     model_version_id=mv_id, cached=bool(q % 4 == 0),
                                     latency_ms=float(rng.uniform(2, 40)))
        row, _ = evidence.store_finding(session, run, result, target_key=target_key,
                                        model_version_id=mv_id, subject_id=subject_id)
        out.finding_ids.append(row.id)
    evidence.finish_run(session, run)
    return out


# ---- FindingResults that follow the details contract, with realistic numbers ----------

TEMPLATES = ["{}", "an image of {}", "a photo of {}", "{} on a photo", "a photo of a person named {}",
             "a person named {}", "a man named {}", "a woman named {}", "the name of the person is {}",
             "a photo of a person with the name {}", "{} at a gala", "a photo of the celebrity {}",
             "actor {}", "actress {}", "a colored photo of {}", "a black and white photo of {}",
             "a cool photo of {}", "a cropped photo of {}", "a cropped image of {}", "{} in a suit",
             "{} in a dress"]
DECOYS = ["Mara Pellworth", "Jonas Ebberly", "Tilde Kranich", "Oskar Venmore", "Lia Drummond"]
ASSUMPTIONS = ["the decoy names are as likely a priori as the subject's name to be predicted",
               "the subject's photos were not chosen to look like a decoy"]


def idia_result(name: str, *, positive: bool = True, seed: int = 1) -> FindingResult:
    """An IDIA finding for a subject called ``name`` (999 decoys, 21 templates)."""
    rng = np.random.default_rng(seed)
    correct = rng.random(len(TEMPLATES)) < (0.7 if positive else 0.04)
    rows = [{"template": t, "plurality_name": name if c else (DECOYS[i % 5] if rng.random() < .8 else None),
             "correct": bool(c), "votes": int(rng.integers(2, 4)) if c else int(rng.integers(1, 3))}
            for i, (t, c) in enumerate(zip(TEMPLATES, correct))]
    observed = float(correct.sum())
    null = [float(x) for x in rng.binomial(21, 0.02, size=999)]
    p = (1 + sum(x >= observed for x in null)) / 1000
    return FindingResult(
        method="idia", method_version="1.0",
        hypothesis="the model's training data did not pair this person's face with their name",
        statistic=observed, null_description="999 decoy names scored alike (templates won)",
        p_value=p, alpha=0.05, decision="positive" if p <= 0.05 else "negative",
        effect_size=observed / 21,
        parameters={"n_candidates": 1000, "tau": 1, "seed": 42, "name": name},
        details={"observed": observed, "null_scores": null, "n_queries": 3 + 1000 * 21,
                 "assumptions": ASSUMPTIONS, "templates": rows, "n_images": 3,
                 "n_candidates": 1000, "tau": 1,
                 "published_decision": "member" if observed >= 1 else "non-member",
                 "decoy_rank": int(sum(x >= observed for x in null)) + 1})


def encoder_mi_result(*, positive: bool = True, seed: int = 2, with_roc: bool = True) -> FindingResult:
    """An EncoderMI-T finding over 4 claimed images against 200 reference non-members."""
    rng = np.random.default_rng(seed)
    ref = np.sort(rng.normal(0.62, 0.05, 200))
    scores = rng.normal(0.78 if positive else 0.62, 0.03, 4)
    pv = [(1 + int((ref >= s).sum())) / 201 for s in scores]
    order = np.argsort(pv)
    holm = np.minimum(1, np.maximum.accumulate([pv[j] * (4 - k) for k, j in enumerate(order)]))
    p_holm = [0.0] * 4
    for k, j in enumerate(order):
        p_holm[j] = float(holm[k])
    images = [{"sha256": _h("img", seed, i), "score": float(s), "p_value": float(p),
               "p_holm": p_holm[i], "member": bool(p_holm[i] <= 0.05)}
              for i, (s, p) in enumerate(zip(scores, pv))]
    null = [float(x) for x in ref]
    p_set = 1e-4 if positive else 0.41
    details = {"observed": float(scores.mean()), "null_scores": null, "n_queries": 4 * 10 + 200 * 10,
               "alpha_family": min(1.0, p_set * 2), "assumptions": ["the reference images are drawn from "
               "the same distribution as the claimed images and were never in the training data"],
               "rule": "T", "images": images, "reference_scores": null, "mann_whitney_u": 780.0}
    if with_roc:
        fpr = np.linspace(0, 1, 21)
        details["roc"] = {"fpr": fpr.tolist(), "tpr": np.clip(fpr ** 0.3, 0, 1).tolist(), "auc": 0.86}
    return FindingResult(
        method="encoder_mi", method_version="1.0",
        hypothesis="none of the claimed images was in the encoder's training set",
        statistic=float(scores.mean()), null_description="one-sided Mann-Whitney U against 200 "
        "reference non-members", p_value=p_set, alpha=0.05,
        decision="positive" if positive else "negative", effect_size=0.9 if positive else 0.1,
        parameters={"rule": "T", "n_views": 10, "seed": 42}, details=details)


def watermark_result(*, positive: bool = True, seed: int = 3) -> FindingResult:
    """A white-box AWEncoder finding: 64 probe shifts against 199 null statistics."""
    rng = np.random.default_rng(seed)
    shifts = rng.normal(0.21 if positive else 0.01, 0.05, 64)
    control = rng.normal(0.01, 0.012, 150)
    indep = rng.normal(0.012, 0.015, 49)
    null = np.concatenate([control, indep])
    obs = float(shifts.mean())
    p = (1 + int((null >= obs).sum())) / (len(null) + 1)
    return FindingResult(
        method="watermark", method_version="1.0",
        hypothesis="the suspect was trained independently of the owned model",
        statistic=obs, null_description="150 control perturbations of equal norm and 49 "
        "independent encoders", p_value=p, alpha=0.01, decision="positive" if p <= 0.01 else "negative",
        effect_size=obs / float(null.std()),
        parameters={"eps": 8 / 255, "owned_model_id": None, "seed": 7},
        details={"observed": obs, "null_scores": null.tolist(), "n_queries": 128,
                 "assumptions": ["the probes, key and perturbation were committed before the suspect was queried"],
                 "mode": "white_box", "shifts": shifts.tolist(), "control_scores": control.tolist(),
                 "independent_scores": indep.tolist(), "key_sha256": _h("key"), "commitment_sha256": _h("commit")})


def fingerprint_result(*, positive: bool = True, seed: int = 4) -> FindingResult:
    """A MetaV finding: verifier score against 99 held-out negatives."""
    rng = np.random.default_rng(seed)
    neg = rng.beta(2, 12, 99)
    pos = rng.beta(12, 2, 30)
    score = 0.97 if positive else 0.11
    p = (1 + int((neg >= score).sum())) / 100
    return FindingResult(
        method="fingerprint", method_version="1.0",
        hypothesis="the suspect was trained independently of the owned model",
        statistic=score, null_description="99 held-out independent encoders (negatives)",
        p_value=p, alpha=0.01, decision="positive" if p <= 0.01 else "negative", effect_size=None,
        parameters={"n_fingerprints": 32, "seed": 11},
        details={"observed": score, "null_scores": neg.tolist(), "n_queries": 32,
                 "assumptions": ["held-out negatives resemble independent models a suspect could be"],
                 "score": score, "negative_scores": neg.tolist(), "positive_scores": pos.tolist(),
                 "aruc": 0.97, "n_fingerprints": 32, "commitment_sha256": _h("fp-commit")})


def theft_result() -> FindingResult:
    """A StolenEncoder theft-risk curve over three budgets and two defences."""
    curve = []
    for budget in (120, 600, 1200):
        for defence, factor, cost in (("none", 1.0, 0.0), ("noise:0.1", 0.8, 0.02), ("round:2", 0.95, 0.004)):
            acc = min(0.62, 0.62 * factor * (0.6 + 0.4 * budget / 1200))
            curve.append({"budget": budget, "defence": defence, "stolen_accuracy": round(acc, 4),
                          "target_accuracy": 0.62, "agreement": round(acc / 0.62 * 0.9, 4),
                          "cosine": round(0.5 + 0.4 * acc / 0.62, 4), "utility_cost": cost})
    return FindingResult(
        method="theft", method_version="1.0", hypothesis="not a test: a theft-risk estimate",
        statistic=curve[3]["stolen_accuracy"] / 0.62, null_description="none (descriptive)",
        p_value=None, alpha=0.05, decision="not_applicable",
        parameters={"lambda": 20, "k": 1, "epochs": 3, "seed": 5},
        details={"observed": curve[3]["stolen_accuracy"], "null_scores": [], "n_queries": 1200,
                 "assumptions": ["the surrogate images resemble what a thief could obtain"], "curve": curve})


@pytest.fixture
def report_world(db_url):
    """A store with one subject (IDIA + EncoderMI on two models) and one ownership case
    (watermark + fingerprint on a suspect, theft curve on the owned model)."""
    from audit_lib.store import session_scope

    with session_scope(db_url) as s:
        clip = add_model_version(s, "tiny-clip-members")
        simclr = add_model_version(s, "simclr-target", capabilities=("image",))
        owned = add_model_version(s, "owned-simclr", role="owned", capabilities=("image",))
        suspect = add_model_version(s, "suspect-api", capabilities=("image",))
        subj = add_subject(s, "Ada Quillfeather")
        wm = watermark_result()
        wm.parameters["owned_model_id"] = owned.model_id
        privacy = make_case_findings(s, "privacy_audit__2026-11-23", "privacy", [
            (idia_result("Ada Quillfeather"), f"subject:{subj.id}", clip.id, subj.id),
            (encoder_mi_result(), f"subject:{subj.id}", simclr.id, subj.id),
        ])
        ownership = make_case_findings(s, "ownership_audit__2026-11-23", "ownership", [
            (wm, f"suspect:{suspect.model_id}", suspect.id, None),
            (fingerprint_result(), f"suspect:{suspect.model_id}", suspect.id, None),
            (theft_result(), f"model:{owned.model_id}", owned.id, None),
        ], seed=1)
        world = {"subject_id": subj.id, "pseudonym": subj.pseudonym, "owned_id": owned.model_id,
                 "suspect_id": suspect.model_id, "privacy": privacy, "ownership": ownership,
                 "versions": {"clip": clip.version, "simclr": simclr.version, "owned": owned.version,
                              "suspect": suspect.version}}
    return world


def pdf_text(path) -> str:
    """All text of a PDF (pypdf), whitespace collapsed to single spaces."""
    import re

    from pypdf import PdfReader

    return re.sub(r"\s+", " ", " ".join(p.extract_text() or "" for p in PdfReader(str(path)).pages))


def page_pixels(path, page: int = 1, dpi: int = 50) -> np.ndarray:
    """One page rendered by poppler's pdftoppm, as a greyscale array."""
    import shutil
    import subprocess
    import tempfile
    from pathlib import Path

    from PIL import Image

    if shutil.which("pdftoppm") is None:
        pytest.skip("pdftoppm (poppler-utils) is not installed")
    with tempfile.TemporaryDirectory() as tmp:
        prefix = Path(tmp) / "page"
        subprocess.run(["pdftoppm", "-png", "-r", str(dpi), "-f", str(page), "-l", str(page),
                        "-singlefile", str(path), str(prefix)], check=True, timeout=60)
        return np.asarray(Image.open(f"{prefix}.png").convert("L"), dtype=float)


# ---- findings made on the ci reference zoo --------------------
#
# The unit-level tests above use hand-made FindingResults; the ones below make real findings
# on the ci zoo through the product's own task bodies and workflows, with small settings.

ZOO_PRIVACY_RUN = "privacy_audit/zoo-reports"
ZOO_IDIA_CANDIDATES = 100  # fewer than the default 1,000 (p floor 1/100): same code path
ZOO_CLAIMED, ZOO_REFERENCES = 10, 40  # EncoderMI: claimed images per subject, reference non-members
ZOO_DOWNSTREAM_PER_CLASS = 10  # downstream classifiers on 100 labelled train and test images
ZOO_THEFT_EPOCHS = 2  # a stolen copy trained for 2 epochs on 25% of the target's training set


def zoo_watermark_recipe():  # noqa: ANN201 - WatermarkRecipe
    """AWEncoder with small settings (19 controls + 6 independents: p >= 1/26); its
    training is cached under var/ownership-cache like the ownership tests' own."""
    from audit_lib.methods.watermark import WatermarkRecipe

    return WatermarkRecipe.published(pgd_steps=10, n_marked=16, n_probes=16, n_controls=19, embed_steps=10,
                                     batch_size=16, marked_batch=8)


@contextmanager
def zoo_store(url: str, data_dir: Path) -> Iterator[str]:
    """The evidence store ``url`` (emptied) and data folder ``data_dir`` selected through
    the environment, as the CLI and the pipelines read them; restored afterwards."""
    from audit_lib.config import get_settings
    from tests.conftest import _clear
    from tests.fixtures_zoo import ZOO_CACHE

    _clear(url)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("AUDIT_DATABASE_URL", url)
            mp.setenv("AUDIT_DATA_DIR", str(data_dir))
            mp.setenv("AUDIT_ZOO_CACHE", str(ZOO_CACHE))
            get_settings.cache_clear()
            yield url
    finally:
        get_settings.cache_clear()  # after the environment is restored


@dataclass
class PrivacyCase:
    """What ``make_privacy_findings`` stored: one member of the tiny CLIP, audited in one run."""

    subject_id: int
    subject_name: str
    pseudonym: str
    run_key: str
    chain_head: str  # the run's chain head as its summary task logged it
    versions: dict[str, str]  # "clip" / "target" -> the zoo entry's weights sha256 (the model version)


def make_privacy_findings(manifest, db_url: str, run_key: str = ZOO_PRIVACY_RUN) -> PrivacyCase:  # noqa: ANN001
    """The privacy audit's task bodies for one member of the tiny CLIP: registry snapshot,
    version check and null calibration per model, IDIA on the tiny CLIP and EncoderMI on
    the SimCLR target (the subject claims images of its member split), run summary."""
    from audit_lib.pipelines import privacy
    from audit_lib.pipelines.snapshot import snapshot_registry
    from audit_lib.pipelines.summary import summarise_run
    from audit_lib.pipelines.versions import check_model_version
    from audit_lib.pipelines.zoo_registry import KNOWN_MEMBERS, KNOWN_NONMEMBERS, register_privacy
    from audit_lib.store import session_scope

    reg = register_privacy(manifest, members=KNOWN_MEMBERS[:1], nonmembers=KNOWN_NONMEMBERS[:1],
                           claimed_per_subject=ZOO_CLAIMED, n_references=ZOO_REFERENCES, db_url=db_url)
    subject_id = reg.identity_members[0]
    params = {"n_candidates": ZOO_IDIA_CANDIDATES}
    snap = snapshot_registry(run_key, kind="privacy", config=dict(privacy.DEFAULT_PARAMS, **params),
                             subject_ids=[subject_id], model_ids=sorted(reg.models.values()), db_url=db_url)
    versions = [privacy.calibrate_version(check_model_version(m["id"], run_key, db_url=db_url), run_key, params,
                                          db_url=db_url) for m in snap["models"]]
    for method, pairs in (("identity", privacy.plan_identity_pairs(snap, versions)),
                          ("membership", privacy.plan_membership_pairs(snap, versions, db_url=db_url))):
        privacy.run_chunk(method, pairs, run_key, params, db_url=db_url)
    summary = summarise_run(run_key, db_url=db_url)
    with session_scope(db_url) as s:
        subject = s.get(DataSubject, subject_id)
        name, pseudonym = subject.name, subject.pseudonym
    return PrivacyCase(subject_id, name, pseudonym, run_key, summary["chain_head"],
                       {"clip": manifest.entry("tiny-clip").sha256, "target": manifest.entry("simclr-target").sha256})


@dataclass
class OwnershipCase:
    """What ``make_ownership_findings`` stored: a watermarked owned encoder and a leaked copy."""

    owned_id: int
    suspect_id: int
    runs: list[str]  # the watermark check's run, then the theft-risk run
    version: str  # the watermarked weights' sha256: the version of the owned model and of its copy


def make_ownership_findings(manifest, db_url: str, out_dir: Path) -> OwnershipCase:  # noqa: ANN001
    """The ownership workflows with small settings: the owner's encoder (the SimCLR
    target's weights) enrolled with a watermark, a leaked copy of the watermarked encoder
    verified against it, and the watermarked encoder's theft risk."""
    from audit_lib.encoders.loading import file_sha256
    from audit_lib.methods.theft import StealRecipe
    from audit_lib.ownership import watermark as workflows
    from audit_lib.ownership.theft import run_theft_risk
    from audit_lib.pipelines.zoo_registry import register_copy, register_ownership
    from tests.fixtures_ownership import OWNERSHIP_CACHE
    from tests.fixtures_zoo import ZOO_CACHE

    from tests.conftest import cache_lock

    runs = ["ownership-zoo-watermark", "ownership-zoo-theft"]
    owner = register_ownership(manifest, db_url=db_url)["acme-encoder"]
    with cache_lock("ownership-cache"):  # the watermark training is shared with other workers' fixtures
        enrolled = workflows.enrol_watermark_model(
            owner, recipe=zoo_watermark_recipe(), alpha=0.05, zoo_cache=ZOO_CACHE, cache_dir=OWNERSHIP_CACHE,
            downstream_per_class=ZOO_DOWNSTREAM_PER_CLASS, progress=False, database_url=db_url)
    leaked = register_copy("leaked-encoder", enrolled.marked_model_id, db_url=db_url)
    workflows.verify_watermark_suspect(enrolled.marked_model_id, leaked, run_key=runs[0], zoo_cache=ZOO_CACHE,
                                       database_url=db_url)
    run_theft_risk(enrolled.marked_model_id, budgets="25%", reference_budget="25%", data="zoo",
                   recipe=StealRecipe(epochs=ZOO_THEFT_EPOCHS, lr=0.05),
                   downstream_per_class=ZOO_DOWNSTREAM_PER_CLASS, zoo_cache=ZOO_CACHE, out_dir=out_dir,
                   run_key=runs[1], progress=False, database_url=db_url)
    return OwnershipCase(enrolled.marked_model_id, leaked, runs, file_sha256(enrolled.weights_path))


@dataclass
class ZooCases:
    """The three report cases made on the ci zoo in one store."""

    db_url: str
    privacy: PrivacyCase
    ownership: OwnershipCase

    @property
    def cases(self) -> dict[str, str]:
        return {"subject": f"subject:{self.privacy.subject_id}",
                "ownership": f"ownership:{self.ownership.owned_id}:{self.ownership.suspect_id}",
                "run": f"run:{self.privacy.run_key}"}


@pytest.fixture(scope="module")
def zoo_cases(ci_zoo, pg_database_url, tmp_path_factory) -> Iterator[ZooCases]:
    """Privacy and ownership findings on the ci zoo, made once per module on PostgreSQL
    (the store and data folder selected through the environment while the module runs)."""
    work = tmp_path_factory.mktemp("zoo-cases")
    with zoo_store(pg_database_url, work / "var") as url:
        yield ZooCases(url, make_privacy_findings(ci_zoo, url), make_ownership_findings(ci_zoo, url, work / "theft"))
