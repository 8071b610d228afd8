""" Cutout as a timm-camaug mode, from this one file: what a third-party package ships to add a mode.

Paper: Improved Regularization of Convolutional Neural Networks with Cutout, DeVries & Taylor, 2017
(https://arxiv.org/abs/1708.04552). A square of side ``size`` times the shorter image side, with a uniform
centre, clipped at the border, is set to 0 (the dataset mean after normalisation); labels are unchanged.

This package's metadata (``entry_points.txt``: group ``timm_camaug.modes``, ``cutout = cutout_mode:Cutout``)
makes it a ``--mix-mode`` of a patched train.py with flags ``--cutout-prob`` and ``--cutout-size``, and a mode
that ``create_mix_fn``, ``preview``, ``bench``, ``demo`` and the label-fidelity measure accept; nothing in
timm-camaug names it. It lives in the tests (the project's proof that a mode is one file) and is not shipped.
"""
from dataclasses import dataclass
from typing import Any, Dict, Sequence, Tuple

import torch

from timm_camaug.boxes import box_masks
from timm_camaug.devices import to_device
from timm_camaug.modes import MixMode, MixParams, MixRegions, Option
from timm_camaug.modes.options import fraction, is_finite_number, require


@dataclass
class CutoutParams(MixParams):
    boxes: torch.Tensor         # (N, 4) int64 [y0, y1, x0, x1], clipped to the image


class Cutout(MixMode):
    """Cutout (DeVries & Taylor, 2017).

    Args:
        size: side of the square as a fraction of the shorter image side (0.5: CIFAR's 16 of 32 px).

    Examples:
        >>> import torch
        >>> from cutout_mode import Cutout
        >>> cutout = Cutout(num_classes=3, size=0.25, generator=torch.Generator().manual_seed(0))
        >>> x, y = torch.ones(2, 3, 32, 32), torch.tensor([0, 2])
        >>> x_cut, target = cutout(x, y)
        >>> [int((x_cut[i, 0] == 0).sum()) <= 64 for i in range(2)]    # at most an 8 x 8 square each
        [True, True]
    """
    name = 'cutout'
    default_prob = 1.0
    prob_per = 'sample'
    mixes_pairs = False
    guidance_name = 'none'
    options = (Option('size', 0.5, 'side of the square as a fraction of the shorter image side', fraction),)

    def __init__(self, *, size: float = 0.5, **kwargs):
        self._validate(Cutout, size=size)
        super().__init__(**kwargs)
        self.size = float(size)

    @classmethod
    def _check_options(cls, o: Dict[str, Any]) -> None:
        require(is_finite_number(o['size']) and 0 < o['size'] <= 1, 'size',
                f"cutout: size must be in (0, 1], got {o['size']!r}")

    def _make_params(self, x: torch.Tensor, labels: torch.Tensor) -> CutoutParams:
        n, h, w = x.shape[0], x.shape[-2], x.shape[-1]
        active = self._gate(n)
        side = max(1, int(self.size * min(h, w)))
        cy = torch.randint(0, h, (n,), generator=self.generator)
        cx = torch.randint(0, w, (n,), generator=self.generator)
        boxes = torch.stack([(cy - side // 2).clamp(0, h), (cy + side - side // 2).clamp(0, h),
                             (cx - side // 2).clamp(0, w), (cx + side - side // 2).clamp(0, w)], 1)
        return CutoutParams(active, boxes)

    def _apply(self, x: torch.Tensor, soft: torch.Tensor, labels: torch.Tensor,
               params: CutoutParams) -> Tuple[torch.Tensor, torch.Tensor]:
        mask = box_masks(params.boxes, x.shape[-2:], x.device) & to_device(params.active, x.device)[:, None, None]
        return torch.where(mask[:, None], torch.zeros((), dtype=x.dtype, device=x.device), x), soft

    def regions(self, params: CutoutParams, hw: Sequence[int]) -> MixRegions:
        active, boxes = params.active.cpu(), params.boxes.cpu()
        return MixRegions(active, box_masks(boxes, hw) & active[:, None, None], target_boxes=boxes[:, None])
