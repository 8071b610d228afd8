""" train.py's command line: ``add_args`` (``--mix-mode`` and one flag per mode option) and its checks. """
import argparse
from typing import List

from .factory import mode_options_from_args, option_dest
from .modes import MIX_MODES, get_mode_class
from .modes.base import OptionError

__all__ = ['add_args', 'is_active', 'check_train_args', 'MIX_MODE_CHOICES']

MIX_MODE_CHOICES = MIX_MODES + ('none',)


_TRUE, _FALSE = ('1', 'true', 'yes', 'on'), ('0', 'false', 'no', 'off')


def parse_bool(value: str) -> bool:
    """A boolean flag's value: 1/true/yes/on or 0/false/no/off (any case); anything else is an error."""
    v = str(value).strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean ({'/'.join(_TRUE)} or {'/'.join(_FALSE)}), got {value!r}")


def _flag_type(option):
    t = option.parse_type()
    if t is bool:
        return parse_bool
    return t


def add_args(parser: argparse.ArgumentParser, validate: bool = True) -> argparse._ArgumentGroup:
    """Add the timm-camaug argument group to train.py's parser.

    ``--mix-mode`` picks one of ``MIX_MODES`` or ``none`` (the default: train.py stays stock); each mode's
    option ``o`` has its own flag ``--<mode>-<o>`` (dest ``<mode>_<o>``, e.g. ``snapmix_beta``), with the
    mode's default, so YAML ``--config`` files can set any of them by dest name.

    With ``validate`` (default), the parser's ``parse_args`` also rejects flag combinations that cannot
    work with a mix mode (see :func:`check_train_args`) through ``parser.error``, before anything is built.
    """
    group = parser.add_argument_group('CAM-guided mixing (timm-camaug)')
    group.add_argument('--mix-mode', default='none', choices=MIX_MODE_CHOICES, metavar='MODE',
                       help=f"CAM/saliency-guided mix mode: {', '.join(MIX_MODE_CHOICES)} (default: none)")
    for mode in MIX_MODES:
        cls = get_mode_class(mode)
        per = 'sample' if cls.prob_per == 'sample' else 'batch'
        group.add_argument(f'--{mode}-prob', dest=option_dest(mode, 'prob'), type=float, default=cls.default_prob,
                           metavar='P', help=f'{mode}: probability of applying it, per {per} (default: {cls.default_prob})')
        for opt in cls.options:
            flag = f"--{mode}-{opt.name.replace('_', '-')}"
            group.add_argument(flag, dest=option_dest(mode, opt.name), type=_flag_type(opt), default=opt.default,
                               choices=opt.choices, metavar=opt.name.upper() if opt.choices is None else None,
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
    return getattr(args, 'mix_mode', None) not in (None, '', 'none')


def check_train_args(args: argparse.Namespace) -> List[str]:
    """Reasons the train.py flags in ``args`` cannot run with the selected mix mode (empty: fine).

    Besides flag combinations, the selected mode's option values are checked here (as its constructor
    checks them), so a bad value stops train.py at start-up rather than after the model is built.
    """
    if not is_active(args):
        return []
    mode = args.mix_mode
    problems = []
    if mode not in MIX_MODES:
        problems.append(f"--mix-mode {mode!r} is not one of {', '.join(MIX_MODE_CHOICES)}")
        return problems
    if (getattr(args, 'mixup', 0) or 0) > 0 or (getattr(args, 'cutmix', 0) or 0) > 0 \
            or getattr(args, 'cutmix_minmax', None) is not None:
        problems.append(f"--mix-mode {mode} replaces timm's --mixup/--cutmix/--cutmix-minmax: use one or the other")
    if getattr(args, 'naflex_loader', False):
        problems.append(f"--mix-mode {mode} needs (N, C, H, W) image batches; the NaFlex loader yields patch sequences")
    if (getattr(args, 'aug_splits', 0) or 0) > 0 or getattr(args, 'jsd_loss', False):
        problems.append(f"--mix-mode {mode} cannot be combined with AugMix splits (--aug-splits/--jsd-loss): "
                        "it would mix across the split copies of each image")
    if mode in ('snapmix', 'gutout', 'cam-erase') and getattr(args, 'torchscript', False):
        problems.append(f"--mix-mode {mode} needs forward hooks on the model, which --torchscript models do not run")
    if getattr(args, 'sync_bn', False) and getattr(args, option_dest(mode, 'cam_bn'), None) == 'batch':
        problems.append(f"--mix-mode {mode} with --{mode}-cam-bn batch runs SyncBatchNorm (--sync-bn) in its CAM forward, "
                        f"a collective that hangs when the ranks' random draws differ; add --{mode}-cam-bn eval")
    if mode == 'snapmix' and getattr(args, 'bce_loss', False) and getattr(args, 'bce_target_thresh', None) is None:
        problems.append("--mix-mode snapmix with --bce-loss: SnapMix's soft targets can exceed 1 (when both images of "
                        "a pair have the same label, each weight becomes w_a + w_b, as the authors do, so one class "
                        "can get up to 4), which is not a valid binary cross-entropy target; add --bce-target-thresh "
                        "(e.g. 0.2) to binarise the targets, or drop --bce-loss (SoftTargetCrossEntropy)")
    try:
        get_mode_class(mode).validate_options(**mode_options_from_args(args, mode))
    except OptionError as e:
        problems.append(f"--{mode}-{e.option.replace('_', '-')}: {e}")
    return problems
