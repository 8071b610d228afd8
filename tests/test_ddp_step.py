""" The training step of a patched train.py under DistributedDataParallel: two CPU processes, gloo.

Stock train.py cannot run DDP on CPU (it passes ``device_ids`` for a CPU module), so this test runs train.py's
step itself: the mix function built by the patch's glue from a DDP-wrapped model, then forward/backward with
``no_sync`` on the accumulation micro-steps and an optimiser step, as train_one_epoch does. Each rank draws its
own batches and mixes; the replicas' parameters must stay identical, the mix must leave each rank's
accumulated gradients bit-for-bit as they were, and nothing may raise.
"""
import argparse
import os
from contextlib import nullcontext

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from timm_camaug import MIX_MODES

WORLD = 2
K = 3
STEPS, ACCUM = 4, 2


def _grads(model):
    return [None if p.grad is None else p.grad.clone() for p in model.parameters()]


def _same(a, b):
    return all((x is None and y is None) or (x is not None and y is not None and torch.equal(x, y))
               for x, y in zip(a, b))


def _worker(rank, init_file, checkpoint, result_dir):
    import timm
    from timm.loss import SoftTargetCrossEntropy
    from torch.nn.parallel import DistributedDataParallel as DDP

    from timm_camaug import add_args
    from timm_camaug.modes import CamGuidedMode
    from timm_camaug.train_glue import create_train_mix_fn

    torch.set_num_threads(1)
    dist.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank, world_size=WORLD)
    report = []
    try:
        for mode in MIX_MODES:
            torch.manual_seed(rank)                 # replicas start different: DDP broadcasts rank 0's weights
            model = timm.create_model('test_resnet', num_classes=K, drop_path_rate=0.1)
            ddp = DDP(model)
            parser = argparse.ArgumentParser()
            add_args(parser)
            argv = ['--mix-mode', mode]
            if mode == 'attentive':
                argv += ['--attentive-extractor', 'resnet18', '--attentive-extractor-checkpoint', checkpoint,
                         '--attentive-extractor-size', '64', '--attentive-top-n', '2']
            if mode == 'cam-erase':
                argv += ['--cam-erase-warmup-epochs', '0', '--cam-erase-prob', '1.0']
            args = parser.parse_args(argv)
            args.num_classes, args.smoothing, args.epochs, args.rank = K, 0.1, 1, rank
            mix_fn = create_train_mix_fn(args, ddp, data_config={'input_size': (3, 48, 48)}, device='cpu')
            if isinstance(mix_fn, CamGuidedMode):
                assert mix_fn.model is model, 'the mix function must hold the unwrapped module'
            mix_fn.set_epoch(0)
            opt = torch.optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9)
            loss_fn = SoftTargetCrossEntropy()
            g = torch.Generator().manual_seed(1000 + rank)      # each rank its own data
            torch.manual_seed(2000 + rank)                      # ... and its own mixes
            ddp.train()
            opt.zero_grad()
            accum_checked = 0
            for step in range(STEPS):
                x = torch.randn(4, 3, 48, 48, generator=g)
                y = torch.randint(0, K, (4,), generator=g)
                before = _grads(model)
                x, target = mix_fn(x, y)
                assert _same(before, _grads(model)), f'{mode}: the mix changed the accumulated gradients'
                accum_checked += any(b is not None for b in before)
                need_update = (step + 1) % ACCUM == 0
                with (nullcontext() if need_update else ddp.no_sync()):
                    loss = loss_fn(ddp(x), target) / ACCUM
                    loss.backward()
                if need_update:
                    opt.step()
                    opt.zero_grad()
            flat = torch.cat([p.detach().flatten() for p in model.parameters()])
            gathered = [torch.empty_like(flat) for _ in range(WORLD)]
            dist.all_gather(gathered, flat)
            report.append((mode, torch.equal(gathered[0], gathered[1]), accum_checked, float(loss)))
    finally:
        dist.destroy_process_group()
    torch.save(report, os.path.join(result_dir, f'rank{rank}.pt'))


def test_ddp_training_step_two_cpu_processes(tmp_path):
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip('torch.distributed with the gloo backend is not available')
    import timm
    checkpoint = tmp_path / 'resnet18.pth'
    torch.save(timm.create_model('resnet18').state_dict(), checkpoint)
    mp.spawn(_worker, args=(str(tmp_path / 'init'), str(checkpoint), str(tmp_path)), nprocs=WORLD, join=True)
    reports = [torch.load(tmp_path / f'rank{r}.pt') for r in range(WORLD)]
    for report in reports:
        assert [m for m, *_ in report] == list(MIX_MODES)
        for mode, identical, accum_checked, loss in report:
            assert identical, f'{mode}: the replicas diverged'
            assert accum_checked == STEPS // ACCUM, f'{mode}: no mix ran on accumulated gradients'
            assert loss == loss and loss > 0, mode
