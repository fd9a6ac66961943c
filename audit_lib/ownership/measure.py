"""Measure the watermark on the reference zoo: the README's detection table and figures.

    python -m audit_lib.ownership.measure --profile ci --out docs

Enrols the zoo's SimCLR target (cached), then verifies the watermark (white-box) on: the
marked encoder, fine-tuned and pruned copies of it, copies stolen through the reference
server's HTTP API at the given budgets, the unmarked original, and every independent
encoder (its own score left out of the independent null). Writes
``watermark-detection.json``, ``watermark-detection.png`` (observed vs null per suspect) and
``watermark-shift.png`` (the marked encoder's statistic against its null).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


def _stolen_through_api(handle: Any, surrogate: np.ndarray, recipe: Any) -> Any:
    from audit_lib.encoders.remote import RemoteEncoder
    from audit_lib.methods.theft import steal_encoder
    from audit_lib.server.testing import running_server

    env = "AUDIT_CRED_MEASURE_THEFT"
    os.environ[env] = "sk-measure-" + os.urandom(8).hex()
    try:
        with running_server(encoder=handle, keys={os.environ[env]: {"name": "attacker"}}) as url:
            copy = steal_encoder(RemoteEncoder(str(url), None, env, budget=len(surrogate)), surrogate, recipe,
                                 progress=False)
    finally:
        os.environ.pop(env, None)
    return copy.handle()


def measure_watermark(profile: str = "ci", *, zoo_cache: Path | None = None, cache_dir: Path | None = None,
                      out: Path = Path("docs"), n_controls: int = 99, alpha: float = 0.01,
                      budgets: tuple[str, ...] = ("5%",), steal_epochs: int = 12, steal_lr: float = 0.05,
                      downstream_per_class: int | None = None) -> dict[str, Any]:
    """Run the measurement; returns (and writes) the detection table."""
    import copy as copy_mod

    from audit_lib.config import get_settings
    from audit_lib.encoders.local import LocalEncoder
    from audit_lib.methods import watermark as wm
    from audit_lib.zoo.suspects import finetune_simclr, prune_global
    from audit_lib.methods.theft import StealRecipe, parse_budgets
    from audit_lib.ownership.artefacts import Artefact
    from audit_lib.ownership.data import load_manifest, ownership_data
    from audit_lib.ownership.watermark import enrol_cached
    from audit_lib.stats import clopper_pearson_upper

    t0 = time.perf_counter()
    data = ownership_data(load_manifest(profile, zoo_cache), "simclr-target", downstream_per_class=downstream_per_class)
    arch = data.target.architecture
    owned = LocalEncoder.from_checkpoint(arch, data.target.weights_path)
    independents = [LocalEncoder.from_checkpoint(e.architecture, e.weights_path) for e in data.independents]
    enrol = enrol_cached(owned, arch, data, independents, recipe=wm.WatermarkRecipe(n_controls=n_controls),
                         alpha=alpha, cache_dir=Path(cache_dir or get_settings().data_dir / "ownership"))
    art = Artefact(None, None, "watermark", enrol.tensors, enrol.spec, "", "measurement", "")
    marked = LocalEncoder.from_network(enrol.marked, "marked")
    scores = enrol.spec["independent_white_box"]
    suspects: list[tuple[str, str, Any, list[float]]] = [("marked", "positive", marked, scores)]
    finetune_images = data.surrogate[-512:]
    for lr, epochs in ((1e-4, 1), (1e-3, 1)):
        net = finetune_simclr(copy_mod.deepcopy(enrol.marked), finetune_images, lr=lr, epochs=epochs, batch=64, seed=3)
        suspects.append((f"fine-tuned (SimCLR, lr {lr:g}, {epochs} epoch on 512 images)", "positive",
                         LocalEncoder.from_network(net, f"ft-{lr}"), scores))
    for sparsity in (0.3, 0.5):
        net = prune_global(copy_mod.deepcopy(enrol.marked), sparsity)
        suspects.append((f"pruned {int(sparsity * 100)}%", "positive", LocalEncoder.from_network(net, f"pr-{sparsity}"),
                         scores))
    recipe = StealRecipe(epochs=steal_epochs, lr=steal_lr)
    for b in budgets:
        q = parse_budgets(b, data.train_size)[0]
        suspects.append((f"stolen via API, {b} ({q} queries, {steal_epochs} epochs)", "positive",
                         _stolen_through_api(marked, data.surrogate[:q], recipe), scores))
    suspects.append(("unmarked original", "negative", owned, scores))
    for i, h in enumerate(independents):
        suspects.append((f"independent {data.independents[i].name}", "negative", h, scores[:i] + scores[i + 1:]))
    rows = []
    for name, expected, handle, null_ind in suspects:
        t = enrol.tensors
        stats = wm.white_box_statistics(handle, t["key"], t["probes"], t["delta"], t["controls"])
        res = wm.decide(stats, null_ind, mode="white_box", alpha=alpha, key_sha256=enrol.spec["key_sha256"],
                        commitment_sha256="measurement")
        rows.append({"suspect": name, "expected": expected, "observed": stats.observed, "p_value": res.p_value,
                     "decision": res.decision, "max_control": max(stats.controls),
                     "max_independent": max(null_ind) if null_ind else None, "n_queries": stats.n_queries})
        log.info("%-60s shift %.4f p %.4f %s", name, stats.observed, res.p_value, res.decision)
    independent_rows = [r for r in rows if r["suspect"].startswith("independent")]
    false_alarms = sum(r["decision"] == "positive" for r in independent_rows)
    table = {"profile": profile, "alpha": alpha, "n_controls": n_controls, "n_independents": len(independents),
             "min_attainable_p": 1 / (n_controls + len(independents)),
             "unmarked_accuracy": enrol.meta["unmarked_accuracy"], "marked_accuracy": enrol.meta["marked_accuracy"],
             "false_alarms": false_alarms,
             "false_alarm_bound_95": clopper_pearson_upper(false_alarms, len(independent_rows)),
             "rows": rows, "wall_s": round(time.perf_counter() - t0, 1)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "watermark-detection.json").write_text(json.dumps(table, indent=1))
    _plot_table(rows, out / "watermark-detection.png", alpha)
    marked_res = wm.verify_watermark(marked, art, alpha=alpha)
    wm.plot_shift(marked_res, out / "watermark-shift.png", title="AWEncoder white-box check: marked encoder")
    return table


def _plot_table(rows: list[dict[str, Any]], path: Path, alpha: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 0.45 * len(rows) + 1.2), dpi=120)
    y = np.arange(len(rows))[::-1]
    colours = ["tab:red" if r["decision"] == "positive" else "tab:blue" for r in rows]
    ax.barh(y, [r["observed"] for r in rows], color=colours)
    for yi, r in zip(y, rows):
        ax.text(max(r["observed"], 0) + 0.005, yi, f"p = {r['p_value']:.3f}", va="center", fontsize=7)
    ax.set_yticks(y, [r["suspect"] for r in rows], fontsize=7)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlabel(f"mean shift towards the key (red: watermark found at alpha {alpha})")
    ax.set_title("AWEncoder watermark detection on the reference zoo")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    """Command-line entry: ``python -m audit_lib.ownership.measure``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="ci")
    parser.add_argument("--zoo-cache", type=Path, default=None)
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path("docs"))
    parser.add_argument("--controls", type=int, default=99)
    parser.add_argument("--alpha", type=float, default=0.01)
    parser.add_argument("--budgets", default="5%")
    parser.add_argument("--steal-epochs", type=int, default=12)
    parser.add_argument("--steal-lr", type=float, default=0.05)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    table = measure_watermark(args.profile, zoo_cache=args.zoo_cache, cache_dir=args.cache_dir, out=args.out,
                              n_controls=args.controls, alpha=args.alpha, budgets=tuple(args.budgets.split(",")),
                              steal_epochs=args.steal_epochs, steal_lr=args.steal_lr)
    logging.getLogger(__name__).info("%s", json.dumps({k: v for k, v in table.items() if k != "rows"}, indent=1))


if __name__ == "__main__":
    main()
