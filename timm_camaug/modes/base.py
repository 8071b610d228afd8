""" The base class of every mix mode, and what callers (train.py glue, preview, demo, bench, the fidelity
measure) may ask of a mode without knowing which one it is.

A mode is a callable ``mode(x, target) -> (x_mixed, soft_target)`` in two steps, as kornia splits its
augmentations: :meth:`MixMode.make_params` draws every random choice and does every piece of model work
(CAMs, features, saliency) into a dataclass; :meth:`MixMode.apply` is pure tensor code on those params,
so ``mode.apply(x, target, params)`` replays a mix exactly. Subclasses implement ``_make_params`` and
``_apply`` on checked inputs; a call checks the batch and its targets once.

Some modes complete their targets from the training forward on the mixed batch (TransMix): after that
forward, ``target = mode.finalize(target)``. Every mode has ``finalize``; for most it returns ``target``
as it is.

A new mode is one file: a subclass that sets the class attributes below, declares its options (each one
also a keyword of its ``__init__`` with the same default: checked when the class is defined), and
implements ``_make_params``, ``_apply`` and ``regions``; :func:`timm_camaug.register_mode` (or the
``timm_camaug.modes`` entry-point group) makes it a ``--mix-mode`` choice.
"""
import argparse
import inspect
import os
import sys
import warnings
from contextlib import suppress
from dataclasses import dataclass, fields
from typing import Any, Callable, ClassVar, Dict, List, Optional, Sequence, Tuple

import torch

from ..devices import assert_finite
from ..pixels import resolve_mean_std
from ..targets import prepare_targets
from .options import Option, OptionError, is_finite_number, require

__all__ = ['MixMode', 'MixParams', 'MixRegions', 'Option', 'OptionError']


@dataclass
class MixParams:
    """Base of every mode's params: which samples the mode changes."""
    active: torch.Tensor            # (N,) bool, on the CPU (where the draws are made)

    def to(self, device) -> 'MixParams':
        """The same params with every tensor moved to ``device``."""
        kw = {f.name: (getattr(self, f.name).to(device) if isinstance(getattr(self, f.name), torch.Tensor)
                       else getattr(self, f.name)) for f in fields(self)}
        return type(self)(**kw)


@dataclass
class MixRegions:
    """Where a call changed each image, from its params alone (CPU tensors): what preview draws and what the
    label-fidelity measure compares the label weights with."""
    active: torch.Tensor                    # (N,) bool: samples the call changed
    target: torch.Tensor                    # (N, H, W) bool: pixels of x[i] replaced (pasted over or erased)
    perm: Optional[torch.Tensor] = None     # (N,) int64 partner of each sample; None for erasing modes
    source: Optional[torch.Tensor] = None   # (N, H, W) bool: pixels of x[perm[i]] the mixed image shows
    target_boxes: Optional[torch.Tensor] = None   # (N, k, 4) [y0, y1, x0, x1] outlines of ``target`` (empty
    source_boxes: Optional[torch.Tensor] = None   # boxes pad); None: ``target`` is drawn as a mask
    blend: Optional[torch.Tensor] = None    # (N,) share of x[perm[i]] blended into every pixel (Mixup), 0: none


