""" What the modes guided by the CAM of the model under training share (SnapMix, Gutout, CAM-erase). """
import argparse
import logging
from typing import Any, ClassVar, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..cam import (CAM_METHODS, FEATURES, CamMethodError, TargetLayerError, layer_maps, pool_linear_classifier,
                   resolve_target_layer, upsample_maps)
from ..devices import DeviceCount
from ..model_state import BN_MODES, unwrap_model
from .base import MixMode
from .options import Option, OptionError, fraction, is_finite_number, optional_str, require

__all__ = ['CamGuidedMode', 'DegenerateMaps', 'normalise_max', 'normalise_min_max', 'UPSAMPLING',
           'probe_input_size', 'model_img_size', 'input_size_error']

_logger = logging.getLogger(__name__)

UPSAMPLING = ('bilinear', 'nearest')
_BN_SINGLE_VALUE = 'Expected more than 1 value per channel when training'


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
        self._degenerate = DegenerateMaps()
        self._probing = False
        try:    # unknown layer names fail here, with close names
            self.cam_layer_name = resolve_target_layer(self.model, cam_layer).name
        except TargetLayerError as e:
            raise self._layer_error(e) from None
        if self.cam_method == 'cam' and not self._has_closed_form():
            raise self._method_error()
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
        """(C, H, W) of the start-up probe (:func:`probe_input_size`)."""
        return probe_input_size(self.model, self.data_config)

    def _check_model(self) -> None:
        """One CAM of two seeded noise images at the probe size: a model, layer or method the mode cannot use
        fails here, and a guidance map that is constant for both images is reported once (see
        :class:`DegenerateMaps`)."""
        size = self.probe_input_size()
        p = next(self.model.parameters(), None)
        dev = p.device if p is not None else (self.device or torch.device('cpu'))
        dtype = p.dtype if p is not None and p.is_floating_point() else torch.float32
        conv = _first_conv(self.model)
        # two images, as BatchNorm in batch-statistics mode needs more than one value per channel; noise from a
        # generator of its own (the global random state is not touched), so that a map that is constant for
        # both images says something about the model, not about a blank input
        x = torch.randn((2,) + size, generator=torch.Generator().manual_seed(0)).to(device=dev, dtype=dtype)
        self._probing = True
        try:
            self.guidance_maps(x, torch.zeros(2, dtype=torch.long, device=dev))
        except AssertionError as e:     # timm's patch embeddings assert their input size
            raise input_size_error(self.name, self.model, size, e) from None
        except ValueError as e:
            if isinstance(e, OptionError) or conv is None or size[0] == conv[1].in_channels:
                raise
            raise ValueError(
                f"{self.name}: the input size {tuple(size)} (data_config's input_size, else the model's own) has "
                f"{size[0]} channel(s), but {type(self.model).__name__}'s first convolution ({conv[0]!r}) takes "
                f"{conv[1].in_channels}; pass data_config with the model's channel count (train.py: --in-chans)") from None
        finally:
            self._probing = False
        self._report_degenerate(startup=True)

    def set_epoch(self, epoch: int) -> None:
        self._report_degenerate()     # the epoch that ended; on an accelerator the count is read here, once
        super().set_epoch(epoch)

    # --- errors in the words of the options

    def _option_error(self, option: str, problem: str, fix: str) -> OptionError:
        return OptionError(option, f"{self.name}: {option}={getattr(self, option)!r}: {problem}; {fix}")

    def _flag(self, option: str) -> str:
        return f"--{self.name}-{option.replace('_', '-')}"

    def _layer_error(self, e: Exception) -> OptionError:
        if self.cam_layer is None:
            fix = (f"name the model's last spatial layer with cam_layer=NAME (train.py: {self._flag('cam_layer')} "
                   "NAME)")
        else:
            fix = (f"name a module with a spatial (N, C, h, w) or patch-token output (train.py: "
                   f"{self._flag('cam_layer')} NAME), or leave cam_layer unset for the model's final feature map")
        return self._option_error('cam_layer', str(e), fix)

    def _method_error(self) -> OptionError:
        if self.cam_layer in (None, FEATURES):
            problem = (f"the closed-form CAM needs a global-average-pool + linear head after the final feature map, "
                       f"and {type(self.model).__name__}'s head is not one")
        else:
            problem = f"the closed-form CAM exists only at the final feature map, not at cam_layer={self.cam_layer!r}"
        return self._option_error(
            'cam_method', problem,
            f"use cam_method='auto' (the same map where the head allows it, Grad-CAM otherwise) or 'gradcam' "
            f"(train.py: {self._flag('cam_method')} auto)")

    def _input_error(self, x: torch.Tensor, e: Exception) -> Optional[Exception]:
        """A clear error for a CAM forward that failed on ``x`` because of the batch, or None."""
        text = str(e)
        if isinstance(e, ValueError) and text.startswith(_BN_SINGLE_VALUE) and self.cam_bn == 'batch':
            got = text[len(_BN_SINGLE_VALUE):].strip(' ,')
            return self._option_error(
                'cam_bn', f"BatchNorm cannot take batch statistics of a batch of {x.shape[0]} at "
                          f"{x.shape[-2]}x{x.shape[-1]} px, where a feature map has one value per channel ({got})",
                f"use cam_bn='eval' (train.py: {self._flag('cam_bn')} eval), or batches of 2 or more images")
        if not isinstance(e, RuntimeError):
            return None
        p = next((q for q in self.model.parameters() if q.is_floating_point()), None)
        if p is not None and x.device != p.device:
            return ValueError(f"{self.name}: x is on {x.device} but the model is on {p.device}; move the model to the "
                              f"batch's device (model.to({str(x.device)!r})) before building the mode, or the batch "
                              "to the model's")
        conv = _first_conv(self.model)
        if conv is not None and x.shape[1] != conv[1].in_channels:
            return ValueError(
                f"{self.name}: x has {x.shape[1]} channel(s), but {type(self.model).__name__}'s first convolution "
                f"({conv[0]!r}) takes {conv[1].in_channels}; give the model {conv[1].in_channels}-channel images "
                f"(e.g. grayscale repeated to RGB) or build it for {x.shape[1]} (timm.create_model(..., "
                f"in_chans={x.shape[1]}); train.py: --in-chans {x.shape[1]})")
        if p is not None and x.dtype != p.dtype:
            xd, pd = str(x.dtype).replace('torch.', ''), str(p.dtype).replace('torch.', '')
            if x.dtype == torch.float64:
                fix = f"cast the batch (x.to(torch.{pd})) or the model to one dtype (autocast leaves float64 as it is)"
            else:
                fix = (f"run the mode under autocast (amp_autocast=...; train.py does with --amp), or cast the batch "
                       f"(x.to(torch.{pd})) or the model to one dtype")
            return ValueError(f"{self.name}: x is {xd} but the model's parameters are {pd}; {fix}")
        return None

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
        try:
            with self.amp_autocast():
                lm = layer_maps(self.model, xs, labels, method=method or self.cam_method,
                                target_layer=self.cam_layer, bn=self.cam_bn, check_target=self._cam_checks_target,
                                **kw)
        except TargetLayerError as e:
            raise self._layer_error(e) from None
        except CamMethodError:
            raise self._method_error() from None
        except (RuntimeError, ValueError) as e:
            clear = self._input_error(xs, e)
            if clear is None:
                raise
            raise clear from None
        if not self._degenerate.reported:
            self._degenerate.add(lm.maps, tuple(xs.shape[-2:]))
            if self._degenerate.on_host and not self._probing:
                self._report_degenerate()
        maps = lm.maps.clamp_min(0) if relu else lm.maps
        return upsample_maps(maps, x.shape[-2:], upsample)

    def _report_degenerate(self, startup: bool = False) -> None:
        """Warn once when most guidance maps counted since the last report were constant."""
        constant, seen = self._degenerate.take()
        if not seen or constant * 2 < seen or self._degenerate.reported:
            return
        self._degenerate.reported = True
        model = type(self.model).__name__
        grid = self._degenerate.grid
        if grid == (1, 1):
            _logger.warning(
                f"{self.name}: the CAM of {model} at layer {self.cam_layer_name!r} is a 1x1 grid at "
                f"{'x'.join(map(str, self._degenerate.input_hw))} px, one value per image, so it guides nothing: the "
                f"mode mixes as if it had no map; train on larger images, or name an earlier layer with a finer "
                f"grid (cam_layer=NAME; train.py: {self._flag('cam_layer')} NAME)")
            return
        if startup:
            what = f"for both noise images of the start-up probe at {'x'.join(map(str, self.probe_input_size()[1:]))} px"
        else:
            what = f"for {constant} of the last {seen} images (epoch {self.epoch})"
        clf = self.model.get_classifier() if hasattr(self.model, 'get_classifier') else None
        if isinstance(clf, nn.Linear) and not bool(clf.weight.detach().any()):
            advice = (f"its classifier is all zeros (timm initialises this model's head so), so the maps appear "
                      f"only once the head has trained; start from pretrained weights (train.py: --pretrained), or "
                      f"use cam_method='eigencam' (train.py: {self._flag('cam_method')} eigencam), which needs no "
                      "classifier")
        else:
            default = resolve_target_layer(self.model, None).name
            other = (f"; the default layer is {default!r} (leave cam_layer unset)"
                     if self.cam_layer not in (None, default) else '')
            advice = (f"try another layer (cam_layer=NAME; train.py: {self._flag('cam_layer')} NAME{other}), or "
                      f"cam_method='eigencam' (train.py: {self._flag('cam_method')} eigencam)")
        _logger.warning(
            f"{self.name}: the CAM of {model} at layer {self.cam_layer_name!r} (cam_method={self.cam_method!r}) is "
            f"constant {what}: a constant map guides nothing (the mode then mixes as if it had no map); {advice}")

    def _has_closed_form(self) -> bool:
        return self.cam_layer in (None, FEATURES) and pool_linear_classifier(self.model) is not None


