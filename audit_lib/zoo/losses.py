"""Contrastive losses of the training kit.

- :func:`nt_xent`: the normalised-temperature cross-entropy of SimCLR (T. Chen, Kornblith,
  Norouzi, Hinton, "A Simple Framework for Contrastive Learning of Visual
  Representations", ICML 2020, arXiv 2002.05709, Eq. 1): for a batch of N images with two
  views each, every view's positive is its partner view and its negatives are the other
  2N - 2 views; loss = mean over the 2N views of
  -log exp(sim(z_i, z_j) / t) / sum_{k != i} exp(sim(z_i, z_k) / t), sim = cosine.
- :func:`clip_loss`: CLIP's symmetric image-text cross-entropy (Radford et al., "Learning
  Transferable Visual Models From Natural Language Supervision", ICML 2021, arXiv
  2103.00020, Fig. 3 pseudo-code): logits = scale * I @ T^T of normalised embeddings,
  loss = (CE(logits, diag) + CE(logits^T, diag)) / 2.

Departure (optional): with ``groups`` given, pairs sharing a group id (the same caption
target, e.g. the same named person or the generic "a person" captions) are all positives
with equal weight, as in UniCL (Yang et al., "Unified Contrastive Learning in Image-Text-
Label Space", CVPR 2022, arXiv 2204.03610). Our tiny caption set repeats people within a
batch; plain CLIP would push a person's photos away from their own name.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """SimCLR's NT-Xent loss for two views ``z1``, ``z2`` of shape (N, d), N >= 2."""
    if z1.shape != z2.shape or z1.ndim != 2:
        raise ValueError(f"nt_xent: views must both be (N, d); got {tuple(z1.shape)} and {tuple(z2.shape)}")
    if z1.shape[0] < 2:
        raise ValueError("nt_xent: needs at least 2 images per batch (one negative)")
    if temperature <= 0:
        raise ValueError(f"nt_xent: temperature {temperature} must be positive")
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = z @ z.T / temperature
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, target)


def clip_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor | float,
              groups: torch.Tensor | None = None) -> torch.Tensor:
    """CLIP's symmetric loss over N image-text pairs (features (N, d), normalised here).

    ``groups`` (N integer ids), when given, makes every pair with the same id a positive
    (soft targets spread evenly over them) instead of only the diagonal.
    """
    if image_features.shape != text_features.shape or image_features.ndim != 2:
        raise ValueError(f"clip_loss: features must both be (N, d); got {tuple(image_features.shape)} "
                         f"and {tuple(text_features.shape)}")
    img = F.normalize(image_features, dim=1)
    txt = F.normalize(text_features, dim=1)
    logits = logit_scale * img @ txt.T
    n = logits.shape[0]
    if groups is None:
        target = torch.arange(n, device=logits.device)
        return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
    if groups.shape != (n,):
        raise ValueError(f"clip_loss: groups must have shape ({n},), got {tuple(groups.shape)}")
    same = (groups[:, None] == groups[None, :]).to(logits.dtype)
    soft = same / same.sum(dim=1, keepdim=True)
    return (F.cross_entropy(logits, soft) + F.cross_entropy(logits.T, soft)) / 2
