"""Commands of the model registry: ``models add / probe / update / retire / show / list``.

A first audit of a new model should be painless: ``probe`` tries an API (or a checkpoint)
before or after registration and says in words what is wrong; ``add`` and ``update``
validate the adapter so a typo is refused with the key named and nothing written. The
registry logic lives in :mod:`audit_lib.registry`; here are only options and output.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from audit_lib.cli_errors import fail
from audit_lib.cli_errors import guarded as _guarded

JsonFlag = Annotated[bool, typer.Option("--json", help="print JSON instead of text")]


def _session():  # noqa: ANN202 - a context manager
    from audit_lib.store import session_scope

    return session_scope()


def _json_option(name: str, text: str | None) -> dict[str, Any] | None:
    """``--NAME`` given as JSON: an object, or a one-line refusal (exit 2)."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        fail(f"{name}: not valid JSON ({exc}); give an object such as '{{\"embedding_dim\": 512}}'")
    if not isinstance(value, dict):
        fail(f"{name}: expected a JSON object, got {type(value).__name__}")
    return value


def models_add(
    name: Annotated[str, typer.Option(help="a unique name for the model")],
    role: Annotated[str, typer.Option(help="owned, suspect, or reference (known to be trained independently of an owner's)")],
    architecture: Annotated[Optional[str], typer.Option(help="checkpoint: FAMILY:NAME, e.g. open_clip:NAME, timm:NAME@SIZE, hf-clip:FOLDER, torchvision:NAME@SIZE, small_cnn:NAME")] = None,
    weights: Annotated[Optional[Path], typer.Option(help="checkpoint: weights file (safetensors)")] = None,
    endpoint: Annotated[Optional[str], typer.Option(help="API: the embedding endpoint URL")] = None,
    preset: Annotated[Optional[str], typer.Option(help="API: a vendor preset for the adapter (see docs)")] = None,
    adapter: Annotated[Optional[str], typer.Option(help="API: adapter fields as JSON, laid over the preset")] = None,
    embedding_dim: Annotated[Optional[int], typer.Option(help="API: the embedding dimension (stored in the adapter)")] = None,
    credential: Annotated[Optional[str], typer.Option(help="API: name of the env variable or Airflow Connection holding the key (AUDIT_CRED_...)")] = None,
    capabilities: Annotated[str, typer.Option(help="comma-separated: image, text")] = "image",
    budget: Annotated[Optional[int], typer.Option(help="API: queries allowed per audit run")] = None,
) -> None:
    """Register a local checkpoint or a remote embedding API (adapter validated now)."""
    from audit_lib import registry

    kind = "api" if endpoint else "checkpoint"
    adapter_cfg = _json_option("adapter", adapter)

    def run() -> None:
        with _session() as s:
            m = registry.add_model(s, name=name, kind=kind, role=role, capabilities=capabilities,
                                   architecture=architecture, weights_path=weights,
                                   endpoint_url=endpoint, adapter=adapter_cfg, preset=preset,
                                   embedding_dim=embedding_dim, credential_name=credential,
                                   query_budget=budget)
            dim = (m.adapter or {}).get("embedding_dim")
            typer.echo(f"registered model {m.id} ({m.name}, {m.kind}, {m.role}, "
                       f"{'+'.join(m.capabilities)}"
                       f"{', preset ' + m.adapter['preset'] if (m.adapter or {}).get('preset') else ''}"
                       f"{', dim ' + str(dim) if dim else ''})")
            if m.kind == "api":
                typer.echo(f"try it before the first audit: encoder-audit models probe {m.name}")

    _guarded(run)


def models_list(as_json: JsonFlag = False) -> None:
    """List registered models (retired ones marked)."""
    from audit_lib import registry
    from audit_lib.encoders.endpoints import redact_endpoint
    from audit_lib.safe_text import display

    def run() -> None:
        with _session() as s:
            rows = registry.list_models(s)
            if as_json:
                typer.echo(json.dumps([registry.model_summary(s, m) for m in rows], indent=2))
                return
            if not rows:
                typer.echo("no models registered")
            for m in rows:
                where = redact_endpoint(m.endpoint_url) if m.kind == "api" else f"{m.architecture} @ {m.weights_path}"
                status = f"  retired {m.retired_at:%Y-%m-%d}" if m.retired_at is not None else ""
                typer.echo(f"{m.id:>4}  {display(m.name)}  {m.kind}  {m.role}  "
                           f"{'+'.join(m.capabilities)}  {where}{status}")

    _guarded(run)


