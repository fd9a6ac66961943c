"""Theft-risk simulation against any registered model, local checkpoint or remote API
(StolenEncoder, Liu et al., CCS 2022, arXiv 2201.05889; the method itself is
:mod:`audit_lib.methods.theft`).

The workflow steals the target once per query budget (and, for a checkpoint, once per
output defence), evaluates every copy against the target's own downstream classifier,
ranks the undefended copy's agreement against independently trained encoders, stores the
``theft`` finding and writes the curve as PNG and JSON.

- A **checkpoint** is served by the reference server over real HTTP, one API key per
  output defence (``--defence``), as an attacker would reach it; the clean target is
  embedded through its evidence-recording handle.
- An **API** (the owner's deployed endpoint) is queried through ``open_handle`` with the
  run's key: every query is counted against the model's query budget, cached and recorded
  as evidence like any audit query, and the API's own output defences are measured as
  they are (``--defence`` is refused for an API).

Data: the model's registered image sets (``public`` = surrogate, ``downstream`` =
evaluation; :mod:`audit_lib.ownership.owner_data`), or the reference zoo's split for a
checkpoint without registered sets (the reference measurement). The null: registered
models of role ``reference`` (named with ``independents``, else all of them), or the zoo's
independent encoders on the zoo path. Every check that can run before the first query
runs before it; a refusal leaves no run and no rows.

Sessions are short: training happens outside any transaction, and the finding is written
in one transaction at the end.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DATA_SOURCES = ("auto", "registered", "zoo")


@dataclass
class TheftOutcome:
    """What a theft-risk run produced: the stored finding, its result and the curve files."""

    finding_id: int
    result: Any  # FindingResult
    png: Path
    json: Path


@dataclass
class TheftPlan:
    """A theft-risk run with every input checked, before any query is sent."""

    model_id: int
    model_name: str
    kind: str  # checkpoint | api
    architecture: str | None
    weights_path: Path | None
    data: Any  # OwnershipData
    data_source: str  # registered | zoo
    budgets: list[int]
    reference_budget: int
    defences: dict[str, dict[str, Any]]
    recipe: Any  # StealRecipe, architecture sized for the target
    null_models: list[Any]  # registered reference models (detached) or zoo entries
    null_source: str
    queries_needed: int  # upper bound of the target's queries (cache hits count for nothing)
    notes: list[str] = field(default_factory=list)


def _count_canaries() -> int:
    from audit_lib.encoders.version import canary_images

    return len(list(canary_images()))


def _null_models(session: Any, target: Any, names: tuple[str, ...], data_source: str, data: Any,
                 limit: int | None) -> tuple[list[Any], str]:
    """The independent encoders of the null and a sentence on where they came from."""
    from sqlalchemy import select

    from audit_lib import registry
    from audit_lib.store.models import AuditedModel

    if names:
        models = []
        for name in names:
            m = registry.get_model(session, name)
            if m.id == target.id:
                raise ValueError(f"--independent {name}: that is the target itself, not an independent encoder")
            if m.role != "reference":
                raise ValueError(f"--independent {name}: model {m.name} has role {m.role}; only models registered "
                                 "with role reference (trained independently of the owner's) form the null")
            models.append(m)
        source = "registered reference models named for this run"
    elif data_source == "zoo":
        models, source = list(data.independents), "the reference zoo's independently trained encoders"
    else:
        query = select(AuditedModel).where(AuditedModel.role == "reference").order_by(AuditedModel.id)
        models = [m for m in session.scalars(query)
                  if m.id != target.id and getattr(m, "retired_at", None) is None]
        source = "all registered reference models"
    models = models[:limit] if limit else models
    if not models:
        raise ValueError("no independent encoders for the null: register models trained independently of the "
                         "target with `encoder-audit models add --role reference ...` (or pass --independent NAME)")
    return models, source  # rows stay readable after the session (expire_on_commit=False)


def is_zoo_checkpoint(model: Any, manifest: Any) -> bool:
    """Whether the registered checkpoint ``model`` is one of the reference zoo's entries (same
    weights file, or the same weights by sha256): only then may ``--data auto`` fall back to
    the zoo's images, whose splits were made for those entries."""
    from audit_lib.encoders.loading import file_sha256

    if model.kind != "checkpoint" or not model.weights_path:
        return False
    path = Path(model.weights_path)
    entries = list(manifest.entries)
    if any(Path(e.weights_path).resolve() == path.resolve() for e in entries):
        return True
    return path.is_file() and file_sha256(path) in {e.sha256 for e in entries}


def _shares_need_train_size(text: str) -> bool:
    return any(p.strip().endswith("%") for p in text.split(","))


