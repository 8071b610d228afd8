""" ``create_mix_fn``: a mix mode from a name and options, or from train.py's ``args``. """
import argparse
import numbers
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .modes import MixMode, get_mode_class, mix_modes
from .modes.options import OptionError, option_dest
from .modes.schedule import (NO_MIX, Schedule, ScheduleError, is_timm_member, parse_probabilities, parse_schedule,
                             schedule_members)
from .modes.timm_mixup import TIMM_PRESETS, TimmMixup

__all__ = ['create_mix_fn', 'mode_options_from_args', 'mode_options_from_strings', 'option_dest', 'train_schedule',
           'timm_mixup_from_args', 'mode_names']


def mode_options_from_args(args: argparse.Namespace, mode: str) -> Dict[str, Any]:
    """The keyword options of ``mode`` read from train.py's ``args`` (the flags ``add_args`` defines)."""
    cls = get_mode_class(mode)
    names = ['prob'] + [o.name for o in cls.options]
    return {n: getattr(args, option_dest(mode, n)) for n in names if hasattr(args, option_dest(mode, n))}


def mode_options_from_strings(mode: str, items: Sequence[str]) -> Dict[str, Any]:
    """``KEY=VALUE`` strings (command-line ``--set`` items) -> keyword options of ``mode``, typed as the mode's
    train.py flags are. ``KEY`` is the option's name without the mode prefix (``beta``, ``cam_layer``, or
    ``cam-layer``); ``prob`` is accepted too. Raises ValueError naming the item and what is wrong with it."""
    cls = _mode_or_timm_class(mode)
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


def _mode_or_timm_class(name: str):
    if is_timm_member(name):
        return TimmMixup
    return get_mode_class(name)


def _check_known(name: str, cls, options: Dict[str, Any]) -> None:
    known = {'prob'} | {o.name for o in cls.options} | set(cls.python_options)
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"{name}: unknown option(s) {', '.join(unknown)}; its options are {', '.join(sorted(known))}")


def _build(name: str, common: Dict[str, Any], model: Optional[nn.Module], options: Dict[str, Any]) -> MixMode:
    """One mode (a registered one, or timm's Mixup for 'cutmix' / 'mixup') from its name and options."""
    cls = _mode_or_timm_class(name)
    _check_known(name, cls, options)
    kwargs = dict(common, **(TIMM_PRESETS.get(name, {}) if is_timm_member(name) else {}))
    kwargs.update(options)
    if cls.uses_model:
        kwargs['model'] = model
    try:
        return cls(**kwargs)
    except OptionError as e:
        e.mode = name       # so that train.py's message can name the flag --<mode>-<option>
        raise


def timm_mixup_from_args(args: argparse.Namespace) -> Optional[Dict[str, Any]]:
    """The options of timm's Mixup as train.py's ``--mixup``/``--cutmix``/... flags set it (None: not set)."""
    mixup, cutmix = float(getattr(args, 'mixup', 0) or 0), float(getattr(args, 'cutmix', 0) or 0)
    minmax = getattr(args, 'cutmix_minmax', None)
    if mixup <= 0 and cutmix <= 0 and minmax is None:
        return None
    return dict(mixup_alpha=mixup, cutmix_alpha=cutmix, cutmix_minmax=minmax,
                prob=float(getattr(args, 'mixup_prob', 1.0)), switch_prob=float(getattr(args, 'mixup_switch_prob', 0.5)),
                mixup_mode=getattr(args, 'mixup_mode', 'batch'))


def mode_names(value: Any) -> List[str]:
    """The modes of a ``--mix-mode`` value: comma-separated text, or a list from a YAML config."""
    if value is None:
        return []
    items = value if isinstance(value, (list, tuple)) else str(value).split(',')
    return [str(m).strip() for m in items if str(m).strip()]


def train_schedule(args: argparse.Namespace) -> Tuple[List[str], Optional[List[float]]]:
    """The modes of train.py's ``--mix-mode`` (comma-separated) and their ``--mix-mode-prob`` (None: not given)."""
    modes = mode_names(getattr(args, 'mix_mode', None))
    return modes, parse_probabilities(getattr(args, 'mix_mode_prob', None), len(modes))


