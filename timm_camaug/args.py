""" train.py's command line: ``add_args`` (``--mix-mode``, its schedule flags, one flag per mode option) and
the start-up checks. """
import argparse
import logging
from typing import List, Optional, Tuple

from .factory import mode_names, mode_options_from_args, timm_mixup_from_args, train_schedule
from .modes import failed_modes, get_mode_class, mix_modes
from .modes.options import OptionError, option_dest
from .modes.schedule import NO_MIX, ScheduleError, is_timm_member, parse_schedule

__all__ = ['add_args', 'is_active', 'check_train_args', 'schedule_train_flags', 'warn_unknown_keys', 'NO_MIX']

_logger = logging.getLogger(__name__)


def _mode_list(text) -> str:
    """``--mix-mode``'s value: ``none`` or comma-separated registered modes (kept as text: YAML-safe)."""
    modes = mode_names(text)
    if modes == [NO_MIX]:
        return NO_MIX
    known = mix_modes()
    bad = [m for m in modes if m not in known]
    failed = failed_modes()
    if any(m in failed for m in bad):
        raise argparse.ArgumentTypeError('; '.join(failed[m] for m in bad if m in failed))
    if not modes or bad:
        hint = ''
        if any(is_timm_member(m) for m in bad):
            hint = ("; timm's own CutMix/Mixup come from train.py's --cutmix/--mixup flags, and --mix-mode-prob "
                    "leaves them the rest of the probability")
        raise argparse.ArgumentTypeError(
            f"invalid choice {', '.join(bad) or repr(text)}: choose {NO_MIX} or one or more of {', '.join(known)}, "
            f"comma-separated{hint}")
    return ','.join(modes)


def add_args(parser: argparse.ArgumentParser, validate: bool = True) -> argparse._ArgumentGroup:
    """Add the timm-camaug argument group to train.py's parser.

    ``--mix-mode`` picks ``none`` (the default: train.py stays stock) or one or more of ``MIX_MODES``,
    comma-separated, with ``--mix-mode-prob`` giving each one's probability per batch (the rest goes to timm's
    Mixup when ``--mixup``/``--cutmix`` configure it, else no mixing) and ``--mix-cam-start-epoch`` holding back
    the modes guided by the model under training. Each mode's option ``o`` has its own flag ``--<mode>-<o>``
    (dest ``<mode>_<o>``, e.g. ``snapmix_beta``), with the mode's default, so YAML ``--config`` files can set any
    of them by dest name (``mix_mode_prob`` as a string ``"0.4,0.4"`` or a list ``[0.4, 0.4]``).

    With ``validate`` (default), the parser's ``parse_args`` also rejects flag combinations that cannot
    work (see :func:`check_train_args`) through ``parser.error``, before anything is built.
    """
    modes = mix_modes()
    group = parser.add_argument_group('CAM-guided mixing (timm-camaug)')
    group.add_argument('--mix-mode', default=NO_MIX, type=_mode_list, metavar='MODE[,MODE...]',
                       help=f"mix mode(s): {', '.join(modes)}, comma-separated, or {NO_MIX} (default: {NO_MIX})")
    group.add_argument('--mix-mode-prob', default=None, metavar='P[,P...]',
                       help='probability per batch of each --mix-mode (one value for all, or one per mode; they sum to '
                            'at most 1); the rest goes to timm\'s Mixup/CutMix (--mixup/--cutmix) or to no mixing '
                            '(default: the modes share 1 equally)')
    group.add_argument('--mix-cam-start-epoch', default=0, type=int, metavar='N',
                       help='until epoch N, the modes guided by the model under training give way to the rest of '
                            'the schedule (timm\'s Mixup/CutMix, or no mixing) (default: 0)')
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
            warn_unknown_keys(ns, parser)
            problems = check_train_args(ns)
            if problems and not is_active(ns) and parser.get_default('mix_mode') not in (None, NO_MIX):
                # a --config file's mode switched off on the command line (--mix-mode none): the file's schedule
                # keys (mix_mode_prob, mix_cam_start_epoch) go unused on purpose
                problems = []
            if problems:
                parser.error('; '.join(problems))
            return ns

        parser.parse_args = _parse_and_check
        parser._timm_camaug_validating = True
    return group


def warn_unknown_keys(args: argparse.Namespace, parser: argparse.ArgumentParser) -> List[str]:
    """Warn about keys of a YAML ``--config`` that look like timm-camaug's (``mix_...`` or a mode's prefix) but
    that no flag has: train.py's ``parser.set_defaults`` keeps them without a word, so a typo would silently
    leave the option at its default. Returns the warnings."""
    import difflib
    known = {a.dest for a in parser._actions}
    prefixes = ('mix_',) + tuple(option_dest(m, '') for m in mix_modes())
    ours = sorted(d for d in known if d.startswith(prefixes))
    warnings = []
    for key in sorted(vars(args)):
        if key in known or not key.startswith(prefixes):
            continue
        close = difflib.get_close_matches(key, ours, n=1, cutoff=0.6)
        warnings.append(f"timm-camaug: config key {key!r} is not an option of any mode and is ignored"
                        + (f"; did you mean {close[0]!r}?" if close else ''))
        _logger.warning(warnings[-1])
    return warnings


