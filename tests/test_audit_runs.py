"""Audit runs from the CLI: reference non-members registered in the store, every check
before the first query, runs that end succeeded or failed, queries sent vs answered from
the cache, the Holm warning, ``--json`` and ``--details``.

A small CNN with seeded random weights stands in for the audited model (image only, so
identity inference is not applicable and membership inference does the querying); the
images are real ORL faces from ../shared/data.
"""

from __future__ import annotations

import json
import shutil

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from audit_lib.cli import app
from tests.conftest import FACES, copy_photos

runner = CliRunner()
VIEWS = 4
N_CLAIMED = 10
N_REFS = 30  # 10 claimed at alpha 0.05 need 10 / 0.05 - 1 = 199 for a per-image decision



@pytest.fixture
def setup(db_url, small_cnn_weights, tmp_path):
    """A subject (3 photos, 10 claimed images) and a small CNN with 30 registered references."""
    if not FACES.is_dir():
        pytest.skip("../shared/data/faces is not present")
    from audit_lib import registry
    from audit_lib.store import session_scope

    photos = copy_photos(tmp_path / "photos", [FACES / "s1" / f"{i}.pgm" for i in (1, 2, 3)])
    claimed = copy_photos(tmp_path / "claimed", [FACES / "s2" / f"{i}.pgm" for i in range(1, N_CLAIMED + 1)])
    refs = copy_photos(tmp_path / "refs", [FACES / f"s{p}" / f"{i}.pgm" for p in (3, 4, 5) for i in range(1, 11)])
    arch, weights = small_cnn_weights
    with session_scope() as s:
        sid = registry.add_subject_from_folders(s, name="Ana Ferreira", legal_basis="GDPR 6(1)(f), test",
                                                photos_dir=photos, claimed_dir=claimed, sex="f").id
        mid = registry.add_model(s, name="cnn", kind="checkpoint", role="suspect", capabilities="image",
                                 architecture=arch, weights_path=weights).id
    res = runner.invoke(app, ["models", "references", "add", "--model", "cnn", "--images", str(refs)])
    assert res.exit_code == 0, res.output
    return {"subject": sid, "model": mid, "refs": refs, "claimed": claimed, "tmp": tmp_path}


def _audit(sid: int, *args: str):
    return runner.invoke(app, ["audit", "privacy", "--subject", str(sid), "--model", "cnn",
                               "--views", str(VIEWS), *args])


def _counts() -> dict[str, int]:
    from audit_lib.store import session_scope
    from audit_lib.store.models import AuditRun, EvidenceItem, Finding

    with session_scope() as s:
        return {t.__name__: s.scalar(select(func.count()).select_from(t)) for t in (AuditRun, EvidenceItem, Finding)}


