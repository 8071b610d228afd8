""" ``create_mix_fn``: a mix mode from a name and options, or from train.py's ``args``. """
import argparse
from typing import Any, Callable, Dict, Optional, Sequence, Union

import torch
from torch import nn

from .modes import MIX_MODES, MixMode, get_mode_class
from .modes.base import CamGuidedMode

__all__ = ['create_mix_fn', 'mode_options_from_args', 'mode_options_from_strings', 'option_dest']


def option_dest(mode: str, option: str) -> str:
    """The ``args`` attribute of a mode's option, e.g. ('cam-erase', 't') -> 'cam_erase_t'."""
    return f"{mode.replace('-', '_')}_{option}"


def mode_options_from_args(args: argparse.Namespace, mode: str) -> Dict[str, Any]:
    """The keyword options of ``mode`` read from train.py's ``args`` (the flags ``add_args`` defines)."""
    cls = get_mode_class(mode)
    names = ['prob'] + [o.name for o in cls.options]
    return {n: getattr(args, option_dest(mode, n)) for n in names if hasattr(args, option_dest(mode, n))}


def mode_options_from_strings(mode: str, items: Sequence[str]) -> Dict[str, Any]:
    """``KEY=VALUE`` strings (command-line ``--set`` items) -> keyword options of ``mode``, typed as the mode's
    train.py flags are. ``KEY`` is the option's name without the mode prefix (``beta``, ``cam_layer``, or
    ``cam-layer``); ``prob`` is accepted too. Raises ValueError naming the item and what is wrong with it."""
    from .args import _flag_type      # the flags' own parsing (booleans included); args imports this module
    cls = get_mode_class(mode)
    options = {o.name: o for o in cls.options}
    out: Dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition('=')
        key = key.strip().replace('-', '_')
        if not sep:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE")
        if key == 'prob':
            try:
                out[key] = float(value)
            except ValueError:
                raise ValueError(f"--set prob={value}: expected a number") from None
            continue
        if key not in options:
            raise ValueError(f"--set {key}: {mode} has no such option; its options are "
                             f"{', '.join(['prob'] + sorted(options))}")
        opt = options[key]
        if value.lower() in ('none', 'null') and opt.default is None:
            out[key] = None
            continue
        try:
            out[key] = _flag_type(opt)(value)
        except (TypeError, ValueError, argparse.ArgumentTypeError) as e:
            raise ValueError(f"--set {key}={value}: {e}") from None
        if opt.choices is not None and out[key] not in opt.choices:
            raise ValueError(f"--set {key}={value}: choose one of {', '.join(map(str, opt.choices))}")
    return out


def create_mix_fn(
        args_or_mode: Union[str, argparse.Namespace],
        *,
        model: Optional[nn.Module] = None,
        num_classes: Optional[int] = None,
        prob: Optional[float] = None,
        label_smoothing: Optional[float] = None,
        data_config: Optional[Dict[str, Any]] = None,
        amp_autocast: Optional[Callable[[], Any]] = None,
        device: Optional[Union[str, torch.device]] = None,
        generator: Optional[torch.Generator] = None,
        **mode_options: Any,
) -> MixMode:
    """Build the mix function ``mix_fn(x, target) -> (x_mixed, soft_target)`` of one mode.

    Args:
        args_or_mode: a mode name (one of ``MIX_MODES``), or train.py's ``args``; then the mode is
            ``args.mix_mode``, and ``num_classes``, ``label_smoothing`` (``args.smoothing``), the mode's
            options (its ``--<mode>-*`` flags) and, for cam-erase, the warm-up (half of ``args.epochs``
            unless set) come from it. Keyword arguments given here override ``args``.
        model: the model under training (needed by snapmix, gutout and cam-erase).
        num_classes: number of classes of the soft targets.
        prob: probability of mixing; None: the mode's default.
        label_smoothing: baked into the soft targets (train.py's loss is then SoftTargetCrossEntropy).
            None: ``args.smoothing`` when built from ``args``, else 0.0; any value given (0.0 too) wins.
        data_config: timm's resolved data config; its mean/std de-normalise the batch (default ImageNet's).
        amp_autocast: train.py's ``amp_autocast``, used around CAM and extractor forwards.
        device: the training device (auxiliary models such as attentive's extractor are moved there).
        generator: a CPU ``torch.Generator`` for every random draw, for reproducible mixes. Draws are made
            on the CPU (as timm's ``Mixup`` makes them with numpy) and moved to the input's device, so a
            generator on another device (CUDA) is refused with an error; None uses torch's default generator.
        **mode_options: the mode's own options (see each mode's class).
    """
    options: Dict[str, Any] = {}
    if isinstance(args_or_mode, argparse.Namespace):
        args = args_or_mode
        mode = getattr(args, 'mix_mode', None)
        if mode in (None, '', 'none'):
            raise ValueError("args.mix_mode is not set: nothing to create (check timm_camaug.is_active(args))")
        options = mode_options_from_args(args, mode)
        if num_classes is None:
            num_classes = getattr(args, 'num_classes', None)
        if label_smoothing is None:
            label_smoothing = float(getattr(args, 'smoothing', 0.0) or 0.0)
        if mode == 'cam-erase' and options.get('warmup_epochs') is None:
            options['warmup_epochs'] = int(getattr(args, 'epochs', 0) or 0) // 2
    else:
        mode = args_or_mode
    if not isinstance(mode, str) or mode not in MIX_MODES:
        raise ValueError(f"unknown mix mode {mode!r}; choose one of {', '.join(MIX_MODES)}")
    cls = get_mode_class(mode)
    known = {'prob'} | {o.name for o in cls.options} | _init_only_options(cls)
    unknown = sorted(set(mode_options) - known)
    if unknown:
        raise TypeError(f"{mode}: unknown option(s) {', '.join(unknown)}; its options are {', '.join(sorted(known))}")
    options.update(mode_options)
    if prob is not None:
        options['prob'] = prob
    if num_classes is None and model is not None:
        num_classes = getattr(model, 'num_classes', None)
    if num_classes is None:
        raise ValueError(f"{mode}: num_classes is needed (pass num_classes=, or a model with .num_classes)")
    if label_smoothing is None:
        label_smoothing = 0.0
    kwargs: Dict[str, Any] = dict(num_classes=int(num_classes), label_smoothing=label_smoothing,
                                  data_config=data_config, amp_autocast=amp_autocast, device=device,
                                  generator=generator, **options)
    if issubclass(cls, CamGuidedMode) or 'model' in getattr(cls, 'python_options', ()):
        kwargs['model'] = model
    return cls(**kwargs)


def _init_only_options(cls) -> set:
    """Keyword options a mode takes in Python but not on the command line (modules, callables)."""
    return set(getattr(cls, 'python_options', ())) | ({'check_model'} if issubclass(cls, CamGuidedMode) else set())
