""" ``timm-camaug bench``: what each mix mode costs per training step, on your model, size and device.

Each mode's call is timed against one plain training step (forward, cross-entropy, backward, SGD step) of the
same model on the same batch, and against timm's own ``Mixup`` (CutMix), all interleaved in one run, so the
ratios hold on whatever machine runs them. Models are built with random weights (nothing is downloaded; a
CAM costs the same whatever the weights), Attentive CutMix's extractor too.
"""
import argparse
import functools
import os
import platform
import statistics
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

from .console import command_error, mode_rows

__all__ = ['machine', 'time_interleaved', 'bench_modes', 'AroundTheForward', 'register', 'run']


def machine() -> str:
    """One line naming the machine the numbers were measured on."""
    import torch
    if torch.cuda.is_available():
        dev = f"GPU {torch.cuda.get_device_name(0)}"
    else:
        cpu = platform.processor() or platform.machine()
        try:
            with open('/proc/cpuinfo') as f:
                names = [line.split(':', 1)[1].strip() for line in f if line.startswith('model name')]
            if names:
                cpu = names[0]
        except OSError:
            pass
        dev = f"CPU {cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"
    return f"{dev}; torch {torch.__version__}; python {platform.python_version()}"


def _sync(device) -> None:
    import torch
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def time_interleaved(fns: Dict[str, Callable[[], object]], repeats: int, device, warmup: int = 1) -> Dict[str, float]:
    """Median seconds of each function; the functions run in turn so that drift affects all alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
            _sync(device)
    times: Dict[str, List[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def _call_and_finalize(mix_fn, x, y):
    """One mix call as a training step makes it: the call, then ``finalize``."""
    out = mix_fn(x, y)
    mix_fn.finalize(out[1])
    return out


class AroundTheForward:
    """A mode whose work straddles the training forward (``reads_training_forward``: TransMix): each run makes
    the call, the step's own forward on the mixed batch (under the step's autocast, with gradients, as
    training runs it) and ``finalize``; only the call and ``finalize`` are counted (``seconds``), since the
    forward is the training step's own. What the mode adds inside that forward (its hook keeping a reference
    to one tensor) is not separated out."""

    def __init__(self, mix_fn, net, amp, x, y, device):
        self.mix_fn, self.net, self.amp, self.x, self.y, self.device = mix_fn, net, amp, x, y, device
        self.seconds: List[float] = []          # call + finalize, per run
        self.finalize_seconds: List[float] = []

    def __call__(self):
        _sync(self.device)
        t0 = time.perf_counter()
        x_mixed, target = self.mix_fn(self.x, self.y)
        _sync(self.device)
        t1 = time.perf_counter()
        with self.amp():
            output = self.net(x_mixed)
        _sync(self.device)
        t2 = time.perf_counter()
        self.mix_fn.finalize(target)
        _sync(self.device)
        t3 = time.perf_counter()
        self.seconds.append(t1 - t0 + t3 - t2)
        self.finalize_seconds.append(t3 - t2)
        del output

    def training_step(self, opt):
        """A whole training step with the mode, as the plain step is one (for its extra peak memory)."""
        from timm.loss import SoftTargetCrossEntropy
        x_mixed, target = self.mix_fn(self.x, self.y)
        with self.amp():
            loss = SoftTargetCrossEntropy()(self.net(x_mixed), self.mix_fn.finalize(target))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=False)


def bench_modes(
        modes: Sequence[str],
        *,
        model: str = 'resnet50',
        img_size: int = 224,
        batch_size: int = 16,
        num_classes: int = 200,
        device: Optional[str] = None,
        amp_dtype: Optional[str] = None,
        channels_last: bool = False,
        repeats: int = 5,
        options: Optional[Dict[str, Dict[str, Any]]] = None,
) -> Dict[str, Dict[str, float]]:
    """{name: {'seconds', 'ratio'}}: each mode's call (``prob=1``) and ``finalize``, and timm's CutMix, as a
    fraction of one training step of ``model`` on the same batch (the entry ``'train step'``, ratio 1). A mode
    that completes its targets from the training forward (TransMix) is timed on its call plus ``finalize``
    after the step's own forward, which is run between them but not counted. ``options`` maps a mode
    to its keyword options; ``amp_dtype`` ('bfloat16' or 'float16') runs the step and the CAMs under autocast.
    On CUDA each entry also has ``'peak_memory'``: the largest extra memory a call allocated, as a fraction of
    the step's own peak."""
    from contextlib import suppress

    import timm
    import torch
    import torch.nn.functional as F

    from .extractor import create_timm_model
    from .factory import create_mix_fn
    from .modes import get_mode_class
    from .modes.cam_guided import model_img_size
    from .modes.schedule import is_timm_member, parse_schedule

    dev = torch.device(device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    amp = (functools.partial(torch.autocast, device_type=dev.type, dtype=getattr(torch, amp_dtype))
           if amp_dtype else suppress)
    torch.manual_seed(0)
    net = timm.create_model(model, num_classes=num_classes)
    built_for = model_img_size(net)
    if built_for is not None and built_for != (img_size, img_size):     # a ViT or MLP-Mixer: built for the size,
        torch.manual_seed(0)                                            # as train.py's --model-kwargs does
        net = timm.create_model(model, num_classes=num_classes, img_size=img_size)
    net = net.to(dev).train()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    net = net.to(memory_format=fmt)
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
    x = torch.randn(batch_size, 3, img_size, img_size, device=dev).contiguous(memory_format=fmt)
    y = torch.randint(0, num_classes, (batch_size,), device=dev)

    def train_step():
        with amp():
            loss = F.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=False)

    fns: Dict[str, Callable[[], object]] = {'train step': train_step}
    for mode in modes:
        per_member = {}
        members = [name for name, _ in parse_schedule(mode)]    # a mode, 'cutmix', or a schedule a:0.5+b:0.5
        for member in members:
            opts = dict((options or {}).get(member, {}))
            cls = None if is_timm_member(member) else get_mode_class(member)
            if cls is not None and cls.auxiliary_network is not None \
                    and not isinstance(opts.get(cls.auxiliary_network[0]), torch.nn.Module):
                option, checkpoint_option = cls.auxiliary_network
                default = next(o.default for o in cls.options if o.name == option)
                name, checkpoint = opts.get(option) or default, opts.pop(checkpoint_option, None)
                network = (create_timm_model(name, checkpoint, num_classes=0) if checkpoint
                           else timm.create_model(name, num_classes=0))     # random weights: the same cost
                opts[option] = network.to(dev).eval()
            per_member[member] = opts
        common = dict(model=net, num_classes=num_classes, device=dev, amp_autocast=amp,
                      data_config={'input_size': (3, img_size, img_size)})
        if members == [mode]:
            opts = per_member[mode]
            mix = create_mix_fn(mode, prob=opts.pop('prob', 1.0), **common, **opts)
        else:
            mix = create_mix_fn(mode, options=per_member, **common)
        fns[mode] = (AroundTheForward(mix, net, amp, x, y, dev) if mix.reads_training_forward
                     else functools.partial(_call_and_finalize, mix, x, y))
    if batch_size % 2 == 0:     # timm's Mixup asserts an even batch
        cutmix = timm.data.Mixup(mixup_alpha=0.0, cutmix_alpha=1.0, label_smoothing=0.0, num_classes=num_classes)
        fns['timm Mixup (cutmix)'] = lambda: cutmix(x.clone(), y)

    times = time_interleaved(fns, repeats, dev)
    for name, fn in fns.items():        # its own call + finalize, without the step's forward between them
        if isinstance(fn, AroundTheForward):
            times[name] = statistics.median(fn.seconds[-repeats:])
    out = {k: {'seconds': v, 'ratio': v / times['train step']} for k, v in times.items()}
    for name, fn in fns.items():
        if isinstance(fn, AroundTheForward):
            out[name]['around_forward'] = True
    if dev.type == 'cuda':
        def peak(fn):
            torch.cuda.synchronize(dev)
            torch.cuda.reset_peak_memory_stats(dev)
            base = torch.cuda.memory_allocated(dev)
            fn()
            torch.cuda.synchronize(dev)
            return torch.cuda.max_memory_allocated(dev) - base
        step_peak = peak(train_step)
        for k, fn in fns.items():
            if isinstance(fn, AroundTheForward):   # what a step with the mode needs beyond a plain step
                out[k]['peak_memory'] = max(0, peak(functools.partial(fn.training_step, opt)) - step_peak) / max(step_peak, 1)
            else:
                out[k]['peak_memory'] = peak(fn) / max(step_peak, 1)
    return out


