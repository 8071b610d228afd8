""" The training step of a patched train.py under DistributedDataParallel: two CPU processes, gloo.

Stock train.py cannot run DDP on CPU (it passes ``device_ids`` for a CPU module), so this test runs train.py's
step itself: the mix function built by the patch's glue from a DDP-wrapped model, then forward/backward with
``no_sync`` on the accumulation micro-steps and an optimiser step, as train_one_epoch does. Each rank draws its
own batches and mixes; the replicas' parameters must stay identical, the mix must leave each rank's
accumulated gradients, parameters, buffers (BatchNorm running statistics) and modules' training flags
bit-for-bit as they were, and nothing may raise.
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
    return len(a) == len(b) and all(
        (x is None and y is None) or (x is not None and y is not None and torch.equal(x, y)) for x, y in zip(a, b))


def _state(ddp):
    """Everything of the DDP-wrapped model a mix must leave alone: parameters, named buffers, training flags."""
    return ([p.detach().clone() for p in ddp.parameters()],
            {n: b.detach().clone() for n, b in ddp.named_buffers()},
            [(n, m.training) for n, m in ddp.named_modules()])


def _worker(rank, init_file, checkpoint, result_dir):
    import timm
    from timm.loss import SoftTargetCrossEntropy
    from torch.nn.parallel import DistributedDataParallel as DDP

    from timm_camaug import add_args
    from timm_camaug.train_glue import create_train_mix_fn, wrap_train_loss

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
            loss_fn = wrap_train_loss(SoftTargetCrossEntropy(), args, ddp)   # patch part 6, as train.py calls it
            mix_fn = create_train_mix_fn(args, ddp, data_config={'input_size': (3, 48, 48)}, device='cpu',
                                         loss_fn=loss_fn, exit_on_error=False)
            problems = []       # recorded, not raised: one rank raising would leave the other in all_gather
            if mix_fn.uses_model and mix_fn.model is not model:
                problems.append('the mix function must hold the unwrapped module')
            mix_fn.set_epoch(0)
            opt = torch.optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9)
            g = torch.Generator().manual_seed(1000 + rank)      # each rank its own data
            torch.manual_seed(2000 + rank)                      # ... and its own mixes
            ddp.train()
            opt.zero_grad()
            accum_checked = buffers_checked = 0
            for step in range(STEPS):
                x = torch.randn(4, 3, 48, 48, generator=g)
                y = torch.randint(0, K, (4,), generator=g)
                before, (params, buffers, flags) = _grads(model), _state(ddp)
                x, target = mix_fn(x, y)
                params2, buffers2, flags2 = _state(ddp)
                if not _same(before, _grads(model)):
                    problems.append(f'step {step}: the mix changed the accumulated gradients')
                if not _same(params, params2):
                    problems.append(f'step {step}: the mix changed the parameters')
                if buffers.keys() != buffers2.keys() or not _same(list(buffers.values()), list(buffers2.values())):
                    changed = [n for n in buffers if n not in buffers2 or not torch.equal(buffers[n], buffers2[n])]
                    problems.append(f'step {step}: the mix changed buffers {changed[:5]}')
                if flags != flags2:
                    problems.append(f'step {step}: the mix changed training flags '
                                    f'{[a for a, b in zip(flags, flags2) if a != b][:5]}')
                buffers_checked += len(buffers) > 0
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
            report.append((mode, torch.equal(gathered[0], gathered[1]), accum_checked, buffers_checked, float(loss),
                           problems))
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
        for mode, identical, accum_checked, buffers_checked, loss, problems in report:
            assert not problems, f'{mode}: {problems}'
            assert identical, f'{mode}: the replicas diverged'
            assert accum_checked == STEPS // ACCUM, f'{mode}: no mix ran on accumulated gradients'
            assert buffers_checked == STEPS, f'{mode}: the buffers were not compared at every step'
            assert loss == loss and loss > 0, mode