def test_references_add_show_and_holm_warning(setup):
    res = runner.invoke(app, ["models", "references", "add", "--model", "cnn", "--images", str(setup["refs"])])
    assert res.exit_code == 0, res.output
    assert f"0 reference non-member(s) added, {N_REFS} already registered; {N_REFS} in all" in res.output
    assert "at least 199 are needed" in res.output and f"{N_CLAIMED}/{N_REFS + 1}" in res.output
    res = runner.invoke(app, ["models", "references", "show", "--model", "cnn", "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.output)
    assert info["n_references"] == N_REFS and len({im["sha256"] for im in info["images"]}) == N_REFS
    assert info["holm"] == {"alpha": 0.05, "n_claimed": N_CLAIMED, "references_needed": 199,
                            "warning": info["holm"]["warning"]} and "199" in info["holm"]["warning"]
    # enough references for 1 claimed image at 0.05 (19 needed): no warning
    res = runner.invoke(app, ["models", "references", "show", "--model", "cnn", "--claimed", "1"])
    assert res.exit_code == 0 and "warning" not in res.output and f"{N_REFS} reference" in res.output
    for bad in (["--model", "nope", "--images", str(setup["refs"])],
                ["--model", "cnn", "--images", str(setup["tmp"] / "missing")]):
        res = runner.invoke(app, ["models", "references", "add", *bad])
        assert res.exit_code == 2 and res.output.startswith("error: ") and "Traceback" not in res.output


def test_cli_audit_closes_its_run_and_counts_sent_vs_cached(setup):
    from audit_lib.store import session_scope
    from audit_lib.store.models import AuditRun, Finding

    res = _audit(setup["subject"], "--run-key", "first", "--details")
    assert res.exit_code == 0, res.output
    sent = (N_CLAIMED + N_REFS) * VIEWS
    assert f"queries: {sent} sent to the model, 0 answered from the cache" in res.output
    assert "at least 199 are needed" in res.output
    with session_scope() as s:
        run = s.scalar(select(AuditRun).where(AuditRun.run_key == "first"))
        assert run.status == "succeeded" and run.finished_at is not None
        mi = s.scalar(select(Finding).where(Finding.run_id == run.id, Finding.method == "encoder_mi"))
        d, p_first = mi.details, mi.p_value
    assert (d["queries_sent"], d["cache_hits"]) == (sent, 0)
    assert d["holm_references_needed"] == 199 and "199" in d["holm_warning"]
    for im in d["images"]:  # the per-image table: sha256 prefix, score, p, Holm p, decision
        row = next(line for line in res.output.splitlines() if line.strip().startswith(im["sha256"][:12]))
        assert f"{im['p_holm']:.4g}" in row and row.rstrip().endswith("not shown")

    res = _audit(setup["subject"], "--run-key", "second", "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["run_key"] == "second" and out["status"] == "succeeded"
    assert (out["queries_sent"], out["cache_hits"], out["canary_queries"]) == (0, sent, 0)
    mi = next(r for r in out["findings"] if r["method"] == "encoder_mi")
    assert (mi["details"]["queries_sent"], mi["details"]["cache_hits"]) == (0, sent)
    assert mi["p_value"] == pytest.approx(p_first)  # the same answers, from the cache
    idia = next(r for r in out["findings"] if r["method"] == "idia")
    assert idia["decision"] == "not_applicable" and idia["details"]["queries_sent"] == 0


def test_refusals_come_before_any_query_and_leave_nothing(setup, tiny_clip_weights):
    from audit_lib import registry
    from audit_lib.store import session_scope

    sid = setup["subject"]
    two = copy_photos(setup["tmp"] / "two", [FACES / "s7" / f"{i}.pgm" for i in (1, 2)])
    with session_scope() as s:
        registry.add_model(s, name="clip", kind="checkpoint", role="suspect", capabilities="image,text",
                           architecture=tiny_clip_weights[0], weights_path=tiny_clip_weights[1])
        few = registry.add_subject_from_folders(s, name="Jonas Berg", legal_basis="test", photos_dir=two).id
        erased = registry.add_subject_from_folders(s, name="Cy Erased", legal_basis="test",
                                                   photos_dir=setup["tmp"] / "photos").id
        registry.erase_subject(s, erased)
    for subject, words in ((few, "2 reference photo(s) of the subject; at least 3"), (erased, "was erased")):
        res = runner.invoke(app, ["audit", "privacy", "--subject", str(subject), "--model", "clip"])
        assert res.exit_code == 2 and words in res.output, res.output
    res = _audit(sid, "--rule", "V")  # no classifier trained in this data folder
    assert res.exit_code == 2 and "EncoderMI-V: no classifier" in res.output and "Traceback" not in res.output
    # a claimed image registered as a reference too
    both = copy_photos(setup["tmp"] / "both", [FACES / "s2" / "1.pgm"])
    assert runner.invoke(app, ["models", "references", "add", "--model", "cnn", "--images", str(both)]).exit_code == 0
    res = _audit(sid)
    assert res.exit_code == 2 and "is also one of the model's reference non-members" in res.output
    with session_scope() as s:
        registry.retire_model(s, setup["model"])
    res = _audit(sid)
    assert res.exit_code == 2 and "was retired" in res.output
    assert _counts() == {"AuditRun": 0, "EvidenceItem": 0, "Finding": 0}


def test_a_failure_after_the_run_started_marks_it_failed(setup, small_cnn_weights):
    from audit_lib import registry
    from audit_lib.store import session_scope
    from audit_lib.store.models import AuditRun

    broken = setup["tmp"] / "broken.safetensors"
    shutil.copy(small_cnn_weights[1], broken)
    with session_scope() as s:
        registry.add_model(s, name="broken", kind="checkpoint", role="suspect", capabilities="image",
                           architecture=small_cnn_weights[0], weights_path=broken)
    broken.write_bytes(b"not a safetensors file")  # altered after registration
    from audit_lib.pipelines.references import write_reference_nonmembers

    refs = sorted(setup["refs"].iterdir())
    write_reference_nonmembers("broken", [(p.name, p.read_bytes()) for p in refs])
    res = runner.invoke(app, ["audit", "privacy", "--subject", str(setup["subject"]), "--model", "broken",
                              "--run-key", "doomed"])
    assert res.exit_code == 2 and res.output.startswith("error: "), (res.output, res.exception)
    with session_scope() as s:
        run = s.scalar(select(AuditRun).where(AuditRun.run_key == "doomed"))
        assert run.status == "failed" and run.finished_at is not None
    assert _counts()["EvidenceItem"] == 0


def test_dag_failure_path_and_summary_close_runs_and_sub_runs(db_url):
    from audit_lib.evidence import finish_run, start_run
    from audit_lib.pipelines.summary import fail_run, summarise_run
    from audit_lib.store import session_scope
    from audit_lib.store.models import AuditRun

    with session_scope() as s:
        start_run(s, "dag/1", "privacy")
        start_run(s, "dag/1/theft/3", "theft")  # a sub-run
        start_run(s, "dag/10", "privacy")  # not a sub-run of dag/1
        finish_run(s, start_run(s, "dag/2", "privacy"), "succeeded")
        start_run(s, "dag_3", "ownership")
        start_run(s, "dagX3/theft/1", "theft")  # "_" in a key is no LIKE wildcard
    assert fail_run("dag/1")["closed"] == ["dag/1", "dag/1/theft/3"]
    assert summarise_run("dag_3")["run_key"] == "dag_3"
    assert fail_run("dag/2")["closed"] == []  # a closed run stays as it is
    assert fail_run("dag/none")["closed"] == []  # never opened: no error
    with session_scope() as s:
        status = {r.run_key: r.status for r in s.scalars(select(AuditRun))}
        assert s.scalar(select(AuditRun).where(AuditRun.run_key == "dag/1")).finished_at is not None
    assert status == {"dag/1": "failed", "dag/1/theft/3": "failed", "dag/10": "running", "dag/2": "succeeded",
                      "dag_3": "succeeded", "dagX3/theft/1": "running"}


def test_report_words_say_sent_and_cached():
    from audit_lib.reports.render import queries_text

    assert queries_text({"n_queries": 3200, "queries_sent": 200, "cache_hits": 3000}) == \
        "200 sent to the model, 3000 answered from the query cache (3200 in all)"
    assert "not counted apart" in queries_text({"n_queries": 12})


def test_cli_identity_inference_on_a_text_model_counts_sent_and_cached(setup, tiny_clip_weights):
    from audit_lib import registry
    from audit_lib.store import session_scope

    with session_scope() as s:
        registry.add_model(s, name="clip", kind="checkpoint", role="suspect", capabilities="image,text",
                           architecture=tiny_clip_weights[0], weights_path=tiny_clip_weights[1])
        sid = registry.add_subject_from_folders(s, name="Jonas Berg", legal_basis="test", sex="m",
                                                photos_dir=setup["tmp"] / "photos").id
    runs = []
    for key in ("idia-1", "idia-2"):
        res = runner.invoke(app, ["audit", "privacy", "--subject", str(sid), "--model", "clip",
                                  "--n-candidates", "50", "--run-key", key, "--json"])
        assert res.exit_code == 0, res.output
        runs.append(json.loads(res.output))
    first, second = (next(r for r in out["findings"] if r["method"] == "idia") for out in runs)
    assert first["decision"] in ("positive", "negative") and [o["status"] for o in runs] == ["succeeded"] * 2
    n = first["details"]["n_queries"]  # prompts and photos
    assert first["details"]["queries_sent"] + first["details"]["cache_hits"] == n
    assert first["details"]["queries_sent"] > 0
    assert (second["details"]["queries_sent"], second["details"]["cache_hits"]) == (0, n)
    assert second["p_value"] == pytest.approx(first["p_value"])
