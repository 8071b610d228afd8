""" Soft targets as timm's ``mixup_target`` builds them, for ``SoftTargetCrossEntropy`` / ``BinaryCrossEntropy``. """
from typing import Tuple

import torch
from timm.data.mixup import one_hot

from .devices import assert_finite, assert_in_range, assert_on_device, to_device

__all__ = ['smooth_one_hot', 'prepare_targets', 'mix_soft_targets', 'assert_unmixed']


def smooth_one_hot(labels: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """Label-smoothed one-hot (off = s/K, on = 1 - s + off), float32, on the labels' device."""
    off = smoothing / num_classes
    return one_hot(labels, num_classes, on_value=1.0 - smoothing + off, off_value=off).float()


def prepare_targets(target: torch.Tensor, num_classes: int, smoothing: float, n: int,
                    device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    """Integer labels (N,) or soft targets (N, K) -> (soft (N, K) float32, labels (N,) int64) on ``device``.

    Integer labels are smoothed; soft targets are taken as they are (their argmax is the label a CAM uses),
    if each gives its weight to one class (:func:`assert_unmixed`).
    """
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"target must be a tensor, got {type(target).__name__}")
    if target.ndim == 1 and not target.is_floating_point():
        if target.shape[0] != n:
            raise ValueError(f"target has {target.shape[0]} labels for a batch of {n}")
        labels = target.to(dtype=torch.long)
        assert_in_range(labels, num_classes)           # before the move: a CPU batch is checked at once
        labels = to_device(labels, device)
        return smooth_one_hot(labels, num_classes, smoothing), labels
    if target.ndim == 2 and target.is_floating_point():
        if tuple(target.shape) != (n, num_classes):
            raise ValueError(f"soft target has shape {tuple(target.shape)}, expected ({n}, {num_classes})")
        assert_finite(target, 'soft target', '; give finite class weights')
        assert_unmixed(target)
        soft = to_device(target.to(dtype=torch.float32), device)
        return soft, soft.argmax(dim=1)
    raise ValueError(
        f"target must be (N,) integer labels or (N, num_classes) soft targets, got {tuple(target.shape)} {target.dtype}")


def mix_soft_targets(soft: torch.Tensor, perm: torch.Tensor, w_a: torch.Tensor, w_b: torch.Tensor) -> torch.Tensor:
    """``w_a * soft + w_b * soft[perm]`` per sample."""
    return w_a[:, None].float() * soft + w_b[:, None].float() * soft[perm]


_MIXED_WHY = ("the batch arrives mixed already and would be mixed twice: with a mix mode, give integer labels "
              "(train.py: the loader must not mix; `timm-camaug patch --check` shows part 7, which turns timm's "
              "FastCollateMixup off)")


def assert_unmixed(soft: torch.Tensor) -> None:
    """Refuse (N, K) soft targets whose rows give weight to more than one class (a one-hot, smoothed or not, gives
    it to one): such a batch was mixed already, e.g. by timm's ``FastCollateMixup`` in the loader.

    On the CPU a ValueError names the first such row; on an accelerator the check is queued
    (``torch._assert_async``), as the label range check is, so nothing waits for it.
    """
    low = soft.amin(1, keepdim=True)
    mixed = (soft > low + 1e-6).sum(1) > 1
    if soft.device.type == 'cpu':
        if bool(mixed.any()):
            row = int(mixed.nonzero()[0, 0])
            raise ValueError(f"soft target row {row} spreads its weight over several classes: {_MIXED_WHY}")
        return
    assert_on_device(~mixed.any(), f"soft targets spread over several classes: {_MIXED_WHY}")
