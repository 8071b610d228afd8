""" What a forward hook captures of the training forward, and the class maps made from it afterwards.

Modes that complete their targets from the training forward on the mixed batch (TransMix) read it through
:class:`ForwardCapture`: a hook on one module that keeps the tensors it sees while *armed*, and nothing
otherwise. By default the hook itself exists only while armed (registered by :meth:`ForwardCapture.arm`,
removed by :meth:`ForwardCapture.disarm`). ``torch.compile`` does not see a hook registered after its first
compiled call (its guards skip module hooks), so for a compiled model the hook is registered once, before that
call, and only its armed flag changes (``persistent=True``); the compiled graph then has one variant armed and
one disarmed, and no recompilation per step.

For models without a class token the final feature map is captured instead (:func:`find_feature_site`: the
module whose input, or output, is ``forward_features(x)``, found by a start-up probe), and
:func:`class_maps` turns it into the class activation maps of given labels: the closed-form CAM for
global-average-pool + linear heads (features times the class's classifier row), otherwise Grad-CAM through
``forward_head`` alone on a detached copy of the features (the training graph is not touched).
"""
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .cam import FEATURES, _gradient_maps, _to_nchw, pool_linear_classifier, resolve_target_layer
from .model_state import cam_forward_mode

__all__ = ['ForwardCapture', 'FeatureSite', 'find_feature_site', 'feature_map', 'class_maps',
           'NoFeatureMap']


class NoFeatureMap(ValueError):
    """The model's final feature map cannot be captured or turned into class maps (the message says why)."""


def _detached(value: Any) -> Any:
    return value.detach() if isinstance(value, torch.Tensor) else value


