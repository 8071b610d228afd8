""" TransMix inside a DistributedDataParallel training step: two CPU processes, gloo.

As tests/test_ddp_step.py does for every mode, this runs train.py's step itself (stock train.py cannot run DDP on
a CPU): the mix function and the wrapped loss built by the patch's glue from a DDP-wrapped model, then the
forward through DDP, the loss (which completes the targets from that forward: the hook sits on the module
inside DDP), backward with ``no_sync`` on the accumulation micro-steps, and an optimiser step. Each rank mixes
its own batch; the replicas must stay identical and every CutMix batch's labels must come from its own forward.
"""
import argparse
import os
from contextlib import nullcontext

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

WORLD = 2
K = 3
STEPS, ACCUM = 4, 2
MODELS = (('test_vit', dict(img_size=32, patch_size=8)), ('test_resnet', {}))


def _hooks(model):
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())


def _worker(rank, init_file, result_dir):
    import timm
    from timm.loss import SoftTargetCrossEntropy
    from torch.nn.parallel import DistributedDataParallel as DDP

    from timm_camaug import add_args
    from timm_camaug.train_glue import create_train_mix_fn, wrap_train_loss

    torch.set_num_threads(1)
    dist.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank, world_size=WORLD)
    report = []
    try:
        for name, kw in MODELS:
            torch.manual_seed(rank)             # replicas start different: DDP broadcasts rank 0's weights
            model = timm.create_model(name, num_classes=K, drop_path_rate=0.1, **kw)
            ddp = DDP(model)
            parser = argparse.ArgumentParser()
            add_args(parser)
            args = parser.parse_args(['--mix-mode', 'transmix', '--transmix-mixup-alpha', '0'])
            args.num_classes, args.smoothing, args.epochs, args.rank = K, 0.1, 1, rank
            loss_fn = wrap_train_loss(SoftTargetCrossEntropy(), args, ddp)
            mix_fn = create_train_mix_fn(args, ddp, data_config={'input_size': (3, 32, 32)}, device='cpu',
                                         loss_fn=loss_fn, exit_on_error=False)
            problems = []       # recorded, not raised: one rank raising would leave the other in all_gather
            if mix_fn.model is not model:
                problems.append('the mix function must hold the unwrapped module')
            completed = []
            finalize = mix_fn.finalize

            def recording_finalize(target):
                out = finalize(target)
                completed.append(not torch.equal(out, target))
                return out
            mix_fn.finalize = recording_finalize
            opt = torch.optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9)
            g = torch.Generator().manual_seed(1000 + rank)      # each rank its own data
            torch.manual_seed(2000 + rank)                      # ... and its own mixes
            ddp.train()
            opt.zero_grad()
            for step in range(STEPS):
                x = torch.randn(4, 3, 32, 32, generator=g)
                y = torch.randint(0, K, (4,), generator=g)
                x, target = mix_fn(x, y)
                need_update = (step + 1) % ACCUM == 0
                with (nullcontext() if need_update else ddp.no_sync()):
                    loss = loss_fn(ddp(x), target) / ACCUM
                    loss.backward()
                if _hooks(model):
                    problems.append(f'step {step}: a hook is left on the model after the loss')
                if need_update:
                    opt.step()
                    opt.zero_grad()
            flat = torch.cat([p.detach().flatten() for p in model.parameters()])
            gathered = [torch.empty_like(flat) for _ in range(WORLD)]
            dist.all_gather(gathered, flat)
            report.append((name, mix_fn.reader, torch.equal(gathered[0], gathered[1]), completed, float(loss),
                           problems))
    finally:
        dist.destroy_process_group()
    torch.save(report, os.path.join(result_dir, f'rank{rank}.pt'))


def test_transmix_ddp_two_cpu_processes(tmp_path):
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip('torch.distributed with the gloo backend is not available')
    mp.spawn(_worker, args=(str(tmp_path / 'init'), str(tmp_path)), nprocs=WORLD, join=True)
    for rank in range(WORLD):
        report = torch.load(tmp_path / f'rank{rank}.pt')
        assert [(name, reader) for name, reader, *_ in report] == [('test_vit', 'attention'), ('test_resnet', 'cam')]
        for name, _, identical, completed, loss, problems in report:
            assert not problems, f'{name}: {problems}'
            assert identical, f'{name}: the replicas diverged'
            assert len(completed) == STEPS and any(completed), f'{name}: labels never completed from the forward'
            assert loss == loss and loss > 0, name
