"""Downstream evaluation of an encoder's features: a small classifier, agreement, cosine.

Used by theft simulation (StolenEncoder) and watermark verification (AWEncoder's black-box
mode) to answer "how useful are these features to a legitimate user?" and "do two encoders
behave alike?".

Two classifier kinds, both on frozen, L2-normalised features; the same recipe is applied to
every encoder being compared, so accuracies and agreement are comparable:

- ``mlp``: StolenEncoder's evaluation MLP (Liu et al., "StolenEncoder: Stealing Pre-trained
  Encoders in Self-supervised Learning", ACM CCS 2022, arXiv 2201.05889; official code
  liu00222/StolenEncoder): input -> 512 -> 256 -> classes, ReLU, dropout 0.5, Adam lr 1e-4,
  cross-entropy, 500 epochs.
- ``linear`` (our default): multinomial logistic regression on standardised features, the
  zoo's linear probe (``audit_lib.zoo.evaluate.probe_accuracy``). Departure from the paper,
  for time: the paper's MLP takes about two minutes per encoder on a shared 2-core CPU and a
  theft curve trains dozens of classifiers; the linear probe takes about a second. Use
  ``kind="mlp"`` to reproduce the paper's evaluation where compute allows.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from audit_lib.embedding import l2_normalise


@dataclass(frozen=True)
class DownstreamRecipe:
    """The downstream classifier recipe (StolenEncoder's evaluation MLP)."""

    kind: str = "linear"  # linear (logistic regression) | mlp (the paper's MLP)
    hidden: tuple[int, ...] = (512, 256)  # hidden widths, as in the paper's code
    dropout: float = 0.5  # dropout after each hidden layer
    lr: float = 1e-4  # Adam learning rate
    epochs: int = 500  # passes over the labelled training features
    batch_size: int = 64  # minibatch size
    seed: int = 0  # torch seed for init and shuffling

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class DownstreamClassifier:
    """A trained classifier on one encoder's features."""

    module: Any  # torch.nn.Module (mlp) or a fitted scikit-learn pipeline (linear)
    n_classes: int
    recipe: DownstreamRecipe = field(default_factory=DownstreamRecipe)

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Class indices for (n, d) features (normalised here, as in training)."""
        import torch

        if self.recipe.kind == "linear":
            return np.asarray(self.module.predict(l2_normalise(features)))
        self.module.eval()
        with torch.inference_mode():
            logits = self.module(torch.from_numpy(l2_normalise(features)))
        return logits.argmax(dim=1).numpy()

    def accuracy(self, features: np.ndarray, labels: np.ndarray) -> float:
        return float(np.mean(self.predict(features) == np.asarray(labels)))


def fit_classifier(features: np.ndarray, labels: np.ndarray,
                   recipe: DownstreamRecipe = DownstreamRecipe(), n_classes: int | None = None) -> DownstreamClassifier:
    """Train the downstream MLP on (n, d) features and integer labels."""
    import torch
    import torch.nn as nn

    x = np.asarray(features)
    y = np.asarray(labels)
    if x.ndim != 2 or x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ValueError(f"downstream: features {x.shape} and labels {y.shape} must be (n, d) and (n,), n > 0")
    if not np.all(np.isfinite(x)):
        raise ValueError("downstream: features contain NaN or infinite values")
    n_classes = int(n_classes or (int(y.max()) + 1))
    if recipe.kind == "linear":
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        pipe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0))
        pipe.fit(l2_normalise(x), y)
        return DownstreamClassifier(pipe, n_classes, recipe)
    if recipe.kind != "mlp":
        raise ValueError(f"downstream classifier kind {recipe.kind!r}: expected linear or mlp")
    gen = torch.Generator().manual_seed(recipe.seed)
    torch.manual_seed(recipe.seed)
    layers: list[nn.Module] = []
    width = x.shape[1]
    for h in recipe.hidden:
        layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(recipe.dropout)]
        width = h
    layers.append(nn.Linear(width, n_classes))
    model = nn.Sequential(*layers)
    opt = torch.optim.Adam(model.parameters(), lr=recipe.lr)
    xt = torch.from_numpy(l2_normalise(x))
    yt = torch.from_numpy(y.astype(np.int64))
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in range(recipe.epochs):
        perm = torch.randperm(len(xt), generator=gen)
        for start in range(0, len(xt), recipe.batch_size):
            idx = perm[start:start + recipe.batch_size]
            opt.zero_grad()
            loss_fn(model(xt[idx]), yt[idx]).backward()
            opt.step()
    model.eval()
    return DownstreamClassifier(model, n_classes, recipe)


def agreement(pred_a: np.ndarray, pred_b: np.ndarray) -> float:
    """Share of inputs on which two classifiers predict the same class."""
    a, b = np.asarray(pred_a), np.asarray(pred_b)
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"agreement: predictions of shapes {a.shape} and {b.shape}")
    return float(np.mean(a == b))


def mean_cosine(reference: np.ndarray, other: np.ndarray, *, fit_reference: np.ndarray | None = None,
                fit_other: np.ndarray | None = None) -> float:
    """Mean cosine between paired rows of two feature sets. When the dimensions differ, a
    least-squares linear map from ``other`` to ``reference`` is fitted on the separate
    ``fit_*`` pair (never on the rows being scored) and applied first."""
    ref = l2_normalise(reference)
    oth = l2_normalise(other)
    if ref.shape[0] != oth.shape[0]:
        raise ValueError(f"mean_cosine: {ref.shape[0]} vs {oth.shape[0]} rows")
    if ref.shape[1] != oth.shape[1]:
        if fit_reference is None or fit_other is None:
            raise ValueError(f"mean_cosine: dimensions {ref.shape[1]} and {oth.shape[1]} differ; "
                             "pass fit_reference/fit_other to fit a linear map")
        w, *_ = np.linalg.lstsq(l2_normalise(fit_other), l2_normalise(fit_reference), rcond=None)
        oth = l2_normalise(oth @ w)
    return float(np.mean(np.sum(ref * oth, axis=1)))
