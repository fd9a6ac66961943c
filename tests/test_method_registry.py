"""The method contract: a method added through the registry alone (a spec and a function in
this module) runs in the privacy pipeline's pair task, renders in a PDF report and shows in
the web app; old method names still resolve; the built-in specs are complete."""

from __future__ import annotations

import re

import numpy as np
import pytest

from audit_lib import method_registry as mr
from audit_lib.encoders.base import EncoderHandle
from audit_lib.findings import FindingResult
from audit_lib.methods import MethodInputError
from audit_lib.stats import empirical_p_value

TOY = "toy_norm"
TOY_TITLE = "Toy embedding-norm test"
TOY_CAPTION = "toy norms of the subject's photos against their pixel-shuffled copies."


def _shuffled(image: bytes, seed: int) -> bytes:
    """The image with its pixels permuted (a null input of the same histogram)."""
    import io

    from PIL import Image

    from audit_lib.imaging import png_bytes

    pixels = np.asarray(Image.open(io.BytesIO(image)).convert("L"))
    flat = np.random.default_rng(seed).permutation(pixels.reshape(-1))
    return png_bytes(flat.reshape(pixels.shape))


def toy_check(inputs: mr.SubjectInputs) -> int:
    """Refuse before any query; hand the task the number of null copies."""
    if len(inputs.images) < 2:
        raise MethodInputError(f"toy: {len(inputs.images)} photo(s); at least 2 are needed")
    return int(inputs.params.get("toy_nulls", 9))


def toy_task(handle: EncoderHandle, inputs: mr.SubjectInputs, n_null: int) -> FindingResult:
    """Mean embedding norm of the photos, ranked among pixel-shuffled copies' norms."""
    emb = np.asarray(handle.encode_images(inputs.images, kind="image"), dtype=np.float64)
    null_inputs = [_shuffled(inputs.images[k % len(inputs.images)], k) for k in range(n_null)]
    null = np.linalg.norm(np.asarray(handle.encode_images(null_inputs, kind="image"), dtype=np.float64), axis=1)
    observed = float(np.linalg.norm(emb, axis=1).mean())
    p = empirical_p_value(observed, null)
    alpha = float(inputs.params["alpha"])
    return FindingResult(method=TOY, method_version="0.1", hypothesis="H0: the photos' norms are like noise's",
                         statistic=observed, null_description=f"{n_null} pixel-shuffled copies", p_value=p,
                         alpha=alpha, decision="positive" if p <= alpha else "negative",
                         details={"observed": observed, "null_scores": [float(x) for x in null],
                                  "n_embedded": len(inputs.images) + n_null})


def toy_figures(d, record):  # noqa: ANN001, ANN201 - the figures hook's shape
    from audit_lib.reports.figures import null_figure

    return [(TOY_CAPTION, null_figure(d.get("observed"), d.get("null_scores"), xlabel="norm", title="toy"), False)]


def toy_tables(d):  # noqa: ANN001, ANN201 - the tables hook's shape
    return {"n_embedded": d.get("n_embedded")}


TOY_SPEC = mr.MethodSpec(
    name=TOY, version="0.1", area="privacy", hypothesis="H0: the photos' norms are like noise's",
    access=frozenset({"image"}), run=toy_task, title=TOY_TITLE, question="Are the photos' embeddings long?",
    how="Each photo's embedding norm against pixel-shuffled copies.", reference="none (a test fixture)",
    web_label="Toy norm check (shown on the pages)", aliases=("toy_old_name",), subject_images="reference",
    check=toy_check, task=toy_task, figures=toy_figures, tables=toy_tables, order=5)


@pytest.fixture
def toy_method():
    mr.register(TOY_SPEC)
    yield TOY_SPEC
    mr.unregister(TOY)


def test_a_registered_method_runs_in_a_pair_task_renders_and_shows(toy_method, sqlite_db_url, small_cnn_weights,
                                                                    tmp_path):
    from audit_lib import registry
    from audit_lib.images import check_image_bytes
    from audit_lib.pipelines.privacy import run_chunk
    from audit_lib.pipelines.versions import check_model_version
    from audit_lib.registry import ImageLimits
    from audit_lib.reports import render_report
    from audit_lib.store import session_scope
    from audit_lib.store.models import AuditRun, EvidenceItem, Finding
    from tests.conftest import FACES
    from tests.fixtures_reports import pdf_text
    from tests.fixtures_web import DPO, add_web_users, make_client

    if not FACES.is_dir():
        pytest.skip("../shared/data/faces is not present")
    limits = ImageLimits.from_settings().as_kwargs()
    photos = [check_image_bytes((FACES / "s1" / f"{i}.pgm").read_bytes(), name=f"{i}.pgm", **limits)
              for i in (1, 2, 3)]
    arch, weights = small_cnn_weights
    with session_scope() as s:
        sid = registry.add_subject(s, name="Toy Person", legal_basis="GDPR Art. 6(1)(f), test", photos=photos).id
        mid = registry.add_model(s, name="toy-cnn", kind="checkpoint", role="suspect", capabilities="image",
                                 architecture=arch, weights_path=weights).id
    run_key = "toy-run"
    version = check_model_version(mid, run_key)
    pair = {"subject_id": sid, "model_id": mid, "model_version_id": version["model_version_id"]}

    out = run_chunk("toy_old_name", [pair], run_key, {"alpha": 0.2, "toy_nulls": 9})  # an alias resolves too
    assert len(out) == 1 and out[0]["method"] == TOY and out[0]["created"] is True
    with session_scope() as s:
        f = s.get(Finding, out[0]["finding_id"])
        assert f.method == TOY and f.subject_id == sid and f.target_key == f"subject:{sid}"
        assert f.details["n_embedded"] == 12 and len(f.details["null_scores"]) == 9
        assert f.details["queries_sent"] == 12 and f.details["cache_hits"] == 0  # annotated by the task
        assert 0 < f.p_value <= 1 and f.decision in ("positive", "negative")
        assert s.query(EvidenceItem).count() > 1  # queries and the finding are on the chain
        assert s.query(AuditRun).one().run_key == run_key
    assert run_chunk(TOY, [pair], run_key, {"alpha": 0.2, "toy_nulls": 9})[0]["created"] is False  # a retry

    with session_scope() as s:
        pdf = render_report(s, f"subject:{sid}", tmp_path / "reports")
    text = pdf_text(pdf)
    assert TOY_TITLE in text and "n_embedded" in text and "12" in text
    assert TOY_CAPTION.split(" against")[0] in text  # the figure hook's caption is printed under its figure

    add_web_users(sqlite_db_url)
    w = make_client(tmp_path)
    w.sign_in(DPO)
    page = w.client.get(f"/subjects/{sid}")
    assert page.status_code == 200
    assert "Toy norm check (shown on the pages)" in page.text
    assert re.search(r"Evidence found|No evidence found", page.text)