def models_show(model: Annotated[str, typer.Argument(help="registered model name or id")]) -> None:
    """Show everything registered about a model as JSON (the credential's name, never a secret)."""
    from audit_lib import registry

    def run() -> None:
        with _session() as s:
            typer.echo(json.dumps(registry.model_summary(s, registry.get_model(s, model)), indent=2))

    _guarded(run)


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value}


def _describe(change: Any) -> list[str]:
    """Lines saying what one :class:`~audit_lib.registry.ModelChange` changed."""
    tail = "  (a new model version at the next audit)" if change.new_version else ""
    if change.field != "adapter":
        return [f"  {change.field}: {change.old!r} -> {change.new!r}{tail}"]
    old, new = _flat(change.old or {}), _flat(change.new or {})
    keys = sorted(k for k in {*old, *new} if old.get(k) != new.get(k))
    return [f"  adapter.{k}: {json.dumps(old.get(k))} -> {json.dumps(new.get(k))}{tail}" for k in keys]


def models_update(
    model: Annotated[str, typer.Argument(help="registered model name or id")],
    endpoint: Annotated[Optional[str], typer.Option(help="API: a new endpoint URL")] = None,
    preset: Annotated[Optional[str], typer.Option(help="API: rebuild the adapter from this preset (with --adapter laid over it)")] = None,
    adapter: Annotated[Optional[str], typer.Option(help="API: adapter fields as JSON, laid over the current adapter (or the preset)")] = None,
    embedding_dim: Annotated[Optional[int], typer.Option(help="API: the embedding dimension")] = None,
    credential: Annotated[Optional[str], typer.Option(help="API: name of the env variable or Airflow Connection holding the key (AUDIT_CRED_...)")] = None,
    budget: Annotated[Optional[int], typer.Option(help="API: queries allowed per audit run")] = None,
    weights: Annotated[Optional[Path], typer.Option(help="checkpoint: a new weights file")] = None,
) -> None:
    """Change a registered model, validated as at registration, and print what changed.
    A new endpoint, adapter or weights file makes a new model version at the next audit;
    a new budget or credential name does not."""
    from audit_lib import registry

    adapter_cfg = _json_option("adapter", adapter)
    if all(v is None for v in (endpoint, preset, adapter_cfg, embedding_dim, credential, budget, weights)):
        fail("nothing to update: give --endpoint, --preset, --adapter, --embedding-dim, --credential, "
             "--budget or --weights")

    def run() -> None:
        with _session() as s:
            changes = registry.update_model(s, model, endpoint_url=endpoint, adapter=adapter_cfg,
                                            preset=preset, query_budget=budget, credential_name=credential,
                                            embedding_dim=embedding_dim, weights_path=weights)
            m = registry.get_model(s, model)
            if not changes:
                typer.echo(f"model {m.name}: nothing changed")
                return
            typer.echo(f"model {m.name}: updated")
            for change in changes:
                for line in _describe(change):
                    typer.echo(line)

    _guarded(run)


def models_retire(model: Annotated[str, typer.Argument(help="registered model name or id")]) -> None:
    """Retire a model: it takes no new audits; its versions, findings and evidence stay."""
    from audit_lib import registry

    def run() -> None:
        with _session() as s:
            m = registry.retire_model(s, model)
            typer.echo(f"retired model {m.id} ({m.name}): no new audits; its findings stay")

    _guarded(run)


