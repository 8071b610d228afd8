""" train.py's command line: ``add_args`` (``--mix-mode`` and one flag per mode option) and its checks. """
import argparse
from typing import List

from .factory import mode_options_from_args
from .modes import get_mode_class, mix_modes
from .modes.options import OptionError, option_dest

__all__ = ['add_args', 'is_active', 'check_train_args', 'NO_MIX']

NO_MIX = 'none'


def add_args(parser: argparse.ArgumentParser, validate: bool = True) -> argparse._ArgumentGroup:
    """Add the timm-camaug argument group to train.py's parser.

    ``--mix-mode`` picks one of ``MIX_MODES`` or ``none`` (the default: train.py stays stock); each mode's
    option ``o`` has its own flag ``--<mode>-<o>`` (dest ``<mode>_<o>``, e.g. ``snapmix_beta``), with the
    mode's default, so YAML ``--config`` files can set any of them by dest name.

    With ``validate`` (default), the parser's ``parse_args`` also rejects flag combinations that cannot
    work with a mix mode (see :func:`check_train_args`) through ``parser.error``, before anything is built.
    """
    modes = mix_modes()
    choices = modes + (NO_MIX,)
    group = parser.add_argument_group('CAM-guided mixing (timm-camaug)')
    group.add_argument('--mix-mode', default=NO_MIX, choices=choices, metavar='MODE',
                       help=f"CAM/saliency-guided mix mode: {', '.join(choices)} (default: {NO_MIX})")
    for mode in modes:
        cls = get_mode_class(mode)
        group.add_argument(f'--{mode}-prob', dest=option_dest(mode, 'prob'), type=float, default=cls.default_prob,
                           metavar='P', help=f'{mode}: probability of applying it, per {cls.prob_per} '
                                             f'(default: {cls.default_prob})')
        for opt in cls.options:
            group.add_argument(opt.flag(mode), dest=option_dest(mode, opt.name), type=opt.flag_type(),
                               default=opt.default, choices=opt.choices,
                               metavar=opt.name.upper() if opt.choices is None else None,
                               help=f'{mode}: {opt.help} (default: {opt.default})')
    if validate and not getattr(parser, '_timm_camaug_validating', False):
        parse_args = parser.parse_args

        def _parse_and_check(*a, **kw):
            ns = parse_args(*a, **kw)
            problems = check_train_args(ns)
            if problems:
                parser.error('; '.join(problems))
            return ns

        parser.parse_args = _parse_and_check
        parser._timm_camaug_validating = True
    return group


def is_active(args: argparse.Namespace) -> bool:
    """True when ``args`` select a mix mode (``--mix-mode`` other than ``none``)."""
    return getattr(args, 'mix_mode', None) not in (None, '', NO_MIX)


def check_train_args(args: argparse.Namespace) -> List[str]:
    """Reasons the train.py flags in ``args`` cannot run with the selected mix mode (empty: fine).

    Besides flag combinations, the selected mode's option values are checked here (as its constructor
    checks them), so a bad value stops train.py at start-up rather than after the model is built.
    """
    if not is_active(args):
        return []
    mode = args.mix_mode
    if mode not in mix_modes():
        return [f"--mix-mode {mode!r} is not one of {', '.join(mix_modes() + (NO_MIX,))}"]
    problems = []
    if (getattr(args, 'mixup', 0) or 0) > 0 or (getattr(args, 'cutmix', 0) or 0) > 0 \
            or getattr(args, 'cutmix_minmax', None) is not None:
        problems.append(f"--mix-mode {mode} replaces timm's --mixup/--cutmix/--cutmix-minmax: use one or the other")
    if getattr(args, 'naflex_loader', False):
        problems.append(f"--mix-mode {mode} needs (N, C, H, W) image batches; the NaFlex loader yields patch sequences")
    if (getattr(args, 'aug_splits', 0) or 0) > 0 or getattr(args, 'jsd_loss', False):
        problems.append(f"--mix-mode {mode} cannot be combined with AugMix splits (--aug-splits/--jsd-loss): "
                        "it would mix across the split copies of each image")
    cls = get_mode_class(mode)
    options = mode_options_from_args(args, mode)
    problems += cls.train_args_problems(args, options)
    try:
        cls.validate_options(**options)
    except OptionError as e:
        problems.append(f"--{mode}-{e.option.replace('_', '-')}: {e}")
    return problems
