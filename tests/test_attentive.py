""" Attentive CutMix: cell ranking, cell -> pixel blocks, label weights, frozen extractor, options and errors. """
import argparse
import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import timm
from conftest import assert_same_state, fill_grads, imagenet_normalize, pretrained_efficientnet_lite0, real_photo, \
    state_snapshot
from timm_camaug import add_args, create_mix_fn
from timm_camaug.extractor import HubUnreachableError
from timm_camaug.modes.attentive import AttentiveCutMix, AttentiveParams, top_cells
from timm_camaug.targets import smooth_one_hot

K = 10


@pytest.fixture(autouse=True)
def no_downloads(monkeypatch):
    """Any attempt to fetch pretrained weights is a test bug."""
    real = timm.create_model

    def guarded(*args, pretrained=False, **kwargs):
        assert not pretrained, 'a test tried to download pretrained weights'
        return real(*args, pretrained=pretrained, **kwargs)

    monkeypatch.setattr(timm, 'create_model', guarded)
    return real


class PoolExtractor(nn.Module):
    """Features = the input average-pooled to a grid: the cell ranking is the image's own brightness."""

    def __init__(self, grid=7, mean=None, std=None):
        super().__init__()
        self.grid = grid
        self.inputs = []
        if mean is not None:
            self.pretrained_cfg = dict(mean=mean, std=std)

    def forward_features(self, x):
        self.inputs.append(x.detach().clone())
        return F.adaptive_avg_pool2d(x, self.grid)


