""" What a schedule costs: ``snapmix:0.5+cutmix:0.5`` against SnapMix alone, per call, on the same batches.

A batch pays only for the member that was drawn (no CAM forward on a CutMix batch), so the schedule should cost
about half of SnapMix per call on average (the target: 0.5 +- 0.1). The calls alternate (SnapMix, schedule,
SnapMix, ...) over the same batch so that drift affects both alike; the schedule's ratio is its mean time per
call over SnapMix's mean, and the share of batches that drew SnapMix is printed beside it (the ratio follows
that share: 0.5 drawn gives about 0.5, plus CutMix's own small cost).

Run: ``python benchmarks/schedule.py`` (``--quick``: resnet18 at 112 px, fewer calls).
"""
import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, markdown_table  # noqa: E402

import timm  # noqa: E402
from timm_camaug import create_mix_fn  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--model', default='resnet50')
    p.add_argument('--img-size', type=int, default=224)
    p.add_argument('--batch-size', type=int, default=16)
    p.add_argument('--calls', type=int, default=60, help='calls of each (default: 60)')
    p.add_argument('--quick', action='store_true', help='resnet18 at 112 px, batch 8, 30 calls')
    args = p.parse_args(argv)
    if args.quick:
        args.model, args.img_size, args.batch_size, args.calls = 'resnet18', 112, 8, 30
    return args


def main(argv=None):
    args = parse_args(argv)
    torch.manual_seed(0)
    model = timm.create_model(args.model, num_classes=200).train()
    common = dict(model=model, num_classes=200, data_config={'input_size': (3, args.img_size, args.img_size)})
    snapmix = create_mix_fn('snapmix', generator=torch.Generator().manual_seed(0), **common)
    schedule = create_mix_fn('snapmix:0.5+cutmix:0.5', generator=torch.Generator().manual_seed(1), **common)
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size)
    y = torch.randint(0, 200, (args.batch_size,))
    snapmix(x, y), schedule(x, y)       # warm-up
    t_snap, t_sched, drawn = [], [], []
    for _ in range(args.calls):
        t0 = time.perf_counter()
        snapmix.finalize(snapmix(x, y)[1])
        t_snap.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        schedule.finalize(schedule(x, y)[1])
        t_sched.append(time.perf_counter() - t0)
        drawn.append(schedule.last_drawn)
    mean_snap, mean_sched = sum(t_snap) / len(t_snap), sum(t_sched) / len(t_sched)
    share = drawn.count('snapmix') / len(drawn)
    cutmix_times = [t for t, d in zip(t_sched, drawn) if d == 'cutmix']
    snap_times = [t for t, d in zip(t_sched, drawn) if d == 'snapmix']
    per_cutmix = sum(cutmix_times) / max(1, len(cutmix_times))
    per_snap = sum(snap_times) / max(1, len(snap_times))
    expected = (0.5 * per_snap + 0.5 * per_cutmix) / mean_snap     # at the schedule's own probabilities
    print(f"Schedule snapmix:0.5+cutmix:0.5 against SnapMix alone, {args.model} at {args.img_size} px, batch "
          f"{args.batch_size}, {args.calls} alternating calls of each")
    print(f"machine: {machine()}\n")
    print(markdown_table(
        ['call', 'mean s per call', '/ snapmix', 'batches that drew snapmix'],
        [['snapmix', f'{mean_snap:.3f}', '1.00', '1.00'],
         ['snapmix:0.5+cutmix:0.5', f'{mean_sched:.3f}', f'{mean_sched / mean_snap:.2f}', f'{share:.2f}'],
         ['  its snapmix batches', f'{per_snap:.3f}', f'{per_snap / mean_snap:.2f}', '-'],
         ['  its cutmix batches', f'{per_cutmix:.3f}', f'{per_cutmix / mean_snap:.2f}', '-'],
         ['  at 0.5 / 0.5 (expected per call)', f'{expected * mean_snap:.3f}', f'{expected:.2f}', '0.50']]))
    print(f"\nTarget: 0.5 +- 0.1 of SnapMix's cost per call on average. The observed mean follows the share this run "
          f"drew ({share:.2f}); the last row weighs each member's measured cost by the schedule's probabilities.")
    return mean_sched / mean_snap, share, expected


if __name__ == '__main__':
    main()
