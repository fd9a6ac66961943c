"""EncoderMI's three inference rules as scorers trained on a shadow encoder.

Paper: Liu, Jia, Qu, Gong, "EncoderMI: Membership Inference against Pre-trained Encoders
in Contrastive Learning", ACM CCS 2021, arXiv 2108.11023, §4.3 ("Membership inference
classifiers"). For an input's n views with pairwise cosine similarities s (n(n-1)/2 of
them):

- EncoderMI-T: score = mean(s); member iff score > threshold, the threshold chosen on
  shadow members vs shadow non-members (here: the one maximising balanced accuracy);
- EncoderMI-V: a fully connected network with two hidden layers on sort(s)
  (hidden sizes 64 and 32); member iff P(member) > 0.5;
- EncoderMI-S: a permutation-invariant set classifier, DeepSets (Zaheer et al., NeurIPS
  2017): rho(mean_j phi(s_j)); member iff P(member) > 0.5.

Departures: inputs are standardised with the shadow features' mean and spread (stored as
buffers beside the weights), and DeepSets pools by the mean rather than the sum so that a
classifier trained at one n applies at another. Weights go to safetensors with the rule,
n_views and training provenance in its metadata: no pickle anywhere.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

RULES = ("T", "V", "S")
CLASSIFIER_VERSION = "1.0"


def pairwise_similarities(embeddings: np.ndarray) -> np.ndarray:
    """The n(n-1)/2 cosine similarities between n view embeddings (upper triangle, row-major)."""
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"pairwise similarities: need (n >= 2, d) embeddings, got shape {x.shape}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if not np.all(np.isfinite(x)) or np.any(norms == 0):
        raise ValueError("pairwise similarities: a zero or non-finite view embedding")
    x = x / norms
    sims = x @ x.T
    iu = np.triu_indices(x.shape[0], k=1)
    return sims[iu]


def _vector_net(n_pairs: int):
    import torch.nn as nn

    class VectorNet(nn.Module):
        """EncoderMI-V: sorted similarities -> 64 -> 32 -> logit."""

        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("mu", torch_zeros(n_pairs))
            self.register_buffer("sd", torch_ones(n_pairs))
            self.net = nn.Sequential(nn.Linear(n_pairs, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(),
                                     nn.Linear(32, 1))

        def forward(self, s):  # (B, P) unsorted similarities
            import torch

            s = torch.sort(s, dim=1, descending=True).values
            return self.net((s - self.mu) / self.sd).squeeze(1)

    return VectorNet()


def _set_net():
    import torch.nn as nn

    class SetNet(nn.Module):
        """EncoderMI-S: DeepSets rho(mean phi(s_j)), phi 1 -> 32 -> 32, rho 32 -> 32 -> logit."""

        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("mu", torch_zeros(1))
            self.register_buffer("sd", torch_ones(1))
            self.phi = nn.Sequential(nn.Linear(1, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU())
            self.rho = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 1))

        def forward(self, s):  # (B, P)
            z = self.phi(((s - self.mu) / self.sd).unsqueeze(-1))
            return self.rho(z.mean(dim=1)).squeeze(1)

    return SetNet()


def torch_zeros(n: int):
    import torch

    return torch.zeros(n)


def torch_ones(n: int):
    import torch

    return torch.ones(n)


@dataclass
class MIClassifier:
    """A trained EncoderMI rule: ``score`` maps similarity features (B, P) to a membership
    score (larger = more member-like); ``threshold`` is the published cut (T: on the mean
    similarity; V and S: 0.5 on the probability)."""

    rule: str
    n_views: int
    threshold: float | None
    module: Any = None  # torch.nn.Module for V and S
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ValueError(f"EncoderMI rule {self.rule!r} is not one of {RULES}")
        if self.rule != "T" and self.module is None:
            raise ValueError(f"EncoderMI-{self.rule} needs a trained module")

    @property
    def n_pairs(self) -> int:
        return self.n_views * (self.n_views - 1) // 2

    def score(self, features: np.ndarray) -> np.ndarray:
        """Membership scores for (B, P) similarity features."""
        feats = np.asarray(features, dtype=np.float64)
        if feats.ndim != 2:
            raise ValueError(f"EncoderMI: features must be (B, P), got {feats.shape}")
        if self.rule == "T":
            return feats.mean(axis=1)
        if feats.shape[1] != self.n_pairs and self.rule == "V":
            raise ValueError(f"EncoderMI-V was trained on {self.n_views} views ({self.n_pairs} "
                             f"similarities); got {feats.shape[1]}")
        import torch

        self.module.eval()
        with torch.inference_mode():
            logits = self.module(torch.as_tensor(feats, dtype=torch.float32))
        return torch.sigmoid(logits).double().numpy()

    def published_member(self, scores: np.ndarray) -> np.ndarray | None:
        """The paper's per-input decision, or None when no shadow threshold is known."""
        if self.threshold is None:
            return None
        return np.asarray(scores) > self.threshold

    def save(self, path: Path) -> Path:
        """Write to safetensors (weights and buffers; the rest as string metadata)."""
        from safetensors.torch import save_file

        import torch

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {"threshold": torch.tensor([np.nan if self.threshold is None else self.threshold],
                                             dtype=torch.float64)}
        if self.module is not None:
            tensors.update({f"module.{k}": v.detach().contiguous() for k, v in self.module.state_dict().items()})
        meta = {"rule": self.rule, "n_views": str(self.n_views), "version": CLASSIFIER_VERSION,
                "meta": json.dumps(self.meta, sort_keys=True)}
        tmp = path.with_suffix(path.suffix + ".tmp")
        save_file(tensors, str(tmp), metadata=meta)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: Path) -> MIClassifier:
        """Read a classifier written by :meth:`save` (safetensors only: no code runs)."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"EncoderMI classifier {path}: no such file")
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        rule = meta.get("rule")
        if rule not in RULES or "n_views" not in meta:
            raise ValueError(f"EncoderMI classifier {path}: metadata lacks a rule and n_views")
        n_views = int(meta["n_views"])
        thr = float(tensors["threshold"][0])
        module = None
        if rule != "T":
            module = _vector_net(n_views * (n_views - 1) // 2) if rule == "V" else _set_net()
            state = {k[len("module."):]: v for k, v in tensors.items() if k.startswith("module.")}
            module.load_state_dict(state)
            module.eval()
        return cls(rule=rule, n_views=n_views, threshold=None if np.isnan(thr) else thr,
                   module=module, meta=json.loads(meta.get("meta", "{}")))


def _best_threshold(member: np.ndarray, nonmember: np.ndarray) -> float:
    """The cut on the score that maximises balanced accuracy on shadow data (midpoint
    between neighbouring scores)."""
    values = np.unique(np.r_[member, nonmember])
    cuts = np.r_[values[0] - 1e-9, (values[:-1] + values[1:]) / 2, values[-1] + 1e-9]
    tpr = (member[None, :] > cuts[:, None]).mean(axis=1)
    tnr = (nonmember[None, :] <= cuts[:, None]).mean(axis=1)
    return float(cuts[np.argmax(tpr + tnr)])


def train_classifier(rule: str, member_features: np.ndarray, nonmember_features: np.ndarray, *,
                     n_views: int, seed: int = 0, epochs: int = 300, lr: float = 1e-3,
                     meta: dict[str, Any] | None = None) -> MIClassifier:
    """Fit one EncoderMI rule on shadow members vs shadow non-members (balanced by
    weighting), full-batch Adam, seeded. T needs no training, only its threshold."""
    if rule not in RULES:
        raise ValueError(f"EncoderMI rule {rule!r} is not one of {RULES}")
    pos = np.asarray(member_features, dtype=np.float64)
    neg = np.asarray(nonmember_features, dtype=np.float64)
    if len(pos) < 2 or len(neg) < 2:
        raise ValueError("EncoderMI: need at least 2 shadow members and 2 shadow non-members")
    info = dict(meta or {})
    info.update({"n_shadow_members": len(pos), "n_shadow_nonmembers": len(neg), "seed": seed})
    if rule == "T":
        return MIClassifier("T", n_views, _best_threshold(pos.mean(axis=1), neg.mean(axis=1)), meta=info)
    import torch

    torch_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        module = _vector_net(pos.shape[1]) if rule == "V" else _set_net()
    finally:
        torch.random.set_rng_state(torch_state)
    x = torch.as_tensor(np.r_[pos, neg], dtype=torch.float32)
    y = torch.as_tensor(np.r_[np.ones(len(pos)), np.zeros(len(neg))], dtype=torch.float32)
    w = torch.as_tensor(np.r_[np.full(len(pos), 0.5 / len(pos)), np.full(len(neg), 0.5 / len(neg))],
                        dtype=torch.float32)
    with torch.no_grad():
        if rule == "V":
            xs = torch.sort(x, dim=1, descending=True).values
            module.mu.copy_(xs.mean(0))
            module.sd.copy_(xs.std(0).clamp_min(1e-6))
        else:
            module.mu.fill_(float(x.mean()))
            module.sd.fill_(float(x.std().clamp_min(1e-6)))
    opt = torch.optim.Adam(module.parameters(), lr=lr, weight_decay=1e-4)
    module.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a net this small only loses time to thread hand-offs
    try:
        for _ in range(epochs):
            opt.zero_grad()
            loss = (torch.nn.functional.binary_cross_entropy_with_logits(module(x), y, reduction="none")
                    * w).sum()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    module.eval()
    info["final_loss"] = float(loss.detach())
    return MIClassifier(rule, n_views, 0.5, module=module, meta=info)
