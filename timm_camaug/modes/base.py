""" What every mix mode shares: options, probability gating, targets, and the CAM of the model under training.

A mode is a callable ``mode(x, target) -> (x_mixed, soft_target)`` in two steps, as kornia splits its
augmentations: :meth:`MixMode.make_params` draws every random choice and does every piece of model work
(CAMs, features, saliency) into a dataclass; :meth:`MixMode.apply` is pure tensor code on those params,
so ``mode.apply(x, target, params)`` replays a mix exactly. Subclasses implement ``_make_params`` and
``_apply`` on checked inputs; a call checks the batch and its targets once.

Option values are checked by one function per class (``_check_options``), which the constructor runs and
:meth:`MixMode.validate_options` runs without building anything (train.py's start-up check).
"""
import argparse
import math
import numbers
from contextlib import suppress
from dataclasses import dataclass, fields
from typing import Any, Callable, ClassVar, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..cam import CAM_METHODS, FEATURES, layer_maps, pool_linear_classifier, resolve_target_layer, upsample_maps
from ..model_state import BN_MODES, unwrap_model
from ..pixels import resolve_mean_std
from ..targets import prepare_targets

__all__ = ['Option', 'OptionError', 'MixMode', 'CamGuidedMode', 'MixParams']


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


class OptionError(ValueError):
    """A bad value of one option of a mode; ``option`` is its name (train.py's flag is ``--<mode>-<option>``)."""

    def __init__(self, option: str, message: str):
        super().__init__(message)
        self.option = option


def _require(ok: bool, option: str, message: str) -> None:
    if not ok:
        raise OptionError(option, message)


def is_finite_number(v: Any) -> bool:
    """A real, finite number (not a bool, NaN or infinity)."""
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


@dataclass
class MixParams:
    """Base of every mode's params: which samples the mode changes."""
    active: torch.Tensor            # (N,) bool, on the CPU (where the draws are made)

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
        generator: a CPU ``torch.Generator`` for every random draw (None: torch's default generator, which
            train.py seeds per rank). Draws are made on the CPU, as timm's ``Mixup`` makes them with numpy,
            and the results moved to the input's device; a generator on another device is refused.
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
        self._check_level(MixMode, {'prob': prob})
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"{self.name}: num_classes must be a positive int, got {num_classes!r}")
        self.num_classes = num_classes
        self.prob = self.default_prob if prob is None else float(prob)
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"{self.name}: label_smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = float(label_smoothing)
        if generator is not None:
            if not isinstance(generator, torch.Generator):
                raise TypeError(f"{self.name}: generator must be a torch.Generator, got {type(generator).__name__}")
            if generator.device.type != 'cpu':
                raise ValueError(
                    f"{self.name}: generator must be a CPU torch.Generator (random draws are made on the CPU "
                    f"and moved to the input's device), got one on {generator.device}")
        self.generator = generator
        self.data_config = data_config
        self.mean, self.std = resolve_mean_std(data_config)
        self.amp_autocast = amp_autocast or suppress
        self.device = torch.device(device) if device is not None else None
        self.mixup_enabled = True
        self.epoch = 0

    @classmethod
    def _check_options(cls, o: Dict[str, Any]) -> None:
        """Raise :class:`OptionError` for a bad value of an option this class defines (``o``: name -> value).

        Every class that adds options defines its own; :meth:`validate_options` runs all of a mode's.
        """
        prob = o['prob']
        _require(prob is None or (is_finite_number(prob) and 0.0 <= prob <= 1.0), 'prob',
                 f"{cls.name}: prob must be in [0, 1], got {prob}")

    @classmethod
    def _check_level(cls, owner: type, values: Dict[str, Any]) -> None:
        """Run the option checks ``owner`` defines itself (not those it inherits), for this mode class."""
        check = vars(owner).get('_check_options')
        if check is not None:
            check.__func__(cls, values)

    @classmethod
    def validate_options(cls, **options: Any) -> None:
        """Check option values as the constructor does, without building the mode (no model, no extractor).

        Options not given take their defaults. Raises :class:`OptionError` (a ``ValueError`` whose ``option``
        names the option) for the first bad value, with the constructor's message.
        """
        values = {'prob': None, **{o.name: o.default for o in cls.options}, **options}
        for owner in reversed(cls.__mro__):
            cls._check_level(owner, values)

    def __repr__(self) -> str:
        opts = ', '.join(f'{o.name}={getattr(self, o.name)!r}' for o in self.options if hasattr(self, o.name))
        return f'{type(self).__name__}(prob={self.prob}, {opts})'

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __call__(self, x: torch.Tensor, target: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        soft, labels = self._check_batch(x, target)
        return self._apply(x, soft, labels, self._make_params(x, labels))

    def make_params(self, x: torch.Tensor, target: torch.Tensor) -> MixParams:
        """Every random draw and every piece of model work of one call on ``(x, target)``."""
        _, labels = self._check_batch(x, target)
        return self._make_params(x, labels)

    def apply(self, x: torch.Tensor, target: torch.Tensor, params: MixParams) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(x_mixed, soft_target)`` from ``params`` (pure: the same params give the same result)."""
        soft, labels = self._check_batch(x, target)
        return self._apply(x, soft, labels, params)

    def _make_params(self, x: torch.Tensor, labels: torch.Tensor) -> MixParams:
        raise NotImplementedError

    def _apply(self, x: torch.Tensor, soft: torch.Tensor, labels: torch.Tensor,
               params: MixParams) -> Tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    # --- helpers for subclasses

    def _check_batch(self, x: torch.Tensor, target: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(soft targets, labels) of a checked batch (labels range-checked at once on the CPU, queued on a device)."""
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


def _positive_float(s: str) -> float:
    """argparse type of a fraction in (0, 1]; argparse prefixes the message with the flag."""
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {s!r}") from None
    if not 0.0 < v <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {s!r}")
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
        self._check_level(CamGuidedMode, dict(cam_method=cam_method, cam_bn=cam_bn, cam_scale=cam_scale))
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
        _require(o['cam_method'] in methods, 'cam_method',
                 f"{cls.name}: unknown cam_method {o['cam_method']!r}; choose one of {', '.join(methods)}")
        _require(o['cam_bn'] in BN_MODES, 'cam_bn', f"{cls.name}: cam_bn must be one of {BN_MODES}, got {o['cam_bn']!r}")
        scale = o['cam_scale']
        _require(is_finite_number(scale) and 0.0 < scale <= 1.0, 'cam_scale',
                 f"{cls.name}: cam_scale must be in (0, 1], got {scale}")

    @classmethod
    def _cam_methods(cls) -> Tuple[str, ...]:
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
            # antialiased resizing has no bf16/fp16 kernel on some backends: resize in float32
            with torch.autocast(x.device.type, enabled=False):
                xs = F.interpolate(x.float(), size=size, mode='bilinear', align_corners=False,
                                   antialias=True).to(x.dtype)
        with self.amp_autocast():
            lm = layer_maps(self.model, xs, labels, method=method or self.cam_method, target_layer=self.cam_layer,
                            bn=self.cam_bn, check_target=self._cam_checks_target, **kw)
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
