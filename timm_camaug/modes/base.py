""" What every mix mode shares: options, probability gating, targets, and the CAM of the model under training.

A mode is a callable ``mode(x, target) -> (x_mixed, soft_target)`` in two steps, as kornia splits its
augmentations: :meth:`MixMode.make_params` draws every random choice and does every piece of model work
(CAMs, features, saliency) into a dataclass; :meth:`MixMode.apply` is pure tensor code on those params,
so ``mode.apply(x, target, params)`` replays a mix exactly.
"""
from contextlib import nullcontext, suppress
from dataclasses import dataclass, fields
from typing import Any, Callable, ClassVar, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..cam import CAM_METHODS, FEATURES, layer_maps, pool_linear_classifier, resolve_target_layer, upsample_maps
from ..model_state import BN_MODES, unwrap_model
from ..pixels import resolve_mean_std
from ..targets import prepare_targets, smooth_one_hot

__all__ = ['Option', 'MixMode', 'CamGuidedMode', 'MixParams']


@dataclass(frozen=True)
class Option:
    """One keyword option of a mode, and its train.py flag ``--<mode>-<name>``."""
    name: str
    default: Any
    help: str
    type: Optional[Callable[[str], Any]] = None   # parser type; None: the default's type
    choices: Optional[Tuple[Any, ...]] = None

    def parse_type(self) -> Callable[[str], Any]:
        if self.type is not None:
            return self.type
        if self.default is None or isinstance(self.default, bool):
            raise TypeError(f"option {self.name!r} needs an explicit type")
        return type(self.default)


@dataclass
class MixParams:
    """Base of every mode's params: which samples the mode changes."""
    active: torch.Tensor            # (N,) bool, on the input's device

    def to(self, device) -> 'MixParams':
        """The same params with every tensor moved to ``device``."""
        kw = {f.name: (getattr(self, f.name).to(device) if isinstance(getattr(self, f.name), torch.Tensor)
                       else getattr(self, f.name)) for f in fields(self)}
        return type(self)(**kw)


