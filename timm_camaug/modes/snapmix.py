""" SnapMix: Semantically Proportional Mixing

Paper: SnapMix: Semantically Proportional Mixing for Augmenting Fine-grained Data, Huang et al., AAAI 2021
(https://arxiv.org/abs/2012.04846). Reference code: https://github.com/Shaoli-Huang/SnapMix

A box of ``x[perm]`` is resized into a box of ``x``; each label is weighted by the share of its image's
semantic percent map (the normalised CAM of the image's own class) that the mixed image shows.
"""
import logging
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from ..boxes import box_area, box_masks, paste_resized, rand_bbox, region_sum, sample_beta
from ..cam import CAM_METHODS, FEATURES
from ..devices import to_device
from ..targets import mix_soft_targets
from .base import MixParams, MixRegions
from .cam_guided import CamGuidedMode
from .options import Option, is_finite_number, require

__all__ = ['SnapMix', 'SnapMixParams', 'semantic_percent_map_normalise', 'snapmix_label_weights']

_logger = logging.getLogger(__name__)

SPM = 'spm'


@dataclass
class SnapMixParams(MixParams):
    """Random draws (CPU) and the semantic percent maps (input's device) of one SnapMix call."""
    perm: torch.Tensor              # (N,) int64: sample i receives a box of sample perm[i]
    lam_t: torch.Tensor             # (N,) float64 Beta draws of the target boxes
    lam_s: torch.Tensor             # (N,) float64 Beta draws of the source boxes
    box_t: torch.Tensor             # (N, 4) target box in x[i]       [y0, y1, x0, x1]
    box_s: torch.Tensor             # (N, 4) source box in x[perm[i]]
    guidance: Optional[torch.Tensor]    # (N, H, W) float32 semantic percent maps of the unmixed images (sum 1)


SPM_FLOORS = ('min', 'zero')


def semantic_percent_map_normalise(maps: torch.Tensor, floor: str = 'min') -> torch.Tensor:
    """Each map made non-negative and divided by its sum.

    ``floor='min'`` subtracts the map's minimum (the reference); ``'zero'`` keeps only its positive part
    (ReLU), so negative evidence weighs nothing instead of lifting the whole image. A map with nothing
    left (constant, or no positive value) gives NaN, which the label weights turn into area ratios.
    """
    if floor == 'min':
        kept = maps - maps.flatten(1).amin(1)[:, None, None]
    elif floor == 'zero':
        kept = maps.clamp_min(0)
    else:
        raise ValueError(f"spm_floor must be one of {SPM_FLOORS}, got {floor!r}")
    return kept / kept.sum(dim=(1, 2), keepdim=True)