def test_a_refused_input_is_refused_before_the_model_is_opened(toy_method, sqlite_db_url):
    from audit_lib import registry
    from audit_lib.images import check_image_bytes
    from audit_lib.pipelines.privacy import subject_pair
    from audit_lib.registry import ImageLimits
    from audit_lib.store import session_scope
    from audit_lib.store.models import EvidenceItem
    from tests.conftest import FACES

    if not FACES.is_dir():
        pytest.skip("../shared/data/faces is not present")
    one = [check_image_bytes((FACES / "s1" / "1.pgm").read_bytes(), name="1.pgm",
                             **ImageLimits.from_settings().as_kwargs())]
    with session_scope() as s:
        sid = registry.add_subject(s, name="Toy Single", legal_basis="GDPR Art. 6(1)(f), test", photos=one).id
        # an API on a port nothing listens on: opening it would fail with a connection error
        mid = registry.add_model(s, name="never-opened", kind="api", role="suspect", capabilities="image",
                                 endpoint_url="http://127.0.0.1:9/embed").id
    with pytest.raises(MethodInputError, match="at least 2"):
        subject_pair(TOY, {"subject_id": sid, "model_id": mid, "model_version_id": 1}, "toy-refused")
    with session_scope() as s:
        assert s.query(EvidenceItem).count() == 0


def test_old_names_resolve_and_unknown_names_are_named():
    from audit_lib.reports.wording import method_text
    from audit_lib.web.wording import decision_label, method_label, short_method

    assert mr.canonical("membership") == mr.canonical("encodermi") == mr.canonical("membership_inference") \
        == "encoder_mi"
    assert mr.canonical("identity") == "idia"
    assert method_text("encodermi").title == method_text("encoder_mi").title == "Membership inference (EncoderMI)"
    assert method_label("identity") == method_label("idia") and short_method("encoder_mi") == "membership"
    assert decision_label("positive") == "Evidence found"  # the report's words, capitalised
    with pytest.raises(mr.UnknownMethod, match="known: idia, encoder_mi"):
        mr.get("no_such_method", "privacy")
    with pytest.raises(ValueError, match="already registered"):
        mr.register(mr.MethodSpec(name="copycat", version="1", area="privacy", hypothesis="H0", access=frozenset(
            {"image"}), run=len, title="t", question="q", how="h", reference="r", aliases=("membership",)))


def test_builtin_specs_declare_the_contract():
    from audit_lib.pipelines.ownership import ownership_methods

    assert mr.names() == ("idia", "encoder_mi", "watermark", "fingerprint", "theft")
    assert ownership_methods() == ("watermark", "fingerprint")
    for spec in mr.specs():
        assert spec.hypothesis.startswith("H0") and spec.access <= mr.ACCESS and spec.reference
        assert callable(spec.run) and mr.hook(spec, "figures") and mr.hook(spec, "tables")
        if spec.task is not None:
            assert callable(mr.hook(spec, "task"))
    assert mr.get("idia").access == {"image", "text"}
    with pytest.raises(ValueError, match="access"):
        mr.MethodSpec(name="bad", version="1", area="privacy", hypothesis="H0", access=frozenset({"gpu"}),
                      run=len, title="t", question="q", how="h", reference="r")


def test_the_ownership_pair_task_accepts_only_registered_checks():
    from audit_lib.pipelines.ownership import check_pair, plan_ownership_pairs

    with pytest.raises(ValueError, match="expected one of watermark, fingerprint"):
        check_pair("theft", {"owned_id": 1, "suspect_id": 2, "model_version_id": 3}, "never-run")
    with pytest.raises(ValueError, match="expected one of watermark, fingerprint"):
        plan_ownership_pairs({"models": [], "owned_enrolled": []}, [], "idia")
