"""SimCLR augmentations: random resized crop, horizontal flip, colour jitter, greyscale.

Two forms of the same pipeline (SimCLR, Chen et al., ICML 2020, arXiv 2002.05709,
Appendix A; EncoderMI's views use the same family):

- :func:`view_transform`: torchvision ``transforms.v2`` on one image tensor, exactly
  torchvision's semantics (global torch RNG). Used to make augmented views for
  measurement, e.g. the zoo's membership check.
- :class:`BatchAugment`: the same four operations applied to a whole batch at once with
  one ``torch.Generator``, for training. Departures from torchvision, for speed on CPU and
  for seeded determinism: the crop is resampled bilinearly through ``grid_sample`` (no
  antialiasing); jitter operations run in a fixed order (brightness, contrast, saturation,
  hue) instead of a random one; hue is a rotation of the chroma plane in YIQ space
  instead of a shift in HSV.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from audit_lib.zoo.recipes import AugmentConfig

_LUMA = (0.299, 0.587, 0.114)


def view_transform(size: int, cfg: AugmentConfig | None = None):
    """A torchvision pipeline producing one augmented view of a float image tensor
    (3, H, W) in [0, 1] at ``size`` x ``size`` pixels."""
    from torchvision.transforms import v2

    cfg = cfg or AugmentConfig()
    ops = [v2.RandomResizedCrop(size, scale=cfg.crop_scale, ratio=cfg.crop_ratio, antialias=True),
           v2.RandomHorizontalFlip(cfg.flip_p)]
    if cfg.jitter_p > 0:
        ops.append(v2.RandomApply([v2.ColorJitter(cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue)],
                                  p=cfg.jitter_p))
    if cfg.grayscale_p > 0:
        ops.append(v2.RandomGrayscale(cfg.grayscale_p))
    return v2.Compose(ops)


def _gray(x: torch.Tensor) -> torch.Tensor:
    w = torch.tensor(_LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)


def _uniform(n: int, lo: float, hi: float, g: torch.Generator, device) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g).to(device)


class BatchAugment:
    """Batched, seeded SimCLR augmentation of float images (N, 3, H, W) in [0, 1].

    Returns views of the same size, still in [0, 1] (normalise afterwards). All random
    numbers come from the ``generator`` passed to :meth:`__call__` (on the CPU), so a
    seeded generator gives the same views on every run.
    """

    def __init__(self, cfg: AugmentConfig) -> None:
        if not 0 < cfg.crop_scale[0] <= cfg.crop_scale[1] <= 1:
            raise ValueError(f"crop_scale {cfg.crop_scale}: expected 0 < lo <= hi <= 1")
        if not 0 < cfg.crop_ratio[0] <= cfg.crop_ratio[1]:
            raise ValueError(f"crop_ratio {cfg.crop_ratio}: expected 0 < lo <= hi")
        self.cfg = cfg

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"BatchAugment: expected images (N, 3, H, W), got {tuple(x.shape)}")
        x = self._crop_flip(x, generator)
        x = self._jitter(x, generator)
        if self.cfg.grayscale_p > 0:
            pick = (torch.rand(x.shape[0], generator=generator) < self.cfg.grayscale_p).to(x.device)
            x = torch.where(pick.view(-1, 1, 1, 1), _gray(x).expand_as(x), x)
        return x

    def _crop_flip(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        n, dev, c = x.shape[0], x.device, self.cfg
        area = _uniform(n, c.crop_scale[0], c.crop_scale[1], g, dev)
        log_ratio = _uniform(n, math.log(c.crop_ratio[0]), math.log(c.crop_ratio[1]), g, dev)
        ratio = torch.exp(log_ratio)
        w = torch.sqrt(area * ratio).clamp(max=1.0)  # crop width as a share of the image width
        h = torch.sqrt(area / ratio).clamp(max=1.0)
        cx = (torch.rand(n, generator=g).to(dev) * 2 - 1) * (1 - w)  # centre in [-1, 1] coordinates
        cy = (torch.rand(n, generator=g).to(dev) * 2 - 1) * (1 - h)
        flip = torch.where(torch.rand(n, generator=g).to(dev) < c.flip_p, -1.0, 1.0)
        theta = torch.zeros(n, 2, 3, dtype=x.dtype, device=dev)
        theta[:, 0, 0] = w * flip
        theta[:, 0, 2] = cx
        theta[:, 1, 1] = h
        theta[:, 1, 2] = cy
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    def _jitter(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        c, n, dev = self.cfg, x.shape[0], x.device
        if c.jitter_p <= 0:
            return x
        on = (torch.rand(n, generator=g) < c.jitter_p).to(dev).view(-1, 1, 1, 1)

        def factor(strength: float) -> torch.Tensor:
            f = _uniform(n, max(0.0, 1 - strength), 1 + strength, g, dev).view(-1, 1, 1, 1)
            return torch.where(on, f, torch.ones_like(f))

        y = x
        if c.brightness > 0:
            y = (y * factor(c.brightness)).clamp(0, 1)
        if c.contrast > 0:
            mean = _gray(y).mean(dim=(2, 3), keepdim=True)
            y = ((y - mean) * factor(c.contrast) + mean).clamp(0, 1)
        if c.saturation > 0:
            gray = _gray(y)
            y = ((y - gray) * factor(c.saturation) + gray).clamp(0, 1)
        if c.hue > 0:
            angle = _uniform(n, -c.hue, c.hue, g, dev) * 2 * math.pi
            angle = torch.where(on.view(-1), angle, torch.zeros_like(angle))
            y = _rotate_hue(y, angle).clamp(0, 1)
        return y


_RGB2YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def _rotate_hue(x: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Rotate the chroma (I, Q) plane of each image by ``angle`` radians."""
    to_yiq = _RGB2YIQ.to(x.dtype).to(x.device)
    to_rgb = torch.linalg.inv(to_yiq)
    cos, sin = torch.cos(angle), torch.sin(angle)
    rot = torch.zeros(x.shape[0], 3, 3, dtype=x.dtype, device=x.device)
    rot[:, 0, 0] = 1
    rot[:, 1, 1], rot[:, 1, 2] = cos, -sin
    rot[:, 2, 1], rot[:, 2, 2] = sin, cos
    m = to_rgb @ rot @ to_yiq  # (N, 3, 3)
    return torch.einsum("nij,njhw->nihw", m, x)
