""" Attentive CutMix

Paper: Attentive CutMix: An Enhanced Data Augmentation Approach for Deep Learning Based Image
Classification, Walawalkar et al., ICASSP 2020 (https://arxiv.org/abs/2003.13048). The authors released no code.

A frozen, ImageNet-pretrained feature extractor (not the model under training) ranks the cells of its final
feature-map grid (7x7 for ResNet-50 at 224 px) for image A = ``x[perm[i]]``; the pixel blocks of A's top-N
cells are pasted onto image B = ``x[i]`` at the same positions, and A's label weighs the pasted fraction of
the image (N/49 when the grid divides the image). As in the paper, the attention map is that of the image
whose patches are pasted (A), so that A's most informative regions are what B receives.
"""
from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..boxes import cell_boxes, cell_masks
from ..devices import to_device
from ..extractor import (CheckpointError, ForwardError, HubUnreachableError, create_timm_model, freeze, frozen_copy,
                         model_mean_std, spatial_features)
from ..pixels import denormalize, normalize
from ..targets import mix_soft_targets
from .base import MixMode, MixParams, MixRegions
from .options import Option, OptionError, optional_str, require

__all__ = ['AttentiveCutMix', 'AttentiveParams', 'REDUCTIONS', 'reduce_channels', 'top_cells']

REDUCTIONS = ('mean', 'max', 'l2')
_OFFLINE_HINT = ("a local checkpoint file with extractor_checkpoint=<file> "
                 "(train.py: --attentive-extractor-checkpoint <file>)")
_NAME_HINT = " (extractor=NAME; train.py: --attentive-extractor NAME)"


@dataclass
class AttentiveParams(MixParams):
    """Random draws (CPU) and the extractor's cell ranking (input's device) of one Attentive CutMix call."""
    perm: torch.Tensor              # (N,) int64: sample i receives cells of sample perm[i]
    guidance: Optional[torch.Tensor]    # (N, g_h, g_w) float32 reduced feature map of each unmixed x[j]; None if inactive
    cells: torch.Tensor             # (N, g_h, g_w) bool: cells pasted into x[i], the top-N of maps[perm[i]]


def reduce_channels(features: torch.Tensor, reduce: str = 'mean') -> torch.Tensor:
    """(N, C, h, w) feature maps -> (N, h, w) float32 cell scores: channel 'mean', 'max' or 'l2' norm."""
    f = features.float()
    if reduce == 'mean':
        return f.mean(1)
    if reduce == 'max':
        return f.amax(1)
    if reduce == 'l2':
        return torch.linalg.vector_norm(f, dim=1)
    raise ValueError(f"unknown reduce {reduce!r}; choose one of {', '.join(REDUCTIONS)}")


def top_cells(maps: torch.Tensor, n: int) -> torch.Tensor:
    """(N, h, w) bool: the ``n`` highest cells of each (h, w) map."""
    flat = maps.flatten(1)
    idx = flat.topk(n, dim=1).indices
    return torch.zeros_like(flat, dtype=torch.bool).scatter_(1, idx, True).view_as(maps)


def _create_extractor(name: str, checkpoint: Optional[str]) -> nn.Module:
    """The named timm model without its head, with weights from ``checkpoint`` or the hub; every failure a
    message in the words of the attentive options (the value, the flag, the fix)."""
    def said(e: Exception) -> str:
        text, path = str(e), repr(str(checkpoint))
        text = 'it ' + text[len(path) + 1:] if text.startswith(path + ' ') else text
        return f"attentive: extractor_checkpoint={checkpoint!r} (train.py: --attentive-extractor-checkpoint): {text}"
    try:
        return create_timm_model(name, checkpoint, num_classes=0, offline_hint=_OFFLINE_HINT, name_hint=_NAME_HINT)
    except FileNotFoundError as e:
        error = FileNotFoundError(said(e))
        error.option = 'extractor_checkpoint'
        raise error from None
    except CheckpointError as e:
        raise OptionError('extractor_checkpoint', said(e)) from None
    except HubUnreachableError as e:
        raise HubUnreachableError(f"attentive: extractor={name!r}: {e}") from None
    except ValueError as e:     # an unknown name, a model without pretrained weights
        raise OptionError('extractor', f"attentive: extractor={name!r}: {e} (train.py: --attentive-extractor "
                                       "NAME)") from None
    except RuntimeError as e:
        raise RuntimeError(f"attentive extractor: {e}") from e