def create_mix_fn(
        spec_or_args: Union[str, argparse.Namespace],
        *,
        model: Optional[nn.Module] = None,
        num_classes: Optional[int] = None,
        prob: Optional[float] = None,
        label_smoothing: Optional[float] = None,
        data_config: Optional[Dict[str, Any]] = None,
        amp_autocast: Optional[Callable[[], Any]] = None,
        device: Optional[Union[str, torch.device]] = None,
        generator: Optional[torch.Generator] = None,
        options: Optional[Dict[str, Dict[str, Any]]] = None,
        cam_start_epoch: Optional[int] = None,
        timm_mixup: Optional[Any] = None,
        **mode_options: Any,
) -> MixMode:
    """Build the mix function ``mix_fn(x, target) -> (x_mixed, soft_target)`` of one mode or of a schedule.

    Args:
        spec_or_args: a mode name (one of ``MIX_MODES``); a schedule (``'snapmix:0.5+cutmix:0.5'``: members
            joined by ``+``, each with its probability per batch, the words ``cutmix`` and ``mixup`` meaning timm's
            own Mixup; probabilities left out are shared equally); or train.py's ``args``. From ``args``, the
            modes are ``--mix-mode`` (comma-separated) with ``--mix-mode-prob``, the rest of the probability
            goes to timm's Mixup as ``--mixup``/``--cutmix`` configure it (``timm_mixup``: train.py's own Mixup
            object), and ``num_classes``, ``label_smoothing`` (``args.smoothing``), each mode's options (its
            ``--<mode>-*`` flags), the defaults a mode derives from train.py's other arguments (CAM-erase's
            warm-up: half of ``args.epochs``) and ``--mix-cam-start-epoch`` come from it. Keyword arguments
            given here override ``args``.
        model: the model under training (needed by the modes whose ``uses_model`` is set).
        num_classes: number of classes of the soft targets (default: ``model.num_classes``).
        prob: probability of mixing of a single mode; None: the mode's default.
        label_smoothing: baked into the soft targets (train.py's loss is then SoftTargetCrossEntropy).
            None: ``args.smoothing`` when built from ``args``, else 0.0; any value given (0.0 too) wins.
        data_config: timm's resolved data config; its mean/std de-normalise the batch (default ImageNet's).
        amp_autocast: train.py's ``amp_autocast``, used around CAM and extractor forwards.
        device: the training device (auxiliary models such as attentive's extractor are moved there).
        generator: a CPU ``torch.Generator`` for every random draw, for reproducible mixes. Draws are made
            on the CPU (as timm's ``Mixup`` makes them with numpy) and moved to the input's device, so a
            generator on another device (CUDA) is refused with an error; None uses torch's default generator.
        options: a schedule's per-member options, ``{member name: {option: value}}``.
        cam_start_epoch: until this epoch, schedule members guided by the model under training give way to the
            rest of the schedule (see :class:`~timm_camaug.modes.schedule.Schedule`).
        timm_mixup: train.py's own ``timm.data.Mixup`` (the rest of a schedule built from ``args``).
        **mode_options: a single mode's own options (see each mode's class).
    """
    args = spec_or_args if isinstance(spec_or_args, argparse.Namespace) else None
    per_member: Dict[str, Dict[str, Any]] = {k: dict(v) for k, v in (options or {}).items()}
    rest, rest_name = None, NO_MIX
    if args is not None:
        names, probs = train_schedule(args)
        if not names or names == [NO_MIX]:
            raise ValueError("args.mix_mode is not set: nothing to create (check timm_camaug.is_active(args))")
        for name in names:
            if name not in mix_modes():
                raise ValueError(f"unknown mix mode {name!r}; choose one of {', '.join(mix_modes())}")
            from_args = mode_options_from_args(args, name)
            from_args.update(get_mode_class(name).train_defaults(args, from_args))
            per_member[name] = {**from_args, **per_member.get(name, {})}
        if num_classes is None:
            num_classes = getattr(args, 'num_classes', None)
        if label_smoothing is None:
            label_smoothing = float(getattr(args, 'smoothing', 0.0) or 0.0)
        if cam_start_epoch is None:
            cam_start_epoch = int(getattr(args, 'mix_cam_start_epoch', 0) or 0)
        timm_options = timm_mixup_from_args(args) if timm_mixup is None else {'mixup': timm_mixup}
        if timm_options is not None:
            rest, rest_name = timm_options, 'timm Mixup'
        members = list(zip(names, probs if probs is not None else [None] * len(names)))
    elif isinstance(spec_or_args, str):
        try:
            members = parse_schedule(spec_or_args)
            schedule_members(spec_or_args)      # every member known (a plugin's that failed to load: why)
        except ScheduleError as e:
            raise ValueError(str(e)) from None
    else:
        raise ValueError(f"unknown mix mode {spec_or_args!r}; choose one of {', '.join(mix_modes())}")
    single = len(members) == 1 and members[0][1] in (None, 1.0) and rest is None and not cam_start_epoch
    if single:
        name = members[0][0]
        member_options = {**per_member.get(name, {}), **mode_options}
    elif mode_options:
        raise TypeError(f"{', '.join(sorted(mode_options))}: a schedule takes each member's options as "
                        "options={member: {option: value}}")
    if num_classes is None and model is not None:
        num_classes = getattr(model, 'num_classes', None)
    if num_classes is None:
        raise ValueError(f"{members[0][0]}: num_classes is needed (pass num_classes=, or a model with .num_classes)")
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral):
        raise TypeError(f"{members[0][0]}: num_classes must be an int, got {type(num_classes).__name__} "
                        f"{num_classes!r}")
    common: Dict[str, Any] = dict(num_classes=int(num_classes), label_smoothing=label_smoothing or 0.0,
                                  data_config=data_config, amp_autocast=amp_autocast, device=device,
                                  generator=generator)
    if single:
        if prob is not None:
            member_options['prob'] = prob
        return _build(name, common, model, member_options)
    if prob is not None:
        raise TypeError("prob= applies to a single mode; a schedule gives each member its probability")
    unknown = sorted(set(per_member) - {n for n, _ in members})
    if unknown:
        raise ValueError(f"options for {', '.join(unknown)}, which the schedule does not list")
    probs = [p for _, p in members]
    if all(p is None for p in probs):
        probs = [1.0 / len(members)] * len(members)
    built = [(n, p, _build(n, common, model, per_member.get(n, {}))) for (n, _), p in zip(members, probs)]
    rest_mode = TimmMixup(**{**common, **rest}) if rest is not None else None
    try:
        return Schedule(members=built, rest=rest_mode, rest_name=rest_name, cam_start_epoch=cam_start_epoch or 0,
                        **common)
    except ScheduleError as e:
        raise ValueError(str(e)) from None
