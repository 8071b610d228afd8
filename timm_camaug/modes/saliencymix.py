""" SaliencyMix: a box around the source image's saliency peak, pasted at the same place

Paper: SaliencyMix: A Saliency Guided Data Augmentation Strategy for Better Regularization, Uddin et al.,
ICLR 2021 (https://arxiv.org/abs/2006.01791). Reference code: https://github.com/afm-shahab-uddin/SaliencyMix

The saliency detector is OpenCV-contrib's fine-grained static saliency (Montabone & Soto, 2010), computed
batched in torch on the input's device by :mod:`timm_camaug.saliency`.
"""
from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence, Tuple

import torch

from ..boxes import box_area, box_masks, centred_bbox, sample_beta
from ..devices import to_device
from ..pixels import to_uint8
from ..saliency import fine_grained_saliency, opencv_float_saliency, saliency_peaks
from ..targets import mix_soft_targets
from .base import MixMode, MixParams, MixRegions
from .options import Option, is_finite_number, require

__all__ = ['SaliencyMix', 'SaliencyMixParams', 'VARIANTS']

VARIANTS = ('paper', 'official')


@dataclass
class SaliencyMixParams(MixParams):
    """Random draws (CPU) and the saliency peaks, boxes and maps (input's device) of one SaliencyMix call."""
    perm: torch.Tensor                  # (N,) int64: sample i receives the box of sample perm[i]
    lam: torch.Tensor                   # (N,) float64 Beta draw of the box size (one per batch, repeated)
    peaks: torch.Tensor                 # (N, 2) int64 (row, column) the box of sample i is centred on
    boxes: torch.Tensor                 # (N, 4) int64 [y0, y1, x0, x1], clipped to the image
    guidance: Optional[torch.Tensor]    # uint8 saliency maps: (N, H, W) of x[perm] ('paper'), (1, H, W) of
    #                                     x[perm[0]] ('official'); None when nothing is mixed