def plan_theft(session: Any, target_ref: int | str, *, budgets: str = "1%,5%,10%",
               defences: tuple[str, ...] = (), recipe: Any = None, reference_budget: str = "5%",
               train_size: int | None = None, image_size: int | None = None, independents: tuple[str, ...] = (),
               data: str = "auto", profile: str = "ci", zoo_entry: str = "simclr-target",
               zoo_cache: Path | None = None, n_independents: int | None = None,
               downstream_per_class: int | None = None) -> TheftPlan:
    """Check everything a theft-risk run needs and load its data, sending no query: the
    model is registered; a defence is only asked of a checkpoint; the data exist (the
    registered ``public`` and ``downstream`` sets, or the zoo); a share budget has a
    training-set size; no budget exceeds the surrogate images; the target's queries fit its
    query budget; the null has at least one independent encoder (and its APIs' budgets fit)."""
    from audit_lib import registry
    from audit_lib.encoders.architectures import ArchitectureError, build
    from audit_lib.methods import theft
    from audit_lib.ownership.owner_data import (OwnerDataError, current_image_sets, model_image_size,
                                                owner_ownership_data)

    if data not in DATA_SOURCES:
        raise ValueError(f"--data {data!r}: expected one of {', '.join(DATA_SOURCES)}")
    recipe = recipe or theft.StealRecipe()
    model = registry.get_model(session, int(target_ref) if str(target_ref).isdigit() else target_ref)
    if getattr(model, "retired_at", None) is not None:
        raise ValueError(f"model {model.name} is retired: it takes no new audits")
    if model.kind == "api" and defences:
        raise ValueError(f"--defence: model {model.name} is an API, whose own output defences are measured as they "
                         "are; --defence makes the reference server defend a local checkpoint, so drop it here")
    defence_cfgs = {theft.defence_label(theft.parse_defence(d)): theft.parse_defence(d) for d in defences}
    sets = current_image_sets(session, model.id)
    use_registered = data == "registered" or (data == "auto" and bool(sets))
    notes: list[str] = []
    if use_registered:
        size = model_image_size(model, image_size)
        got = owner_ownership_data(session, model, image_size=size, require=("public", "downstream"),
                                   train_size=train_size, downstream_per_class=downstream_per_class)
        source = "registered"
    else:
        if model.kind != "checkpoint":
            raise OwnerDataError(f"model {model.name} has no registered public, downstream image set: run "
                                 f"`encoder-audit models data add --model {model.name} --public DIR --downstream DIR`")
        from audit_lib.ownership.data import load_manifest, ownership_data

        try:
            manifest = load_manifest(profile, zoo_cache)
        except FileNotFoundError:
            raise OwnerDataError(f"model {model.name} has no registered public, downstream image set: run "
                                 f"`encoder-audit models data add --model {model.name} --public DIR --downstream DIR` "
                                 f"(or build the reference zoo: `encoder-audit zoo build --profile {profile}`)") from None
        if data == "auto" and not is_zoo_checkpoint(model, manifest):
            raise OwnerDataError(f"model {model.name} is not a reference-zoo entry and has no registered public, "
                                 f"downstream image set: run `encoder-audit models data add --model {model.name} "
                                 "--public DIR --downstream DIR` (or pass --data zoo to use the zoo's images)")
        got = ownership_data(manifest, zoo_entry, downstream_per_class=downstream_per_class)
        size, source = None, "zoo"
        if train_size is not None and train_size != got.train_size:
            notes.append(f"--train-size {train_size} ignored: the zoo entry {zoo_entry} trained on {got.train_size}")
    if got.train_size is None and _shares_need_train_size(budgets + "," + reference_budget):
        raise ValueError(f"budgets {budgets} / reference budget {reference_budget}: a share of the training set "
                         f"needs its size, which model {model.name} does not state: give --train-size N, "
                         "or give budgets as query counts")
    qs = theft.parse_budgets(budgets, got.train_size)
    ref_q = theft.parse_budgets(reference_budget, got.train_size)[0]
    qs = sorted({*qs, ref_q})
    if max(qs) > len(got.surrogate):
        raise ValueError(f"budget {max(qs)} queries exceeds the {len(got.surrogate)} public (surrogate) images "
                         f"of model {model.name}: register more public images or lower --budgets")
    if len(got.downstream.train_images) == 0 or len(got.downstream.test_images) == 0:
        raise ValueError(f"model {model.name}: the downstream set has no train or test images")
    null_models, null_source = _null_models(session, model, tuple(independents), source, got, n_independents)
    n_down = len(got.downstream.train_images) + len(got.downstream.test_images)
    n_canary = _count_canaries()
    canaries = n_canary if model.kind == "api" else 0
    needed = max(qs) + n_down + canaries  # larger budgets reuse the smaller ones' answers (cache)
    if model.kind == "api" and model.query_budget is not None and needed > model.query_budget:
        raise ValueError(f"budget: theft simulation needs up to {needed} queries of {model.name} ({max(qs)} surrogate "
                         f"+ {n_down} downstream + {canaries} canary), over its query budget of {model.query_budget}: "
                         "lower --budgets or --downstream-per-class, or raise the model's query budget")
    for m in null_models:
        budget = getattr(m, "query_budget", None)
        if getattr(m, "kind", None) == "api" and budget is not None and n_down + n_canary > budget:
            raise ValueError(f"--independent {m.name}: the null needs {n_down + n_canary} queries of it, over "
                             f"its query budget of {budget}: lower --downstream-per-class or raise its budget")
    sized = replace(recipe, architecture=theft.stolen_architecture(recipe.architecture, size))
    try:
        build(sized.architecture)  # a typo fails here, not after the queries were paid for
    except ArchitectureError as exc:
        raise ValueError(f"--stolen-architecture: {exc}") from None
    got.independents = list(null_models)
    return TheftPlan(model.id, model.name, model.kind, model.architecture,
                     Path(model.weights_path) if model.weights_path else None, got, source, qs, ref_q,
                     defence_cfgs, sized, null_models, null_source, needed, notes)