def probe_input_size(model: nn.Module, data_config: Optional[Dict[str, Any]] = None) -> Tuple[int, ...]:
    """(C, H, W) of a start-up probe: the data config's input size, else the model's own (its patch embedding's
    ``img_size``, ViT's ``patch_embed`` or MLP-Mixer's ``stem``, else its pretrained config's), else 224 px."""
    size = (data_config or {}).get('input_size')
    if size:
        return tuple(int(s) for s in size)
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    chans = int((cfg.get('input_size') or (3,))[0])
    img = model_img_size(model)
    if img is not None:
        return (chans,) + img
    if cfg.get('input_size'):
        return tuple(int(s) for s in cfg['input_size'])
    return chans, 224, 224


def model_img_size(model: nn.Module) -> Optional[Tuple[int, int]]:
    """(H, W) a model was built for, where its patch embedding fixes one (ViT's ``patch_embed``, MLP-Mixer's
    ``stem``); None for models that take any size."""
    img = next((getattr(m, 'img_size', None) for m in model.modules()
                if getattr(m, 'img_size', None) is not None and hasattr(m, 'patch_size')), None)
    if img is None:
        return None
    img = tuple(img) if isinstance(img, (tuple, list)) else (img, img)
    return int(img[0]), int(img[1])


def input_size_error(mode: str, model: nn.Module, size: Tuple[int, ...], e: Exception) -> ValueError:
    """What a mode says when its start-up probe at ``size`` fails because the model was built for another size
    (timm's patch embeddings assert their input size)."""
    return ValueError(f"{mode}: {type(model).__name__} cannot take {size[-2]}x{size[-1]} inputs ({e}); build the model "
                      f"for the training size (timm.create_model(..., img_size=...); train.py: --model-kwargs "
                      f"img_size=<size>) or pass data_config with that input_size")


def _first_conv(model: nn.Module) -> Optional[Tuple[str, nn.Conv2d]]:
    """(name, module) of the model's first 2-D convolution (its stem or patch embedding), or None."""
    return next(((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)


class DegenerateMaps(DeviceCount):
    """Counts guidance maps that are constant (all zero, or one value everywhere) without a host-device sync
    (:class:`~timm_camaug.devices.DeviceCount`: callers take the count at the start of an epoch on an
    accelerator, after every call on the CPU). A constant map guides nothing: SnapMix's label weights fall back to
    area ratios, Gutout cuts nothing.
    """

    def __init__(self):
        super().__init__()
        self.grid: Tuple[int, ...] = ()          # the (h, w) of the maps last counted, and of their input
        self.input_hw: Tuple[int, ...] = ()

    def add(self, maps: torch.Tensor, input_hw: Tuple[int, ...] = ()) -> None:
        self.grid, self.input_hw = tuple(maps.shape[-2:]), tuple(input_hw)
        flat = maps.detach().flatten(1).float()
        span = flat.amax(1) - flat.amin(1)
        super().add((~(span > 1e-6 * flat.abs().amax(1))).sum(), flat.shape[0])     # NaN spans count as constant


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