class ConvExtractor(nn.Module):
    """A small random CNN (conv, BatchNorm, dropout) on a 7x7 grid at 56 px; records its features."""

    def __init__(self, channels=16, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(3, channels, 8, stride=8)
        self.bn = nn.BatchNorm2d(channels)
        self.drop = nn.Dropout(0.5)
        with torch.no_grad():
            self.bn.running_mean.normal_()
            self.bn.running_var.uniform_(0.5, 2.0)
        self.features = []

    def forward_features(self, x):
        out = self.drop(self.bn(self.conv(x)))
        self.features.append(out.detach().clone())
        return out


class TokenExtractor(nn.Module):
    def forward_features(self, x):
        return x.flatten(2).transpose(1, 2)


def make_mode(extractor=None, **kw):
    kw.setdefault('num_classes', K)
    kw.setdefault('extractor_size', 56)
    return create_mix_fn('attentive', extractor=PoolExtractor() if extractor is None else extractor, **kw)


def batch(n=4, hw=(50, 70), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn((n, 3) + tuple(hw), generator=g), torch.arange(n) % K


def oracle_reduce(features: np.ndarray, reduce: str) -> np.ndarray:
    if reduce == 'mean':
        return features.mean(axis=1)
    if reduce == 'max':
        return features.max(axis=1)
    return np.sqrt((features.astype(np.float64) ** 2).sum(axis=1))


def oracle_mask(cells: np.ndarray, h: int, w: int) -> np.ndarray:
    """Cell (i, j) of a g_h x g_w grid covers rows i*H/g_h <= r < (i+1)*H/g_h (columns likewise)."""
    gh, gw = cells.shape
    mask = np.zeros((h, w), dtype=bool)
    for i, j in zip(*np.nonzero(cells)):
        rows = [r for r in range(h) if i * h <= r * gh < (i + 1) * h]
        cols = [c for c in range(w) if j * w <= c * gw < (j + 1) * w]
        mask[np.ix_(rows, cols)] = True
    return mask


def test_mix_shapes_targets_and_new_tensors():
    mode = make_mode(extractor=ConvExtractor(), generator=torch.Generator().manual_seed(0))
    x, y = batch(6)
    x0 = x.clone()
    x_mixed, soft = mode(x, y)
    assert x_mixed.shape == x.shape and x_mixed.dtype == x.dtype and x_mixed.device == x.device
    assert soft.shape == (6, K) and soft.dtype == torch.float32 and soft.device == x.device
    assert bool((soft >= 0).all())
    torch.testing.assert_close(soft.sum(1), torch.ones(6))
    assert torch.equal(x, x0) and x_mixed.data_ptr() != x.data_ptr()
    assert not isinstance(mode, nn.Module)
    assert 'grid=(7, 7)' in repr(mode) and 'ConvExtractor' in repr(mode)


@pytest.mark.parametrize('reduce', ['mean', 'max', 'l2'])
def test_cells_are_top_n_of_reduced_map_of_the_pasted_image(reduce):
    mode = make_mode(extractor=ConvExtractor(channels=32), reduce=reduce, top_n=5,
                     generator=torch.Generator().manual_seed(1))
    x, y = batch(6)
    params = mode.make_params(x, y)
    features = mode.extractor.features[-1].numpy()              # (N, 32, 7, 7) of this call
    maps = oracle_reduce(features, reduce)
    np.testing.assert_allclose(params.guidance.numpy(), maps, rtol=1e-5, atol=1e-6)
    perm = params.perm.numpy()
    assert (perm != np.arange(6)).any()
    assert params.cells.shape == (6, 7, 7) and params.cells.dtype == torch.bool
    assert params.cells.sum((1, 2)).tolist() == [5] * 6
    for i in range(6):
        order = np.argsort(-maps[perm[i]].ravel(), kind='stable')[:5]     # cells come from image A = x[perm[i]]
        assert set(np.flatnonzero(params.cells[i].numpy().ravel())) == set(order.tolist())
    # ranking by the last channel alone (a bug elsewhere) would pick other cells
    assert not torch.equal(params.cells, top_cells(torch.from_numpy(features[:, -1])[params.perm], 5))


def test_brightest_cells_of_the_source_image_are_pasted():
    """With a pooling extractor the cells are the brightest blocks of A; non-diagonal cells stay non-diagonal."""
    x = torch.zeros(2, 3, 56, 56)
    x[1, :, 8:16, 32:40] = 3.0                        # cell (1, 4) of image 1
    x[1, :, 48:56, 0:8] = 2.0                         # cell (6, 0) of image 1
    x[0, :, 24:32, 40:48] = 5.0                       # cell (3, 5) of image 0
    mode = make_mode(top_n=2)
    params = AttentiveParams(torch.ones(2, dtype=torch.bool), torch.tensor([1, 0]), None, None)
    maps = mode.guidance_maps(x)
    params.guidance, params.cells = maps, top_cells(maps[params.perm], 2)
    assert {tuple(c) for c in params.cells[0].nonzero().tolist()} == {(1, 4), (6, 0)}
    assert (3, 5) in {tuple(c) for c in params.cells[1].nonzero().tolist()}
    x_mixed, _ = mode.apply(x, torch.tensor([0, 1]), params)
    assert torch.equal(x_mixed[0, :, 8:16, 32:40], x[1, :, 8:16, 32:40])
    assert torch.equal(x_mixed[0, :, 48:56, 0:8], x[1, :, 48:56, 0:8])
    assert torch.equal(x_mixed[1, :, 24:32, 40:48], x[0, :, 24:32, 40:48])


@pytest.mark.parametrize('cell', [(0, 0), (1, 4), (4, 1), (6, 6), (3, 5), (6, 0)])
def test_cell_maps_to_its_pixel_block_non_divisible(cell):
    h, w = 50, 73
    mode = make_mode()
    x, y = batch(2, (h, w))
    cells = torch.zeros(2, 7, 7, dtype=torch.bool)
    cells[0][cell] = True
    params = AttentiveParams(torch.ones(2, dtype=torch.bool), torch.tensor([1, 0]), None, cells)
    x_mixed, soft = mode.apply(x, y, params)
    expected = torch.from_numpy(oracle_mask(cells[0].numpy(), h, w))
    changed = (x_mixed[0] != x[0]).any(0)
    assert torch.equal(changed, expected)
    assert torch.equal(x_mixed[0][:, expected], x[1][:, expected])
    assert torch.equal(x_mixed[1], x[1])                          # no cells for sample 1
    a = expected.sum().item() / (h * w)
    torch.testing.assert_close(soft[0, y[1]], torch.tensor(a))
    torch.testing.assert_close(soft[0, y[0]], torch.tensor(1 - a))


def test_all_cells_tile_the_image_exactly():
    h, w = 50, 73
    rows_cols = np.zeros((h, w), dtype=int)
    for i in range(7):
        for j in range(7):
            c = np.zeros((7, 7), dtype=bool)
            c[i, j] = True
            rows_cols += oracle_mask(c, h, w)
    assert (rows_cols == 1).all()
    mode = make_mode()
    x, y = batch(2, (h, w))
    params = AttentiveParams(torch.ones(2, dtype=torch.bool), torch.tensor([1, 0]), None,
                             torch.ones(2, 7, 7, dtype=torch.bool))
    x_mixed, soft = mode.apply(x, y, params)
    assert torch.equal(x_mixed, x.flip(0))
    torch.testing.assert_close(soft, smooth_one_hot(y.flip(0), K))


@pytest.mark.parametrize('hw', [(45, 61), (56, 56)])
def test_label_weight_is_each_samples_own_pasted_fraction(hw):
    h, w = hw
    n, top_n = 6, 7
    mode = make_mode(extractor=ConvExtractor(), top_n=top_n, generator=torch.Generator().manual_seed(3))
    x, y = batch(n, hw, seed=5)
    params = mode.make_params(x, y)
    x_mixed, soft = mode.apply(x, y, params)
    perm = params.perm.numpy()
    maps = oracle_reduce(mode.extractor.features[-1].numpy(), 'mean')
    weights, expected = [], np.zeros((n, K), dtype=np.float64)
    for i in range(n):
        cells = np.zeros(49, dtype=bool)
        cells[np.argsort(-maps[perm[i]].ravel(), kind='stable')[:top_n]] = True
        mask = oracle_mask(cells.reshape(7, 7), h, w)
        a = mask.sum() / (h * w)
        weights.append(a)
        expected[i, y[i]] += 1 - a
        expected[i, y[perm[i]]] += a
        np.testing.assert_array_equal(x_mixed[i].numpy(), np.where(mask, x[perm[i]].numpy(), x[i].numpy()))
    np.testing.assert_allclose(soft.numpy(), expected, atol=1e-6)
    if h % 7 == 0 and w % 7 == 0:
        np.testing.assert_allclose(weights, [top_n / 49] * n)
    else:
        assert len({round(a, 9) for a in weights}) > 1       # one mask's weight for the whole batch would fail


def test_apply_replays_exactly():
    mode = make_mode(extractor=ConvExtractor(), generator=torch.Generator().manual_seed(0), label_smoothing=0.1)
    x, y = batch(5)
    params = mode.make_params(x, y)
    a = mode.apply(x, y, params)
    b = mode.apply(x, y, params)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    mode2 = make_mode(extractor=ConvExtractor(), generator=torch.Generator().manual_seed(0), label_smoothing=0.1)
    c = mode2(x, y)
    assert torch.equal(a[0], c[0]) and torch.equal(a[1], c[1])


def test_seeded_generators_reproduce_and_differ():
    x, y = batch(8)
    outs = [make_mode(extractor=ConvExtractor(), generator=torch.Generator().manual_seed(s)).make_params(x, y)
            for s in (7, 7, 8)]
    assert torch.equal(outs[0].perm, outs[1].perm) and torch.equal(outs[0].cells, outs[1].cells)
    assert not torch.equal(outs[0].perm, outs[2].perm)


@pytest.mark.parametrize('switch', ['prob0', 'mixup_off'])
def test_unmixed_batches_keep_x_and_get_smoothed_one_hot(switch):
    mode = make_mode(prob=0.0 if switch == 'prob0' else None, label_smoothing=0.1)
    if switch == 'mixup_off':
        mode.mixup_enabled = False
    calls = len(mode.extractor.inputs)
    x, y = batch(4)
    x_mixed, soft = mode(x, y)
    assert torch.equal(x_mixed, x)
    torch.testing.assert_close(soft, smooth_one_hot(y, K, 0.1))
    assert len(mode.extractor.inputs) == calls                  # the extractor did not run


def test_batch_of_one_and_constant_images():
    mode = make_mode(extractor=ConvExtractor(), top_n=6)
    x, y = batch(1)
    x_mixed, soft = mode(x, y)
    assert torch.equal(x_mixed, x)
    torch.testing.assert_close(soft, smooth_one_hot(y, K))
    x = torch.full((4, 3, 50, 70), 0.7)
    params = mode.make_params(x, torch.arange(4))
    x_mixed, soft = mode.apply(x, torch.arange(4), params)
    assert params.cells.sum((1, 2)).tolist() == [6] * 4
    assert torch.isfinite(params.guidance).all() and torch.isfinite(x_mixed).all() and torch.isfinite(soft).all()
    torch.testing.assert_close(soft.sum(1), torch.ones(4))


def test_bf16_autocast_and_bf16_input():
    ext = ConvExtractor()
    mode = make_mode(extractor=ext, amp_autocast=functools.partial(torch.autocast, 'cpu', dtype=torch.bfloat16),
                     generator=torch.Generator().manual_seed(0))
    x, y = batch(4)
    params = mode.make_params(x, y)
    assert mode.extractor.features[-1].dtype == torch.bfloat16      # the extractor ran under autocast
    assert params.guidance.dtype == torch.float32 and params.cells.sum((1, 2)).tolist() == [6] * 4
    x_mixed, soft = mode.apply(x.bfloat16(), y, params)
    assert x_mixed.dtype == torch.bfloat16 and soft.dtype == torch.float32
    assert torch.isfinite(x_mixed.float()).all()


def test_channels_last_matches_contiguous():
    mode = make_mode(extractor=ConvExtractor(), generator=torch.Generator().manual_seed(0))
    x, y = batch(4)
    params = mode.make_params(x, y)
    xc = x.contiguous(memory_format=torch.channels_last)
    params_c = make_mode(extractor=ConvExtractor(), generator=torch.Generator().manual_seed(0)).make_params(xc, y)
    assert torch.equal(params.cells, params_c.cells)
    a, b = mode.apply(x, y, params), mode.apply(xc, y, params)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert b[0].is_contiguous(memory_format=torch.channels_last)


def test_extractor_frozen_in_eval_and_callers_objects_untouched():
    user_ext = ConvExtractor().train()
    user_state = state_snapshot(user_ext)
    model = timm.create_model('test_resnet', num_classes=K).train()
    fill_grads(model)
    model_state = state_snapshot(model)
    mode = create_mix_fn('attentive', model=model, num_classes=K, extractor=user_ext, extractor_size=56,
                         generator=torch.Generator().manual_seed(0))
    ext_state = state_snapshot(mode.extractor)
    assert mode.extractor is not user_ext
    assert not any(m.training for m in mode.extractor.modules())
    assert not any(p.requires_grad for p in mode.extractor.parameters())
    x, y = batch(4)
    p1, p2 = mode.make_params(x, y), mode.make_params(x, y)
    torch.testing.assert_close(p1.guidance, p2.guidance)                 # dropout off, BN on running statistics
    x_mixed, soft = mode.apply(x.requires_grad_(), y, p1)
    model.train()
    assert not any(m.training for m in mode.extractor.modules())
    assert_same_state(ext_state, state_snapshot(mode.extractor))
    assert all(p.grad is None for p in mode.extractor.parameters())
    assert_same_state(user_state, state_snapshot(user_ext))      # the caller's module keeps train mode, grads
    assert_same_state(model_state, state_snapshot(model))
    assert mode.extractor not in list(model.modules())


def test_batch_is_resized_to_extractor_size():
    mode = make_mode(extractor_size=56)
    x, y = batch(3, (50, 70))
    mode.make_params(x, y)
    seen = mode.extractor.inputs[-1]
    assert seen.shape == (3, 3, 56, 56)
    torch.testing.assert_close(seen, F.interpolate(x, size=(56, 56), mode='bilinear', align_corners=False,
                                                   antialias=True))
    x56, _ = batch(3, (56, 56))
    mode.make_params(x56, y)
    assert torch.equal(mode.extractor.inputs[-1], x56)               # same size, same stats: no work


def test_renormalised_to_the_extractors_mean_std():
    data_cfg = dict(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    mode = make_mode(extractor=PoolExtractor(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
                     data_config=data_cfg)
    pixels = torch.rand(2, 3, 56, 56, generator=torch.Generator().manual_seed(0))
    mode.make_params((pixels - 0.5) / 0.5, torch.arange(2))
    torch.testing.assert_close(mode.extractor.inputs[-1], imagenet_normalize(pixels), rtol=1e-5, atol=1e-5)
    # a timm model's own pretrained_cfg is used (test_resnet's is mean 0.5 / std 0.5)
    mode = make_mode(extractor=timm.create_model('test_resnet', num_classes=0), extractor_size=64, top_n=2)
    assert mode.extractor_mean == (0.5, 0.5, 0.5) and mode._renormalise


@pytest.fixture(scope='module')
def saved_test_resnet(tmp_path_factory):
    torch.manual_seed(0)
    model = timm.create_model('test_resnet', num_classes=K)          # a fine-tuned head: dropped on loading
    path = tmp_path_factory.mktemp('ckpt') / 'test_resnet.pth'
    torch.save(model.state_dict(), path)
    return model, path


@pytest.mark.parametrize('layout', ['plain', 'state_dict', 'model', 'state_dict_ema', 'ddp', 'safetensors'])
def test_extractor_checkpoint_layouts(layout, saved_test_resnet, tmp_path):
    model, _ = saved_test_resnet
    sd = model.state_dict()
    other = {k: torch.zeros_like(v) for k, v in sd.items()}
    path = tmp_path / ('w.safetensors' if layout == 'safetensors' else 'w.pth')
    if layout == 'safetensors':
        import safetensors.torch
        safetensors.torch.save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    else:
        ckpt = {
            'plain': sd,
            'state_dict': {'epoch': 3, 'arch': 'test_resnet', 'state_dict': sd, 'args': argparse.Namespace(lr=0.1)},
            'model': {'model': sd},
            'state_dict_ema': {'state_dict': other, 'state_dict_ema': sd},
            'ddp': {'state_dict': {f'module.{k}': v for k, v in sd.items()}},
        }[layout]
        torch.save(ckpt, path)
    mode = make_mode(extractor='test_resnet', extractor_checkpoint=str(path), extractor_size=64, top_n=2)
    loaded = mode.extractor.state_dict()
    assert 'fc.weight' not in loaded
    for k, v in loaded.items():
        assert torch.equal(v, sd[k]), k
    assert mode.grid == (2, 2) and not mode.extractor.training


def test_create_from_argparse_namespace(saved_test_resnet):
    _, path = saved_test_resnet
    parser = argparse.ArgumentParser()
    add_args(parser)
    defaults = parser.parse_args([])
    assert (defaults.attentive_extractor, defaults.attentive_extractor_checkpoint, defaults.attentive_extractor_size,
            defaults.attentive_top_n, defaults.attentive_reduce, defaults.attentive_prob) == \
        ('resnet50', None, 224, 6, 'mean', 1.0)
    args = parser.parse_args(['--mix-mode', 'attentive', '--attentive-extractor', 'test_resnet',
                              '--attentive-extractor-checkpoint', str(path), '--attentive-extractor-size', '64',
                              '--attentive-top-n', '3', '--attentive-reduce', 'l2', '--attentive-prob', '0.5'])
    args.num_classes, args.smoothing = K, 0.1
    mode = create_mix_fn(args, generator=torch.Generator().manual_seed(0))
    assert isinstance(mode, AttentiveCutMix)
    assert (mode.extractor_name, mode.extractor_size, mode.top_n, mode.reduce, mode.prob, mode.label_smoothing,
            mode.grid) == ('test_resnet', 64, 3, 'l2', 0.5, 0.1, (2, 2))
    with pytest.raises(SystemExit):
        parser.parse_args(['--attentive-reduce', 'median'])
    x_mixed, soft = mode(*batch(4))
    assert soft.shape == (4, K)


def test_top_n_errors_name_the_grid():
    with pytest.raises(ValueError, match=r"top_n=50 is out of range for the extractor's 7x7 grid \(1\.\.49\)"):
        make_mode(top_n=50)
    with pytest.raises(ValueError, match=r"top_n=5 is out of range for the extractor's 2x2 grid \(1\.\.4\)"):
        make_mode(extractor=PoolExtractor(grid=2), top_n=5)
    with pytest.raises(ValueError, match=r"top_n must be an int >= 1, got 0"):
        make_mode(top_n=0)


def test_option_errors():
    with pytest.raises(ValueError, match=r"unknown reduce 'median'; choose one of mean, max, l2"):
        make_mode(reduce='median')
    with pytest.raises(ValueError, match=r"unknown timm model 'resnet5x'; close names: .*resnet50"):
        make_mode(extractor='resnet5x')
    with pytest.raises(FileNotFoundError, match=r"extractor_checkpoint='.*nope\.pth' \(train.py: "
                                                r"--attentive-extractor-checkpoint\): it does not exist"):
        make_mode(extractor='resnet50', extractor_checkpoint='/nonexistent/nope.pth')
    with pytest.raises(ValueError, match=r"TokenExtractor gives features of shape \(1, 3136, 3\), not a spatial"):
        make_mode(extractor=TokenExtractor())
    vit = timm.create_model('test_vit', num_classes=0)
    with pytest.raises(ValueError, match=r"extractor 'VisionTransformer'.*not a spatial \(N, C, h, w\) feature map"):
        make_mode(extractor=vit, extractor_size=vit.pretrained_cfg['input_size'][-1])
    with pytest.raises(ValueError, match=r"timm has no pretrained weights for 'botnet50ts_256'.*extractor_checkpoint="):
        make_mode(extractor='botnet50ts_256')
    with pytest.raises(ValueError, match=r"extractor_checkpoint applies to a timm model name"):
        make_mode(extractor=PoolExtractor(), extractor_checkpoint='w.pth')
    with pytest.raises(TypeError, match=r"extractor must be a timm model name or an nn.Module, got int"):
        make_mode(extractor=3)
    with pytest.raises(TypeError, match=r"unknown option\(s\) topn"):
        make_mode(topn=3)


def test_checkpoint_of_another_architecture(saved_test_resnet):
    _, path = saved_test_resnet
    with pytest.raises(ValueError, match=r"extractor_checkpoint='.*test_resnet\.pth' \(train.py: "
                                         r"--attentive-extractor-checkpoint\): it does not match timm model "
                                         r"'test_efficientnet': missing keys"):
        make_mode(extractor='test_efficientnet', extractor_checkpoint=str(path))


def test_unreadable_checkpoint(tmp_path):
    path = tmp_path / 'broken.pth'
    path.write_bytes(b'not a checkpoint')
    with pytest.raises(ValueError, match=r"attentive: extractor_checkpoint='.*broken\.pth' \(train.py: "
                                         r"--attentive-extractor-checkpoint\): it is corrupt or not a weights file"):
        make_mode(extractor='test_resnet', extractor_checkpoint=str(path))


def test_download_failure_names_the_checkpoint_option(monkeypatch, no_downloads):
    errors = pytest.importorskip('huggingface_hub.errors')

    def offline(*args, pretrained=False, **kwargs):
        if pretrained:
            raise errors.LocalEntryNotFoundError(
                'An error happened while trying to locate the file on the Hub and we cannot find the requested '
                'files in the local cache.')
        return no_downloads(*args, pretrained=pretrained, **kwargs)

    monkeypatch.setattr(timm, 'create_model', offline)
    monkeypatch.setattr('timm_camaug.extractor._hub_problem', lambda url, timeout=None: None)   # the hub answers
    with pytest.raises(HubUnreachableError, match=r"could not download the pretrained weights of timm model 'resnet50'.*"
                                           r"extractor_checkpoint=<file> \(train.py: --attentive-extractor-checkpoint"):
        create_mix_fn('attentive', num_classes=K)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
@pytest.mark.cuda
def test_extractor_moves_to_the_input_device_once():
    user_ext = ConvExtractor()
    mode = make_mode(extractor=user_ext, generator=torch.Generator().manual_seed(0))
    x, y = batch(4)
    ref = mode.make_params(x, y)
    mode.generator.manual_seed(0)
    params = mode.make_params(x.cuda(), y.cuda())
    assert next(mode.extractor.parameters()).is_cuda and not next(user_ext.parameters()).is_cuda
    assert params.guidance.is_cuda and params.cells.is_cuda
    torch.testing.assert_close(params.guidance.cpu(), ref.guidance, rtol=1e-3, atol=1e-3)
    x_mixed, soft = mode.apply(x.cuda(), y.cuda(), params)
    assert x_mixed.is_cuda and soft.is_cuda
    mode = make_mode(extractor=user_ext, device='cuda')
    assert next(mode.extractor.parameters()).is_cuda


def test_real_photo_top_cells_lie_on_the_object():
    """Pretrained EfficientNet-Lite0: the top 6 of 49 cells fall on a photo placed in a 4x4-cell corner block."""
    model = pretrained_efficientnet_lite0()
    obj = real_photo('chelsea', 128)
    corners = [(0, 0), (0, 3), (3, 0), (3, 3)]                       # top-left cell of the 4x4 block
    pixels = torch.full((4, 3, 224, 224), 0.5)
    for k, (r, c) in enumerate(corners):
        pixels[k, :, r * 32:r * 32 + 128, c * 32:c * 32 + 128] = obj
    # data normalised with mean/std 0.5: the mode must re-normalise to the extractor's ImageNet statistics
    mode = create_mix_fn('attentive', num_classes=K, extractor=model, data_config=dict(mean=(0.5,) * 3, std=(0.5,) * 3),
                         generator=torch.Generator().manual_seed(0))
    x = (pixels - 0.5) / 0.5
    params = mode.make_params(x, torch.arange(4))
    with torch.no_grad():
        direct = model.forward_features(imagenet_normalize(pixels)).mean(1)
    torch.testing.assert_close(params.guidance, direct, rtol=1e-4, atol=1e-4)
    for k, (r, c) in enumerate(corners):
        top = top_cells(params.guidance[k:k + 1], 6)[0]
        on_object = int(top[r:r + 4, c:c + 4].sum())
        assert on_object >= 5, f'image {k}: only {on_object} of 6 top cells on the object (chance: about 2)'
    for i, j in enumerate(params.perm.tolist()):
        assert torch.equal(params.cells[i], top_cells(params.guidance[j:j + 1], 6)[0])
