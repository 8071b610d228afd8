""" Run several timm train.py invocations in one process (imports paid once) and record what happened.

Used by tests/test_train_py.py: ``python _train_py_runner.py PLAN.json``. PLAN holds ``runs`` (each: ``id``,
``script``, ``argv``, ``cwd``), ``result`` (where the JSON results go), and optionally ``threads`` (torch's
CPU threads) and ``sys_path``: folders put first on ``sys.path`` before anything imports timm, as
``python train.py`` puts the script's folder there (a checkout's own ``timm/`` package beside its train.py).
Each run executes the script as ``__main__`` with its argv; its log and stdout go to ``<cwd>/<id>.log``; the
results record which timm each run imported.

Probes (test instrumentation, not part of the plugin):
- the mix function a patched train.py builds is wrapped: every call records whether the parameters'
  ``.grad`` (accumulated micro-batches), parameters, buffers and training flags were left exactly as they
  were, the input's shape, whether the batch changed, the soft target's range, the epoch and
  ``mixup_enabled``; creation records what train.py passed as ``model`` (its class, and whether it is a
  wrapper such as torch.compile's OptimizedModule holding the plain module), what the mode holds, the
  mode's ``amp_autocast`` (train.py's ``functools.partial(torch.autocast, device_type=..., dtype=...)``:
  its keywords), whether the first conv weight is channels-last and whether a DropPath has drop_prob > 0;
- each timm/torch loss class's ``forward`` records its class when called with gradients enabled (the
  training loss; validation runs without);
- the wrapped train loss (``MixedTargetLoss``, patch part 6) records, at every call with gradients enabled, the
  shapes of the auxiliary outputs it added (Baseline+'s branch logits), and it is bound to the wrapped mix
  function, so each ``finalize`` records whether the targets were completed from the forward (TransMix), that
  they are detached and finite, the hooks left on the model after it and the dynamo graph count.
"""
import contextlib
import functools
import json
import logging
import os
import runpy
import sys
import time
import traceback

import torch
from torch import nn

CURRENT = {'run': None}
RESULTS = {}


def _record(key, value):
    RESULTS[CURRENT['run']].setdefault(key, []).append(value)


def _state(model):
    return (
        {n: None if p.grad is None else p.grad.detach().clone() for n, p in model.named_parameters()},
        {n: p.detach().clone() for n, p in model.named_parameters()},
        {n: b.detach().clone() for n, b in model.named_buffers()},
        [m.training for m in model.modules()],
    )


def _same(a, b):
    return a.keys() == b.keys() and all(
        (x is None and y is None) or (x is not None and y is not None and torch.equal(x, y))
        for x, y in ((a[k], b[k]) for k in a))


def _dynamo_graphs():
    try:
        from torch._dynamo.utils import counters
        return int(counters['stats'].get('unique_graphs', 0))
    except Exception:
        return -1