def snapmix_label_weights(spm: torch.Tensor, labels: torch.Tensor, perm: torch.Tensor, box_t: torch.Tensor,
                          box_s: torch.Tensor, valid: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Label weights (w_a, w_b) of SnapMix, step 5 of the method, batched."""
    h, w = spm.shape[-2:]
    dev = spm.device
    box_t, box_s, perm, valid = (to_device(t, dev) for t in (box_t, box_s, perm, valid))
    w_a = 1.0 - region_sum(spm, box_t)
    w_b = region_sum(spm[perm], box_s)
    same = labels == labels[perm]
    both = w_a + w_b
    w_a, w_b = torch.where(same, both, w_a), torch.where(same, both, w_b)
    area = box_area(box_t).float() / float(h * w)
    w_a = torch.where(torch.isnan(w_a), 1.0 - area, w_a)
    w_b = torch.where(torch.isnan(w_b), area, w_b)
    return torch.where(valid, w_a, torch.ones_like(w_a)), torch.where(valid, w_b, torch.zeros_like(w_b))


class SnapMix(CamGuidedMode):
    """SnapMix (Huang et al., AAAI 2021) on the model under training.

    Args:
        beta: Beta(beta, beta) of the two box draws (5.0, the authors' value for fine-grained data).
        boxes: ``'batch'`` shares one target/source box pair across the batch (the reference);
            ``'sample'`` draws a pair per sample.
        cam_method: ``'spm'`` (default) is the reference's semantic percent map: the final feature map times
            the label's classifier row plus its bias (closed form, no backward). The reference ReLUs the
            features first; a ResNet's features come out of a ReLU, so that changes nothing there, and for
            models whose features can be negative (Swin, ViT, EfficientNet...) it would no longer be the map
            behind the logit, so it is not applied. Models whose head is not global-average-pool + linear
            fall back to Grad-CAM (``'auto'``), with a warning. Any other CAM method of the engine may be named.
        cam_bn: ``'batch'`` (default) normalises the CAM forward with the batch's statistics, as the
            reference's train-mode forward and the training forward that follows do, so the map describes
            the network the loss is computed on; running statistics are not updated (the reference updates
            them twice per step). ``'eval'`` uses the running statistics.
        cam_layer: a finer target layer (e.g. ``'layer3'``) for label weights from a higher-resolution map
            (Grad-CAM at that layer); off by default.
        spm_floor: ``'min'`` (default, the reference) shifts each CAM by its minimum before dividing by its
            sum; ``'zero'`` keeps only its positive part. With a finer ``cam_layer`` this gives the most
            faithful label weights of the label-fidelity benchmark (see BENCHMARKS.md).
        (and the options of :class:`~timm_camaug.modes.cam_guided.CamGuidedMode` / :class:`MixMode`)

    Examples:
        >>> import timm, torch
        >>> from timm_camaug import create_mix_fn
        >>> model = timm.create_model('test_resnet', num_classes=5)
        >>> mix_fn = create_mix_fn('snapmix', model=model, num_classes=5, generator=torch.Generator().manual_seed(0),
        ...                        data_config={'input_size': (3, 64, 64)})
        >>> x, y = torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 2, 3])
        >>> x_mixed, target = mix_fn(x, y)
        >>> x_mixed.shape, target.shape
        (torch.Size([4, 3, 64, 64]), torch.Size([4, 5]))
        >>> params = mix_fn.make_params(x, y)          # every draw and the CAMs ...
        >>> torch.equal(mix_fn.apply(x, y, params)[1], mix_fn.apply(x, y, params)[1])   # ... replay exactly
        True
    """
    name = 'snapmix'
    default_prob = 1.0
    prob_per = 'batch'
    weights_sum_to_one = False
    guidance_name = 'semantic percent map'
    options = (
        Option('beta', 5.0, 'Beta(beta, beta) of the target and source box draws'),
        Option('boxes', 'batch', "one box pair per 'batch' (reference) or per 'sample'", str, ('batch', 'sample')),
        Option('cam_method', SPM, "'spm' (reference semantic percent map) or a CAM method", str, (SPM,) + CAM_METHODS),
        Option('spm_floor', 'min', "make the CAM non-negative by subtracting its 'min' (reference) or by keeping "
                                   "values above 'zero' (finer label weights)", str, SPM_FLOORS),
    ) + tuple(o for o in CamGuidedMode.cam_options if o.name not in ('cam_method', 'cam_bn')) + (
        Option('cam_bn', 'batch', "BatchNorm statistics of the CAM forward: 'batch' (reference numerics) or "
                                   "'eval'; running statistics are never updated", str, ('eval', 'batch')),
    )

    def __init__(self, *, beta: float = 5.0, boxes: str = 'batch', cam_method: str = SPM, cam_bn: str = 'batch',
                 spm_floor: str = 'min', **kwargs):
        self._validate(SnapMix, beta=beta, boxes=boxes, spm_floor=spm_floor)
        self.beta = float(beta)
        self.boxes = boxes
        self.spm_floor = spm_floor
        super().__init__(cam_method=cam_method, cam_bn=cam_bn, **kwargs)
        if self.cam_method == SPM and not self._has_closed_form():
            if self.cam_layer in (None, FEATURES):
                _logger.warning("snapmix: %s has no global-average-pool + linear head at the final feature map; "
                                "the semantic percent map falls back to Grad-CAM", type(self.model).__name__)
            else:   # asked for: a finer layer has no closed form
                _logger.info("snapmix: cam_layer=%r: the semantic percent map is Grad-CAM at that layer",
                             self.cam_layer)

    @classmethod
    def _check_options(cls, o: Dict[str, Any]) -> None:
        require(is_finite_number(o['beta']) and o['beta'] > 0, 'beta', f"snapmix: beta must be > 0, got {o['beta']!r}")
        require(o['boxes'] in ('batch', 'sample'), 'boxes',
                f"snapmix: boxes must be 'batch' or 'sample', got {o['boxes']!r}")
        require(o['spm_floor'] in SPM_FLOORS, 'spm_floor',
                f"snapmix: spm_floor must be one of {SPM_FLOORS}, got {o['spm_floor']!r}")

    @classmethod
    def train_args_problems(cls, args, options) -> List[str]:
        problems = super().train_args_problems(args, options)
        if getattr(args, 'bce_loss', False) and getattr(args, 'bce_target_thresh', None) is None:
            problems.append(
                "--mix-mode snapmix with --bce-loss: SnapMix's soft targets can exceed 1 (when both images of a pair "
                "have the same label, each weight becomes w_a + w_b, as the authors do, so one class can get up to "
                "4), which is not a valid binary cross-entropy target; add --bce-target-thresh (e.g. 0.2) to "
                "binarise the targets, or drop --bce-loss (SoftTargetCrossEntropy)")
        return problems

    @classmethod
    def _cam_methods(cls) -> Tuple[str, ...]:
        return (SPM,) + CAM_METHODS

    def guidance_maps(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(N, H, W) semantic percent maps of ``x`` for ``labels`` (each sums to 1)."""
        if self.cam_method == SPM and self._has_closed_form():
            maps = self._cam_maps(x, labels, method='cam', class_bias=True)
        else:
            maps = self._cam_maps(x, labels, method='auto' if self.cam_method == SPM else self.cam_method)
        return semantic_percent_map_normalise(maps, self.spm_floor)

    def _make_params(self, x: torch.Tensor, labels: torch.Tensor) -> SnapMixParams:
        n, hw = x.shape[0], x.shape[-2:]
        active = self._gate(n)
        if not bool(active.any()):
            ones = torch.ones(n, dtype=torch.float64)
            return SnapMixParams(active, torch.arange(n), ones, ones, torch.zeros(n, 4, dtype=torch.long),
                                 torch.zeros(n, 4, dtype=torch.long), None)
        k = 1 if self.boxes == 'batch' else n
        lam_t = sample_beta(self.beta, k, self.generator)
        lam_s = sample_beta(self.beta, k, self.generator)
        perm = self._randperm(n)
        box_t = rand_bbox(hw, lam_t, self.generator).expand(n, 4)
        box_s = rand_bbox(hw, lam_s, self.generator).expand(n, 4)
        spm = self.guidance_maps(x, labels)
        return SnapMixParams(active, perm, lam_t.expand(n), lam_s.expand(n), box_t, box_s, spm)

    @staticmethod
    def _valid(params: SnapMixParams) -> torch.Tensor:
        return params.active & (box_area(params.box_t) > 0) & (box_area(params.box_s) > 0)

    def _apply(self, x: torch.Tensor, soft: torch.Tensor, labels: torch.Tensor,
               params: SnapMixParams) -> Tuple[torch.Tensor, torch.Tensor]:
        valid = self._valid(params)
        if not bool(valid.any()):
            return x, soft
        perm = to_device(params.perm, x.device)
        x_mixed = paste_resized(x, x[perm], params.box_s, params.box_t, valid)
        w_a, w_b = snapmix_label_weights(params.guidance, labels, perm, params.box_t, params.box_s, valid)
        return x_mixed, mix_soft_targets(soft, perm, w_a, w_b)

    def regions(self, params: SnapMixParams, hw: Sequence[int]) -> MixRegions:
        """The target box of ``x[i]`` and the source box of ``x[perm[i]]`` (resized into the target box)."""
        valid = self._valid(params).cpu()
        box_t, box_s = params.box_t.cpu(), params.box_s.cpu()
        return MixRegions(valid, box_masks(box_t, hw) & valid[:, None, None], params.perm.cpu(),
                          box_masks(box_s, hw) & valid[:, None, None], box_t[:, None], box_s[:, None])

    def row_notes(self, params: SnapMixParams, labels: torch.Tensor) -> List[str]:
        """Pairs of one label: both weights became w_a + w_b (the reference's rule), so the single label's
        weight is their sum (up to 4). Pairs whose maps were empty (area weights, which add up to 1) are not."""
        n = int(params.active.shape[0])
        if params.guidance is None:
            return [''] * n
        valid, perm, labels = self._valid(params).cpu(), params.perm.cpu(), labels.cpu()
        has_map = ~torch.isnan(params.guidance.detach().float().cpu()).flatten(1).any(1)
        same = valid & has_map & has_map[perm] & (labels == labels[perm])
        return ['(same label: weights summed,\nas the reference)' if s else '' for s in same.tolist()]
