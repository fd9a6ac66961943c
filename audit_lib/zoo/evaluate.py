"""Measurements of zoo encoders: embeddings, augmented-view similarity (EncoderMI's signal),
zero-shot name accuracy (IDIA's signal) and downstream accuracy (linear probe / small MLP).

These are the build summary's checks that the zoo separates members from non-members the
way each method needs, and the utility measure later issues (theft, watermark, fingerprint)
compare encoders with. They work on in-memory networks and uint8 pixel arrays already at
the network's input size (as :mod:`audit_lib.zoo.data` provides them).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from audit_lib.embedding import embed_images
from audit_lib.encoders.architectures import Network
from audit_lib.methods.identity_inference import TEMPLATES as IDIA_TEMPLATES
from audit_lib.zoo.augment import view_transform
from audit_lib.zoo.data import to_float
from audit_lib.zoo.recipes import AugmentConfig


def _float_images(network: Network, images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (N, S, S, 3) or float (N, 3, S, S) in [0, 1] -> float (N, 3, S, S)."""
    x = images if isinstance(images, torch.Tensor) else to_float(images)
    size = network.preprocess.image_size
    if x.ndim != 4 or tuple(x.shape[1:]) != (3, size, size):
        raise ValueError(f"images: expected the network's input size {size}x{size}, got {tuple(x.shape)}")
    return x


@torch.inference_mode()
def embed(network: Network, images: np.ndarray | torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """Image embeddings (float32 (N, d), not normalised) of images at the input size."""
    x = _float_images(network, images)
    network.module.eval()
    return embed_images(network, x, batch_size=batch_size)


def view_similarity(network: Network, images: np.ndarray, n_views: int = 10,
                    augment: AugmentConfig | None = None, seed: int = 0) -> np.ndarray:
    """EncoderMI-T's score per image: the mean of the n(n-1)/2 pairwise cosine similarities
    of ``n_views`` augmented views (torchvision's SimCLR pipeline, seeded). Shape (N,)."""
    if n_views < 2:
        raise ValueError(f"n_views = {n_views}: at least 2 views are needed for a similarity")
    x = _float_images(network, images)
    tf = view_transform(network.preprocess.image_size, augment)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        views = torch.stack([tf(img) for img in x for _ in range(n_views)])
    z = F.normalize(torch.from_numpy(embed(network, views)), dim=1).view(len(x), n_views, -1)
    sim = z @ z.transpose(1, 2)
    iu = torch.triu_indices(n_views, n_views, offset=1)
    return sim[:, iu[0], iu[1]].mean(dim=1).numpy()


@torch.inference_mode()
def embed_texts(network: Network, texts: Sequence[str], batch_size: int = 512) -> np.ndarray:
    """Text embeddings (float32 (N, d), not normalised) of a CLIP-like network."""
    if network.encode_text is None or network.tokenizer is None:
        raise ValueError("embed_texts: this network has no text tower")
    network.module.eval()
    out = [network.encode_text(network.tokenizer(list(texts[i:i + batch_size]))).float()
           for i in range(0, len(texts), batch_size)]
    return torch.cat(out).numpy()


def zero_shot_name_hits(network: Network, image_embeddings: np.ndarray, true_index: Sequence[int],
                        candidates: Sequence[str], templates: Sequence[str] = IDIA_TEMPLATES) -> np.ndarray:
    """Boolean (len(templates), N): for each template and photo, whether the argmax of
    cosine similarity over ``candidates`` (names put into the template) is the photo's
    true name ``candidates[true_index[i]]``. ``image_embeddings`` (N, d) are the photos'
    embeddings as an audit takes them (through the encoder handle, with the family's own
    transform); the texts are embedded by ``network``."""
    if len(true_index) != len(image_embeddings):
        raise ValueError(f"{len(image_embeddings)} photos but {len(true_index)} true names")
    img = F.normalize(torch.from_numpy(np.asarray(image_embeddings, dtype=np.float32)), dim=1)
    truth = torch.as_tensor(list(true_index))
    hits = []
    for template in templates:
        txt = F.normalize(torch.from_numpy(embed_texts(network, [template.format(c) for c in candidates])), dim=1)
        hits.append((img @ txt.T).argmax(dim=1) == truth)
    return torch.stack(hits).numpy()


def probe_accuracy(train_features: np.ndarray, train_labels: np.ndarray, test_features: np.ndarray,
                   test_labels: np.ndarray, kind: str = "linear", seed: int = 0) -> float:
    """Downstream accuracy of frozen features: a logistic-regression (``linear``) or a small
    one-hidden-layer MLP (``mlp``) classifier on standardised, L2-normalised features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import Normalizer, StandardScaler

    if kind == "linear":
        clf = LogisticRegression(max_iter=2000, C=1.0)
    elif kind == "mlp":
        clf = MLPClassifier(hidden_layer_sizes=(256,), max_iter=300, early_stopping=True, random_state=seed)
    else:
        raise ValueError(f"probe kind {kind!r}: expected linear or mlp")
    model = make_pipeline(Normalizer(), StandardScaler(), clf)
    model.fit(train_features, train_labels)
    return float(model.score(test_features, test_labels))


def downstream_accuracy(network: Network, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
                        y_test: np.ndarray, kind: str = "linear") -> float:
    """:func:`probe_accuracy` of ``network``'s embeddings on a labelled split."""
    return probe_accuracy(embed(network, x_train), y_train, embed(network, x_test), y_test, kind=kind)