class SaliencyMix(MixMode):
    """SaliencyMix (Uddin et al., ICLR 2021).

    With probability ``prob`` (per batch) the batch is mixed: ``lam ~ Beta(beta, beta)``, one draw per batch as
    in the paper's CutMix-style algorithm and in the released code; a box of side ``int(side * sqrt(1 - lam))``
    is centred on the saliency peak (first row-major maximum) of the source image ``x[perm[i]]``, clipped to
    the image, and that region of ``x[perm[i]]`` replaces the same region of ``x[i]``. The label weight is
    ``lam_i = 1 - box_area_i / (H * W)`` after clipping (so it differs per sample where boxes are clipped):
    ``soft_target = lam_i * one_hot_s(y) + (1 - lam_i) * one_hot_s(y[perm])``.

    Args:
        beta: Beta(beta, beta) of the box size (1.0, the paper's value).
        variant: ``'paper'`` (default): saliency of every source image, computed on its 8-bit pixels
            (de-normalised with the data config's mean/std, RGB), one box per sample.
            ``'official'``: the released code's behaviour, for comparison: the saliency of the single image
            ``x[perm[0]]`` is computed as OpenCV does for the normalised float32 tensor the code hands it
            (channels in RGB order read as BGR; the centre values are bytes of the float grey image, so the
            "peak" is a near-random, top-biased location), and that one box is pasted for the whole batch.
        (and the options of :class:`~timm_camaug.modes.base.MixMode`)

    Examples:
        >>> import torch
        >>> from timm_camaug import create_mix_fn
        >>> mix_fn = create_mix_fn('saliencymix', num_classes=5, generator=torch.Generator().manual_seed(0))
        >>> x, y = torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 2, 3])
        >>> x_mixed, target = mix_fn(x, y)
        >>> target.sum(1)           # the two label weights of each image add up to 1
        tensor([1., 1., 1., 1.])
        >>> params = mix_fn.make_params(x, y)
        >>> params.boxes.shape      # one box per sample, centred on its source's saliency peak
        torch.Size([4, 4])
    """
    name = 'saliencymix'
    default_prob = 1.0
    prob_per = 'batch'
    guidance_name = 'saliency map'
    options = (
        Option('beta', 1.0, 'Beta(beta, beta) of the box size, one draw per batch'),
        Option('variant', 'paper', "'paper': 8-bit saliency of each source image, one box per sample; 'official': "
                                   "the released code (one float-input saliency map, one box per batch)",
               str, VARIANTS),
    )

    def __init__(self, *, beta: float = 1.0, variant: str = 'paper', **kwargs):
        self._validate(SaliencyMix, beta=beta, variant=variant)
        self.beta = float(beta)
        self.variant = variant
        super().__init__(**kwargs)

    @classmethod
    def _check_options(cls, o: Dict[str, Any]) -> None:
        require(is_finite_number(o['beta']) and o['beta'] > 0, 'beta',
                f"saliencymix: beta must be > 0, got {o['beta']!r}")
        require(o['variant'] in VARIANTS, 'variant',
                f"saliencymix: variant must be one of {', '.join(VARIANTS)}, got {o['variant']!r}")

    def _check_images(self, x: torch.Tensor) -> None:
        c = x.shape[1]
        if c not in (1, 3):
            raise ValueError(f"saliencymix: the saliency detector takes 1- or 3-channel images, got {c} channels")
        if self.variant == 'paper' and len(self.mean) not in (1, c):
            raise ValueError(f"saliencymix: the data config's mean/std have {len(self.mean)} values for "
                             f"{c}-channel images")

    def guidance_maps(self, x: torch.Tensor, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(N, H, W) uint8 saliency maps of normalised images, on their 8-bit pixels (the 'paper' variant;
        ``labels`` are not used).

        OpenCV's float32 rounding of the integral image is not repeated (a per-row loop above 65,793 pixels):
        see :func:`~timm_camaug.saliency.fine_grained_saliency`.
        """
        return fine_grained_saliency(to_uint8(x, self.mean, self.std), opencv_rounding=False)

    def _make_params(self, x: torch.Tensor, labels: torch.Tensor) -> SaliencyMixParams:
        self._check_images(x)
        n, _, h, w = x.shape
        dev = x.device
        active = self._gate(n)
        if not bool(active.any()):
            zeros = torch.zeros(n, 2, dtype=torch.long, device=dev)
            return SaliencyMixParams(active, torch.arange(n), torch.ones(n, dtype=torch.float64), zeros,
                                     torch.zeros(n, 4, dtype=torch.long, device=dev), None)
        lam = sample_beta(self.beta, 1, self.generator).expand(n)
        perm = self._randperm(n)
        with torch.no_grad():
            if self.variant == 'paper':
                saliency = self.guidance_maps(x[to_device(perm, dev)])
                peaks = saliency_peaks(saliency)
            else:
                saliency = opencv_float_saliency(x[int(perm[0])][None])
                peaks = saliency_peaks(saliency).expand(n, 2)
        boxes = centred_bbox((h, w), to_device(lam, dev), peaks[:, 0], peaks[:, 1])
        return SaliencyMixParams(active, perm, lam, peaks, boxes, saliency)

    def _apply(self, x: torch.Tensor, soft: torch.Tensor, labels: torch.Tensor,
               params: SaliencyMixParams) -> Tuple[torch.Tensor, torch.Tensor]:
        n, _, h, w = x.shape
        if params.perm.shape != (n,) or params.boxes.shape != (n, 4):
            raise ValueError(f"saliencymix: params are for a batch of {params.perm.shape[0]}, x has {n} images")
        if not bool(params.active.any()):
            return x, soft
        dev = x.device
        perm, boxes, active = (to_device(t, dev) for t in (params.perm, params.boxes, params.active))
        mask = box_masks(boxes, (h, w), dev) & active[:, None, None]
        x_mixed = torch.where(mask[:, None], x[perm], x)
        lam = 1.0 - box_area(boxes).to(torch.float64) / float(h * w)
        lam = torch.where(active, lam, torch.ones_like(lam))
        return x_mixed, mix_soft_targets(soft, perm, lam, 1.0 - lam)

    def image_guidance(self, params: SaliencyMixParams) -> Optional[torch.Tensor]:
        """The saliency map of each unmixed image (NaN where the call computed none: 'official' has one)."""
        if params.guidance is None:
            return None
        sal = params.guidance.float().cpu()
        perm = params.perm.cpu()
        n = perm.shape[0]
        if sal.shape[0] == n:           # maps of x[perm]: the map of image i is where perm == i
            return sal[torch.argsort(perm)]
        out = torch.full((n,) + tuple(sal.shape[-2:]), float('nan'))
        out[int(perm[0])] = sal[0]
        return out

    def regions(self, params: SaliencyMixParams, hw: Sequence[int]) -> MixRegions:
        """The box, at the same place in ``x[i]`` and in ``x[perm[i]]``."""
        active, boxes = params.active.cpu(), params.boxes.cpu()
        region = box_masks(boxes, hw) & active[:, None, None]
        return MixRegions(active, region, params.perm.cpu(), region, boxes[:, None], boxes[:, None])
