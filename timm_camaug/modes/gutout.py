""" Gutout: Grad-CAM guided Cutout

Write-up and code: "Gutout: Grad-CAM Cutout" (Devpost, with released code). Instead of Cutout's random
square, every pixel whose normalised Grad-CAM exceeds a threshold is cut (set to 0 after normalisation,
the dataset mean): the regions the network relies on most, possibly several irregular blobs. Labels are
unchanged.
"""
from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
from torch import nn

from ..devices import to_device
from ..model_state import unwrap_model
from .base import MixParams, MixRegions
from .cam_guided import UPSAMPLING, CamGuidedMode, normalise_max
from .options import Option, is_finite_number, require

__all__ = ['Gutout', 'GutoutParams']

THRESHOLD_DRAWS = ('fixed', 'run', 'batch', 'sample')


@dataclass
class GutoutParams(MixParams):
    """Which samples are cut, their thresholds (CPU) and normalised CAMs (input's device)."""
    threshold: torch.Tensor             # (N,) float32
    guidance: Optional[torch.Tensor]    # (N, H, W) float32 CAM, each divided by its maximum (None: nothing cut)


class Gutout(CamGuidedMode):
    """Gutout on the model under training.

    Args:
        t: cut pixels whose normalised CAM exceeds this (0.6).
        t_draw: ``'fixed'`` uses ``t``; ``'run'`` draws one threshold from N(t_mean, t_std) for the whole run
            (the released code), ``'batch'`` / ``'sample'`` draw one per batch / per sample.
        t_mean, t_std: the normal distribution of drawn thresholds (0.9, 0.05).
        target: CAM class: ``'label'`` (ground truth, default) or ``'pred'`` (predicted, the released code).
        normalise: divide each map by its own maximum (``'sample'``, default) or all maps by the batch's
            maximum (``'batch'``, the released code's first version).
        fill: value written into cut pixels (0.0: the dataset mean after normalisation).
        upsample: how the CAM goes from the layer's grid to the image: ``'bilinear'`` (default: smooth blob
            outlines, as pytorch-grad-cam resizes) or ``'nearest'`` (the released code; its cut is made of whole
            grid cells, and about 8 % of the pixels differ at the default layer).
        cam_model: a separate model whose CAM guides the cut (ensemble diversity: each member trains on
            images cut with another member's CAM); Python-only. Default: the model under training.
        (and the CAM options of :class:`~timm_camaug.modes.cam_guided.CamGuidedMode`)

    Examples:
        >>> import timm, torch
        >>> from timm_camaug import create_mix_fn
        >>> model = timm.create_model('test_resnet', num_classes=5)
        >>> mix_fn = create_mix_fn('gutout', model=model, num_classes=5, data_config={'input_size': (3, 64, 64)})
        >>> x, y = torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 2, 3])
        >>> x_cut, target = mix_fn(x, y)
        >>> torch.equal(target, torch.eye(5)[y])        # labels unchanged
        True
        >>> params = mix_fn.make_params(x, y)
        >>> cut = mix_fn.regions(params, (64, 64)).target   # the pixels above t = 0.6 of each CAM's maximum
        >>> bool((x_cut[:, 0][cut] == 0).all())
        True
    """
    name = 'gutout'
    default_prob = 1.0
    prob_per = 'sample'
    mixes_pairs = False
    guidance_name = 'CAM / max'
    guidance_scale = '0-1'
    options = (
        Option('t', 0.6, 'cut pixels whose normalised CAM exceeds this threshold'),
        Option('t_draw', 'fixed', "threshold: 'fixed' (t), or drawn from N(t_mean, t_std) once per 'run', "
                                  "per 'batch' or per 'sample'", str, THRESHOLD_DRAWS),
        Option('t_mean', 0.9, 'mean of drawn thresholds'),
        Option('t_std', 0.05, 'standard deviation of drawn thresholds'),
        Option('target', 'label', "CAM class: ground-truth 'label' or predicted 'pred'", str, ('label', 'pred')),
        Option('normalise', 'sample', "divide maps by each one's own maximum ('sample') or the batch's ('batch')",
               str, ('sample', 'batch')),
        Option('fill', 0.0, 'value of cut pixels (after normalisation; 0 = dataset mean)'),
        Option('upsample', 'bilinear', "CAM grid to image: 'bilinear' or 'nearest' (the released code)", str,
               UPSAMPLING),
    ) + CamGuidedMode.cam_options
    python_options = CamGuidedMode.python_options + ('cam_model',)

    def __init__(self, *, model: nn.Module = None, t: float = 0.6, t_draw: str = 'fixed', t_mean: float = 0.9,
                 t_std: float = 0.05, target: str = 'label', normalise: str = 'sample', fill: float = 0.0,
                 upsample: str = 'bilinear', cam_model: Optional[nn.Module] = None, **kwargs):
        self._validate(Gutout, t=t, t_draw=t_draw, t_mean=t_mean, t_std=t_std, target=target,
                       normalise=normalise, fill=fill, upsample=upsample)
        self.t, self.t_draw, self.t_mean, self.t_std = float(t), t_draw, float(t_mean), float(t_std)
        self.target, self.normalise, self.fill, self.upsample = target, normalise, float(fill), upsample
        self._run_threshold: Optional[float] = None
        if cam_model is not None and not isinstance(cam_model, nn.Module):
            raise TypeError(f"gutout: cam_model must be an nn.Module, got {type(cam_model).__name__}")
        super().__init__(model=unwrap_model(cam_model) if cam_model is not None else model, **kwargs)

    @classmethod
    def _check_options(cls, o: Dict[str, Any]) -> None:
        require(o['t_draw'] in THRESHOLD_DRAWS, 't_draw',
                f"gutout: t_draw must be one of {THRESHOLD_DRAWS}, got {o['t_draw']!r}")
        require(o['t_draw'] != 'fixed' or (is_finite_number(o['t']) and 0.0 <= o['t'] < 1.0), 't',
                f"gutout: t must be in [0, 1), got {o['t']!r}")
        require(is_finite_number(o['t_mean']), 't_mean', f"gutout: t_mean must be a finite number, got {o['t_mean']!r}")
        require(is_finite_number(o['t_std']) and o['t_std'] >= 0, 't_std',
                f"gutout: t_std must be >= 0, got {o['t_std']!r}")
        require(o['target'] in ('label', 'pred'), 'target',
                f"gutout: target must be 'label' or 'pred', got {o['target']!r}")
        require(o['normalise'] in ('sample', 'batch'), 'normalise',
                f"gutout: normalise must be 'sample' or 'batch', got {o['normalise']!r}")
        require(is_finite_number(o['fill']), 'fill', f"gutout: fill must be a finite number, got {o['fill']!r}")
        require(o['upsample'] in UPSAMPLING, 'upsample',
                f"gutout: upsample must be one of {UPSAMPLING}, got {o['upsample']!r}")

    def guidance_maps(self, x: torch.Tensor, labels: Optional[torch.Tensor]) -> torch.Tensor:
        """(N, H, W) CAMs normalised by their maximum (per sample or per batch)."""
        cam = self._cam_maps(x, labels if self.target == 'label' else None, upsample=self.upsample)
        if self.normalise == 'batch':
            peak = cam.amax()
            return torch.where(peak > 0, cam / peak.clamp_min(1e-12), torch.zeros_like(cam))
        return normalise_max(cam)

    def _thresholds(self, n: int) -> torch.Tensor:
        if self.t_draw == 'fixed':
            return torch.full((n,), self.t)
        if self.t_draw == 'run':
            if self._run_threshold is None:
                self._run_threshold = float(self.t_mean + self.t_std * torch.randn((), generator=self.generator))
            return torch.full((n,), self._run_threshold)
        k = 1 if self.t_draw == 'batch' else n
        return (self.t_mean + self.t_std * torch.randn(k, generator=self.generator)).float().expand(n).clone()

    def _make_params(self, x: torch.Tensor, labels: torch.Tensor) -> GutoutParams:
        n = x.shape[0]
        active = self._gate(n)
        threshold = self._thresholds(n).float()
        cam = self.guidance_maps(x, labels) if bool(active.any()) else None
        return GutoutParams(active, threshold, cam)

    def cut_masks(self, params: GutoutParams) -> torch.Tensor:
        """(N, H, W) bool: the pixels ``apply`` cuts (on the maps' device)."""
        dev = params.guidance.device
        return (params.guidance > to_device(params.threshold, dev)[:, None, None]) \
            & to_device(params.active, dev)[:, None, None]

    def _apply(self, x: torch.Tensor, soft: torch.Tensor, labels: torch.Tensor,
               params: GutoutParams) -> Tuple[torch.Tensor, torch.Tensor]:
        if params.guidance is None or not bool(params.active.any()):
            return x, soft
        cut = self.cut_masks(params)[:, None]
        return torch.where(cut, torch.full((), self.fill, dtype=x.dtype, device=x.device), x), soft

    def guidance_levels(self, params: GutoutParams) -> torch.Tensor:
        return params.threshold

    def regions(self, params: GutoutParams, hw: Sequence[int]) -> MixRegions:
        """The cut pixels (an irregular region: no boxes)."""
        active = params.active.cpu()
        if params.guidance is None:
            return MixRegions(active & False, torch.zeros((active.shape[0],) + tuple(hw), dtype=torch.bool))
        return MixRegions(active, self.cut_masks(params).cpu())