def _null_references(plan: TheftPlan, run_key: str, database_url: str | None) -> tuple[list[Any], list[str]]:
    """The downstream reference of every independent encoder (registered ones through
    their evidence-recording handles, zoo ones from their checkpoints) and their names."""
    from audit_lib.encoders import local_encoder
    from audit_lib.methods import theft
    from audit_lib.pipelines.handles import open_model_handle
    from audit_lib.store.models import AuditedModel

    refs, names = [], []
    for m in plan.null_models:
        if isinstance(m, AuditedModel):
            handle = open_model_handle(m.id, run_key, db_url=database_url)
        else:
            handle = local_encoder(m.architecture, m.weights_path)
        refs.append(theft.reference_for(handle, plan.data.downstream))
        names.append(m.name)
    return refs, names


def _steal_checkpoint(plan: TheftPlan, run_key: str, progress: bool, database_url: str | None) -> tuple[Any, ...]:
    """Steal a local checkpoint through the reference server (one key per defence)."""
    from audit_lib.encoders.remote import RemoteEncoder
    from audit_lib.methods import theft
    from audit_lib.pipelines.handles import open_model_handle
    from audit_lib.server.testing import running_server

    labels = ["none", *plan.defences]
    keys = {label: "sk-theft-" + secrets.token_urlsafe(18) for label in labels}
    env_names = {label: f"AUDIT_CRED_THEFT_{i}_{secrets.token_hex(4).upper()}" for i, label in enumerate(labels)}
    d = plan.data
    per_key_budget = sum(plan.budgets) + len(d.downstream.train_images) + len(d.downstream.test_images)
    server_keys = {keys[lb]: {"name": f"theft-{lb}", "defences": plan.defences.get(lb, {}), "seed": i}
                   for i, lb in enumerate(labels)}
    with ExitStack() as stack:
        url = stack.enter_context(running_server(plan.architecture, plan.weights_path, server_keys))
        for label in labels:
            os.environ[env_names[label]] = keys[label]
        stack.callback(lambda: [os.environ.pop(n, None) for n in env_names.values()])
        attack = {lb: RemoteEncoder(str(url), None, env_names[lb], budget=per_key_budget) for lb in labels}
        clean = open_model_handle(plan.model_id, run_key, db_url=database_url)
        points, target_ref, costs = theft.theft_curve(attack, clean, d.surrogate, plan.budgets, d.downstream,
                                                      recipe=plan.recipe, train_size=d.train_size, progress=progress)
        details = {"server_inputs_embedded": int(url.stats.inputs_embedded),
                   "queries_by_key": {lb: int(h.queries_used) for lb, h in attack.items()},
                   "access": "reference server over HTTP (local checkpoint)"}
    return points, target_ref, costs, clean.model_version_id, details


