""" Cost of each mode per training step: its call's time divided by one plain training step of the same batch.

Next to timm's own ``Mixup`` (CutMix) and to the reference implementations (``references.py``: the authors'
algorithms written the way they wrote them), all measured in the same run. A training step is forward,
cross-entropy, backward and an SGD step of timm ``resnet50`` (200 classes) in train mode.

Peak memory (``--memory``): each measurement in a fresh process; the extra peak of "mode call + training
step" over "training step" alone, as a fraction of the latter (resident set size on CPU,
``max_memory_allocated`` on CUDA).

TransMix's work straddles the step's forward: its entry is its call plus ``finalize`` after the step's own
forward (not counted), and its peak memory a whole training step with it (``timm_camaug.bench.AroundTheForward``).

Run: ``python benchmarks/modes.py`` (``--quick``: 224 px, batch 16 only; ``--settings 224x16,448x16``: a choice).
"""
import argparse
import json
import resource
import statistics
import subprocess
import sys
from contextlib import suppress
from pathlib import Path

import timm
import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import machine, markdown_table, save_json, time_interleaved  # noqa: E402
import references  # noqa: E402

from timm_camaug import create_mix_fn  # noqa: E402
from timm_camaug.bench import AroundTheForward  # noqa: E402

K = 200
FULL = [(224, 16), (224, 32), (448, 16), (448, 32)]
QUICK = [(224, 16)]
# name -> (mode, options); the CAM modes also at half resolution (the reduced-scale CAM option)
OURS = {
    'snapmix': ('snapmix', {}),
    'snapmix cam_scale=0.5': ('snapmix', {'cam_scale': 0.5}),
    'saliencymix': ('saliencymix', {}),
    'saliencymix official': ('saliencymix', {'variant': 'official'}),
    'attentive': ('attentive', {}),
    'gutout': ('gutout', {}),
    'gutout cam_scale=0.5': ('gutout', {'cam_scale': 0.5}),
    'cam-erase': ('cam-erase', {'prob': 1.0}),
    'cam-erase cam_scale=0.5': ('cam-erase', {'prob': 1.0, 'cam_scale': 0.5}),
    # resnet50 has no class token: its labels come from the extension's class maps; CutMix batches only, each
    # completed after the step's own forward (call + finalize timed, the forward between them not)
    'transmix (CutMix only)': ('transmix', {'mixup_alpha': 0.0}),
}
# our variant -> reference it is compared with
VERSUS = {'snapmix': 'ref snapmix', 'saliencymix': 'ref saliencymix per-sample OpenCV',
          'saliencymix official': 'ref saliencymix official', 'gutout': 'ref gutout', 'attentive': 'ref attentive'}


def setup(size, batch, device):
    torch.manual_seed(0)
    model = timm.create_model('resnet50', num_classes=K).to(device).train()
    extractor = timm.create_model('resnet50', num_classes=0).to(device).eval()  # random weights: no download
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, K, (batch,), device=device)
    return model, extractor, opt, x, y


def train_step(model, opt, x, y):
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=False)


def build(name, model, extractor, device, size):
    mode, opts = OURS[name]
    if mode == 'attentive':
        opts = dict(opts, extractor=extractor)
    return create_mix_fn(mode, model=model, num_classes=K, device=device, prob=opts.pop('prob', 1.0),
                         data_config={'input_size': (3, size, size)}, **opts)


def functions(model, extractor, opt, x, y, device, size, with_refs=True):
    fns = {'train step': lambda: train_step(model, opt, x, y)}
    for name in OURS:
        mix = build(name, model, extractor, device, size)
        if mix.reads_training_forward:      # its work straddles the step's forward: call + finalize
            fns[name] = AroundTheForward(mix, model, suppress, x, y, device)
        else:
            fns[name] = (lambda mix=mix: mix.finalize(mix(x, y)[1]))
    cutmix = timm.data.Mixup(mixup_alpha=0.0, cutmix_alpha=1.0, label_smoothing=0.0, num_classes=K)
    fns['timm Mixup (cutmix)'] = lambda: cutmix(x.clone(), y)
    if with_refs:
        fns['ref snapmix'] = (lambda r=references.ReferenceSnapMix(model): r(x, y))
        fns['ref saliencymix official'] = (lambda r=references.ReferenceSaliencyMix(): r(x, y))
        fns['ref saliencymix per-sample OpenCV'] = (lambda r=references.ReferenceSaliencyMixPerSample(): r(x, y))
        fns['ref gutout'] = (lambda r=references.ReferenceGutout(model): r(x, y))
        fns['ref attentive'] = (lambda r=references.ReferenceAttentiveCutMix(extractor): r(x, y))
    return fns


