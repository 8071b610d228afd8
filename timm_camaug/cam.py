""" Class activation maps for timm models, batched in torch on the input's device.

Methods follow pytorch-grad-cam's names and maths (Grad-CAM, Grad-CAM++, XGrad-CAM, LayerCAM, HiResCAM,
EigenCAM) plus the closed-form CAM of Zhou et al. (CVPR 2016) for global-average-pool + linear heads.

Unlike pytorch-grad-cam's ``BaseCAM`` (kept as the test oracle), nothing here writes parameter gradients,
switches the model's mode for good, or moves data to the CPU: gradients are taken with
``torch.autograd.grad`` with respect to the captured activation only, and every forward runs inside
:func:`~timm_camaug.model_state.cam_forward_mode`, which restores training flags and BatchNorm statistics.

Papers:
    CAM: Learning Deep Features for Discriminative Localization (https://arxiv.org/abs/1512.04150)
    Grad-CAM: Visual Explanations from Deep Networks via Gradient-based Localization (https://arxiv.org/abs/1610.02391)
    Grad-CAM++ (https://arxiv.org/abs/1710.11063), XGrad-CAM (https://arxiv.org/abs/2008.02312),
    LayerCAM (https://ieeexplore.ieee.org/document/9462463), HiResCAM (https://arxiv.org/abs/2011.08891),
    Eigen-CAM (https://arxiv.org/abs/2008.00299)
"""
import difflib
import weakref
from contextlib import ExitStack
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from .model_state import cam_forward_mode, unwrap_model

__all__ = [
    'CAM_METHODS', 'FEATURES', 'TargetLayer', 'LayerMaps', 'class_activation_maps', 'layer_maps',
    'resolve_target_layer', 'upsample_maps', 'pool_linear_classifier', 'TargetLayerError', 'CamMethodError',
]

GRADIENT_METHODS = ('gradcam', 'gradcam++', 'xgradcam', 'layercam', 'hirescam')
CAM_METHODS = ('auto', 'cam') + GRADIENT_METHODS + ('eigencam',)
FEATURES = 'features'  # the target-layer name of the model's final feature map (``forward_features`` output)



class TargetLayerError(ValueError):
    """The target layer cannot give a CAM: no module of that name, no spatial output, not called in the
    forward, or the class score does not depend on it."""


class CamMethodError(ValueError):
    """The CAM method cannot run on this model at this layer (``'cam'`` without a pool + linear head)."""


TargetArg = Union[None, int, torch.Tensor, Sequence[int]]
LayerArg = Union[None, str, nn.Module]


@dataclass
class TargetLayer:
    """Where activations are read and how they become an (N, C, h, w) map.

    ``module`` is None for the final feature map, read from ``forward_features`` (no hook needed).
    ``layout`` is 'NCHW', 'NHWC' (Swin and other channels-last timm models) or 'tokens' ((N, T, C) with
    ``num_prefix_tokens`` class/register tokens in front of a row-major patch grid).
    """
    name: str
    module: Optional[nn.Module]
    layout: str
    num_prefix_tokens: int = 0


@dataclass
class LayerMaps:
    """Maps at the target layer's own grid, before upsampling."""
    maps: torch.Tensor      # (N, h, w) float32
    target: torch.Tensor    # (N,) int64: the class each map is for
    logits: torch.Tensor    # (N, K) the scores of this forward (detached)
    method: str             # the method actually used ('auto' resolved)
    layer: TargetLayer