def _class_count_problems(args: argparse.Namespace) -> List[str]:
    """A folder dataset with more classes than ``--num-classes``: its labels would stop a mode mid-epoch."""
    import os
    k = getattr(args, 'num_classes', None)
    root = getattr(args, 'data_dir', None)
    dataset = str(getattr(args, 'dataset', '') or '')
    if not isinstance(k, int) or isinstance(k, bool) or not root or (dataset and not dataset.startswith('folder')):
        return []
    class_map = getattr(args, 'class_map', '') or ''
    if class_map and os.path.isfile(class_map):
        with open(class_map, encoding='utf-8', errors='replace') as f:
            n, where = sum(1 for line in f if line.strip()), f"--class-map {class_map} lists"
    else:
        split = os.path.join(root, str(getattr(args, 'train_split', 'train') or 'train'))
        folder = split if os.path.isdir(split) else root
        if not os.path.isdir(folder):
            return []
        try:
            n = sum(1 for e in os.scandir(folder) if e.is_dir() and not e.name.startswith('.'))
        except OSError:
            return []
        where = f"{folder} has"
    if n <= k:
        return []
    return [f"--num-classes {k}, but {where} {n} classes: labels {k}..{n - 1} are out of range for the mix mode "
            f"(label {k} is out of range for num_classes={k}); set --num-classes {n}"]


def is_active(args: argparse.Namespace) -> bool:
    """True when ``args`` select a mix mode (``--mix-mode`` other than ``none``)."""
    return mode_names(getattr(args, 'mix_mode', None)) not in ([], [NO_MIX])


def _batch_sizes(args: argparse.Namespace) -> List[int]:
    sizes = [getattr(args, 'batch_size', None)] + list(getattr(args, 'train_batch_sizes', None) or [])
    return [int(b) for b in sizes if isinstance(b, int) and not isinstance(b, bool)]


def _int_arg(args: argparse.Namespace, name: str, default: int = 0) -> Optional[int]:
    value = getattr(args, name, default)
    value = default if value is None else value
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _cam_start_problems(args: argparse.Namespace) -> List[str]:
    """``--mix-cam-start-epoch`` at or past train.py's last epoch: the guided modes would never run.

    train.py trains epochs 0 to ``num_epochs - 1``, ``num_epochs`` from timm's ``create_scheduler_v2``: at most
    ``--epochs`` + ``--cooldown-epochs`` (+ ``--warmup-epochs`` with ``--warmup-prefix``) for a single lr cycle;
    more cycles (``--lr-cycle-limit``) make it longer, so the bound is not checked then."""
    start = getattr(args, 'mix_cam_start_epoch', 0) or 0
    if not isinstance(start, int) or isinstance(start, bool) or start < 0:
        return [f"--mix-cam-start-epoch must be an int >= 0, got {start!r}"]
    epochs, cooldown = _int_arg(args, 'epochs', None), _int_arg(args, 'cooldown_epochs')
    warmup = _int_arg(args, 'warmup_epochs') if getattr(args, 'warmup_prefix', False) else 0
    cycles = _int_arg(args, 'lr_cycle_limit', 1)
    if epochs is None or cooldown is None or warmup is None or cycles is None or cycles > 1:
        return []
    total = epochs + cooldown + warmup
    if start == 0 or start < total:     # 0: nothing held back
        return []
    counted = f"--epochs {epochs}"
    if cooldown:
        counted += f" + --cooldown-epochs {cooldown}"
    if warmup:
        counted += f" + --warmup-epochs {warmup} (--warmup-prefix)"
    last = f"train.py's epochs are 0 to {total - 1}" if total > 0 else "train.py trains no epoch"
    return [f"--mix-cam-start-epoch {start} is beyond {counted}: {last}, so the guided modes would never run; "
            f"lower it to {max(total - 1, 0)} or less (e.g. {total // 4})"]


def _inactive_problems(args: argparse.Namespace) -> List[str]:
    """Schedule flags given without a mix mode, which nothing would read."""
    given = []
    prob = getattr(args, 'mix_mode_prob', None)
    if prob is not None:
        text = ','.join(map(str, prob)) if isinstance(prob, (list, tuple)) else str(prob)
        given.append(f"--mix-mode-prob {text}")
    start = getattr(args, 'mix_cam_start_epoch', 0)
    if start not in (None, 0):
        given.append(f"--mix-cam-start-epoch {start}")
    return [f"{flag} is given without a mix mode (--mix-mode none, the default): it sets the mix modes' schedule "
            f"and would be ignored; add --mix-mode MODE (e.g. --mix-mode snapmix), or drop {flag.split()[0]} (config "
            f"key {flag.split()[0][2:].replace('-', '_')})" for flag in given]