class ProbeMix:
    """Wraps a mix function; records every call, forwards set_epoch and mixup_enabled."""

    def __init__(self, inner, module):
        object.__setattr__(self, 'inner', inner)
        object.__setattr__(self, 'module', module)

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __setattr__(self, name, value):
        setattr(self.inner, name, value)

    def set_epoch(self, epoch):
        _record('set_epoch', int(epoch))
        self.inner.set_epoch(epoch)

    def __call__(self, x, target):
        grads, params, buffers, flags = _state(self.module)
        x_in = x.clone()
        out, soft = self.inner(x, target)
        grads2, params2, buffers2, flags2 = _state(self.module)
        _record('calls', {
            'target_in_ndim': int(target.ndim),
            'drawn': getattr(self.inner, 'last_drawn', None),
            'epoch': int(getattr(self.inner, 'epoch', -1)),
            'enabled': bool(self.inner.mixup_enabled),
            'shape': list(x.shape),
            'dtype': str(x.dtype),
            'grads_present': any(g is not None and bool(g.abs().sum() > 0) for g in grads.values()),
            'grads_intact': _same(grads, grads2),
            'params_intact': _same(params, params2),
            'buffers_intact': _same(buffers, buffers2),
            'flags_intact': flags == flags2,
            'input_intact': torch.equal(x, x_in),
            'changed': not torch.equal(out, x_in),
            'out_shape': list(out.shape),
            'target_shape': list(soft.shape),
            'target_min': float(soft.min()),
            'target_max': float(soft.max()),
            'target_finite': bool(torch.isfinite(soft).all()),
            'dynamo_graphs': _dynamo_graphs(),
        })
        return out, soft

    def finalize(self, target):
        """What a mode that reads the training forward made of it (the patched loss calls this before the loss)."""
        pending = getattr(self.inner, '_pending', None)
        reads = getattr(getattr(pending, 'capture', None), 'records', None)
        out = self.inner.finalize(target)
        _record('finalized', {
            'read_forward': reads is not None,      # a CutMix batch whose labels come from the forward
            'changed': not torch.equal(out, target),
            'requires_grad': bool(out.requires_grad),
            'sums_to_one': bool(torch.allclose(out.float().sum(1), torch.ones(out.shape[0]), atol=1e-5)),
            'finite': bool(torch.isfinite(out).all()),
            'hooks_after': _hooks(self.module),
            'training': bool(self.module.training),
            'grad_enabled': torch.is_grad_enabled(),
            'autocast': torch.is_autocast_enabled('cpu'),
            'dynamo_graphs': _dynamo_graphs(),
        })
        return out


def _hooks(module):
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in module.modules())


def _autocast_info(amp_autocast):
    """train.py's amp_autocast: ``contextlib.suppress`` (no --amp) or partial(torch.autocast, **keywords)."""
    if isinstance(amp_autocast, functools.partial):
        return {'func': getattr(amp_autocast.func, '__name__', repr(amp_autocast.func)),
                'is_torch_autocast': amp_autocast.func is torch.autocast,
                'device_type': str(amp_autocast.keywords.get('device_type')),
                'dtype': str(amp_autocast.keywords.get('dtype'))}
    return {'func': getattr(amp_autocast, '__name__', repr(amp_autocast)), 'is_torch_autocast': False,
            'device_type': None, 'dtype': None}


def _first_conv_channels_last(module):
    conv = next((m for m in module.modules() if isinstance(m, nn.Conv2d)), None)
    return conv is not None and conv.weight.dim() == 4 and conv.weight.shape[1] > 1 \
        and conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()


def _drop_path_active(module):
    return any(type(m).__name__ == 'DropPath' and float(getattr(m, 'drop_prob', 0) or 0) > 0
               for m in module.modules())


