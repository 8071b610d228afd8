""" ``create_mix_fn``: a mix mode from a name and options, or from train.py's ``args``. """
import argparse
import numbers
from typing import Any, Callable, Dict, Optional, Sequence, Union

import torch
from torch import nn

from .modes import MixMode, get_mode_class, mix_modes
from .modes.options import option_dest

__all__ = ['create_mix_fn', 'mode_options_from_args', 'mode_options_from_strings', 'option_dest']


def mode_options_from_args(args: argparse.Namespace, mode: str) -> Dict[str, Any]:
    """The keyword options of ``mode`` read from train.py's ``args`` (the flags ``add_args`` defines)."""
    cls = get_mode_class(mode)
    names = ['prob'] + [o.name for o in cls.options]
    return {n: getattr(args, option_dest(mode, n)) for n in names if hasattr(args, option_dest(mode, n))}


def mode_options_from_strings(mode: str, items: Sequence[str]) -> Dict[str, Any]:
    """``KEY=VALUE`` strings (command-line ``--set`` items) -> keyword options of ``mode``, typed as the mode's
    train.py flags are. ``KEY`` is the option's name without the mode prefix (``beta``, ``cam_layer``, or
    ``cam-layer``); ``prob`` is accepted too. Raises ValueError naming the item and what is wrong with it."""
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
        try:
            out[key] = options[key].parse(value)
        except ValueError as e:
            raise ValueError(f"--set {e}") from None
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
            options (its ``--<mode>-*`` flags) and the defaults a mode derives from train.py's other
            arguments (CAM-erase's warm-up: half of ``args.epochs``) come from it. Keyword arguments given
            here override ``args``.
        model: the model under training (needed by the modes whose ``uses_model`` is set).
        num_classes: number of classes of the soft targets (default: ``model.num_classes``).
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
    args = None
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
    else:
        mode = args_or_mode
    if not isinstance(mode, str) or mode not in mix_modes():
        raise ValueError(f"unknown mix mode {mode!r}; choose one of {', '.join(mix_modes())}")
    cls = get_mode_class(mode)
    known = {'prob'} | {o.name for o in cls.options} | set(cls.python_options)
    unknown = sorted(set(mode_options) - known)
    if unknown:
        raise TypeError(f"{mode}: unknown option(s) {', '.join(unknown)}; its options are {', '.join(sorted(known))}")
    options.update(mode_options)
    if args is not None:
        options.update(cls.train_defaults(args, options))
    if prob is not None:
        options['prob'] = prob
    if num_classes is None and model is not None:
        num_classes = getattr(model, 'num_classes', None)
    if num_classes is None:
        raise ValueError(f"{mode}: num_classes is needed (pass num_classes=, or a model with .num_classes)")
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral):
        raise TypeError(f"{mode}: num_classes must be an int, got {type(num_classes).__name__} {num_classes!r}")
    num_classes = int(num_classes)
    if label_smoothing is None:
        label_smoothing = 0.0
    kwargs: Dict[str, Any] = dict(num_classes=num_classes, label_smoothing=label_smoothing,
                                  data_config=data_config, amp_autocast=amp_autocast, device=device,
                                  generator=generator, **options)
    if cls.uses_model:
        kwargs['model'] = model
    return cls(**kwargs)