# --- probe ---------------------------------------------------------------------------------
def probe_encoder(encoder: Any, *, tolerance: float,
                  dim_fix: str = "give --embedding-dim N") -> dict[str, Any]:
    """Send the canary set twice through ``encoder`` (no store: nothing is cached or
    recorded) and measure what a first audit needs to know: the dimension, the norms of the
    embeddings, the latency per request and whether the answers are deterministic (the two
    calls agree within ``tolerance``, max absolute difference of the L2-normalised
    coordinates, as the canary version check compares them). A failure is reported in
    words under ``problem`` (with ``stage``: dimension, canary or repeat), never raised;
    ``dim_fix`` is the advice when the API's dimension cannot be learnt."""
    import numpy as np

    from audit_lib.encoders.remote import BadAnswer, RemoteEncoderError
    from audit_lib.encoders.version import canary_images

    canaries = list(canary_images())
    out: dict[str, Any] = {"ok": False, "problem": None, "stage": None, "dimension": None,
                           "images": len(canaries), "tolerance": tolerance}
    stage = "dimension"
    try:
        out["dimension"] = int(encoder.embedding_dim)
        calls = []
        for stage in ("canary", "repeat"):
            sent = getattr(encoder, "requests_sent", None)
            t0 = time.perf_counter()
            emb = np.asarray(encoder.encode_images(canaries, kind="canary"), dtype=np.float64)
            ms = (time.perf_counter() - t0) * 1000
            n_req = (encoder.requests_sent - sent) if sent is not None else 1
            calls.append((emb, ms, max(n_req, 1)))
    except (RemoteEncoderError, ValueError) as exc:
        out["stage"], out["problem"] = stage, str(exc)
        if stage == "dimension" and type(exc) in (RemoteEncoderError, BadAnswer):
            out["problem"] += f"; if the API does not publish its embedding dimension, {dim_fix}"
        return out
    (e1, ms1, req1), (e2, ms2, req2) = calls
    norms = np.linalg.norm(e1, axis=1)
    u1 = e1 / np.maximum(np.linalg.norm(e1, axis=1, keepdims=True), 1e-12)
    u2 = e2 / np.maximum(np.linalg.norm(e2, axis=1, keepdims=True), 1e-12)
    diff = float(np.max(np.abs(u1 - u2)))
    out.update({
        "ok": True,
        "norms": {"min": float(norms.min()), "median": float(np.median(norms)), "max": float(norms.max())},
        "requests_per_call": req1,
        "latency_ms": {"per_request": (ms1 + ms2) / (req1 + req2),
                       "per_image": (ms1 + ms2) / (2 * len(canaries))},
        "deterministic": diff <= tolerance, "max_difference": diff,
    })
    return out


def _print_probe(label: str, res: dict[str, Any]) -> None:
    if not res["ok"]:
        typer.echo(f"probe of {label}: FAILED at the {res['stage']} step")
        typer.echo(f"  problem          {res['problem']}")
        return
    n = res["norms"]
    lat = res["latency_ms"]
    typer.echo(f"probe of {label}: OK")
    typer.echo(f"  dimension        {res['dimension']}")
    typer.echo(f"  norms            min {n['min']:.4g}  median {n['median']:.4g}  max {n['max']:.4g} "
               f"({res['images']} canary images)")
    typer.echo(f"  latency          {lat['per_request']:.1f} ms per request, {res['requests_per_call']} "
               f"request(s) per {res['images']} images ({lat['per_image']:.1f} ms per image)")
    verdict = "yes" if res["deterministic"] else "NO: every audit may see a new model version " \
                                                 "(raise the adapter's canary_tolerance if this is noise)"
    typer.echo(f"  deterministic    {verdict} (max difference {res['max_difference']:.3g}, "
               f"tolerance {res['tolerance']:g})")