class MixMode:
    """Base class: gating by ``prob``, ``set_epoch``, ``mixup_enabled``, ``finalize``, targets and random draws.

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

    A call refuses labels outside ``[0, num_classes)`` and pixels that are NaN or infinite (one such pixel
    would change every sample's label weights through the batch statistics of a CAM forward): a ValueError
    on the CPU; on an accelerator the checks are queued on the device (no host-device sync) and a bad batch
    ends the run at the next synchronisation with a device-side assertion
    (:func:`timm_camaug.devices.assert_finite`).
    """
    # --- declared by each mode
    name: ClassVar[str] = ''
    default_prob: ClassVar[float] = 1.0
    prob_per: ClassVar[str] = 'batch'                  # 'batch' or 'sample'
    options: ClassVar[Tuple[Option, ...]] = ()         # train.py flags --<name>-<option>, YAML keys <name>_<option>
    python_options: ClassVar[Tuple[str, ...]] = ()     # keywords that take Python objects (modules), not flags

    # --- what callers ask of a mode
    mixes_pairs: ClassVar[bool] = True          # False: erases within each image and keeps its label
    weights_sum_to_one: ClassVar[bool] = True   # the two label weights of a mixed image add up to 1
    uses_model: ClassVar[bool] = False          # takes the model under training (create_mix_fn passes model=)
    guided_by_model: ClassVar[bool] = False     # follows the model under training's maps (--mix-cam-start-epoch)
    needs_hooks: ClassVar[bool] = False         # runs forward hooks on the model (--torchscript cannot)
    reads_training_forward: ClassVar[bool] = False  # finalize() reads the training forward (no torch.compile)
    auxiliary_network: ClassVar[Optional[Tuple[str, str]]] = None   # (option, checkpoint option) taking a
    #                                                 frozen pretrained network, e.g. ('extractor', 'extractor_checkpoint')
    small_input_options: ClassVar[Dict[str, Any]] = {}   # options for small images on a CPU (the demo)
    guidance_name: ClassVar[str] = 'guidance map'        # what preview calls the map the mode follows
    guidance_scale: ClassVar[str] = 'min-max'            # how preview colours it: 'min-max' or '0-1'

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
        self._validate(MixMode, prob=prob)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"{self.name}: num_classes must be a positive int, got "
                             f"{type(num_classes).__name__} {num_classes!r}")
        self.num_classes = num_classes
        self.prob = self.default_prob if prob is None else float(prob)
        if not is_finite_number(label_smoothing) or not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"{self.name}: label_smoothing must be a number in [0, 1), got "
                             f"{type(label_smoothing).__name__} {label_smoothing!r}")
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
        self._pending: Any = None
        self._warned_unfinalized = False       # the warning of an uncompleted batch, given once per instance

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        _check_declarations(cls)

    # --- options

    @classmethod
    def _check_options(cls, o: Dict[str, Any]) -> None:
        """Raise :class:`OptionError` for a bad value of an option this class defines (``o``: name -> value).

        Every class that adds options defines its own; :meth:`validate_options` runs all of a mode's.
        """
        prob = o['prob']
        require(prob is None or (is_finite_number(prob) and 0.0 <= prob <= 1.0), 'prob',
                f"{cls.name}: prob must be a number in [0, 1], got {_shown(prob)}")

    @classmethod
    def _check_level(cls, owner: type, values: Dict[str, Any]) -> None:
        """Run the option checks ``owner`` defines itself (not those it inherits), for this mode class."""
        check = vars(owner).get('_check_options')
        if check is not None:
            check.__func__(cls, values)

    def _validate(self, owner: type, **values: Any) -> None:
        """Check the option values ``owner`` (the class whose ``__init__`` calls this) receives: their types,
        then ``owner``'s own rules; a constructor runs this before using them."""
        declared = {o.name: o for o in type(self).options}
        for name, value in values.items():
            if name in declared:
                _check_type(type(self), declared[name], value)
        self._check_level(owner, values)

    @classmethod
    def validate_options(cls, **options: Any) -> None:
        """Check option values as the constructor does, without building the mode (no model, no extractor).

        Options not given take their defaults. Raises :class:`OptionError` (a ``ValueError`` whose ``option``
        names the option) for the first bad value, with the constructor's message.
        """
        values = {'prob': None, **{o.name: o.default for o in cls.options}, **options}
        for o in cls.options:
            _check_type(cls, o, values[o.name])
        for owner in reversed(cls.__mro__):
            cls._check_level(owner, values)

    @classmethod
    def train_defaults(cls, args: argparse.Namespace, options: Dict[str, Any]) -> Dict[str, Any]:
        """Option values that derive from train.py's other arguments, for options left at None in ``options``
        (e.g. CAM-erase's warm-up: half of ``args.epochs``)."""
        return {}

    @classmethod
    def train_args_problems(cls, args: argparse.Namespace, options: Dict[str, Any]) -> List[str]:
        """Reasons this mode cannot run with train.py's other flags in ``args`` (empty: none)."""
        problems = []
        flag = f'--mix-mode {cls.name}'
        if cls.needs_hooks and getattr(args, 'torchscript', False):
            problems.append(f"{flag} needs forward hooks on the model, which --torchscript models do not run")
        if cls.reads_training_forward and getattr(args, 'torchcompile', None):
            problems.append(f"{flag} reads the training forward through a hook, which a torch.compile'd model "
                            "does not run: drop --torchcompile")
        return problems

    def __repr__(self) -> str:
        opts = ''.join(f', {o.name}={getattr(self, o.name)!r}' for o in self.options if hasattr(self, o.name))
        return f'{type(self).__name__}(prob={self.prob}{opts})'

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    # --- the call, its two steps, and the completion after the training forward

    def __call__(self, x: torch.Tensor, target: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        self._drop_pending()
        soft, labels = self._check_batch(x, target)
        params = self._make_params(x, labels)
        return self._apply_and_wait(x, soft, labels, params)

    def make_params(self, x: torch.Tensor, target: torch.Tensor) -> MixParams:
        """Every random draw and every piece of model work of one call on ``(x, target)``."""
        _, labels = self._check_batch(x, target)
        return self._make_params(x, labels)

    def apply(self, x: torch.Tensor, target: torch.Tensor, params: MixParams) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(x_mixed, soft_target)`` from ``params`` (pure: the same params give the same result)."""
        self._drop_pending()
        soft, labels = self._check_batch(x, target)
        return self._apply_and_wait(x, soft, labels, params)

    def finalize(self, target: torch.Tensor) -> torch.Tensor:
        """The completed soft targets of the last mixed batch, after the training forward on it (detached).

        For modes whose labels are known before the forward this returns ``target`` unchanged. Call it once
        per call of the mode; a second call, or one before any mix, is an error.
        """
        if self._pending is None:
            raise RuntimeError(f"{self.name}: finalize() without a pending mix: call it once per batch, after "
                               "mix_fn(x, target) and the training forward on the mixed batch")
        pending, self._pending = self._pending, None
        try:
            return self._finalize(target, pending)
        finally:
            self._release(pending)

    def _apply_and_wait(self, x, soft, labels, params) -> Tuple[torch.Tensor, torch.Tensor]:
        x_mixed, soft = self._apply(x, soft, labels, params)
        self._pending = self._begin_pending(params, soft, labels)
        return x_mixed, soft

    def _drop_pending(self, warn: bool = True) -> None:
        """Release a batch still pending (the next call came, or :meth:`close`); ``warn``: say once per instance
        when ``finalize`` never completed it (:meth:`_left_at`)."""
        if self._pending is None:
            return
        pending, self._pending = self._pending, None
        try:
            left_at = self._left_at(pending) if warn and not self._warned_unfinalized else None
            if left_at is not None:
                self._warned_unfinalized = True
                warnings.warn(
                    f"{self.name}: the labels of a mixed batch were left at {left_at} because finalize(target) was "
                    "not called after the forward; in the loop: loss = loss_fn(model(x), mix_fn.finalize(target)) "
                    "(warned once)", UserWarning, stacklevel=_outside_package())
        finally:
            self._release(pending)

    def _make_params(self, x: torch.Tensor, labels: torch.Tensor) -> MixParams:
        raise NotImplementedError

    def _apply(self, x: torch.Tensor, soft: torch.Tensor, labels: torch.Tensor,
               params: MixParams) -> Tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _begin_pending(self, params: MixParams, soft: torch.Tensor, labels: torch.Tensor) -> Any:
        """What ``finalize`` needs of this call (modes that read the training forward register hooks here)."""
        return True

    def _finalize(self, target: torch.Tensor, pending: Any) -> torch.Tensor:
        return target

    def _release(self, pending: Any) -> None:
        """Free what ``_begin_pending`` took (hooks), whether or not ``finalize`` ran."""

    def _left_at(self, pending: Any) -> Optional[str]:
        """What the targets of ``pending`` stay if ``finalize`` never completes them, in words (e.g. "the box-area
        rule"); None when ``finalize`` would leave them as they are (nothing is lost: no warning)."""
        return None

    # --- what preview and the label-fidelity measure ask

    def describing(self, params: MixParams) -> Optional['MixMode']:
        """The mode whose maps and regions ``params`` hold: this one (a schedule: the member it drew; None:
        no member, the batch was not mixed)."""
        return self

    def guidance_maps(self, x: torch.Tensor, labels: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        """(N, h, w) maps the mode follows for the batch ``x`` (CAM, saliency, extractor cells); None for
        modes that follow none."""
        return None

    def image_guidance(self, params: MixParams) -> Optional[torch.Tensor]:
        """(N, h, w) float map of each unmixed image ``i`` as the call used it (NaN rows: no map for that
        image; None: no maps)."""
        maps = getattr(params, 'guidance', None)
        return None if maps is None else maps.float()

    def guidance_levels(self, params: MixParams) -> Optional[torch.Tensor]:
        """(N,) threshold of each image's guidance map, where the mode cuts at one (None: no threshold)."""
        return None

    def regions(self, params: MixParams, hw: Sequence[int]) -> MixRegions:
        """Where ``apply`` with ``params`` changes an (H, W) batch (see :class:`MixRegions`)."""
        raise NotImplementedError(f"{type(self).__name__} does not describe its regions")

    def row_notes(self, params: MixParams, labels: torch.Tensor) -> List[str]:
        """Per sample, a remark preview prints under the result (e.g. why its label weights are unusual)."""
        return [''] * int(params.active.shape[0])

    # --- helpers for subclasses

    def _check_batch(self, x: torch.Tensor, target: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(soft targets, labels) of a checked batch: labels in range and pixels finite, checked at once on the
        CPU and queued on an accelerator (a device-side assertion ends the run; no host sync)."""
        if not isinstance(x, torch.Tensor) or x.ndim != 4:
            raise ValueError(f"{self.name}: x must be an (N, C, H, W) tensor, got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        if not x.is_floating_point():
            raise ValueError(f"{self.name}: x must be a float tensor of normalised images, got {x.dtype}")
        assert_finite(x, f"{self.name}: x")
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


_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def _outside_package() -> int:
    """``stacklevel`` for the warning its caller raises: the first frame outside ``timm_camaug`` (the user's
    loop, however many of the package's calls lie between)."""
    level, frame = 1, sys._getframe(1)      # stacklevel 1: the function that calls this one and warns
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE_DIR):
        frame, level = frame.f_back, level + 1
    return level


def _shown(value: Any) -> str:
    """A value in a message, with its type where the type is the problem."""
    return repr(value) if is_finite_number(value) or value is None else f'{type(value).__name__} {value!r}'


def _check_type(cls, option: Option, value: Any) -> None:
    """An option's value has the kind its flag parses to (a number for numbers, an int for ints)."""
    if value is None or option.name in cls.python_options:
        return
    kind = option.type or (type(option.default) if option.default is not None else None)
    if kind is bool:
        ok, what = isinstance(value, bool), 'a bool'
    elif kind is int:
        ok, what = isinstance(value, int) and not isinstance(value, bool), 'an int'
    elif kind is float or (kind is not None and option.choices is None and isinstance(option.default, float)):
        ok, what = isinstance(value, (int, float)) and not isinstance(value, bool), 'a number'
    else:       # text options: each mode's own rules name the valid values
        return
    require(ok, option.name, f"{cls.name}: {option.name} must be {what}, got {_shown(value)}")


def _init_defaults(cls) -> Dict[str, Any]:
    """Keyword -> default of the ``__init__`` chain of ``cls`` (a subclass's own signature first)."""
    out: Dict[str, Any] = {}
    for klass in cls.__mro__:
        init = vars(klass).get('__init__')
        if init is None or klass is object:
            continue
        for p in inspect.signature(init).parameters.values():
            if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name != 'self':
                out.setdefault(p.name, p.default)
    return out


def _check_declarations(cls) -> None:
    """A mode class declares each option once: its ``Option`` default is its ``__init__`` default."""
    if cls.prob_per not in ('batch', 'sample'):
        raise TypeError(f"{cls.__name__}.prob_per must be 'batch' or 'sample', got {cls.prob_per!r}")
    defaults = _init_defaults(cls)
    for o in cls.options:
        if o.name not in defaults:
            raise TypeError(f"{cls.__name__}: option {o.name!r} is not a keyword of its __init__")
        if defaults[o.name] is inspect.Parameter.empty or defaults[o.name] != o.default:
            raise TypeError(f"{cls.__name__}: option {o.name!r} defaults to {o.default!r} in its Option but to "
                            f"{defaults[o.name]!r} in __init__; declare one default")
    for name in cls.python_options:
        if name not in defaults:
            raise TypeError(f"{cls.__name__}: python option {name!r} is not a keyword of its __init__")