def register(subparsers) -> None:
    from .modes import MIX_MODES
    p = subparsers.add_parser(
        'bench', help="time each mix mode against a training step of your model on your device",
        description=__doc__.split('\n\n')[1])
    p.add_argument('--mode', default='all', metavar='MODE',
                   help=f"{', '.join(MIX_MODES)}, cutmix/mixup (timm's), a schedule such as a:0.5+b:0.5, 'all', "
                        "or a comma-separated list of these (default: all)")
    p.add_argument('--model', default='resnet50', help='timm model name (default: resnet50)')
    p.add_argument('--img-size', type=int, default=224, help='square input size (default: 224)')
    p.add_argument('-b', '--batch-size', type=int, default=16, help='batch size (default: 16)')
    p.add_argument('--num-classes', type=int, default=200, help='classes (default: 200)')
    p.add_argument('--device', default=None, help='torch device (default: cuda if available, else cpu)')
    p.add_argument('--amp', default=None, choices=('bfloat16', 'float16'), help='autocast dtype (default: off)')
    p.add_argument('--channels-last', action='store_true', help='channels-last model and batch')
    p.add_argument('--repeats', type=int, default=5, help='timed repeats; the median is shown (default: 5)')
    p.add_argument('--set', action='append', default=[], metavar='MODE:KEY=VALUE',
                   help="an option of a mode (or of a schedule's member), e.g. --set <mode>:cam_scale=0.5 for a CAM "
                        "mode (repeatable)")
    p.set_defaults(func=run)


