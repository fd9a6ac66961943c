"""Commands of the encoder area: ``serve-encoder``, ``bench encoders``, ``encoders check``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def _group(app: typer.Typer, name: str, help_text: str) -> typer.Typer:
    """The sub-app ``name``, shared with other areas' modules if one already made it."""
    for info in app.registered_groups:
        if info.name == name:
            return info.typer_instance
    sub = typer.Typer(no_args_is_help=True, help=help_text)
    app.add_typer(sub, name=name)
    return sub


def serve_encoder(
    architecture: Annotated[Optional[str], typer.Option(help="e.g. open_clip:tiny-clip-vit, small_cnn:small-cnn-32, torchvision:resnet18@64")] = None,
    weights: Annotated[Optional[Path], typer.Option(help="weights file (.safetensors or weights-only .pt)")] = None,
    model: Annotated[Optional[str], typer.Option(help="a registered checkpoint model (name or id) instead of --architecture/--weights")] = None,
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = 8080,
    keys_file: Annotated[Optional[Path], typer.Option(help="JSON: API key -> settings (rate limit, defences, faults)")] = None,
    allow_anonymous: Annotated[bool, typer.Option("--allow-anonymous", help="serve without API keys")] = False,
    batch_size: Annotated[Optional[int], typer.Option(help="model batch size")] = None,
    device: Annotated[Optional[str], typer.Option(help="cpu or cuda (default: cuda when present)")] = None,
    max_batch: Annotated[int, typer.Option(help="most inputs accepted in one request")] = 256,
) -> None:
    """Serve a local checkpoint as an embedding API (the reference encoder server)."""
    import uvicorn

    from audit_lib.cli_errors import fail
    from audit_lib.encoders.loading import CheckpointError
    from audit_lib.encoders.local import LocalEncoder
    from audit_lib.server.app import create_app
    from audit_lib.server.keys import KeyRing

    if model:
        from audit_lib import registry
        from audit_lib.store import session_scope

        try:
            with session_scope() as s:
                m = registry.get_model(s, model)
                if m.kind != "checkpoint":
                    fail(f"model {model}: only a checkpoint can be served, this one is an API")
                architecture, weights = m.architecture, Path(m.weights_path)
        except registry.RegistryError as exc:
            fail(str(exc))
    if not architecture or weights is None:
        fail("give --architecture and --weights, or --model")
    if not keys_file and not allow_anonymous:
        fail("give --keys-file (API keys), or --allow-anonymous to serve without keys")
    try:
        keys = KeyRing.from_file(keys_file) if keys_file else None
        encoder = LocalEncoder.from_checkpoint(architecture, weights, device=device, batch_size=batch_size)
        app = create_app(encoder, keys, max_batch=max_batch, allow_anonymous=allow_anonymous)
    except (CheckpointError, ValueError) as exc:
        fail(str(exc))
    typer.echo(f"serving {architecture} (version {encoder.model_version[:12]}, dim {encoder.embedding_dim}, "
               f"{encoder.device}) on http://{host}:{port} with {len(keys) if keys else 0} API keys")
    uvicorn.run(app, host=host, port=port, log_level="info")


def bench_encoders(
    architecture: Annotated[str, typer.Option(help="architecture to measure (random weights)")] = "open_clip:tiny-clip-vit-l4",
    images: Annotated[int, typer.Option(help="images per pass")] = 1024,
    batch_size: Annotated[Optional[int], typer.Option(help="batch size (default: per device)")] = None,
    device: Annotated[Optional[str], typer.Option(help="cpu or cuda (default: cuda when present)")] = None,
    repeats: Annotated[int, typer.Option(help="passes per figure (median reported)")] = 3,
    out: Annotated[Optional[Path], typer.Option(help="JSON output (default var/bench/encoders.json)")] = None,
) -> None:
    """Throughput of the encoder handle vs the raw model, the reference server and the cache."""
    import logging

    from audit_lib.bench.encoders import BenchConfig, format_table, run_benchmark

    from audit_lib.cli_errors import check_output

    check_output(out, folder=False, option="--out")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    result = run_benchmark(BenchConfig(architecture, images, batch_size, device, repeats), out)
    typer.echo(format_table(result))


def encoders_check(model: Annotated[str, typer.Argument(help="registered model name or id")]) -> None:
    """Open a registered model's handle and show its current version (runs the canary for an API)."""
    from audit_lib import registry
    from audit_lib.cli_errors import fail
    from audit_lib.encoders import open_handle
    from audit_lib.encoders.loading import CheckpointError
    from audit_lib.encoders.remote import RemoteEncoderError
    from audit_lib.store import session_scope

    try:
        with session_scope() as s:
            m = registry.get_model(s, model)
        h = open_handle(m)
    except (registry.RegistryError, CheckpointError, RemoteEncoderError, ValueError) as exc:
        fail(str(exc))
    typer.echo(f"model {m.id} ({m.name}): version {h.model_version} (row {h.model_version_id}), "
               f"dim {h.embedding_dim}, capabilities {'+'.join(sorted(h.capabilities))}")


def register(app: typer.Typer) -> None:
    """Add ``serve-encoder``, ``bench encoders`` and ``encoders check``."""
    app.command("serve-encoder")(serve_encoder)
    _group(app, "bench", "Benchmarks.").command("encoders")(bench_encoders)
    _group(app, "encoders", "Encoder handles.").command("check")(encoders_check)
