""" Frozen auxiliary networks: a timm model from a name (hub weights or a local checkpoint), and its feature map.

Used by the attentive mode's feature extractor, and by anything else that needs a pretrained network
that is not the model under training.
"""
import copy
import difflib
import os
from typing import Optional, Tuple

import torch
from torch import nn

from .pixels import resolve_mean_std

__all__ = ['create_timm_model', 'freeze', 'frozen_copy', 'model_mean_std', 'spatial_features']


def _classifier_prefixes(model: nn.Module) -> Tuple[str, ...]:
    names = (getattr(model, 'pretrained_cfg', None) or {}).get('classifier') or ()
    return tuple(f'{n}.' for n in ((names,) if isinstance(names, str) else names))


def _load_local(model: nn.Module, name: str, checkpoint: str) -> None:
    """Load a plain state_dict or a timm/train.py checkpoint into ``model`` (EMA weights when present)."""
    from timm.models import load_state_dict
    try:
        state = load_state_dict(checkpoint, use_ema=True)
    except Exception as e:
        raise RuntimeError(f"could not read checkpoint {checkpoint!r} for timm model {name!r}: {e}") from e
    own = model.state_dict()
    # a head the model was built without (num_classes=0) is not needed for features
    drop = _classifier_prefixes(model)
    state = {k: v for k, v in state.items() if k in own or not k.startswith(drop)}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        parts = [f"{label} {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}" for label, keys in
                 (('missing keys', missing), ('unexpected keys', unexpected), ('shape mismatch', wrong)) if keys]
        raise RuntimeError(f"checkpoint {checkpoint!r} does not match timm model {name!r}: {'; '.join(parts)}")
    model.load_state_dict(state)


def create_timm_model(
        name: str,
        checkpoint: Optional[str] = None,
        *,
        pretrained: bool = True,
        offline_hint: str = 'a local checkpoint file',
        **kwargs,
) -> nn.Module:
    """A timm model by name with pretrained weights: from ``checkpoint`` (a local file) if given, else from the hub.

    ``checkpoint`` may be a plain state_dict (``.pth``/``.bin``/``.safetensors``) or a timm train.py
    checkpoint (``state_dict``/``model``, ``state_dict_ema`` preferred when present). ``offline_hint`` names,
    in the error raised when the hub cannot be reached, how the caller's user passes a local checkpoint.
    Extra keyword args go to ``timm.create_model`` (e.g. ``num_classes=0``).
    """
    import timm
    from timm.models import is_model_pretrained
    if not isinstance(name, str) or not timm.is_model(name):
        close = difflib.get_close_matches(str(name), timm.list_models(), n=5)
        raise ValueError(f"unknown timm model {name!r}" + (f"; close names: {', '.join(close)}" if close else ''))
    if checkpoint is not None:
        if not os.path.isfile(checkpoint):
            raise FileNotFoundError(f"checkpoint file {checkpoint!r} for timm model {name!r} does not exist")
        model = timm.create_model(name, pretrained=False, **kwargs)
        _load_local(model, name, checkpoint)
        return model
    if pretrained and not is_model_pretrained(name):
        raise ValueError(f"timm has no pretrained weights for {name!r}; pick a model listed by "
                         f"timm.list_pretrained(), or pass {offline_hint}")
    try:
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    except OSError as e:     # huggingface_hub's LocalEntryNotFoundError, urllib's URLError, ...
        raise RuntimeError(
            f"could not download the pretrained weights of timm model {name!r} ({type(e).__name__}: {e}). "
            f"Without internet access, download them elsewhere and pass {offline_hint}") from e


def freeze(model: nn.Module) -> nn.Module:
    """``model`` in eval mode with no parameter requiring grad (in place)."""
    model.eval()
    model.requires_grad_(False)
    return model


def frozen_copy(model: nn.Module) -> nn.Module:
    """A frozen deep copy of ``model`` (the caller's module keeps its mode, device and ``requires_grad``)."""
    return freeze(copy.deepcopy(model))


def model_mean_std(model: nn.Module) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """Input mean and std of a model, from its timm ``pretrained_cfg`` (ImageNet's when it has none)."""
    return resolve_mean_std(getattr(model, 'pretrained_cfg', None))


def spatial_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's final spatial feature map (N, C, h, w): ``forward_features`` (or the forward) of ``x``.

    timm models that return channels-last features (``output_fmt == 'NHWC'``, e.g. Swin) are permuted.
    Token outputs (vision transformers) have no spatial map and raise ``ValueError``.
    """
    fwd = getattr(model, 'forward_features', None)
    out = fwd(x) if callable(fwd) else model(x)
    if isinstance(out, (list, tuple)):
        out = out[-1]
    shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    if not isinstance(out, torch.Tensor) or out.ndim != 4:
        raise ValueError(f"{type(model).__name__} gives features of shape {shape}, not a spatial (N, C, h, w) "
                         "feature map; use a convolutional network (e.g. resnet50)")
    if getattr(model, 'output_fmt', 'NCHW') == 'NHWC':
        out = out.permute(0, 3, 1, 2)
    return out