def _schedule_problems(args: argparse.Namespace, modes: List[str]) -> Tuple[List[str], Optional[List[float]]]:
    problems: List[str] = []
    twice = sorted({m for m in modes if modes.count(m) > 1})
    if twice:
        problems.append(f"--mix-mode lists {', '.join(twice)} twice; list each mode once")
    try:
        _, probs = train_schedule(args)
    except ScheduleError as e:
        return problems + [f"{e}; e.g. --mix-mode-prob 0.5 or --mix-mode-prob 0.3,0.3"], None
    timm_rest = timm_mixup_from_args(args) is not None
    if probs is not None and sum(probs) > 1 + 1e-9:
        problems.append(f"--mix-mode-prob {','.join(f'{p:g}' for p in probs)} adds up to {sum(probs):g}, more than 1; "
                        "lower them (the rest, 1 - their sum, goes to --mixup/--cutmix or to no mixing)")
    if probs is None and timm_rest:
        problems.append(f"--mix-mode {','.join(modes)} without --mix-mode-prob takes every batch, so --mixup/--cutmix "
                        "would never run; give the modes' share, e.g. --mix-mode-prob 0.5 (the rest goes to "
                        "--mixup/--cutmix)")
    elif probs is not None and timm_rest and sum(probs) >= 1 - 1e-9:
        _logger.warning("timm-camaug: --mix-mode-prob adds up to 1: --mixup/--cutmix will never run")
    problems += _cam_start_problems(args)
    if timm_rest and (probs is None or sum(probs) < 1 - 1e-9):
        odd = [b for b in _batch_sizes(args) if b % 2]
        if odd:
            problems.append(f"timm's Mixup/CutMix (--mixup/--cutmix) needs an even batch (it pairs sample i with "
                            f"N-1-i), got batch size {', '.join(map(str, odd))}; use an even --batch-size")
    return problems, probs


def check_train_args(args: argparse.Namespace) -> List[str]:
    """Reasons the train.py flags in ``args`` cannot run with the selected mix mode(s) (empty: fine); without a
    mix mode, the schedule flags (``--mix-mode-prob``, ``--mix-cam-start-epoch``) that would be ignored.

    Besides flag combinations, each selected mode's option values are checked here (as its constructor
    checks them), so a bad value stops train.py at start-up rather than after the model is built.
    """
    if not is_active(args):
        return _inactive_problems(args)
    try:
        modes = [m for m in (_mode_list(args.mix_mode) or '').split(',')]
    except argparse.ArgumentTypeError as e:
        return [f"--mix-mode: {e}"]
    label = f"--mix-mode {','.join(modes)}"
    problems, _ = _schedule_problems(args, modes)
    problems += _class_count_problems(args)
    if getattr(args, 'naflex_loader', False):
        problems.append(f"{label} needs (N, C, H, W) image batches; the NaFlex loader yields patch sequences")
    if (getattr(args, 'aug_splits', 0) or 0) > 0 or getattr(args, 'jsd_loss', False):
        problems.append(f"{label} cannot be combined with AugMix splits (--aug-splits/--jsd-loss): "
                        "it would mix across the split copies of each image")
    for mode in dict.fromkeys(modes):
        cls = get_mode_class(mode)
        options = mode_options_from_args(args, mode)
        problems += cls.train_args_problems(args, options)
        try:
            cls.validate_options(**options)
        except OptionError as e:
            problems.append(f"--{mode}-{e.option.replace('_', '-')}: {e}")
    return problems


def schedule_train_flags(spec: str) -> List[str]:
    """train.py flags for a schedule written as the commands write it (``'snapmix:0.5+cutmix:0.5'``, a single
    mode, ``'cutmix'``): ``--mix-mode``/``--mix-mode-prob`` for the registered modes and timm's own
    ``--mixup``/``--cutmix`` (with ``--mixup-prob``, ``--mixup-switch-prob``) for the rest."""
    from .modes.timm_mixup import TIMM_PRESETS
    if spec == NO_MIX:
        return ['--mix-mode', NO_MIX]
    members = parse_schedule(spec)
    if all(p is None for _, p in members):
        members = [(n, 1.0 / len(members)) for n, _ in members]
    ours = [(n, p) for n, p in members if not is_timm_member(n)]
    timm = [(n, p) for n, p in members if is_timm_member(n)]
    flags = ['--mix-mode', ','.join(n for n, _ in ours) if ours else NO_MIX]
    if ours and (timm or sum(p for _, p in ours) < 1 - 1e-9):
        flags += ['--mix-mode-prob', ','.join(f'{p:g}' for _, p in ours)]
    if timm:
        rest = 1.0 - sum(p for _, p in ours)
        share = sum(p for _, p in timm)
        for name, p in timm:
            flag = '--cutmix' if TIMM_PRESETS[name]['cutmix_alpha'] > 0 else '--mixup'
            alpha = TIMM_PRESETS[name]['cutmix_alpha'] or TIMM_PRESETS[name]['mixup_alpha']
            flags += [flag, f'{alpha:g}']
        if len(timm) == 2:      # both: timm draws CutMix with --mixup-switch-prob
            cut_share = sum(p for n, p in timm if TIMM_PRESETS[n]['cutmix_alpha'] > 0)
            flags += ['--mixup-switch-prob', f"{cut_share / share:.10g}"]
        if rest > 0 and abs(share - rest) > 1e-9:
            flags += ['--mixup-prob', f'{share / rest:.10g}']
    return flags