class ForwardCapture:
    """A hook on ``module`` that keeps, while armed, what each forward of it receives (``kind='pre'``: its first
    positional input and its keyword arguments) or returns (``kind='out'``: its first output), detached.

    Args:
        module: the module to watch.
        kind: ``'pre'`` (a forward pre-hook, with keyword arguments) or ``'out'`` (a forward hook).
        persistent: register the hook now and keep it (only the armed flag changes); for ``torch.compile``,
            which ignores hooks registered after its first compiled call. Otherwise the hook exists only
            between :meth:`arm` and :meth:`disarm`.

    ``records`` lists ``(tensor, kwargs)`` per forward seen while armed, the first ``max_records`` of them (a
    second one is enough to tell that more than one forward ran; forgotten disarming cannot grow it); :meth:`disarm`
    empties it.
    """
    max_records = 2

    def __init__(self, module: nn.Module, kind: str = 'pre', persistent: bool = False):
        if kind not in ('pre', 'out'):
            raise ValueError(f"kind must be 'pre' or 'out', got {kind!r}")
        self.module = module
        self.kind = kind
        self.persistent = bool(persistent)
        self.armed = False
        self.records: List[Tuple[torch.Tensor, Dict[str, Any]]] = []
        self._handle = None
        if self.persistent:
            self._register()

    def _register(self) -> None:
        if self._handle is None:
            if self.kind == 'pre':
                self._handle = self.module.register_forward_pre_hook(self._pre, with_kwargs=True)
            else:
                self._handle = self.module.register_forward_hook(self._out)

    def _unregister(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def _pre(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if self.armed and len(self.records) < self.max_records:
            self.records.append((args[0].detach(), {k: _detached(v) for k, v in kwargs.items()}))

    def _out(self, module: nn.Module, args: tuple, output: Any) -> None:
        if self.armed and len(self.records) < self.max_records:
            out = output if isinstance(output, torch.Tensor) else output[0]
            self.records.append((out.detach(), {}))

    @property
    def registered(self) -> bool:
        return self._handle is not None

    def arm(self) -> None:
        """Start keeping what the module sees (nothing kept from before)."""
        self.records.clear()
        self._register()
        self.armed = True

    def disarm(self) -> None:
        """Stop, and drop everything kept; a non-persistent hook is removed."""
        self.armed = False
        self.records.clear()
        if not self.persistent:
            self._unregister()

    def close(self) -> None:
        """Remove the hook for good (persistent or not)."""
        self.armed = False
        self.records.clear()
        self._unregister()


@dataclass
class FeatureSite:
    """Where a model's final feature map (``forward_features(x)``) passes in a forward: the input of ``module``
    (``kind='pre'``) or its output (``'out'``)."""
    module: nn.Module
    name: str
    kind: str


def _candidates(model: nn.Module) -> List[Tuple[str, str]]:
    """(module name, kind) where timm's families hand their final feature map on: the head or its pooling
    (input), or the final norm of a token model (output)."""
    names = dict(model.named_modules())
    out = []
    for name, kind in (('head', 'pre'), ('global_pool', 'pre'), ('head.global_pool', 'pre'), ('norm', 'out'),
                       ('fc_norm', 'pre'), ('final_conv', 'out')):
        if name in names and names[name] is not model:
            out.append((name, kind))
    return out


def find_feature_site(model: nn.Module, x: torch.Tensor) -> FeatureSite:
    """The module that receives (or returns) ``forward_features(x)`` in a forward of ``model``, found by
    running both on the probe batch ``x`` (eval mode, no gradient; the model's state restored).

    Raises :class:`NoFeatureMap` when the model has no ``forward_features`` or no candidate carries its result.
    """
    kind_name = type(model).__name__
    if not (hasattr(model, 'forward_features') and hasattr(model, 'forward_head')):
        raise NoFeatureMap(f"{kind_name} has no forward_features/forward_head: its final feature map cannot be found")
    candidates = _candidates(model)
    if not candidates:
        raise NoFeatureMap(f"{kind_name} has no head, global_pool or norm module through which its final feature "
                           "map passes")
    names = dict(model.named_modules())
    captures = [ForwardCapture(names[n], k) for n, k in candidates]
    try:
        with cam_forward_mode(model), torch.no_grad():
            feats = model.forward_features(x)
            feats = feats if isinstance(feats, torch.Tensor) else feats[0]
            for c in captures:
                c.arm()
            model(x)
        for (name, kind), c in zip(candidates, captures):
            if len(c.records) == 1:
                t = c.records[0][0]
                if t.shape == feats.shape and torch.allclose(t.float(), feats.float(), rtol=1e-4, atol=1e-5):
                    return FeatureSite(names[name], name, kind)
    finally:
        for c in captures:
            c.close()
    raise NoFeatureMap(f"{kind_name}: none of {', '.join(n for n, _ in candidates)} carries forward_features(x) "
                       "in its forward, so a hook cannot capture the final feature map")


def feature_map(model: nn.Module, feats: torch.Tensor, hw: Sequence[int]) -> torch.Tensor:
    """The captured final features as an (N, C, h, w) map (NHWC models permuted; token models' prefix tokens
    dropped and the patches laid on their grid for an (H, W) = ``hw`` input)."""
    layer = resolve_target_layer(model, FEATURES)
    return _to_nchw(feats, layer, model, (int(hw[0]), int(hw[1])))


def class_maps(model: nn.Module, feats: torch.Tensor, hw: Sequence[int], labels: Sequence[torch.Tensor]) -> List[torch.Tensor]:
    """One (N, h, w) float32 class activation map per entry of ``labels`` ((N,) int64 each), from the captured
    final features ``feats`` of an (H, W) = ``hw`` batch: features times the class's classifier row for
    global-average-pool + linear heads (exact, no forward), else Grad-CAM through ``forward_head`` alone on a
    detached copy (dropout off, no parameter gradient). Autocast off, float32."""
    clf = pool_linear_classifier(model)
    dev = feats.device
    with torch.autocast(dev.type, enabled=False):
        if clf is not None:
            a = feature_map(model, feats.detach(), hw).float()
            w = clf.weight.detach().float()
            return [torch.einsum('nchw,nc->nhw', a, w[y]) for y in labels]
        leaf = feats.detach().float().requires_grad_(True)
        with cam_forward_mode(model), torch.enable_grad():
            logits = model.forward_head(leaf.clone())
            logits = logits if isinstance(logits, torch.Tensor) else logits[0]
            grads = []
            for i, y in enumerate(labels):
                score = logits.float().gather(1, y[:, None].to(dev)).sum()
                (g,) = torch.autograd.grad(score, leaf, retain_graph=i + 1 < len(labels))
                grads.append(g)
        a = feature_map(model, leaf.detach(), hw)
        return [_gradient_maps('gradcam', a, feature_map(model, g, hw)) for g in grads]