_fail = functools.partial(command_error, 'bench')


_BN_SINGLE_VALUE = 'Expected more than 1 value per channel when training'


def _explained(e: BaseException, args: argparse.Namespace) -> str:
    """An error of a bench run with what to change on the command line, where the cause is known."""
    text = str(e) or type(e).__name__
    if text.startswith(_BN_SINGLE_VALUE):
        return (f"{text}: {args.model}'s BatchNorm takes the batch's statistics in a training step, and a batch of "
                f"{args.batch_size} at {args.img_size} px leaves one value per channel in a feature map; use "
                f"--batch-size 2 or more, or a larger --img-size")
    return text


def run(args: argparse.Namespace) -> int:
    from .factory import mode_options_from_strings
    from .modes.schedule import parse_schedule
    try:
        modes = mode_rows(args.mode, take_none=False)     # the train step is the row without mixing
    except ValueError as e:
        raise _fail(str(e)) from None
    members = {name for row in modes for name, _ in parse_schedule(row)}
    for name, value in (('--img-size', args.img_size), ('--batch-size', args.batch_size),
                        ('--num-classes', args.num_classes), ('--repeats', args.repeats)):
        if value < 1:
            raise _fail(f"{name} must be >= 1, got {value}")
    import difflib

    import timm
    import torch
    if not timm.is_model(args.model):
        close = difflib.get_close_matches(args.model, timm.list_models(), n=5)
        raise _fail(f"--model {args.model}: not a timm model" + (f"; close names: {', '.join(close)}" if close else ''))
    if args.device is not None:
        try:
            torch.empty(1, device=args.device)
        except (RuntimeError, AssertionError) as e:
            raise _fail(f"--device {args.device} is not usable here: {e}") from None
    per_mode: Dict[str, List[str]] = {}
    for item in args.set:
        mode, sep, kv = item.partition(':')
        if not sep:
            raise _fail(f"--set {item!r}: expected MODE:KEY=VALUE, e.g. {modes[0]}:prob=0.5")
        if mode not in members:
            raise _fail(f"--set {item!r}: {mode!r} is not among the modes benchmarked ({', '.join(sorted(members))})")
        per_mode.setdefault(mode, []).append(kv)
    try:
        options = {m: mode_options_from_strings(m, items) for m, items in per_mode.items()}
        results = bench_modes(modes, model=args.model, img_size=args.img_size, batch_size=args.batch_size,
                              num_classes=args.num_classes, device=args.device, amp_dtype=args.amp,
                              channels_last=args.channels_last, repeats=args.repeats, options=options)
    except (ValueError, RuntimeError, AssertionError, OSError) as e:     # OSError: a --set checkpoint file
        raise _fail(_explained(e, args)) from None
    memory = any('peak_memory' in r for r in results.values())
    print(f"{machine()}\n{args.model}, {args.img_size} px, batch {args.batch_size}"
          f"{', ' + args.amp if args.amp else ''}{', channels-last' if args.channels_last else ''}: "
          f"median of {args.repeats} interleaved repeats")
    straddling = [m for m, r in results.items() if r.get('around_forward')]
    if straddling:
        print(f"{', '.join(straddling)}: the call plus finalize() after the training forward (the forward itself "
              "is the step's own and is not counted)")
    if args.batch_size % 2:
        print(f"timm's Mixup (cutmix) is not timed: it needs an even batch, not {args.batch_size}")
    print()
    header = f"{'call':<22} {'ms':>10} {'/ train step':>13}" + (f" {'extra peak memory':>18}" if memory else '')
    print(header)
    for name, r in results.items():
        line = f"{name:<22} {r['seconds'] * 1000:>10.1f} {r['ratio']:>13.3f}"
        if memory:
            line += f" {r['peak_memory'] * 100:>17.0f}%"
        print(line)
    return 0