class MixMode:
    """Base class: gating by ``prob``, ``set_epoch``, ``mixup_enabled``, targets and random draws.

    Args:
        num_classes: number of classes of the soft targets.
        prob: probability of mixing (per batch or per sample, see ``prob_per``); None: the mode's default.
        label_smoothing: smoothing baked into the soft targets, as timm's ``mixup_target`` does.
        generator: ``torch.Generator`` for every random draw (None: torch's default generator, which
            train.py seeds per rank).
        data_config: timm data config; its mean/std de-normalise the batch where pixel values are needed.
        amp_autocast: context manager factory for model forwards (train.py's ``amp_autocast``).
        device: where auxiliary models live (the input's device is used for everything else).
    """
    name: ClassVar[str] = ''
    default_prob: ClassVar[float] = 1.0
    prob_per: ClassVar[str] = 'batch'          # 'batch' or 'sample'
    options: ClassVar[Tuple[Option, ...]] = ()

    def __init__(
            self,
            *,
            num_classes: int,
            prob: Optional[float] = None,
            label_smoothing: float = 0.0,
            generator: Optional[torch.Generator] = None,
            data_config: Optional[Dict[str, Any]] = None,
            amp_autocast: Optional[Callable[[], Any]] = None,
            device: Optional[torch.device] = None,
    ):
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"{self.name}: num_classes must be a positive int, got {num_classes!r}")
        self.num_classes = num_classes
        self.prob = self.default_prob if prob is None else float(prob)
        if not 0.0 <= self.prob <= 1.0:
            raise ValueError(f"{self.name}: prob must be in [0, 1], got {prob}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"{self.name}: label_smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = float(label_smoothing)
        self.generator = generator
        self.data_config = data_config
        self.mean, self.std = resolve_mean_std(data_config)
        self.amp_autocast = amp_autocast or suppress
        self.device = torch.device(device) if device is not None else None
        self.mixup_enabled = True
        self.epoch = 0

    def __repr__(self) -> str:
        opts = ', '.join(f'{o.name}={getattr(self, o.name)!r}' for o in self.options if hasattr(self, o.name))
        return f'{type(self).__name__}(prob={self.prob}, {opts})'

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __call__(self, x: torch.Tensor, target: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.apply(x, target, self.make_params(x, target))

    def make_params(self, x: torch.Tensor, target: torch.Tensor) -> MixParams:
        raise NotImplementedError

    def apply(self, x: torch.Tensor, target: torch.Tensor, params: MixParams) -> Tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    # --- helpers for subclasses

    def _check_batch(self, x: torch.Tensor, target: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(x, torch.Tensor) or x.ndim != 4:
            raise ValueError(f"{self.name}: x must be an (N, C, H, W) tensor, got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        if not x.is_floating_point():
            raise ValueError(f"{self.name}: x must be a float tensor of normalised images, got {x.dtype}")
        return prepare_targets(target, self.num_classes, self.label_smoothing, x.shape[0], x.device)

    def _gate(self, n: int) -> torch.Tensor:
        """(N,) bool on the CPU: which samples this call changes (per batch: all or none)."""
        if not self.mixup_enabled or self.prob <= 0.0:
            return torch.zeros(n, dtype=torch.bool)
        if self.prob_per == 'batch':
            on = bool(torch.rand((), generator=self.generator) < self.prob)
            return torch.full((n,), on, dtype=torch.bool)
        return torch.rand(n, generator=self.generator) < self.prob

    def _randperm(self, n: int) -> torch.Tensor:
        return torch.randperm(n, generator=self.generator)

    def _unmixed(self, x: torch.Tensor, target: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        soft, _ = prepare_targets(target, self.num_classes, self.label_smoothing, x.shape[0], x.device)
        return x, soft


def _positive_float(s: str) -> float:
    v = float(s)
    if not 0.0 < v <= 1.0:
        raise ValueError(f"expected a value in (0, 1], got {s}")
    return v


def _optional_str(s: str) -> Optional[str]:
    return None if s.lower() in ('', 'none', 'null') else s


class CamGuidedMode(MixMode):
    """A mode guided by the CAM of the model under training (SnapMix, Gutout, CAM-erase).

    Extra args:
        model: the model under training (DDP / compiled wrappers are unwrapped).
        cam_method: a method of :data:`timm_camaug.cam.CAM_METHODS`.
        cam_layer: target layer name (None: the CAM engine's default, the final feature map for CNNs).
        cam_bn: BatchNorm statistics of the CAM forward, ``'eval'`` or ``'batch'`` (running statistics are
            never updated).
        cam_scale: compute the CAM on the batch resized by this factor (1.0: full size), for speed.
        check_model: run one CAM of a single blank image at construction, so that a model the mode cannot
            use fails at start-up rather than at the first step.
    """
    cam_options: ClassVar[Tuple[Option, ...]] = (
        Option('cam_method', 'auto', 'CAM method of the model under training', str, CAM_METHODS),
        Option('cam_layer', None, "CAM target layer, a module name such as 'layer3' (default: final feature map)",
               _optional_str),
        Option('cam_bn', 'eval', "BatchNorm statistics of the CAM forward: 'eval' (running) or 'batch' "
                                  "(the batch's own); running statistics are never updated", str, BN_MODES),
        Option('cam_scale', 1.0, 'compute the CAM on the batch resized by this factor (speed; 1.0 = full size)',
               _positive_float),
    )

    def __init__(self, *, model: nn.Module, cam_method: str = 'auto', cam_layer: Optional[str] = None,
                 cam_bn: str = 'eval', cam_scale: float = 1.0, check_model: bool = True, **kwargs):
        super().__init__(**kwargs)
        if model is None:
            raise ValueError(f"{self.name} needs the model under training: create_mix_fn({self.name!r}, model=model, ...)")
        if cam_method not in self._cam_methods():
            raise ValueError(f"{self.name}: unknown cam_method {cam_method!r}; choose one of {', '.join(self._cam_methods())}")
        if cam_bn not in BN_MODES:
            raise ValueError(f"{self.name}: cam_bn must be one of {BN_MODES}, got {cam_bn!r}")
        if not 0.0 < float(cam_scale) <= 1.0:
            raise ValueError(f"{self.name}: cam_scale must be in (0, 1], got {cam_scale}")
        self.model = unwrap_model(model)
        self.cam_method = cam_method
        self.cam_layer = cam_layer
        self.cam_bn = cam_bn
        self.cam_scale = float(cam_scale)
        resolve_target_layer(self.model, cam_layer)   # unknown layer names fail here, with close names
        if check_model:
            self._check_model()

    def _cam_methods(self) -> Tuple[str, ...]:
        return CAM_METHODS

    def _check_model(self) -> None:
        size = tuple((self.data_config or {}).get('input_size') or (3, 224, 224))
        p = next(self.model.parameters(), None)
        dev = p.device if p is not None else (self.device or torch.device('cpu'))
        dtype = p.dtype if p is not None and p.is_floating_point() else torch.float32
        # two blank images: BatchNorm in batch-statistics mode needs more than one value per channel
        x = torch.zeros((2,) + size, device=dev, dtype=dtype)
        self.guidance_maps(x, torch.zeros(2, dtype=torch.long, device=dev))

    def guidance_maps(self, x: torch.Tensor, labels: Optional[torch.Tensor]) -> torch.Tensor:
        """(N, H, W) maps the mode is guided by (raw CAM here; modes refine it)."""
        return self._cam_maps(x, labels)

    def _cam_maps(self, x: torch.Tensor, labels: Optional[torch.Tensor], **kw) -> torch.Tensor:
        """(N, H, W) raw CAM of the model under training for ``labels`` (None: predicted class)."""
        return self._cam_layer_maps(x, labels, **kw)[0]

    def _cam_layer_maps(self, x: torch.Tensor, labels: Optional[torch.Tensor], method: Optional[str] = None,
                        **kw) -> Tuple[torch.Tensor, torch.Tensor]:
        xs = x
        if self.cam_scale < 1.0:
            size = [max(1, round(s * self.cam_scale)) for s in x.shape[-2:]]
            xs = F.interpolate(x, size=size, mode='bilinear', align_corners=False, antialias=True)
        with self.amp_autocast():
            lm = layer_maps(self.model, xs, labels, method=method or self.cam_method,
                            target_layer=self.cam_layer, bn=self.cam_bn, **kw)
        return upsample_maps(lm.maps, x.shape[-2:]), lm.target

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
