"""The privacy audit end to end with dag.test() on real (random-weight) models and real
photos, on SQLite and PostgreSQL evidence stores; and re-runs write no duplicates."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from tests.fixtures_airflow import register_small_registry

pytest.importorskip("airflow", reason="apache-airflow is not installed")
pytest.importorskip("audit_lib.methods.identity_inference", reason="IDIA is not in this build")
pytest.importorskip("audit_lib.methods.membership_inference", reason="EncoderMI is not in this build")

# subject_ids / model_ids given explicitly: a conf of an earlier dag.test() in the same
# process (tests/test_dags.py) is otherwise seen again by the next run's tasks
FAST = {"n_candidates": 50, "n_views": 4, "subject_ids": None, "model_ids": None}


def _findings():
    from audit_lib.store import session_scope
    from audit_lib.store.models import Finding

    with session_scope() as s:
        return [(f.method, f.target_key, f.model_version_id, f.decision, f.p_value)
                for f in s.scalars(select(Finding).order_by(Finding.id))]


def test_privacy_audit_end_to_end(airflow_dags, db_url, tiny_clip_weights, small_cnn_weights):
    from audit_lib.evidence import verify_chain
    from audit_lib.store import session_scope
    from audit_lib.store.models import AuditRun, EvidenceItem, Finding, ModelVersion

    ids = register_small_registry(tiny_clip_weights, small_cnn_weights)
    dr = airflow_dags["privacy_audit"].test(run_conf=FAST)
    states = {(ti.task_id, ti.map_index): str(ti.state) for ti in dr.get_task_instances()}
    assert str(dr.state) == "success", states
    # 2 subjects x 1 text model for IDIA; 2 subjects x 2 models for EncoderMI.
    assert sorted(k for k in states if k[0] == "identity_inference") == [("identity_inference", i) for i in range(2)]
    assert sorted(k for k in states if k[0] == "membership_inference") == [("membership_inference", i) for i in range(4)]
    found = _findings()
    assert sorted((m, t) for m, t, *_ in found) == sorted(
        [("idia", f"subject:{s}") for s in ids["subjects"]]
        + [("encoder_mi", f"subject:{s}") for s in ids["subjects"] for _ in ids["models"]])
    for method, _, _, decision, p in found:
        assert decision in ("positive", "negative") and 0 < p <= 1, (method, decision, p)
    with session_scope() as s:  # every finding says how many queries reached the model
        details = [f.details for f in s.scalars(select(Finding))]
    assert all(d["queries_sent"] >= 0 and d["cache_hits"] >= 0 for d in details)
    assert sum(d["queries_sent"] for d in details) > 0
    with session_scope() as s:
        run = s.scalar(select(AuditRun))
        assert run.run_key == f"privacy_audit/{dr.run_id}" and run.status == "succeeded"
        assert run.finished_at is not None
        assert verify_chain(s, run).ok
        n_items = s.scalar(select(func.count()).select_from(EvidenceItem))
        versions = {v.model_id: v.id for v in s.scalars(select(ModelVersion))}
    assert set(versions) == set(ids["models"])
    assert {f[2] for f in found} <= set(versions.values())
    assert n_items > len(found)  # queries and findings are both on the chain


def test_retried_pair_task_writes_no_duplicate(airflow_dags, sqlite_db_url, tiny_clip_weights, small_cnn_weights):
    """Run the audit, then run one pair task's body again for the same run (what an Airflow
    retry does): the finding is found, not duplicated, and every query is a cache hit."""
    from audit_lib.pipelines.privacy import identity_pair, membership_pair
    from audit_lib.pipelines.versions import check_model_version
    from audit_lib.store import session_scope
    from audit_lib.store.models import AuditRun, QueryCacheEntry

    ids = register_small_registry(tiny_clip_weights, small_cnn_weights)
    dr = airflow_dags["privacy_audit"].test(run_conf=FAST)
    assert str(dr.state) == "success"
    before = _findings()
    run_key = f"privacy_audit/{dr.run_id}"
    with session_scope() as s:
        n_cache = s.scalar(select(func.count()).select_from(QueryCacheEntry))
    clip, cnn = ids["models"]
    v_clip = check_model_version(clip, run_key)
    v_cnn = check_model_version(cnn, run_key)
    pair = {"subject_id": ids["subjects"][0], "model_id": clip, "model_version_id": v_clip["model_version_id"]}
    again = identity_pair(pair, run_key, FAST)
    assert again["created"] is False
    pair_mi = {"subject_id": ids["subjects"][1], "model_id": cnn, "model_version_id": v_cnn["model_version_id"]}
    assert membership_pair(pair_mi, run_key, FAST)["created"] is False
    assert _findings() == before
    with session_scope() as s:
        assert s.scalar(select(func.count()).select_from(QueryCacheEntry)) == n_cache  # nothing new queried
        assert s.scalar(select(func.count()).select_from(AuditRun)) == 1


def test_pairs_are_chunked_per_model_for_the_mapped_tasks():
    from audit_lib.pipelines.privacy import chunk_pairs

    pairs = [{"subject_id": s, "model_id": m, "model_version_id": 10 + m} for s in (3, 1, 2) for m in (2, 1)]
    one = chunk_pairs(pairs, 1)
    assert len(one) == 6 and all(len(c) == 1 for c in one)
    three = chunk_pairs(pairs, 3)
    assert [[(p["model_id"], p["subject_id"]) for p in c] for c in three] == [
        [(1, 1), (1, 2), (1, 3)], [(2, 1), (2, 2), (2, 3)]]
    assert sum(len(c) for c in chunk_pairs(pairs, 4)) == 6 and len(chunk_pairs(pairs, 4)) == 2
    assert chunk_pairs([], 5) == []
    assert len(chunk_pairs(pairs, 0)) == 6  # a size below 1 means one pair per task


def test_ownership_pairs_only_where_the_owned_model_has_the_method_artefact(sqlite_db_url, small_cnn_weights):
    import numpy as np

    from audit_lib import registry
    from audit_lib.ownership.artefacts import commit_artefact
    from audit_lib.pipelines.ownership import plan_ownership_pairs
    from audit_lib.pipelines.summary import case_for
    from audit_lib.store import session_scope
    from audit_lib.store.models import Finding

    arch, weights = small_cnn_weights
    with session_scope() as s:
        ids = {n: registry.add_model(s, name=n, kind="checkpoint", role=r, capabilities="image", architecture=arch,
                                     weights_path=weights).id
               for n, r in (("owned-a", "owned"), ("owned-b", "owned"), ("sus-1", "suspect"), ("sus-2", "suspect"))}
        commit_artefact(s, model_id=ids["owned-a"], kind="watermark", tensors={"x": np.zeros(2, np.float32)},
                        spec={"k": 1})
        commit_artefact(s, model_id=ids["owned-b"], kind="fingerprint", tensors={"x": np.ones(2, np.float32)},
                        spec={"k": 2})
    snapshot = {"owned_enrolled": [ids["owned-a"], ids["owned-b"]],
                "models": [{"id": i, "role": "owned" if n.startswith("owned") else "suspect"} for n, i in ids.items()]}
    versions = [{"model_id": ids["sus-1"], "model_version_id": 7}, {"model_id": ids["sus-2"], "model_version_id": 8}]
    wm = plan_ownership_pairs(snapshot, versions, "watermark")
    fp = plan_ownership_pairs(snapshot, versions, "fingerprint")
    assert [(p["owned_id"], p["suspect_id"], p["model_version_id"]) for p in wm] == [
        (ids["owned-a"], ids["sus-1"], 7), (ids["owned-a"], ids["sus-2"], 8)]
    assert {p["owned_id"] for p in fp} == {ids["owned-b"]} and len(fp) == 2
    with pytest.raises(ValueError, match="ownership method"):
        plan_ownership_pairs(snapshot, versions, "telepathy")
    # an ownership finding's report case comes from its owned_model_id parameter
    f = Finding(target_key=f"suspect:{ids['sus-1']}", parameters={"owned_model_id": ids["owned-a"]})
    assert case_for(f) == f"ownership:{ids['owned-a']}:{ids['sus-1']}"
    assert case_for(Finding(target_key="model:3", parameters={})) is None


def test_a_failed_pair_marks_the_run_failed_at_once(airflow_dags, sqlite_db_url, tiny_clip_weights,
                                                      small_cnn_weights):
    """The small CNN's reference set (registered in the store, which wins over the shared
    folder) contains one of a subject's claimed images: that pair's task fails at once (no
    retry) before querying, and the failure path marks the audit run failed."""
    from audit_lib.pipelines.references import write_reference_nonmembers
    from audit_lib.store import session_scope
    from audit_lib.store.models import AuditRun
    from tests.fixtures_airflow import FACES

    register_small_registry(tiny_clip_weights, small_cnn_weights)
    refs = [(f"s{p}-{i}.pgm", (FACES / f"s{p}" / f"{i}.pgm").read_bytes()) for p in (35, 36) for i in range(1, 7)]
    refs.append(("also-claimed.pgm", (FACES / "s1" / "4.pgm").read_bytes()))  # subject 1's claimed image
    write_reference_nonmembers("small-cnn-random", refs)
    dr = airflow_dags["privacy_audit"].test(run_conf=FAST)
    tis = [ti for ti in dr.get_task_instances()]
    states = {(ti.task_id, ti.map_index): str(ti.state) for ti in tis}
    assert str(dr.state) == "failed", states
    failed = [ti for ti in tis if str(ti.state) == "failed"]
    assert [ti.task_id for ti in failed] == ["membership_inference"] and failed[0].try_number == 1
    assert states[("mark_run_failed", -1)] == "success"
    assert states[("summarise_run", -1)] == "upstream_failed"
    with session_scope() as s:
        run = s.scalar(select(AuditRun))
        assert run.status == "failed" and run.finished_at is not None
