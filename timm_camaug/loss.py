""" train.py's train loss, wrapped: targets completed after the training forward, and auxiliary losses.

Some modes (TransMix) finish their soft targets from the training forward on the mixed batch, and some
models (SnapMix's Baseline+) train an auxiliary head whose loss is added to the main one. Stock train.py
computes ``loss_fn(output, target)`` right after the forward, in every release since v1.0.20 (from v1.0.28 on
inside its task); the patch wraps that loss where train.py builds it, so the training loop itself is not
edited. Without a mix function that completes targets and without auxiliary outputs, the wrapper is not
used at all: :func:`wrap_train_loss` returns the stock loss object.
"""
from typing import List, Optional

import torch
from torch import nn

__all__ = ['MixedTargetLoss', 'AUXILIARY_OUTPUTS', 'has_auxiliary_outputs', 'pop_auxiliary_outputs']

# a model that trains auxiliary heads has this method: the (N, K) logits of its last training forward that
# get the same loss as its output (returned once, then forgotten)
AUXILIARY_OUTPUTS = 'pop_auxiliary_outputs'


def has_auxiliary_outputs(model: Optional[nn.Module]) -> bool:
    return model is not None and callable(getattr(model, AUXILIARY_OUTPUTS, None))


def pop_auxiliary_outputs(model: Optional[nn.Module]) -> List[torch.Tensor]:
    """The auxiliary logits ``model`` produced in its last training forward (empty: none)."""
    if not has_auxiliary_outputs(model):
        return []
    outputs = getattr(model, AUXILIARY_OUTPUTS)()
    return list(outputs or [])


class MixedTargetLoss(nn.Module):
    """``loss_fn(output, mix_fn.finalize(target)) + sum(loss_fn(aux, same target))``.

    Args:
        loss_fn: train.py's train loss (SoftTargetCrossEntropy, BinaryCrossEntropy, ...).
        model: the plain classifier whose auxiliary outputs are added (``pop_auxiliary_outputs``), or None.
    The mix function is bound later (:meth:`bind`), when train.py builds it.
    """

    def __init__(self, loss_fn: nn.Module, model: Optional[nn.Module] = None):
        super().__init__()
        self.loss_fn = loss_fn
        self.mix_fn = None
        # not a submodule: the model is train.py's, and must not be moved, saved or counted with the loss
        self._model = [model] if model is not None else []

    def bind(self, mix_fn) -> 'MixedTargetLoss':
        """Complete targets with ``mix_fn.finalize`` before each loss."""
        self.mix_fn = mix_fn
        return self

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.mix_fn is not None:
            target = self.mix_fn.finalize(target)
        loss = self.loss_fn(output, target)
        for aux in pop_auxiliary_outputs(self._model[0] if self._model else None):
            loss = loss + self.loss_fn(aux, target)
        return loss

    def extra_repr(self) -> str:
        mix = type(self.mix_fn).__name__ if self.mix_fn is not None else None
        return f'mix_fn={mix}, auxiliary_outputs={has_auxiliary_outputs(self._model[0] if self._model else None)}'
