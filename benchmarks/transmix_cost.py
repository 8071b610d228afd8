""" What TransMix adds to a training step: its call and the label completion after the forward, as a share of
the step, for vit_small_patch16_224 (class-token attention) and resnet50 (the extension's class maps) at 224 px.

The training step is forward, soft-target cross-entropy, backward and an SGD step of the model in train mode.
TransMix's work straddles the step's forward: the call mixes the batch before it, ``finalize`` completes the
labels after it. Both are timed, the forward between them is not (it is the step's own; the hook only keeps a
reference to a tensor inside it); see ``timm_camaug.bench.AroundTheForward``. Two settings: the default
(CutMix or Mixup per batch, switch probability 0.5: a Mixup batch completes nothing) and CutMix only, where every
batch is completed (the worst case). As a cross-check, a whole training step with TransMix (CutMix only) is timed
too: its excess over the plain step includes the hook inside the forward, but also the noise of two step
timings. For a model without a class token (the extension), SnapMix's call is timed too: the extension's target is
a tenth of SnapMix's cost. Everything is interleaved in one run; ratios are against the step measured in the same
run.

Run: ``python benchmarks/transmix_cost.py`` (``--quick``: batch 8, 3 repeats; ``--models``, ``--batch``).
"""
import argparse
import functools
import statistics
import sys
from contextlib import suppress
from pathlib import Path

import timm
from timm.loss import SoftTargetCrossEntropy
import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import machine, markdown_table, save_json, time_interleaved  # noqa: E402

from timm_camaug import create_mix_fn  # noqa: E402
from timm_camaug.bench import AroundTheForward  # noqa: E402

K = 200
TARGET = 0.03


def measure(model_name, size, batch, repeats, device, amp_dtype=None):
    dev = torch.device(device)
    amp = (functools.partial(torch.autocast, device_type=dev.type, dtype=getattr(torch, amp_dtype))
           if amp_dtype else suppress)
    torch.manual_seed(0)
    net = timm.create_model(model_name, num_classes=K).to(dev).train()
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
    x = torch.randn(batch, 3, size, size, device=dev)
    y = torch.randint(0, K, (batch,), device=dev)
    soft = F.one_hot(y, K).float()
    loss_fn = SoftTargetCrossEntropy()

    def step(target):
        with amp():
            out = net(x)
        loss = loss_fn(out.float(), target)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=False)

    cut_only = create_mix_fn('transmix', model=net, num_classes=K, device=dev, amp_autocast=amp, mixup_alpha=0.0,
                             data_config={'input_size': (3, size, size)}, generator=torch.Generator().manual_seed(0))

    def step_with_transmix():
        xm, target = cut_only(x, y)
        with amp():
            out = net(xm)
        loss = loss_fn(out.float(), cut_only.finalize(target))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=False)

    default = create_mix_fn('transmix', model=net, num_classes=K, device=dev, amp_autocast=amp,
                            data_config={'input_size': (3, size, size)}, generator=torch.Generator().manual_seed(1))
    straddle = {
        'transmix (default: CutMix or Mixup per batch)': AroundTheForward(default, net, amp, x, y, dev),
        'transmix, CutMix only (every batch completed)': AroundTheForward(
            create_mix_fn('transmix', model=net, num_classes=K, device=dev, amp_autocast=amp, mixup_alpha=0.0,
                          data_config={'input_size': (3, size, size)}, generator=torch.Generator().manual_seed(2)),
            net, amp, x, y, dev),
    }
    cutmix = timm.data.Mixup(mixup_alpha=0.0, cutmix_alpha=1.0, label_smoothing=0.0, num_classes=K)
    fns = {'train step': functools.partial(step, soft), **straddle,
           'timm Mixup (cutmix), for scale': lambda: cutmix(x.clone(), y),
           'train step with transmix (CutMix only)': step_with_transmix}
    if default.reader == 'cam':     # the extension's target: at most a tenth of SnapMix's cost
        snapmix = create_mix_fn('snapmix', model=net, num_classes=K, device=dev, amp_autocast=amp,
                                data_config={'input_size': (3, size, size)})
        fns['snapmix (call + finalize), for the extension\'s target'] = lambda: snapmix.finalize(snapmix(x, y)[1])
    times = time_interleaved(fns, repeats, dev)
    reader = default.reader
    rows, out = [], {}
    base = times['train step']
    for name, seconds in times.items():
        entry = {'seconds': seconds, 'ratio': seconds / base}
        if name in straddle:
            fn = straddle[name]
            entry['seconds'] = statistics.median(fn.seconds[-repeats:])
            entry['finalize_seconds'] = statistics.median(fn.finalize_seconds[-repeats:])
            entry['ratio'] = entry['seconds'] / base
        if name == 'train step with transmix (CutMix only)':
            entry['excess_ratio'] = (seconds - base) / base
        out[name] = entry
        rows.append([name, f"{entry['seconds'] * 1000:.1f}", f"{entry['ratio']:.4f}",
                     f"{entry['finalize_seconds'] * 1000:.1f}" if 'finalize_seconds' in entry else '-',
                     f"{entry['excess_ratio']:+.4f}" if 'excess_ratio' in entry else '-'])
    return reader, out, rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--models', default='vit_small_patch16_224,resnet50')
    ap.add_argument('--img-size', type=int, default=224)
    ap.add_argument('--batch', type=int, default=16)
    ap.add_argument('--repeats', type=int, default=5)
    ap.add_argument('--amp', default=None, choices=('bfloat16', 'float16'))
    ap.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    ap.add_argument('--quick', action='store_true', help='batch 8, 3 repeats')
    ap.add_argument('--json', default=None)
    args = ap.parse_args(argv)
    if args.quick:
        args.batch, args.repeats = 8, 3
    results = {}
    print(f'Machine: {machine()}\n')
    print(f'{args.img_size} px, batch {args.batch}{", " + args.amp if args.amp else ""}; median of {args.repeats} '
          f'interleaved repeats; target: transmix (call + completion) at most {TARGET} of a training step.\n')
    for name in args.models.split(','):
        reader, out, rows = measure(name, args.img_size, args.batch, args.repeats, args.device, args.amp)
        results[name] = {'reader': reader, 'results': out}
        print(f'{name} (labels from: {reader})\n')
        print(markdown_table(['call', 'ms', '/ train step', 'of which finalize, ms', 'excess over the step'], rows))
        worst = max(v['ratio'] for k, v in out.items() if k.startswith('transmix'))
        print(f'\nworst transmix ratio {worst:.4f}: {"within" if worst <= TARGET else "ABOVE"} the {TARGET} target')
        snap = next((v['ratio'] for k, v in out.items() if k.startswith('snapmix')), None)
        if snap is not None:
            print(f'extension against SnapMix: {worst / snap:.3f} of its cost (target: below 0.1)')
        print()
        print(f'done {name}', file=sys.stderr, flush=True)
    if args.json:
        save_json(args.json, {'machine': machine(), 'settings': vars(args), 'results': results})
    return results


if __name__ == '__main__':
    main()