def class_activation_maps(
        model: nn.Module,
        x: torch.Tensor,
        target: TargetArg = None,
        *,
        method: str = 'auto',
        target_layer: LayerArg = None,
        bn: str = 'eval',
) -> torch.Tensor:
    """Class activation maps of ``x`` for each sample's class, at the input's resolution.

    Args:
        model: a timm classifier (DDP- or torch.compile-wrapped models are unwrapped), or any classifier
            when ``target_layer`` names a module of it.
        x: (N, C, H, W) input batch, normalised as the model expects.
        target: class per sample ((N,) ints, or one int for all); None takes the predicted class.
        method: one of ``CAM_METHODS``. ``'auto'`` is the cheapest exact route to the Grad-CAM map: the
            closed-form CAM (one no-grad forward) when the head is global-average-pool + linear, equal to
            ``'gradcam'`` up to a positive per-sample scale; ``'gradcam'`` otherwise.
        target_layer: a module, or its name in ``model.named_modules()`` (negative indices allowed, e.g.
            ``'blocks.-1.norm1'``), or ``'features'`` for the final feature map. Default: the final feature
            map for CNNs and Swin, the first norm of the last block for ViT-style token models.
        bn: BatchNorm statistics of the CAM forward: ``'eval'`` (running statistics) or ``'batch'`` (the
            batch's own, as a training forward; running statistics are left untouched either way).

    Returns:
        (N, H, W) float32 maps on ``x.device``, raw and signed: no ReLU, no normalisation.
    """
    lm = layer_maps(model, x, target, method=method, target_layer=target_layer, bn=bn)
    return upsample_maps(lm.maps, x.shape[-2:])


def upsample_maps(maps: torch.Tensor, size: Sequence[int], mode: str = 'bilinear') -> torch.Tensor:
    """(N, h, w) -> (N, H, W) in float32, by bilinear interpolation (``align_corners=False``, as OpenCV's and
    pytorch-grad-cam's resize) or ``mode='nearest'``."""
    size = tuple(int(s) for s in size)
    if tuple(maps.shape[-2:]) == size:
        return maps.float()
    if mode not in ('bilinear', 'nearest'):
        raise ValueError(f"upsampling mode must be 'bilinear' or 'nearest', got {mode!r}")
    kw = {'align_corners': False} if mode == 'bilinear' else {}
    return F.interpolate(maps[:, None].float(), size=size, mode=mode, **kw)[:, 0]


def layer_maps(
        model: nn.Module,
        x: torch.Tensor,
        target: TargetArg = None,
        *,
        method: str = 'auto',
        target_layer: LayerArg = None,
        bn: str = 'eval',
        feature_relu: bool = False,
        class_bias: bool = False,
        check_target: bool = True,
) -> LayerMaps:
    """Class activation maps at the target layer's grid (see :func:`class_activation_maps`).

    ``feature_relu`` and ``class_bias`` apply to ``method='cam'`` only: ReLU the feature map first and add
    the class's bias, as SnapMix's semantic percent map does. ``check_target=False`` skips the range check of
    ``target`` against ``model.num_classes`` (a host-device sync) for callers that checked it already.
    """
    model = unwrap_model(model)
    _check_input(x)
    if method not in CAM_METHODS:
        raise ValueError(f"unknown CAM method {method!r}; choose one of {', '.join(CAM_METHODS)}")
    if (feature_relu or class_bias) and method not in ('cam', 'auto'):
        raise ValueError("feature_relu/class_bias apply to the closed-form CAM only (method='cam')")
    num_classes = _num_classes(model)
    target = _check_target(target, x.shape[0], num_classes if check_target else None, x.device)
    layer = resolve_target_layer(model, target_layer)

    if method in ('auto', 'cam'):
        clf = pool_linear_classifier(model, layer)
        if clf is not None:
            method = 'cam'
        elif method == 'cam':
            raise CamMethodError(
                f"method='cam' needs the final feature map and a global-average-pool + linear head; "
                f"{type(model).__name__} with target layer {layer.name!r} has neither "
                f"(use method='gradcam', or 'auto' to pick the cheapest exact route)")
        else:
            method = 'gradcam'
    if (feature_relu or class_bias) and method != 'cam':
        raise ValueError(
            f"feature_relu/class_bias need the closed-form CAM, which {type(model).__name__} does not allow")

    with ExitStack() as stack:
        stack.enter_context(cam_forward_mode(model, bn))
        stack.enter_context(torch.no_grad())
        if layer.module is None:
            return _final_features_maps(model, x, target, num_classes, method, layer, feature_relu, class_bias)
        return _hooked_layer_maps(model, x, target, num_classes, method, layer, stack)


