""" CAM-erase: Class-Activation-Map based Random Erasing

Paper: Oh & Lee, "Class-Activation-Map based Random Erasing", KMMS 2023 (abstract only). After a warm-up
of plain Random Erasing (Zhong et al., AAAI 2020, https://arxiv.org/abs/1708.04896), the erased box is
centred in the object's vicinity: the region where the Grad-CAM of the label is at least ``t``, the map made
as Grad-CAM makes it (pytorch-grad-cam's rule: ReLU at the layer's grid, bilinear resize, min-max to
[0, 1]). A sample whose CAM has no positive value has no vicinity and is erased as plain Random Erasing
does. Everything the abstract leaves open is an option here; labels are unchanged.

Box sizes follow Zhong et al.: area fraction U(0.02, 0.4) and aspect ratio U(0.3, 1/0.3), linear (timm's
``RandomErasing`` draws the aspect log-uniformly from (1/3, 3)). Instead of Zhong's retry loop, sides are
clamped to the image, so every draw is one batched step.
"""
import argparse
from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence, Tuple

import torch

from ..boxes import box_masks, sample_from_weights
from ..devices import to_device
from .base import MixParams, MixRegions
from .cam_guided import CamGuidedMode, normalise_min_max
from .options import Option, is_finite_number, require

__all__ = ['CamErase', 'CamEraseParams']

LOCATIONS = ('region', 'weighted', 'bbox', 'anywhere')
FILLS = ('pixel', 'zero', 'const')


@dataclass
class CamEraseParams(MixParams):
    """Erased boxes, the fill's noise seed, and the normalised CAM when it guided the boxes."""
    boxes: torch.Tensor             # (N, 4) int64 [y0, y1, x0, x1], fully inside the image (input's device)
    centres: torch.Tensor           # (N, 2) int64 (row, col) drawn for the box; the box is shifted to fit
    noise_seed: int                 # seed of the per-pixel normal fill (fill='pixel')
    guidance: Optional[torch.Tensor]    # (N, H, W) Grad-CAM-normalised CAM in [0, 1] (None during warm-up)


