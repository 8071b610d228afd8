""" From normalised model inputs back to pixel values, with the data config's mean and std. """
from typing import Any, Mapping, Optional, Sequence, Tuple

import torch
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

__all__ = ['resolve_mean_std', 'denormalize', 'normalize', 'to_uint8']


def resolve_mean_std(data_config: Optional[Mapping[str, Any]] = None) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """Mean and std from a timm data config (train.py's resolved one); ImageNet's by default."""
    cfg = data_config or {}
    mean = tuple(float(v) for v in (cfg.get('mean') or IMAGENET_DEFAULT_MEAN))
    std = tuple(float(v) for v in (cfg.get('std') or IMAGENET_DEFAULT_STD))
    if len(mean) != len(std):
        raise ValueError(f"mean {mean} and std {std} have different lengths")
    return mean, std


def _stats(x: torch.Tensor, values: Sequence[float]) -> torch.Tensor:
    t = torch.as_tensor(values, dtype=torch.float32, device=x.device)
    if t.numel() == 1:
        t = t.expand(x.shape[1])
    if t.numel() != x.shape[1]:
        raise ValueError(f"{t.numel()} normalisation values for {x.shape[1]} channels")
    return t.view(1, -1, 1, 1)


def denormalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``x * std + mean``: pixel values in [0, 1] (float32)."""
    return x.float() * _stats(x, std) + _stats(x, mean)


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    return (x.float() - _stats(x, mean)) / _stats(x, std)


def to_uint8(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """8-bit pixel values (uint8) of a normalised batch, rounded and clamped."""
    return (denormalize(x, mean, std) * 255.0).round().clamp(0, 255).to(torch.uint8)
