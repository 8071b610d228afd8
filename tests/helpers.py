""" Test helpers shared by several test files (fixtures live in conftest.py). """
import os

import torch

DEVICE_ENV = 'TIMM_CAMAUG_TEST_DEVICE'


def device_under_test() -> torch.device:
    """The device that the device-aware tests (the shared mode tests) run on: ``TIMM_CAMAUG_TEST_DEVICE``
    (default ``cpu``; ``cuda`` on a GPU machine, as ``benchmarks/gpu_check.sh`` sets it). conftest refuses a
    device this machine does not have, so a GPU run never passes on the CPU by mistake."""
    return torch.device(os.environ.get(DEVICE_ENV) or 'cpu')


def mix_step(mix_fn, model, x, target):
    """One training step's use of a mix function, as train.py makes it: the call, the forward on the mixed batch
    (modes that read it capture it), then ``finalize``. Returns (mixed batch, completed targets, output)."""
    xm, soft = mix_fn(x, target)
    output = model(xm) if model is not None else None
    return xm, mix_fn.finalize(soft), output


def no_grad_mix_step(mix_fn, model, x, target):
    with torch.no_grad():
        return mix_step(mix_fn, model, x, target)


def finalize_without_trace(mix_fn, model, xm, target):
    """``finalize`` after a forward that changes nothing in the model (eval mode, no grad, flags restored), for
    tests that check a mix call leaves the model as it found it: modes that read the training forward need
    one."""
    if mix_fn.reads_training_forward:
        flags = [(m, m.training) for m in model.modules()]
        model.eval()
        try:
            with torch.no_grad():
                model(xm)
        finally:
            for m, flag in flags:
                m.training = flag
    return mix_fn.finalize(target)