def resolve_target_layer(model: nn.Module, target_layer: LayerArg = None) -> TargetLayer:
    """Find the target layer (default or named) and how to read its output as a spatial map."""
    model = unwrap_model(model)
    npt = int(getattr(model, 'num_prefix_tokens', 0) or 0)
    out_fmt = str(getattr(model, 'output_fmt', 'NCHW'))
    if isinstance(target_layer, nn.Module):
        for name, m in model.named_modules():
            if m is target_layer:
                return _layer_for_module(model, name or type(m).__name__, m, npt, out_fmt)
        raise TargetLayerError(f"target_layer {type(target_layer).__name__} is not a submodule of {type(model).__name__}")
    if target_layer is None:
        if _is_token_model(model):
            last = model.blocks[-1]
            idx = len(model.blocks) - 1
            if hasattr(last, 'norm1'):
                return TargetLayer(f'blocks.{idx}.norm1', last.norm1, 'tokens', npt)
            return TargetLayer(f'blocks.{idx}', last, 'tokens', npt)
        target_layer = FEATURES
        if not (hasattr(model, 'forward_features') and hasattr(model, 'forward_head')):
            raise TargetLayerError(
                f"cannot choose a default target layer for {type(model).__name__} (it has no forward_features/"
                f"forward_head): pass target_layer= the name of its last spatial layer")
    if not isinstance(target_layer, str):
        raise TypeError(f"target_layer must be a module, a module name or None, got {type(target_layer).__name__}")
    if target_layer == FEATURES:
        if not (hasattr(model, 'forward_features') and hasattr(model, 'forward_head')):
            raise TargetLayerError("target_layer='features' needs a timm model with forward_features/forward_head")
        return TargetLayer(FEATURES, None, 'NHWC' if out_fmt == 'NHWC' else 'NCHW', npt)
    module = _get_submodule(model, target_layer)
    return _layer_for_module(model, target_layer, module, npt, out_fmt)


# model -> (weak references to its head modules when probed, probe result)
_POOL_LINEAR: 'weakref.WeakKeyDictionary[nn.Module, Tuple[Tuple[weakref.ref, ...], bool]]' = weakref.WeakKeyDictionary()


def pool_linear_classifier(model: nn.Module, layer: Optional[TargetLayer] = None) -> Optional[nn.Linear]:
    """The head's ``nn.Linear`` when ``forward_head`` is exactly global-average-pool then that linear layer.

    Checked by comparing ``forward_head`` with the closed form on a random feature map (in eval mode,
    without autocast), so any timm family qualifies without a list of names. The result is kept per model
    for as long as its classifier and its ``global_pool`` / ``head`` modules are the same objects
    (``reset_classifier`` replaces them, and the head is probed again).
    """
    model = unwrap_model(model)
    if layer is None:
        layer = resolve_target_layer(model, FEATURES)
    if layer.module is not None or layer.layout == 'tokens':
        return None
    clf = model.get_classifier() if hasattr(model, 'get_classifier') else None
    if not isinstance(clf, nn.Linear):
        return None
    head = _head_modules(model, clf)
    cached = _POOL_LINEAR.get(model)
    if cached is not None and len(cached[0]) == len(head) and all(r() is m for r, m in zip(cached[0], head)):
        ok = cached[1]
    else:
        ok = _probe_pool_linear(model, clf, layer.layout)
        _POOL_LINEAR[model] = (tuple(weakref.ref(m) for m in head), ok)
    return clf if ok else None


# ----------------------------------------------------------------------------------------------------------
# internals