def install_probes():
    import timm.loss
    import timm_camaug.train_glue as glue
    from timm_camaug.loss import MixedTargetLoss
    create = glue.create_train_mix_fn

    def probing_create(args, model, data_config=None, amp_autocast=None, device=None, *more):
        mix_fn = create(args, model, data_config, amp_autocast, device, *more)
        module = glue.training_module(model)
        probe = ProbeMix(mix_fn, module)
        loss_fn = more[0] if more else None
        if isinstance(loss_fn, MixedTargetLoss):    # the patched loss completes targets through the probe
            loss_fn.bind(probe)
        mode_autocast = getattr(mix_fn, 'amp_autocast', amp_autocast)
        _record('created', {
            'given': type(model).__name__,
            'given_is_wrapper': model is not module,
            'given_holds_module': getattr(model, '_orig_mod', getattr(model, 'module', None)) is module,
            'module': type(module).__name__,
            'autocast_given': _autocast_info(amp_autocast),
            'autocast': _autocast_info(mode_autocast),
            'autocast_is_train_py_s': mode_autocast is amp_autocast,
            'channels_last': _first_conv_channels_last(module),
            'drop_path': _drop_path_active(module),
            'mode': type(mix_fn).__name__,
            'mode_model': type(getattr(mix_fn, 'model', module)).__name__,
            'holds_training_module': getattr(mix_fn, 'model', module) is module,
            'hooks_at_creation': _hooks(module),
        })
        return probe

    glue.create_train_mix_fn = probing_create

    import timm_camaug.loss as loss_module
    pop = loss_module.pop_auxiliary_outputs
    forward = loss_module.MixedTargetLoss.forward
    popped = []

    def pop_probe(model):
        out = pop(model)
        popped.append([list(t.shape) for t in out])
        return out

    def wrapped_loss_probe(self, output, target):
        popped.clear()
        loss = forward(self, output, target)
        if torch.is_grad_enabled() and CURRENT['run'] is not None:
            _record('auxiliary_losses', [shape for shapes in popped for shape in shapes])
        return loss
    loss_module.pop_auxiliary_outputs = pop_probe
    loss_module.MixedTargetLoss.forward = wrapped_loss_probe

    for cls in (timm.loss.SoftTargetCrossEntropy, timm.loss.BinaryCrossEntropy,
                timm.loss.LabelSmoothingCrossEntropy, timm.loss.JsdCrossEntropy, nn.CrossEntropyLoss):
        def wrap(cls=cls, forward=cls.forward):
            def forward_probe(self, *a, **kw):
                if torch.is_grad_enabled() and CURRENT['run'] is not None:
                    RESULTS[CURRENT['run']].setdefault('train_losses', [])
                    if cls.__name__ not in RESULTS[CURRENT['run']]['train_losses']:
                        RESULTS[CURRENT['run']]['train_losses'].append(cls.__name__)
                return forward(self, *a, **kw)
            cls.forward = forward_probe
        wrap()


def run_one(run):
    CURRENT['run'] = run['id']
    RESULTS[run['id']] = {'ok': False}
    os.makedirs(run['cwd'], exist_ok=True)
    log_path = os.path.join(run['cwd'], f"{run['id']}.log")
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    old_argv, old_cwd = sys.argv, os.getcwd()
    t0 = time.time()
    # train.py's setup_default_logging() adds a handler on the redirected stderr, i.e. this run's log
    with open(log_path, 'w') as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        try:
            os.chdir(run['cwd'])
            sys.argv = [run['script']] + list(run['argv'])
            runpy.run_path(run['script'], run_name='__main__')
            RESULTS[run['id']]['ok'] = True
        except SystemExit as e:
            RESULTS[run['id']]['ok'] = e.code in (0, None)
            RESULTS[run['id']]['error'] = f'SystemExit({e.code})'
        except BaseException:
            RESULTS[run['id']]['error'] = traceback.format_exc()
        finally:
            sys.argv = old_argv
            os.chdir(old_cwd)
            for h in list(root.handlers):
                root.removeHandler(h)
    RESULTS[run['id']]['seconds'] = round(time.time() - t0, 2)
    timm = sys.modules.get('timm')     # the timm the run imported (installed, or a checkout's own)
    RESULTS[run['id']]['timm'] = {'version': getattr(timm, '__version__', None),
                                  'dir': os.path.dirname(os.path.dirname(getattr(timm, '__file__', '') or ''))}
    RESULTS[run['id']]['log'] = log_path
    CURRENT['run'] = None


def main(plan_path):
    with open(plan_path) as f:
        plan = json.load(f)
    torch.set_num_threads(int(plan.get('threads', 0)) or max(1, min(2, os.cpu_count() or 1)))
    for folder in reversed(plan.get('sys_path', [])):
        sys.path.insert(0, folder)
    install_probes()
    for run in plan['runs']:
        run_one(run)
        with open(plan['result'], 'w') as f:      # written after every run, so a crash keeps the earlier ones
            json.dump(RESULTS, f, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1]))