def peak_memory_child(name, size, batch, device):
    """Run in a fresh process: (optional mix call +) one training step; print the peak memory in bytes."""
    device = torch.device(device)
    model, extractor, opt, x, y = setup(size, batch, device)
    fn = None if name == 'train step' else functions(model, extractor, opt, x, y, device, size)[name]
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(device)
    if isinstance(fn, AroundTheForward):    # a training step with the mode: call, forward, finalize, backward
        fn.training_step(opt)
    else:
        if fn is not None:
            fn()
        train_step(model, opt, x, y)
    if device.type == 'cuda':
        print(torch.cuda.max_memory_allocated(device))
    else:
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


def peak_memory(name, size, batch, device):
    out = subprocess.run([sys.executable, __file__, '--child', name, '--size', str(size), '--batch', str(batch),
                          '--device', str(device)], check=True, capture_output=True, text=True)
    return int(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--quick', action='store_true', help='224 px, batch 16 only')
    ap.add_argument('--settings', default=None, metavar='SIZExBATCH,...',
                    help='e.g. 224x16,448x16 (default: 224 and 448 px, batch 16 and 32)')
    ap.add_argument('--repeats', type=int, default=3)
    ap.add_argument('--memory', action='store_true', help='also measure peak memory (one process per entry)')
    ap.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    ap.add_argument('--json', default=None)
    ap.add_argument('--child', default=None, help=argparse.SUPPRESS)
    ap.add_argument('--size', type=int, default=224, help=argparse.SUPPRESS)
    ap.add_argument('--batch', type=int, default=16, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return peak_memory_child(args.child, args.size, args.batch, args.device)
    device = torch.device(args.device)
    results, rows = {}, []
    settings = QUICK if args.quick else FULL
    if args.settings:
        settings = [tuple(int(v) for v in item.split('x')) for item in args.settings.split(',')]
    for size, batch in settings:
        model, extractor, opt, x, y = setup(size, batch, device)
        fns = functions(model, extractor, opt, x, y, device, size)
        t = time_interleaved(fns, args.repeats, device)
        for name, fn in fns.items():
            if isinstance(fn, AroundTheForward):
                t[name] = statistics.median(fn.seconds[-args.repeats:])
        step = t['train step']
        entry = {k: {'seconds': v, 'ratio': v / step} for k, v in t.items()}
        if args.memory:
            base = peak_memory('train step', size, batch, device)
            for name in list(OURS) + ['timm Mixup (cutmix)']:
                entry[name]['extra_peak_memory'] = (peak_memory(name, size, batch, device) - base) / base
        results[f'{size}x{batch}'] = entry
        for name in list(OURS) + ['timm Mixup (cutmix)'] + [k for k in t if k.startswith('ref ')]:
            ref = VERSUS.get(name)
            rows.append([f'{size} px, batch {batch}', name, f"{t[name]:.3f}", entry[name]['ratio'],
                         f"{t[ref] / t[name]:.1f}x" if ref else '-',
                         f"{entry[name]['extra_peak_memory'] * 100:+.0f} %" if 'extra_peak_memory' in entry[name] else '-'])
        rows.append([f'{size} px, batch {batch}', 'train step (baseline)', f'{step:.3f}', 1.0, '-', '-'])
        print(f'done {size}px batch {batch}', file=sys.stderr, flush=True)
    print(f'Machine: {machine()}\n')
    print('Each call\'s median time (of %d interleaved repeats) divided by one training step of resnet50 on the '
          'same batch; "faster than reference" = the reference implementation\'s time / ours.\n' % args.repeats)
    print(markdown_table(['setting', 'call', 'seconds', '/ train step', 'faster than reference',
                          'extra peak memory'], rows))
    if args.json:
        save_json(args.json, {'machine': machine(), 'results': results})


if __name__ == '__main__':
    main()