def _check_input(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a tensor, got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(f"x must have shape (N, C, H, W), got {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError("x is an empty batch")
    if not x.is_floating_point():
        raise ValueError(f"x must be a float tensor (normalised images), got {x.dtype}")


def _num_classes(model: nn.Module) -> Optional[int]:
    k = getattr(model, 'num_classes', None)
    if k == 0:
        raise ValueError(
            f"{type(model).__name__} has no classifier (num_classes=0): class activation maps need class scores")
    return k if isinstance(k, int) else None


def _check_target(target: TargetArg, n: int, num_classes: Optional[int], device: torch.device) -> Optional[torch.Tensor]:
    if target is None:
        return None
    if isinstance(target, int):
        target = torch.full((n,), target, dtype=torch.long)
    target = torch.as_tensor(target)
    if target.ndim != 1 or target.shape[0] != n:
        raise ValueError(f"target must be None, an int or a ({n},) tensor of class indices, got shape {tuple(target.shape)}")
    if target.is_floating_point() or target.is_complex():
        raise ValueError(f"target must hold integer class indices, got {target.dtype}")
    if num_classes is not None:
        bad = (target < 0) | (target >= num_classes)
        if bool(bad.any()):
            raise ValueError(f"target {int(target[bad][0])} is out of range for a model with {num_classes} classes")
    return target.to(device=device, dtype=torch.long)


def _is_token_model(model: nn.Module) -> bool:
    return (hasattr(model, 'blocks') and hasattr(model, 'num_prefix_tokens')
            and hasattr(model, 'patch_embed') and isinstance(model.blocks, (nn.Sequential, nn.ModuleList)))


def _layer_for_module(model, name, module, npt, out_fmt) -> TargetLayer:
    # the layout is known only from the output; 'NCHW' is refined to 'tokens' when the output is 3-D
    layout = 'NHWC' if out_fmt == 'NHWC' else 'NCHW'
    return TargetLayer(name, module, layout, npt)


def _get_submodule(model: nn.Module, name: str) -> nn.Module:
    m = model
    for part in name.split('.'):
        nxt = None
        if isinstance(m, (nn.Sequential, nn.ModuleList)) and part.lstrip('-').isdigit():
            idx = int(part)
            if -len(m) <= idx < len(m):
                nxt = m[idx]
        else:
            nxt = m._modules.get(part)
        if nxt is None:
            names = [n for n, _ in model.named_modules() if n]
            close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
            hint = f"; close names: {', '.join(close)}" if close else ''
            raise TargetLayerError(f"no module named {name!r} in {type(model).__name__}{hint}")
        m = nxt
    return m


def _head_modules(model: nn.Module, clf: nn.Module) -> List[nn.Module]:
    mods = [clf]
    for attr in ('global_pool', 'head'):
        m = getattr(model, attr, None)
        if isinstance(m, nn.Module):
            mods.extend(m.modules())
    return mods


def _probe_pool_linear(model: nn.Module, clf: nn.Linear, layout: str) -> bool:
    w = clf.weight
    gen = torch.Generator().manual_seed(0)
    f = torch.randn(2, clf.in_features, 3, 2, generator=gen).to(device=w.device, dtype=w.dtype)
    native = f.permute(0, 2, 3, 1) if layout == 'NHWC' else f
    with torch.no_grad(), torch.autocast(w.device.type, enabled=False):
        expected = F.linear(f.mean((2, 3)), w, clf.bias)     # before the head, which may change f in place
    try:
        with cam_forward_mode(model), torch.no_grad(), torch.autocast(w.device.type, enabled=False):
            out = model.forward_head(native)
    except Exception:  # a head that cannot take this map is not a pool + linear head
        return False
    if not isinstance(out, torch.Tensor) or out.shape != expected.shape:
        return False
    scale = expected.abs().max().clamp_min(1e-6)
    return bool(((out - expected).abs().max() / scale) < 1e-4)


def _first_tensor(out):
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise TargetLayerError(f"the target layer returned {type(out).__name__}, not a tensor")


def _to_nchw(act: torch.Tensor, layer: TargetLayer, model: nn.Module, input_hw: Tuple[int, int]) -> torch.Tensor:
    if act.ndim == 4:
        return act.permute(0, 3, 1, 2) if layer.layout == 'NHWC' else act
    if act.ndim == 3:
        tokens = act[:, layer.num_prefix_tokens:]
        h, w = _token_grid(model, tokens.shape[1], input_hw)
        return tokens.reshape(act.shape[0], h, w, act.shape[2]).permute(0, 3, 1, 2)
    raise TargetLayerError(
        f"{type(model).__name__} has no spatial feature map at target layer {layer.name!r}: "
        f"its output has shape {tuple(act.shape)}")


def _token_grid(model: nn.Module, num_tokens: int, input_hw: Tuple[int, int]) -> Tuple[int, int]:
    pe = getattr(model, 'patch_embed', None)
    grid = None
    if pe is not None and hasattr(pe, 'dynamic_feat_size'):
        grid = tuple(pe.dynamic_feat_size(input_hw))
    elif pe is not None and getattr(pe, 'patch_size', None) is not None:
        ph, pw = pe.patch_size if isinstance(pe.patch_size, (tuple, list)) else (pe.patch_size, pe.patch_size)
        grid = (input_hw[0] // ph, input_hw[1] // pw)
    if grid is not None and grid[0] * grid[1] == num_tokens:
        return grid
    side = int(round(num_tokens ** 0.5))
    if side * side == num_tokens:
        return side, side
    raise TargetLayerError(f"cannot arrange {num_tokens} tokens of {type(model).__name__} on a patch grid")


def _logits(out) -> torch.Tensor:
    out = _first_tensor(out)
    if out.ndim != 2:
        raise ValueError(f"the model's output has shape {tuple(out.shape)}, expected (N, num_classes) scores")
    return out


def _resolve_target(target: Optional[torch.Tensor], logits: torch.Tensor, checked: Optional[int]) -> torch.Tensor:
    """The class of each map; ``checked`` is the class count ``target`` is known to be in range for."""
    if target is None:
        return logits.detach().argmax(dim=1)
    if checked != logits.shape[1]:   # a model without .num_classes, or scores of another width
        top = int(target.max())
        if top >= logits.shape[1]:
            raise ValueError(f"target {top} is out of range for a model with {logits.shape[1]} classes")
    return target


def _class_score(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return logits.float().gather(1, target[:, None]).sum()


def _final_features_maps(model, x, target, checked, method, layer, feature_relu, class_bias) -> LayerMaps:
    feats = _first_tensor(model.forward_features(x))
    hw = tuple(x.shape[-2:])
    if feats.ndim == 2:
        raise TargetLayerError(
            f"{type(model).__name__} has no spatial feature map: forward_features returned shape {tuple(feats.shape)}")
    if method == 'cam':
        clf = model.get_classifier()
        a = _to_nchw(feats, layer, model, hw)
        with torch.autocast(x.device.type, enabled=False):
            a = a.float()
            weight = clf.weight.float()
            bias = None if clf.bias is None else clf.bias.float()
            logits = F.linear(a.mean((2, 3)), weight, bias)  # equals forward_head(feats): checked by the probe
            t = _resolve_target(target, logits, checked)
            if feature_relu:
                a = F.relu(a)
            maps = torch.einsum('nchw,nc->nhw', a, weight[t])
            if class_bias and bias is not None:
                maps = maps + bias[t][:, None, None]
        return LayerMaps(maps, t, logits, 'cam', layer)
    if method == 'eigencam':
        maps = _eigen_maps(_to_nchw(feats, layer, model, hw))   # before the head, which may work in place
        logits = _logits(model.forward_head(feats))
        return LayerMaps(maps, _resolve_target(target, logits, checked), logits.detach(), method, layer)
    leaf = feats.detach().requires_grad_(True)
    with torch.enable_grad():
        # a copy into the head: an in-place op there (ReLU(inplace=True)) must not change or reject the leaf
        logits = _logits(model.forward_head(leaf.clone()))
        t = _resolve_target(target, logits, checked)
        (grad,) = torch.autograd.grad(_class_score(logits, t), leaf)
    a = _to_nchw(leaf.detach(), layer, model, hw)
    g = _to_nchw(grad, layer, model, hw)
    return LayerMaps(_gradient_maps(method, a, g), t, logits.detach(), method, layer)


def _hooked_layer_maps(model, x, target, checked, method, layer, stack: ExitStack) -> LayerMaps:
    hw = tuple(x.shape[-2:])
    needs_grad = method in GRADIENT_METHODS

    def _replace_first(output, tensor):
        if isinstance(output, torch.Tensor):
            return tensor
        return type(output)([tensor, *output[1:]]) if isinstance(output, list) else (tensor, *output[1:])

    def _cut(module, inputs, output):
        # everything below the target layer ran without a graph; from here on, build one (gradient methods)
        leaf = _first_tensor(output).detach()
        if needs_grad:
            torch.set_grad_enabled(True)
            leaf.requires_grad_(True)
        return _replace_first(output, leaf)

    def _shield(module, inputs, output):
        # the rest of the forward gets a copy: an in-place op after the layer (ReLU(inplace=True)) then
        # changes neither the recorded activation nor a leaf that requires grad
        return _replace_first(output, _first_tensor(output).clone())

    # imported here: pytorch_grad_cam pulls in cv2, scikit-learn and matplotlib, which a stock run of a
    # patched train.py should not pay for
    from pytorch_grad_cam.activations_and_gradients import ActivationsAndGradients
    aag = ActivationsAndGradients(model, [layer.module], None, detach=False)   # records the leaf of _cut
    stack.callback(aag.release)
    # its gradient list can hold views, which its clear() cannot detach in place; we never read it
    stack.callback(setattr, aag, 'gradients', [])
    for hook, first in ((_cut, True), (_shield, False)):
        handle = layer.module.register_forward_hook(hook, prepend=first)
        stack.callback(handle.remove)
    logits = _logits(aag(x))
    if not aag.activations:
        children = [n for n, _ in layer.module.named_children()]
        hint = f", e.g. '{layer.name}.{children[-1]}'" if children else ''
        raise TargetLayerError(
            f"target layer {layer.name!r} was not called in the forward of {type(model).__name__}, so its output "
            f"cannot be read (gradient checkpointing that runs a stage's blocks directly skips the stage's own "
            f"forward: turn it off, or name a module that is called{hint})")
    act = _first_tensor(aag.activations[-1])
    aag.activations = []
    t = _resolve_target(target, logits, checked)
    if method == 'eigencam':
        return LayerMaps(_eigen_maps(_to_nchw(act, layer, model, hw)), t, logits.detach(), method, layer)
    try:
        (grad,) = torch.autograd.grad(_class_score(logits, t), act)
    except RuntimeError as e:
        raise TargetLayerError(f"the class score does not depend on target layer {layer.name!r}: {e}") from None
    a = _to_nchw(act.detach(), layer, model, hw)
    g = _to_nchw(grad, layer, model, hw)
    return LayerMaps(_gradient_maps(method, a, g), t, logits.detach(), method, layer)


def _gradient_maps(method: str, a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """pytorch-grad-cam's per-method weighting, batched; a and g are (N, C, h, w)."""
    with torch.autocast(a.device.type, enabled=False):
        a = a.float()
        g = g.float()
        if method == 'gradcam':
            return torch.einsum('nchw,nc->nhw', a, g.mean((2, 3)))
        if method == 'hirescam':
            return (g * a).sum(1)
        if method == 'layercam':
            return (F.relu(g) * a).sum(1)
        sum_a = a.sum((2, 3), keepdim=True)
        if method == 'xgradcam':
            weights = (g * a / (sum_a + 1e-7)).sum((2, 3))
            return torch.einsum('nchw,nc->nhw', a, weights)
        if method == 'gradcam++':
            g2 = g * g
            aij = g2 / (2 * g2 + sum_a * g2 * g + 1e-6)
            aij = torch.where(g != 0, aij, torch.zeros_like(aij))
            weights = (F.relu(g) * aij).sum((2, 3))
            return torch.einsum('nchw,nc->nhw', a, weights)
    raise ValueError(f"unknown gradient method {method!r}")


def _eigen_maps(a: torch.Tensor) -> torch.Tensor:
    """Projection on the first principal component of each sample's (h*w, C) activations.

    The SVD's sign is fixed so that the map correlates positively with the channel-summed activation.
    """
    with torch.autocast(a.device.type, enabled=False):
        a = torch.nan_to_num(a.float())
        n, c, h, w = a.shape
        flat = a.reshape(n, c, h * w).transpose(1, 2)             # (N, hw, C)
        centred = flat - flat.mean(dim=1, keepdim=True)
        _, _, vh = torch.linalg.svd(centred, full_matrices=False)
        proj = torch.einsum('npc,nc->np', centred, vh[:, 0])      # (N, hw)
        energy = flat.sum(2)
        corr = ((proj - proj.mean(1, keepdim=True)) * (energy - energy.mean(1, keepdim=True))).sum(1)
        proj = proj * torch.where(corr < 0, -1.0, 1.0)[:, None]
        return proj.reshape(n, h, w)