def _steal_api(plan: TheftPlan, run_key: str, progress: bool, database_url: str | None) -> tuple[Any, ...]:
    """Steal a registered API through its own evidence-recording handle (budget, cache,
    evidence as any audit query); its own defences are what the attacker meets."""
    from audit_lib.methods import theft
    from audit_lib.pipelines.handles import open_model_handle

    handle = open_model_handle(plan.model_id, run_key, db_url=database_url)
    d = plan.data
    points, target_ref, costs = theft.theft_curve({"none": handle}, handle, d.surrogate, plan.budgets, d.downstream,
                                                  recipe=plan.recipe, train_size=d.train_size, progress=progress)
    inner = handle.inner
    details = {"queries_by_key": {"none": int(getattr(inner, "queries_used", handle.misses))},
               "queries_sent": int(getattr(inner, "queries_used", handle.misses)), "cache_hits": int(handle.hits),
               "query_budget": getattr(inner, "budget", None),
               "access": "the registered API through its handle (its own output defences as deployed)"}
    return points, target_ref, costs, handle.model_version_id, details


def run_theft_risk(target_ref: int | str, *, budgets: str = "1%,5%,10%", defences: tuple[str, ...] = (),
                   recipe: Any = None, reference_budget: str = "5%", train_size: int | None = None,
                   image_size: int | None = None, independents: tuple[str, ...] = (), data: str = "auto",
                   profile: str = "ci", zoo_entry: str = "simclr-target", zoo_cache: Path | None = None,
                   out_dir: Path | None = None, run_key: str | None = None, alpha: float = 0.05,
                   n_independents: int | None = None, downstream_per_class: int | None = None,
                   progress: bool = True, database_url: str | None = None) -> TheftOutcome:
    """Simulate StolenEncoder theft of a registered model (checkpoint or API) at each
    budget, store the ``theft`` finding (naming its image sets by manifest hash and where
    its null came from) and write the curve as PNG and JSON. See the module doc; the
    inputs are checked by :func:`plan_theft` before any query."""
    from audit_lib.config import get_settings
    from audit_lib.evidence import closing_run, start_run, store_finding
    from audit_lib.methods import theft
    from audit_lib.store import session_scope

    run_key = run_key or f"theft-{secrets.token_hex(6)}"
    with session_scope(database_url) as s:
        plan = plan_theft(s, target_ref, budgets=budgets, defences=defences, recipe=recipe,
                          reference_budget=reference_budget, train_size=train_size, image_size=image_size,
                          independents=independents, data=data, profile=profile, zoo_entry=zoo_entry,
                          zoo_cache=zoo_cache, n_independents=n_independents,
                          downstream_per_class=downstream_per_class)
        start_run(s, run_key, "theft", {"target": plan.model_name, "target_kind": plan.kind, "budgets": plan.budgets,
                                        "defences": sorted(plan.defences), "recipe": plan.recipe.as_dict(),
                                        "data": plan.data_source, "image_sets": plan.data.image_sets})
    for note in plan.notes:
        log.warning("%s", note)
    with closing_run(run_key, database_url):
        steal = _steal_api if plan.kind == "api" else _steal_checkpoint
        points, target_ref_, costs, version_id, access = steal(plan, run_key, progress, database_url)
        null_refs, null_names = _null_references(plan, run_key, database_url)
        result = theft.theft_finding(points, target_ref_, null_refs, reference_budget=plan.reference_budget,
                                     alpha=alpha, recipe=plan.recipe)
        result.details.update(access)
        result.details.update({
            "target_kind": plan.kind, "train_size": plan.data.train_size, "data_source": plan.data_source,
            "image_sets": dict(plan.data.image_sets),
            "null_source": {"source": plan.null_source, "models": null_names, "n": len(null_names)},
            "queries_needed_upper_bound": plan.queries_needed})
        out = Path(out_dir or get_settings().data_dir / "theft" / plan.model_name)
        out.mkdir(parents=True, exist_ok=True)
        png, js = out / "theft-curve.png", out / "theft-curve.json"
        theft.plot_curve(points, png, title=f"StolenEncoder theft curve: {plan.model_name}")
        js.write_text(json.dumps({"target": plan.model_name, "target_kind": plan.kind,
                                  "train_size": plan.data.train_size, "reference_budget": plan.reference_budget,
                                  "utility_cost": costs, "curve": [p.as_dict() for p in points],
                                  "p_value": result.p_value, "null_scores": result.details["null_scores"],
                                  "null_source": result.details["null_source"],
                                  "image_sets": result.details["image_sets"], "recipe": plan.recipe.as_dict()},
                                 indent=1))
        with session_scope(database_url) as s:
            run = start_run(s, run_key, "theft")
            row, _ = store_finding(s, run, result, target_key=f"model:{plan.model_id}", model_version_id=version_id)
            finding_id = row.id
    return TheftOutcome(finding_id, result, png, js)