def _same(a, b) -> bool:
    return len(a) == len(b) and all(abs(u - v) < 1e-6 for u, v in zip(a, b))


class AttentiveCutMix(MixMode):
    """Attentive CutMix (Walawalkar et al., ICASSP 2020).

    Args:
        extractor: a timm model name (created with ``pretrained=True``; the paper's choice is ``'resnet50'``),
            or an ``nn.Module`` (a frozen copy is used; the caller's module is not changed). Its
            ``forward_features`` (or forward) must give a spatial (N, C, h, w) feature map.
        extractor_checkpoint: local weights file for the named timm model, for machines without internet:
            a plain state_dict or a timm/train.py checkpoint (EMA weights preferred when present).
        extractor_size: the batch is resized (bilinear, antialiased) to this square size for the extractor.
        top_n: cells pasted per sample, 1 .. the number of grid cells (6, the paper's best on a 7x7 grid).
        reduce: channel reduction that ranks the cells: ``'mean'`` (default; the paper does not say),
            ``'max'`` or ``'l2'``.
        (and the options of :class:`~timm_camaug.modes.base.MixMode`)

    The extractor runs in eval mode without gradient, under ``amp_autocast``, on the input's device (moved
    there once), on the batch re-normalised from the data config's mean/std to its own ``pretrained_cfg``
    mean/std (ImageNet's for modules without one). It is a plain attribute, never part of the model under
    training. One forward of a blank image at construction finds its grid and fails early on a bad extractor.

    Examples:
        >>> import timm, torch
        >>> from timm_camaug import create_mix_fn
        >>> extractor = timm.create_model('test_resnet', num_classes=0)     # use a pretrained network
        >>> mix_fn = create_mix_fn('attentive', num_classes=5, extractor=extractor, extractor_size=64, top_n=2,
        ...                        generator=torch.Generator().manual_seed(0))
        >>> mix_fn.grid                                 # the extractor's feature-map grid at 64 px
        (2, 2)
        >>> x, y = torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 2, 3])
        >>> params = mix_fn.make_params(x, y)
        >>> params.cells.sum((1, 2))                    # 2 of the 4 cells of x[perm[i]] pasted into x[i] ...
        tensor([2, 2, 2, 2])
        >>> x_mixed, target = mix_fn.apply(x, y, params)
        >>> target[0, y[params.perm[0]]].item()         # ... so its label weighs half (the pasted share)
        0.5
    """
    name = 'attentive'
    default_prob = 1.0
    prob_per = 'batch'
    auxiliary_network = ('extractor', 'extractor_checkpoint')
    small_input_options = {'extractor_size': 128, 'top_n': 2}   # a 4x4 grid; 2 of 16 cells keep the paper's
    #                                                             pasted share (6 of 49, 12 %) at a third of the cost
    guidance_name = 'extractor cell map'
    options = (
        Option('extractor', 'resnet50', 'timm model name of the frozen ImageNet-pretrained feature extractor '
                                        '(weights from the hub unless --attentive-extractor-checkpoint)', str),
        Option('extractor_checkpoint', None, 'local weights file of the extractor, for machines without internet '
                                             '(state_dict or timm checkpoint)', optional_str),
        Option('extractor_size', 224, 'square input size of the extractor (the batch is resized to it)', int),
        Option('top_n', 6, 'grid cells pasted per image (1 .. cells of the grid, 49 for resnet50 at 224)', int),
        Option('reduce', 'mean', 'channel reduction of the feature map that ranks the cells', str, REDUCTIONS),
    )

    def __init__(self, *, extractor: Union[str, nn.Module] = 'resnet50', extractor_checkpoint: Optional[str] = None,
                 extractor_size: int = 224, top_n: int = 6, reduce: str = 'mean', **kwargs):
        super().__init__(**kwargs)
        self._validate(AttentiveCutMix, reduce=reduce, extractor_size=extractor_size, top_n=top_n)
        if isinstance(extractor, nn.Module):
            if extractor_checkpoint is not None:
                raise ValueError("attentive: extractor_checkpoint applies to a timm model name; "
                                 "load the weights into the module before passing it")
            if not callable(getattr(extractor, 'forward_features', None)) \
                    and not any(isinstance(m, nn.Conv2d) for m in extractor.modules()):
                raise ValueError(
                    f"attentive: extractor {type(extractor).__name__} has neither forward_features nor a 2-D "
                    "convolution, so it gives no spatial (N, C, h, w) feature map; pass a convolutional network, "
                    "e.g. timm.create_model('resnet50', pretrained=True, num_classes=0)")
            self.extractor_name = type(extractor).__name__
            self.extractor = frozen_copy(extractor)
        elif isinstance(extractor, str):
            self.extractor_name = extractor
            self.extractor = freeze(_create_extractor(extractor, extractor_checkpoint))
        else:
            raise TypeError(f"attentive: extractor must be a timm model name or an nn.Module, "
                            f"got {type(extractor).__name__}")
        self.extractor_checkpoint = extractor_checkpoint
        self.extractor_size = extractor_size
        self.top_n = top_n
        self.reduce = reduce
        self.extractor_mean, self.extractor_std = model_mean_std(self.extractor)
        self._renormalise = not (_same(self.mean, self.extractor_mean) and _same(self.std, self.extractor_std))
        self._device: Optional[torch.device] = None
        if self.device is not None:
            try:
                self._move_to(self.device)
            except (RuntimeError, AssertionError) as e:
                raise ValueError(f"attentive: device={str(self.device)!r} is not usable here ({e}); pass the "
                                 "training device (train.py passes its --device)") from None
        first = next((m for m in self.extractor.modules() if isinstance(m, nn.Conv2d)), None)
        self._in_chans = first.in_channels if first is not None else None
        if self._in_chans is not None and len(self.mean) != self._in_chans:
            raise ValueError(f"attentive: data_config's mean/std have {len(self.mean)} value(s), for "
                             f"{len(self.mean)}-channel images, but the extractor {self.extractor_name!r} takes "
                             f"{self._in_chans} channels; give it {self._in_chans}-channel images (train.py: "
                             f"--in-chans {self._in_chans} and a {self._in_chans}-value --mean/--std) or an extractor "
                             f"built for {len(self.mean)}")
        p = next((q for q in self.extractor.parameters() if q.is_floating_point()), None)
        self._dtype = p.dtype if p is not None else torch.float32
        probe = torch.zeros(1, len(self.mean), extractor_size, extractor_size, device=self.device)
        try:
            maps = self.guidance_maps(probe, check_top_n=False)
        except ForwardError as e:
            if first is None or not any(w in str(e).lower() for w in ('size', 'kernel')):
                raise ValueError(f"attentive: extractor {self.extractor_name!r}: {e}: it is not a network that gives "
                                 "a spatial (N, C, h, w) feature map; pass a convolutional network "
                                 "(e.g. 'resnet50')") from None
            own = (getattr(self.extractor, 'pretrained_cfg', None) or {}).get('input_size')
            hint = f"; the network's own input size is {own[-1]}" if own else ''
            raise OptionError('extractor_size', f"attentive: extractor_size={extractor_size}: {e}; raise "
                                                f"extractor_size (train.py: --attentive-extractor-size{hint})") from None
        self.grid: Tuple[int, int] = tuple(maps.shape[-2:])
        self._check_top_n(self.grid)

    @classmethod
    def _check_options(cls, o: Dict[str, Any]) -> None:
        require(o['reduce'] in REDUCTIONS, 'reduce',
                f"attentive: unknown reduce {o['reduce']!r}; choose one of {', '.join(REDUCTIONS)}")
        size, top_n = o['extractor_size'], o['top_n']
        require(isinstance(size, int) and not isinstance(size, bool) and size >= 1, 'extractor_size',
                f"attentive: extractor_size must be a positive int, got {size!r}")
        require(isinstance(top_n, int) and not isinstance(top_n, bool) and top_n >= 1, 'top_n',
                f"attentive: top_n must be an int >= 1, got {top_n!r}")

    def __repr__(self) -> str:
        return (f"AttentiveCutMix(prob={self.prob}, extractor={self.extractor_name!r}, "
                f"extractor_checkpoint={self.extractor_checkpoint!r}, extractor_size={self.extractor_size}, "
                f"top_n={self.top_n}, reduce={self.reduce!r}, grid={getattr(self, 'grid', None)})")

    def _move_to(self, device: torch.device) -> None:
        self.extractor.to(device)
        self._device = device

    def _check_top_n(self, grid: Tuple[int, int]) -> None:
        cells = grid[0] * grid[1]
        if self.top_n > cells:
            raise OptionError('top_n', f"attentive: top_n={self.top_n} is out of range for the extractor's "
                                       f"{grid[0]}x{grid[1]} grid (1..{cells}) at extractor_size={self.extractor_size}; "
                                       f"lower --attentive-top-n to {cells} or less, or raise "
                                       f"--attentive-extractor-size until the grid has {self.top_n} cells")

    def guidance_maps(self, x: torch.Tensor, labels: Optional[torch.Tensor] = None, *,
                      check_top_n: bool = True) -> torch.Tensor:
        """(N, g_h, g_w) float32 cell scores of the normalised batch ``x``: the reduced extractor feature map
        (``labels`` are not used). The batch reaches the extractor in the extractor's own dtype (float32 for a
        float16/bfloat16 extractor outside autocast too)."""
        if self._in_chans is not None and x.shape[1] != self._in_chans:
            raise ValueError(f"attentive: x has {x.shape[1]} channel(s), but the extractor {self.extractor_name!r} "
                             f"takes {self._in_chans}; give it {self._in_chans}-channel images (e.g. grayscale "
                             "repeated to RGB) or an extractor built for them")
        if self._device != x.device:
            self._move_to(x.device)
        size = (self.extractor_size, self.extractor_size)
        xe = x.float()
        if tuple(xe.shape[-2:]) != size:
            xe = F.interpolate(xe, size=size, mode='bilinear', align_corners=False, antialias=True)
        if self._renormalise:
            xe = normalize(denormalize(xe, self.mean, self.std), self.extractor_mean, self.extractor_std)
        xe = xe.to(self._dtype)
        with torch.no_grad(), self.amp_autocast():
            try:
                features = spatial_features(self.extractor, xe)
            except ForwardError:
                raise
            except ValueError as e:
                raise ValueError(f"attentive: extractor {self.extractor_name!r}: {e}") from None
        maps = reduce_channels(features, self.reduce)
        if check_top_n:
            self._check_top_n(tuple(maps.shape[-2:]))
        return maps

    def _make_params(self, x: torch.Tensor, labels: torch.Tensor) -> AttentiveParams:
        n = x.shape[0]
        active = self._gate(n)
        if not bool(active.any()):
            return AttentiveParams(active, torch.arange(n), None,
                                   torch.zeros((n,) + self.grid, dtype=torch.bool, device=x.device))
        perm = self._randperm(n)
        maps = self.guidance_maps(x)
        return AttentiveParams(active, perm, maps, top_cells(maps[to_device(perm, maps.device)], self.top_n))

    def _apply(self, x: torch.Tensor, soft: torch.Tensor, labels: torch.Tensor,
               params: AttentiveParams) -> Tuple[torch.Tensor, torch.Tensor]:
        if not bool(params.active.any()):
            return x, soft
        perm = to_device(params.perm, x.device)
        cells = to_device(params.cells, x.device) & to_device(params.active, x.device)[:, None, None]
        mask = cell_masks(cells, x.shape[-2:])                          # (N, H, W)
        x_mixed = torch.where(mask[:, None], x[perm], x)
        a = mask.flatten(1).float().mean(1)                             # pasted fraction: A's label weight
        return x_mixed, mix_soft_targets(soft, perm, 1.0 - a, a)

    def regions(self, params: AttentiveParams, hw: Sequence[int]) -> MixRegions:
        """The pasted cells, at the same place in ``x[i]`` and in ``x[perm[i]]``."""
        active = params.active.cpu()
        cells = params.cells.cpu() & active[:, None, None]
        region = cell_masks(cells, hw)
        boxes = cell_boxes(cells, hw)
        return MixRegions(active, region, params.perm.cpu(), region, boxes, boxes)