class CamErase(CamGuidedMode):
    """CAM-guided Random Erasing on the model under training.

    Args:
        warmup_epochs: epochs of plain Random Erasing before the CAM guides the box (None: 0 when built by
            name, half of ``args.epochs`` when built from train.py's args).
        t: the object's vicinity is {cam >= t} on the Grad-CAM-normalised map in [0, 1] (0.5).
        area: (min, max) erased area fraction (0.02, 0.4).
        aspect: (min, max) aspect ratio h/w, drawn uniformly (0.3, 3.33).
        location: box centre drawn uniformly from the region (``'region'``, default), proportionally to
            ``cam ** gamma`` within the region (``'weighted'``; ``t=0`` weighs the whole image), or the box
            placed inside the region's bounding box
            (``'bbox'``); ``'anywhere'`` is plain Random Erasing. An empty region falls back to anywhere.
        gamma: exponent of ``'weighted'`` (1.0).
        fill: ``'pixel'`` per-pixel N(0, 1) after normalisation (Random Erasing's random fill, timm's
            ``mode='pixel'``), ``'zero'`` (the dataset mean), or ``'const'`` (``fill_value``).
        (and the CAM options of :class:`~timm_camaug.modes.cam_guided.CamGuidedMode`)

    Examples:
        >>> import timm, torch
        >>> from timm_camaug import create_mix_fn
        >>> model = timm.create_model('test_resnet', num_classes=5)
        >>> mix_fn = create_mix_fn('cam-erase', model=model, num_classes=5, prob=1.0,
        ...                        generator=torch.Generator().manual_seed(0), data_config={'input_size': (3, 64, 64)})
        >>> x, y = torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 2, 3])
        >>> params = mix_fn.make_params(x, y)
        >>> boxes = params.boxes                      # one box per image, fully inside it
        >>> bool(((boxes[:, 1] <= 64) & (boxes[:, 3] <= 64) & (boxes >= 0).all(1)).all())
        True
        >>> x_erased, target = mix_fn.apply(x, y, params)
        >>> torch.equal(target, torch.eye(5)[y])      # labels unchanged
        True
    """
    name = 'cam-erase'
    default_prob = 0.5
    prob_per = 'sample'
    mixes_pairs = False
    guidance_name = 'Grad-CAM, 0-1'
    options = (
        Option('warmup_epochs', None, 'epochs of plain random erasing first (default: half of --epochs)', int),
        Option('t', 0.5, "object vicinity: min-max normalised CAM >= t"),
        Option('area_min', 0.02, 'smallest erased area fraction'),
        Option('area_max', 0.4, 'largest erased area fraction'),
        Option('aspect_min', 0.3, 'smallest aspect ratio h/w of the erased box (drawn uniformly up to aspect_max)'),
        Option('aspect_max', 1 / 0.3, 'largest aspect ratio h/w of the erased box'),
        Option('location', 'region', "box centre: uniform in the 'region', 'weighted' by cam**gamma in the region, "
                                     "inside the region's 'bbox', or 'anywhere'", str, LOCATIONS),
        Option('gamma', 1.0, "exponent of location='weighted'"),
        Option('fill', 'pixel', "erased pixels: 'pixel' normal noise, 'zero', or 'const' (fill_value)", str, FILLS),
        Option('fill_value', 0.0, "value of fill='const'"),
    ) + CamGuidedMode.cam_options

    def __init__(self, *, warmup_epochs: Optional[int] = None, t: float = 0.5, area_min: float = 0.02,
                 area_max: float = 0.4, aspect_min: float = 0.3, aspect_max: float = 1 / 0.3,
                 location: str = 'region', gamma: float = 1.0, fill: str = 'pixel', fill_value: float = 0.0,
                 **kwargs):
        self._validate(CamErase, warmup_epochs=warmup_epochs, t=t, area_min=area_min, area_max=area_max,
                       aspect_min=aspect_min, aspect_max=aspect_max, location=location, gamma=gamma, fill=fill,
                       fill_value=fill_value)
        warmup_epochs = 0 if warmup_epochs is None else int(warmup_epochs)
        self.warmup_epochs, self.t = warmup_epochs, float(t)
        self.area_min, self.area_max = float(area_min), float(area_max)
        self.aspect_min, self.aspect_max = float(aspect_min), float(aspect_max)
        self.location, self.gamma, self.fill, self.fill_value = location, float(gamma), fill, float(fill_value)
        super().__init__(**kwargs)

    @classmethod
    def _check_options(cls, o: Dict[str, Any]) -> None:
        w = o['warmup_epochs']
        require(w is None or (is_finite_number(w) and w >= 0), 'warmup_epochs',
                f"cam-erase: warmup_epochs must be >= 0, got {w!r}")
        require(is_finite_number(o['t']) and 0.0 <= o['t'] <= 1.0, 't', f"cam-erase: t must be in [0, 1], got {o['t']!r}")
        a0, a1 = o['area_min'], o['area_max']
        require(is_finite_number(a0) and is_finite_number(a1) and 0.0 < a0 <= a1 <= 1.0,
                'area_max' if not (is_finite_number(a1) and 0.0 < a1 <= 1.0) else 'area_min',
                f"cam-erase: need 0 < area_min <= area_max <= 1, got {a0}, {a1}")
        r0, r1 = o['aspect_min'], o['aspect_max']
        require(is_finite_number(r0) and is_finite_number(r1) and 0.0 < r0 <= r1,
                'aspect_max' if not (is_finite_number(r1) and r1 > 0.0) else 'aspect_min',
                f"cam-erase: need 0 < aspect_min <= aspect_max, got {r0}, {r1}")
        require(o['location'] in LOCATIONS, 'location',
                f"cam-erase: location must be one of {LOCATIONS}, got {o['location']!r}")
        require(is_finite_number(o['gamma']) and o['gamma'] >= 0, 'gamma',
                f"cam-erase: gamma must be >= 0, got {o['gamma']!r}")
        require(o['fill'] in FILLS, 'fill', f"cam-erase: fill must be one of {FILLS}, got {o['fill']!r}")
        require(is_finite_number(o['fill_value']), 'fill_value',
                f"cam-erase: fill_value must be a finite number, got {o['fill_value']!r}")

    @classmethod
    def train_defaults(cls, args: argparse.Namespace, options: Dict[str, Any]) -> Dict[str, Any]:
        """The warm-up, when not set: half of train.py's ``--epochs``."""
        if options.get('warmup_epochs') is None:
            return {'warmup_epochs': int(getattr(args, 'epochs', 0) or 0) // 2}
        return {}

    @property
    def cam_guided(self) -> bool:
        """Whether this epoch's boxes follow the CAM (warm-up over, location not 'anywhere')."""
        return self.epoch >= self.warmup_epochs and self.location != 'anywhere'

    def guidance_maps(self, x: torch.Tensor, labels: Optional[torch.Tensor]) -> torch.Tensor:
        """(N, H, W) CAMs of the labels as Grad-CAM shows them: ReLU at the layer's grid, bilinear resize,
        min-max to [0, 1] (a map with no positive value is all zero)."""
        return normalise_min_max(self._cam_maps(x, labels, relu=True))

    def _box_sizes(self, area_u: torch.Tensor, aspect_u: torch.Tensor, h: int, w: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Box sides from uniform draws of the area fraction and the aspect ratio."""
        area = (self.area_min + (self.area_max - self.area_min) * area_u) * h * w
        aspect = self.aspect_min + (self.aspect_max - self.aspect_min) * aspect_u
        bh = torch.sqrt(area * aspect).round().long().clamp(1, h)
        bw = torch.sqrt(area / aspect).round().long().clamp(1, w)
        return bh, bw

    def _weights(self, cam: torch.Tensor) -> torch.Tensor:
        region = cam >= self.t
        if self.location == 'weighted':
            return torch.where(region, cam.clamp_min(0) ** self.gamma, torch.zeros_like(cam))
        return region.float()

    def _make_params(self, x: torch.Tensor, labels: torch.Tensor) -> CamEraseParams:
        n, h, w = x.shape[0], x.shape[-2], x.shape[-1]
        active = self._gate(n)
        g = self.generator
        area_u = torch.rand(n, generator=g, dtype=torch.float64)
        aspect_u = torch.rand(n, generator=g, dtype=torch.float64)
        u = torch.rand(2, n, generator=g, dtype=torch.float64)
        noise_seed = int(torch.randint(0, 2 ** 62, (), generator=g))
        # the draws go to the input's device once; the boxes are computed there, next to the CAM
        draws = to_device(torch.cat([area_u[None], aspect_u[None], u]), x.device)
        bh, bw = self._box_sizes(draws[0], draws[1], h, w)
        u = draws[2:]
        cam = None
        # plain random erasing: a box fully inside the image, top-left corner uniform
        y0 = (u[0] * (h - bh + 1)).floor().long()
        x0 = (u[1] * (w - bw + 1)).floor().long()
        cy, cx = y0 + bh // 2, x0 + bw // 2
        if self.cam_guided and bool(active.any()):
            cam = self.guidance_maps(x, labels)
            weights = self._weights(cam)
            # no positive CAM value: no vicinity, plain random erasing (t = 0 would otherwise take it all)
            has_region = (weights.flatten(1).sum(1) > 0) & (cam.flatten(1).amax(1) > 0)
            if self.location == 'bbox':
                gy0, gy1, gx0, gx1 = _bbox_of(weights > 0)
                bh = torch.minimum(bh, (gy1 - gy0).clamp_min(1))
                bw = torch.minimum(bw, (gx1 - gx0).clamp_min(1))
                ry0 = gy0 + (u[0] * (gy1 - gy0 - bh + 1).clamp_min(1)).floor().long()
                rx0 = gx0 + (u[1] * (gx1 - gx0 - bw + 1).clamp_min(1)).floor().long()
                rcy, rcx = ry0 + bh // 2, rx0 + bw // 2
            else:
                rcy, rcx = sample_from_weights(weights, u)
                ry0 = torch.minimum((rcy - bh // 2).clamp(min=0), h - bh)
                rx0 = torch.minimum((rcx - bw // 2).clamp(min=0), w - bw)
            y0, x0 = torch.where(has_region, ry0, y0), torch.where(has_region, rx0, x0)
            cy, cx = torch.where(has_region, rcy, cy), torch.where(has_region, rcx, cx)
        boxes = torch.stack([y0, y0 + bh, x0, x0 + bw], dim=1)
        return CamEraseParams(active, boxes, torch.stack([cy, cx], 1), noise_seed, cam)

    def _apply(self, x: torch.Tensor, soft: torch.Tensor, labels: torch.Tensor,
               params: CamEraseParams) -> Tuple[torch.Tensor, torch.Tensor]:
        if not bool(params.active.any()):
            return x, soft
        mask = box_masks(params.boxes, x.shape[-2:], x.device) & to_device(params.active, x.device)[:, None, None]
        if self.fill == 'pixel':
            gen = torch.Generator(device=x.device).manual_seed(params.noise_seed)
            fill = torch.randn(x.shape, generator=gen, device=x.device, dtype=torch.float32).to(x.dtype)
        else:
            value = 0.0 if self.fill == 'zero' else self.fill_value
            fill = torch.full((), value, dtype=x.dtype, device=x.device)
        return torch.where(mask[:, None], fill, x), soft

    def regions(self, params: CamEraseParams, hw: Sequence[int]) -> MixRegions:
        """The erased boxes."""
        active, boxes = params.active.cpu(), params.boxes.cpu()
        return MixRegions(active, box_masks(boxes, hw) & active[:, None, None], target_boxes=boxes[:, None])


def _bbox_of(region: torch.Tensor) -> Tuple[torch.Tensor, ...]:
    """Bounding boxes (int64 y0, y1, x0, x1, on the regions' device) of (N, H, W) bool regions; empty regions
    give the image."""
    n, h, w = region.shape
    rows, cols = region.any(2), region.any(1)
    ar_h = torch.arange(h, device=region.device)
    ar_w = torch.arange(w, device=region.device)
    y0 = torch.where(rows, ar_h, h).amin(1)
    y1 = torch.where(rows, ar_h + 1, 0).amax(1)
    x0 = torch.where(cols, ar_w, w).amin(1)
    x1 = torch.where(cols, ar_w + 1, 0).amax(1)
    empty = ~rows.any(1)
    y0, x0 = torch.where(empty, 0, y0), torch.where(empty, 0, x0)
    y1, x1 = torch.where(empty, h, y1), torch.where(empty, w, x1)
    return tuple(t.long() for t in (y0, y1, x0, x1))
