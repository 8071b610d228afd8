""" Run several timm train.py invocations in one process (imports paid once) and record what happened.

Used by tests/test_train_py.py: ``python _train_py_runner.py PLAN.json``. PLAN holds ``runs`` (each: ``id``,
``script``, ``argv``, ``cwd``) and ``result`` (where the JSON results go). Each run executes the script as
``__main__`` with its argv; its log and stdout go to ``<cwd>/<id>.log``.

Probes (test instrumentation, not part of the plugin):
- the mix function a patched train.py builds is wrapped: every call records whether the parameters'
  ``.grad`` (accumulated micro-batches), parameters, buffers and training flags were left exactly as they
  were, the input's shape, whether the batch changed, the soft target's range, the epoch and
  ``mixup_enabled``; creation records what train.py passed as ``model`` and what the mode holds;
- each timm/torch loss class's ``forward`` records its class when called with gradients enabled (the
  training loss; validation runs without).
"""
import contextlib
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


def install_probes():
    import timm.loss
    import timm_camaug.train_glue as glue
    create = glue.create_train_mix_fn

    def probing_create(args, model, *a, **kw):
        mix_fn = create(args, model, *a, **kw)
        module = glue.training_module(model)
        _record('created', {
            'given': type(model).__name__,
            'module': type(module).__name__,
            'mode': type(mix_fn).__name__,
            'mode_model': type(getattr(mix_fn, 'model', module)).__name__,
            'holds_training_module': getattr(mix_fn, 'model', module) is module,
        })
        return ProbeMix(mix_fn, module)

    glue.create_train_mix_fn = probing_create

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
    RESULTS[run['id']]['log'] = log_path
    CURRENT['run'] = None


def main(plan_path):
    with open(plan_path) as f:
        plan = json.load(f)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    install_probes()
    for run in plan['runs']:
        run_one(run)
        with open(plan['result'], 'w') as f:      # written after every run, so a crash keeps the earlier ones
            json.dump(RESULTS, f, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1]))