def models_probe(
    model: Annotated[Optional[str], typer.Argument(help="a registered model name or id (or give --endpoint)")] = None,
    endpoint: Annotated[Optional[str], typer.Option(help="API not yet registered: its endpoint URL")] = None,
    preset: Annotated[Optional[str], typer.Option(help="API not yet registered: a vendor preset")] = None,
    adapter: Annotated[Optional[str], typer.Option(help="API not yet registered: adapter fields as JSON")] = None,
    credential: Annotated[Optional[str], typer.Option(help="API not yet registered: name of the env variable or Airflow Connection holding the key (AUDIT_CRED_...)")] = None,
    embedding_dim: Annotated[Optional[int], typer.Option(help="API not yet registered: the embedding dimension")] = None,
    architecture: Annotated[Optional[str], typer.Option(help="checkpoint not yet registered: architecture")] = None,
    weights: Annotated[Optional[Path], typer.Option(help="checkpoint not yet registered: weights file")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Try a model before its first audit: send the canary set, show dimension, norms,
    latency and determinism, or the exact problem. Writes nothing (no evidence, no cache,
    no model version). Exit 0: it works; 1: the API failed the probe; 2: bad input."""
    from audit_lib import registry
    from audit_lib.encoders import local_encoder, remote_encoder
    from audit_lib.encoders.loading import CheckpointError
    from audit_lib.encoders.remote import CredentialError, resolve_credential
    from audit_lib.encoders.version import DEFAULT_TOLERANCE

    adapter_cfg = _json_option("adapter", adapter)
    unregistered = [endpoint, preset, adapter_cfg, credential, embedding_dim, architecture, weights]
    if model is not None and any(v is not None for v in unregistered):
        fail("give a registered model, or the options of one not yet registered, not both")
    if model is None and not endpoint and not architecture:
        fail("give a registered model name, or --endpoint URL [--preset P] for an API, or "
             "--architecture and --weights for a checkpoint")

    def target() -> tuple[str, dict[str, Any]]:
        if model is not None:
            with _session() as s:
                m = registry.get_model(s, model)
                return m.name, {"kind": m.kind, "endpoint": m.endpoint_url, "adapter": m.adapter,
                                "credential": m.credential_name, "architecture": m.architecture,
                                "weights": m.weights_path, "capabilities": list(m.capabilities)}
        if endpoint:
            if architecture or weights:
                fail("give --endpoint for an API or --architecture/--weights for a checkpoint, not both")
            registry.check_endpoint_url(endpoint)
            registry.check_credential(credential)
            cfg = registry.resolve_model_adapter(preset, adapter_cfg, embedding_dim)
            registry.check_adapter_paths(endpoint, cfg)
            return endpoint, {"kind": "api", "endpoint": endpoint, "adapter": cfg, "credential": credential,
                              "capabilities": ["image"]}
        if not weights or not Path(weights).is_file():
            fail(f"weights: {weights}: no such file")
        return architecture, {"kind": "checkpoint", "architecture": architecture, "weights": str(weights)}

    label, t = _guarded(target)
    try:
        if t["kind"] == "api":
            if t["credential"]:
                resolve_credential(t["credential"])  # a missing secret is bad input, found before any query
            enc = remote_encoder(t["endpoint"], t["adapter"], t["credential"],
                                 capabilities=t.get("capabilities") or ["image"], max_retries=1,
                                 backoff_base_s=0.2, timeout=30.0)
            tolerance = float(getattr(enc, "canary_tolerance", DEFAULT_TOLERANCE))
        else:
            enc = local_encoder(t["architecture"], t["weights"])
            tolerance = DEFAULT_TOLERANCE
    except (CredentialError, CheckpointError, ValueError) as exc:
        fail(str(exc))
    try:
        fix = f"register it: encoder-audit models update {label} --embedding-dim N" if model is not None \
            else "give --embedding-dim N"
        res = probe_encoder(enc, tolerance=tolerance, dim_fix=fix)
    finally:
        if t["kind"] == "api":
            enc.close()
    res = {"target": label, "kind": t["kind"], **res}
    if as_json:
        typer.echo(json.dumps(res, indent=2))
    else:
        _print_probe(label, res)
    if not res["ok"]:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add the ``models`` commands (to the group the core CLI made)."""
    from audit_lib.commands.encoders import _group

    group = _group(app, "models", "Audited models: checkpoints and APIs.")
    group.command("add")(models_add)
    group.command("list")(models_list)
    group.command("show")(models_show)
    group.command("probe")(models_probe)
    group.command("update")(models_update)
    group.command("retire")(models_retire)
