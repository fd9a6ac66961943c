"""The privacy evaluation: its pieces on hand-made data, then the whole evaluation and the
CLI commands on the ci zoo."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from audit_lib.eval.privacy import (CountingHandle, check_targets, roc_curve, run_evaluation,
                                    save_figures, table_lines)
from audit_lib.stats import roc_auc


class Echo:
    capabilities = frozenset({"image", "text"})
    embedding_dim = 2
    model_version = "e" * 64

    def __init__(self) -> None:
        self.calls: list[int] = []

    def encode_images(self, images, *, kind="image"):
        self.calls.append(len(images))
        return np.array([[len(b), 1.0] for b in images], dtype=np.float32)

    def encode_texts(self, texts):
        self.calls.append(len(texts))
        return np.array([[len(t), 2.0] for t in texts], dtype=np.float32)


def test_counting_handle_sends_each_input_once():
    inner = Echo()
    h = CountingHandle(inner)
    a = h.encode_texts(["x", "yy", "x"])
    assert a[:, 0].tolist() == [1, 2, 1] and inner.calls == [2]
    h.encode_texts(["yy", "zzz"])
    assert inner.calls == [2, 1]
    assert h.sent == {"text": 3} and h.asked == {"text": 5}
    h.encode_images([b"a", b"a"], kind="view")
    assert h.sent["view"] == 1


def test_roc_curve_agrees_with_auc():
    rng = np.random.default_rng(0)
    pos, neg = rng.normal(1, 1, 200), rng.normal(0, 1, 300)
    fpr, tpr = roc_curve(pos, neg)
    assert fpr[0] == 0 and tpr[0] == 0 and fpr[-1] == 1 and tpr[-1] == 1
    assert np.trapezoid(tpr, fpr) == pytest.approx(roc_auc(pos, neg), abs=1e-9)


def _fake_result() -> dict:
    rng = np.random.default_rng(1)
    rules = {}
    for rule in ("T", "V", "S"):
        mem, non = rng.normal(1, 1, 50), rng.normal(0, 1, 50)
        fpr, tpr = roc_curve(mem, non)
        rates = {"tpr": 0.5, "fpr": 0.04, "fpr_upper95": 0.1, "accuracy": 0.7}
        rules[rule] = {"auc": roc_auc(mem, non), "tpr_at_1pct_fpr": 0.1, "tpr_at_10pct_fpr": 0.3,
                       "published": rates, "calibrated_per_image": rates,
                       "nonmember_p_uniformity": {"ks_p_value": 0.5}, "collections": {"size": 10, **rates},
                       "roc": {"fpr": fpr, "tpr": tpr},
                       "scores": {"members": mem.tolist(), "nonmembers": non.tolist(),
                                  "references": rng.normal(0, 1, 50).tolist()},
                       "p_nonmembers": rng.uniform(size=50).tolist()}
    cases = [{"member": i < 10, "label": "member" if i < 10 else ("non-member" if i < 20 else "impostor"),
              "n_correct": int(i < 10) * 5, "p_value": 0.01 if i < 10 else float(rng.uniform())}
             for i in range(40)]
    idia_rates = {"tpr": 1.0, "fpr": 0.0, "fpr_upper95": 0.26, "accuracy": 1.0, "impostor_fpr": 0.05,
                  "impostor_fpr_upper95": 0.2}
    return {"encodermi": {"rules": rules, "n_members": 50, "n_test_nonmembers": 50, "n_references": 50,
                          "n_views": 10, "alpha": 0.05, "queries_per_image": 10},
            "idia": {"cases": cases, "summary": {
                "n_members": 10, "n_nonmembers": 10, "n_impostors": 20, "n_candidates": 100,
                "photos_per_person": [3], "tau": 1, "alpha": 0.05, "published": idia_rates,
                "calibrated": idia_rates,
                "null_p_uniformity": {"n": 30, "ks_statistic": 0.1, "ks_p_value": 0.9,
                                      "share_p_le_0.05": 0.03, "share_p_le_0.5": 0.5}}}}


def test_figures_and_table_from_a_result(tmp_path):
    result = _fake_result()
    result["targets"] = check_targets(result)
    written = save_figures(result, [tmp_path / "a", tmp_path / "b"])
    names = sorted({p.name for p in written})
    assert names == ["privacy-encodermi-roc.png", "privacy-encodermi-scores.png", "privacy-idia-scores.png",
                     "privacy-null-pvalues.png"]
    for p in written:
        with Image.open(p) as im:
            assert im.format == "PNG" and im.size[0] > 300
            assert np.asarray(im.convert("L")).std() > 5  # something was drawn
    lines = table_lines(result)
    text = "\n".join(lines)
    assert "published tau=1" in text and "calibrated p<=0.05" in text
    assert text.count("\n  T ") == 1 and "AUC" in text and "TPR@1%" in text
    assert any(t["target"].startswith("IDIA") and t["met"] for t in result["targets"])


# --- on the ci zoo ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def zoo_eval(ci_zoo, tmp_path_factory):
    out = tmp_path_factory.mktemp("privacy-eval")
    result = run_evaluation(ci_zoo, n_candidates=300, mi_images=80, impostors_per_person=1,
                            figure_dirs=[out], progress=False)
    return result, out


def test_evaluation_on_the_ci_zoo(zoo_eval, ci_zoo):
    result, out = zoo_eval
    idia = result["idia"]["summary"]
    assert idia["n_members"] == 20 and idia["n_nonmembers"] == 20 and idia["n_impostors"] == 40
    # the calibrated test finds more members than the published rule, at a bounded FPR
    assert idia["calibrated"]["tpr"] >= 0.6
    assert idia["calibrated"]["tpr"] >= idia["published"]["tpr"]
    assert idia["published"]["fpr"] <= 0.1
    assert idia["calibrated"]["fpr"] <= 0.15
    assert idia["calibrated"]["impostor_fpr"] <= 0.15
    # null p-values are not concentrated near zero
    assert idia["null_p_uniformity"]["share_p_le_0.05"] <= 0.1
    assert idia["null_p_uniformity"]["median"] > 0.2
    cost = result["idia_cost"]
    assert cost["image_queries_per_subject"] == 3
    # decoy prompts are embedded once per model version (and decoy set): later subjects only
    # add their own name's 21 prompts, except the first subject of the other sex
    assert cost["text_sent_first"] == 21 * 300
    assert sorted(cost["text_sent_per_case"])[-3] == 21
    mi = result["encodermi"]
    best = max(r["auc"] for r in mi["rules"].values())
    assert best >= 0.75
    for rule, r in mi["rules"].items():
        assert r["nonmember_p_uniformity"]["median"] > 0.2, rule
        assert r["calibrated_per_image"]["fpr"] <= 0.15, rule
    # every target image (members, test non-members, references) is queried once per view;
    # members are capped by the target's member split (64 in the ci zoo)
    n_members = min(80, len(ci_zoo.by_role("membership-target")[0].splits["members"]))
    assert result["target_view_queries"] == (n_members + 80 + 80) * 10
    assert {Path(p).name for p in result["figures"]} >= {"privacy-encodermi-roc.png", "privacy-idia-scores.png"}
    json.dumps(result)  # JSON-able


def test_cli_eval_and_audit_privacy(ci_zoo, db_url, tmp_path, monkeypatch):
    from audit_lib import registry
    from audit_lib.cli import app
    from audit_lib.store import session_scope

    runner = CliRunner()
    zoo_cache = str(Path(ci_zoo.root).parent)
    res = runner.invoke(app, ["eval", "privacy", "--zoo-cache", zoo_cache, "--part", "idia",
                              "--n-candidates", "100", "--impostors", "0", "--json", str(tmp_path / "e.json")])
    assert res.exit_code == 0, res.output
    assert "published tau=1" in res.output and "calibrated p<=0.05" in res.output
    assert json.loads((tmp_path / "e.json").read_text())["idia"]["summary"]["n_members"] == 20

    person = {p.person_id: p for p in ci_zoo.entry("tiny-clip").people}["s12"]
    photos = tmp_path / "photos"
    photos.mkdir()
    for p in person.heldout_photos:
        (photos / Path(p).name).write_bytes(Path(p).read_bytes())
    entry = ci_zoo.entry("tiny-clip")
    with session_scope(db_url) as s:
        subj = registry.add_subject_from_folders(s, name=person.name, legal_basis="GDPR 6(1)(c)",
                                                 photos_dir=photos, sex=person.sex)
        registry.add_model(s, name="tiny-clip", kind="checkpoint", role="suspect", capabilities="image,text",
                           architecture=entry.architecture, weights_path=Path(entry.weights_path))
        sid = subj.id
    res = runner.invoke(app, ["audit", "privacy", "--subject", str(sid), "--model", "tiny-clip",
                              "--n-candidates", "100", "--run-key", "cli-test"])
    assert res.exit_code == 0, res.output
    assert "idia: positive" in res.output
    from sqlalchemy import select

    from audit_lib.store.models import Finding

    with session_scope(db_url) as s:
        rows = s.scalars(select(Finding)).all()
        assert [r.method for r in rows] == ["idia"] and rows[0].subject_id == sid
    # fewer than 3 photos: refused before any query or write
    two = tmp_path / "two"
    two.mkdir()
    for p in person.heldout_photos[:2]:
        (two / Path(p).name).write_bytes(Path(p).read_bytes())
    with session_scope(db_url) as s:
        sid2 = registry.add_subject_from_folders(s, name="Second Person", legal_basis="GDPR 6(1)(c)",
                                                 photos_dir=two).id
    res = runner.invoke(app, ["audit", "privacy", "--subject", str(sid2), "--model", "tiny-clip"])
    assert res.exit_code != 0 and "at least 3" in res.output
    # an erased subject is refused, and nothing is written
    with session_scope(db_url) as s:
        registry.erase_subject(s, sid)
    res = runner.invoke(app, ["audit", "privacy", "--subject", str(sid), "--model", "tiny-clip"])
    assert res.exit_code != 0 and "erased" in res.output
    with session_scope(db_url) as s:
        assert len(s.scalars(select(Finding)).all()) == 1
