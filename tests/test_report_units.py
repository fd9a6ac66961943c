"""Report building blocks that need no PDF: chain format, redaction, wording, case parsing."""

from __future__ import annotations

import pytest

from audit_lib.evidence import genesis_hash, record_row_hash, recompute_chain
from audit_lib.reports.case import WITHHELD, ReportError, parse_case, redact
from audit_lib.reports.manifest import combined_head
from audit_lib.reports.wording import fmt_p, p_meaning, verdict_sentence

REC = {"seq": 1, "kind": "image", "model_version_id": 7, "input_sha256": "a" * 64,
       "response_sha256": "b" * 64, "cached": False, "requested_at": "2026-11-23T09:30:00.000000",
       "latency_ms": 12.5}


def test_chain_format_golden():
    """The chain's hash format must never drift: old reports would stop verifying."""
    assert genesis_hash("run-1") == "0a2361459627d3d3cd95443a4a86d4699a55d233f435941a6ed675339e9a9264"
    assert record_row_hash(REC, genesis_hash("run-1")) == \
        "6b3c52a4c76501eec1d1ce4ae84d82acd13ce5cb009990783be637e951b75444"


def test_recompute_chain_from_records_alone():
    recs, prev = [], genesis_hash("r")
    for i in range(1, 4):
        rec = {**REC, "seq": i, "prev_hash": prev}
        rec["row_hash"] = prev = record_row_hash(rec, rec["prev_hash"])
        recs.append(rec)
    assert recompute_chain("r", recs).ok and recompute_chain("r", recs).head == prev
    assert not recompute_chain("other-run", recs).ok  # genesis binds the run key
    bad = [dict(r) for r in recs]
    bad[1]["latency_ms"] = 99.0
    chk = recompute_chain("r", bad)
    assert not chk.ok and chk.first_bad_seq == 2
    assert recompute_chain("r", [recs[0], recs[2]]).problem == "row 2 is missing"


def test_combined_head_is_the_single_head_or_an_order_free_digest():
    a = {"run_key": "a", "chain_head": "1" * 64}
    b = {"run_key": "b", "chain_head": "2" * 64}
    assert combined_head([a]) == "1" * 64
    assert combined_head([a, b]) == combined_head([b, a]) != combined_head([a, {**b, "chain_head": "3" * 64}])


def test_redaction_withholds_the_subjects_name_only():
    rec = {"parameters": {"name": "Ada Q", "seed": 1}, "details": {"templates": [
        {"template": "{}", "plurality_name": "Ada Q", "correct": True},
        {"template": "actor {}", "plurality_name": "Jonas Ebberly", "correct": False}],
        "nested": {"aliases": ["A. Q."]}}}
    out = redact(rec, True)
    assert "Ada" not in repr(out) and "A. Q." not in repr(out)
    assert out["parameters"] == {"name": WITHHELD, "seed": 1}
    assert out["details"]["templates"][1]["plurality_name"] == "Jonas Ebberly"  # a synthetic decoy
    assert redact(rec, False) is rec


def test_wording():
    assert fmt_p(0.001) == "0.001" and fmt_p(0.00001) == "1.0e-05" and fmt_p(None) == "n/a"
    text = p_meaning("this person was not in the training data.", 0.004, ["decoys are exchangeable"])
    assert text == ("Under H0 (this person was not in the training data), a result at least this extreme "
                    "has probability <= 0.004, assuming decoys are exchangeable.")
    assert verdict_sentence("positive", 0.004, 0.05).startswith("Evidence found")
    assert verdict_sentence("negative", 0.3, 0.05).startswith("No evidence found")


@pytest.mark.parametrize("bad", ["", "subject", "subject:", "subject:abc", "ownership:1", "ownership:1:x",
                                 "run:", "model:3"])
def test_bad_case_is_refused(bad):
    with pytest.raises(ReportError, match="expected subject:ID"):
        parse_case(bad)


def test_cases_parse():
    assert parse_case("subject:3").subject_id == 3
    assert parse_case("ownership:1:2").text == "ownership:1:2"
    assert parse_case("run:manual__2026-11-23T09:30:00+00:00").run_key == "manual__2026-11-23T09:30:00+00:00"


def test_ownership_case_collects_every_target_key_convention(db_url):
    from audit_lib.reports.case import load_case
    from audit_lib.store import session_scope
    from tests.fixtures_reports import (
        add_model_version,
        fingerprint_result,
        make_case_findings,
        theft_result,
        watermark_result,
    )

    with session_scope(db_url) as s:
        owned = add_model_version(s, "owned", role="owned")
        other = add_model_version(s, "other-owned", role="owned")
        sus = add_model_version(s, "sus")
        o, x, q = owned.model_id, other.model_id, sus.model_id
        make_case_findings(s, "k1", "ownership", [(watermark_result(), f"ownership:{o}:{q}", sus.id, None)], n_queries=1)
        make_case_findings(s, "k2", "ownership", [(fingerprint_result(), "fingerprint:owned->sus", sus.id, None)], n_queries=1)
        make_case_findings(s, "k3", "ownership", [(theft_result(), f"model:{o}", owned.id, None)], n_queries=1)
        foreign = watermark_result()
        foreign.parameters["owned_model_id"] = x  # the same suspect checked for another owner
        make_case_findings(s, "k4", "ownership", [(foreign, f"suspect:{q}", sus.id, None)], n_queries=1)
        make_case_findings(s, "k5", "ownership", [(fingerprint_result(), f"ownership:{x}:{q}", sus.id, None)], n_queries=1)
    with session_scope(db_url) as s:
        data = load_case(s, parse_case(f"ownership:{o}:{q}"))
        assert sorted((f.row.method, f.run.run_key) for f in data.findings) == [
            ("fingerprint", "k2"), ("theft", "k3"), ("watermark", "k1")]
        other_case = load_case(s, parse_case(f"ownership:{x}:{q}"))
        assert sorted(f.run.run_key for f in other_case.findings) == ["k4", "k5"]
