""" What the modes guided by the CAM of the model under training share (SnapMix, Gutout, CAM-erase). """
import argparse
from typing import Any, ClassVar, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..cam import CAM_METHODS, FEATURES, layer_maps, pool_linear_classifier, resolve_target_layer, upsample_maps
from ..model_state import BN_MODES, unwrap_model
from .base import MixMode
from .options import Option, fraction, is_finite_number, optional_str, require

__all__ = ['CamGuidedMode', 'normalise_max', 'normalise_min_max', 'UPSAMPLING']

UPSAMPLING = ('bilinear', 'nearest')


class CamGuidedMode(MixMode):
    """A mode guided by the CAM of the model under training.

    Extra args:
        model: the model under training (DDP / compiled wrappers are unwrapped).
        cam_method: a method of :data:`timm_camaug.cam.CAM_METHODS`.
        cam_layer: target layer name (None: the CAM engine's default, the final feature map for CNNs).
        cam_bn: BatchNorm statistics of the CAM forward, ``'eval'`` or ``'batch'`` (running statistics are
            never updated).
        cam_scale: compute the CAM on the batch resized by this factor (1.0: full size), for speed.
        check_model: run one CAM of two blank images at construction (at the data config's input size, else
            the model's own), so that a model the mode cannot use fails at start-up rather than at the first step.
    """
    uses_model = True
    guided_by_model = True
    needs_hooks = True
    python_options = ('check_model',)
    cam_options: ClassVar[Tuple[Option, ...]] = (
        Option('cam_method', 'auto', 'CAM method of the model under training', str, CAM_METHODS),
        Option('cam_layer', None, "CAM target layer, a module name such as 'layer3' (default: final feature map)",
               optional_str),
        Option('cam_bn', 'eval', "BatchNorm statistics of the CAM forward: 'eval' (running) or 'batch' "
                                  "(the batch's own); running statistics are never updated", str, BN_MODES),
        Option('cam_scale', 1.0, 'compute the CAM on the batch resized by this factor (speed; 1.0 = full size)',
               fraction),
    )

    def __init__(self, *, model: nn.Module = None, cam_method: str = 'auto', cam_layer: Optional[str] = None,
                 cam_bn: str = 'eval', cam_scale: float = 1.0, check_model: bool = True, **kwargs):
        super().__init__(**kwargs)
        if model is None:
            raise ValueError(f"{self.name} needs the model under training: create_mix_fn({self.name!r}, model=model, ...)")
        if not isinstance(model, nn.Module):
            raise TypeError(f"{self.name}: model must be an nn.Module, got {type(model).__name__}")
        self._validate(CamGuidedMode, cam_method=cam_method, cam_bn=cam_bn, cam_scale=cam_scale)
        self.model = unwrap_model(model)
        self.cam_method = cam_method
        self.cam_layer = cam_layer
        self.cam_bn = cam_bn
        self.cam_scale = float(cam_scale)
        model_classes = getattr(self.model, 'num_classes', None)
        if isinstance(model_classes, int) and 0 < model_classes < self.num_classes:
            raise ValueError(f"{self.name}: the model has {model_classes} classes, fewer than num_classes="
                             f"{self.num_classes}: labels >= {model_classes} have no class score to take a CAM of")
        # labels are range-checked once per call against num_classes; the CAM engine need not check them again
        self._cam_checks_target = not isinstance(model_classes, int)
        resolve_target_layer(self.model, cam_layer)   # unknown layer names fail here, with close names
        if check_model:
            self._check_model()

    @classmethod
    def _check_options(cls, o: Dict[str, Any]) -> None:
        methods = cls._cam_methods()
        require(o['cam_method'] in methods, 'cam_method',
                f"{cls.name}: unknown cam_method {o['cam_method']!r}; choose one of {', '.join(methods)}")
        require(o['cam_bn'] in BN_MODES, 'cam_bn', f"{cls.name}: cam_bn must be one of {BN_MODES}, got {o['cam_bn']!r}")
        scale = o['cam_scale']
        require(is_finite_number(scale) and 0.0 < scale <= 1.0, 'cam_scale',
                f"{cls.name}: cam_scale must be in (0, 1], got {scale!r}")

    @classmethod
    def train_args_problems(cls, args: argparse.Namespace, options: Dict[str, Any]) -> List[str]:
        problems = super().train_args_problems(args, options)
        if getattr(args, 'sync_bn', False) and options.get('cam_bn') == 'batch':
            problems.append(f"--mix-mode {cls.name} with --{cls.name}-cam-bn batch runs SyncBatchNorm (--sync-bn) in "
                            "its CAM forward, a collective that hangs when the ranks' random draws differ; add "
                            f"--{cls.name}-cam-bn eval")
        return problems

    @classmethod
    def _cam_methods(cls) -> Tuple[str, ...]:
        return CAM_METHODS

    def probe_input_size(self) -> Tuple[int, ...]:
        """(C, H, W) of the start-up probe: the data config's input size, else the model's own (its patch
        embedding's ``img_size``, else its pretrained config's), else 224 px."""
        size = (self.data_config or {}).get('input_size')
        if size:
            return tuple(int(s) for s in size)
        cfg = getattr(self.model, 'pretrained_cfg', None) or {}
        chans = int((cfg.get('input_size') or (3,))[0])
        img = getattr(getattr(self.model, 'patch_embed', None), 'img_size', None)
        if img is not None:
            img = tuple(img) if isinstance(img, (tuple, list)) else (img, img)
            return (chans,) + tuple(int(s) for s in img)
        if cfg.get('input_size'):
            return tuple(int(s) for s in cfg['input_size'])
        return chans, 224, 224

    def _check_model(self) -> None:
        size = self.probe_input_size()
        p = next(self.model.parameters(), None)
        dev = p.device if p is not None else (self.device or torch.device('cpu'))
        dtype = p.dtype if p is not None and p.is_floating_point() else torch.float32
        # two blank images: BatchNorm in batch-statistics mode needs more than one value per channel
        x = torch.zeros((2,) + size, device=dev, dtype=dtype)
        try:
            self.guidance_maps(x, torch.zeros(2, dtype=torch.long, device=dev))
        except AssertionError as e:     # timm's patch embeddings assert their input size
            raise ValueError(
                f"{self.name}: {type(self.model).__name__} cannot take {size[-2]}x{size[-1]} inputs ({e}); build the "
                f"model for the training size (timm.create_model(..., img_size=...); train.py: --model-kwargs "
                f"img_size=<size>) or pass data_config with that input_size") from None

    def guidance_maps(self, x: torch.Tensor, labels: Optional[torch.Tensor]) -> torch.Tensor:
        """(N, H, W) maps the mode is guided by (raw CAM here; modes refine it)."""
        return self._cam_maps(x, labels)

    def _cam_maps(self, x: torch.Tensor, labels: Optional[torch.Tensor], *, method: Optional[str] = None,
                  relu: bool = False, upsample: str = 'bilinear', **kw) -> torch.Tensor:
        """(N, H, W) CAM of the model under training for ``labels`` (None: predicted class), upsampled from the
        layer's grid (``relu``: ReLU at the grid first, as Grad-CAM does before resizing)."""
        xs = x
        if self.cam_scale < 1.0:
            size = [max(1, round(s * self.cam_scale)) for s in x.shape[-2:]]
            # antialiased resizing has no bf16/fp16 kernel on some backends: resize in float32
            with torch.autocast(x.device.type, enabled=False):
                xs = F.interpolate(x.float(), size=size, mode='bilinear', align_corners=False,
                                   antialias=True).to(x.dtype)
        with self.amp_autocast():
            lm = layer_maps(self.model, xs, labels, method=method or self.cam_method, target_layer=self.cam_layer,
                            bn=self.cam_bn, check_target=self._cam_checks_target, **kw)
        maps = lm.maps.clamp_min(0) if relu else lm.maps
        return upsample_maps(maps, x.shape[-2:], upsample)

    def _has_closed_form(self) -> bool:
        return self.cam_layer in (None, FEATURES) and pool_linear_classifier(self.model) is not None


def normalise_max(maps: torch.Tensor) -> torch.Tensor:
    """Each map divided by its own maximum (maps with max <= 0 become all zero)."""
    peak = maps.flatten(1).amax(1)
    return torch.where(peak[:, None, None] > 0, maps / peak.clamp_min(1e-12)[:, None, None], torch.zeros_like(maps))


def normalise_min_max(maps: torch.Tensor) -> torch.Tensor:
    """Each map shifted and scaled to [0, 1] (constant maps become all zero)."""
    flat = maps.flatten(1)
    lo, hi = flat.amin(1)[:, None, None], flat.amax(1)[:, None, None]
    span = hi - lo
    return torch.where(span > 0, (maps - lo) / span.clamp_min(1e-12), torch.zeros_like(maps))
