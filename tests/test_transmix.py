""" TransMix (timm_camaug.modes.transmix): the reference's label rule from the training forward, on stock timm
models; the extension to models without a class token; finalize's contract; start-up refusals. """
import argparse
import doctest
import gc
import logging
import math
import os
import subprocess
import warnings
from contextlib import contextmanager
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from timm_camaug import add_args, create_mix_fn, get_mode_class
from timm_camaug.cam import layer_maps
from timm_camaug.modes import transmix as transmix_module
from timm_camaug.loss import MixedTargetLoss
from timm_camaug.modes.transmix import (TransMix, cam_pasted_share, cell_box_cover, patch_box_mask,
                                        transmix_pasted_weight)
from timm_camaug.targets import smooth_one_hot

K = 5


def vit(**kw):
    torch.manual_seed(0)
    kw = dict(dict(img_size=32, patch_size=8), **kw)
    return timm.create_model('test_vit', num_classes=K, **kw).train()


def cnn(name='resnet18', **kw):
    torch.manual_seed(0)
    return timm.create_model(name, num_classes=K, **kw).train()


def build(model, size=32, seed=0, **kw):
    kw.setdefault('mixup_alpha', 0.0)       # CutMix batches unless a test asks for Mixup
    return create_mix_fn('transmix', model=model, num_classes=K, generator=torch.Generator().manual_seed(seed),
                         data_config={'input_size': (3, size, size)}, **kw)


def batch(n=4, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g), torch.randint(0, K, (n,), generator=g)


def hooks(model):
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())


# --- the reference's rule, reproduced

def reference_transmix_label(target, attn, input_shape):
    """Beckschen/TransMix ``Mixup_transmix.transmix_label`` (transmix.py, HEAD 0e4d31e), line for line; only the
    hard-coded ``.cuda()`` is dropped."""
    (_, y1, y2, box) = target
    lam0 = (box[1] - box[0]) * (box[3] - box[2]) / (input_shape[2] * input_shape[3])
    mask = torch.zeros((input_shape[2], input_shape[3]))
    mask[box[0]:box[1], box[2]:box[3]] = 1
    mask = nn.Upsample(size=int(math.sqrt(attn.shape[1])))(mask.unsqueeze(0).unsqueeze(0)).int()
    mask = mask.view(1, -1).repeat(len(attn), 1)  # (b, hw)
    w1, w2 = torch.sum((1 - mask) * attn, dim=1), torch.sum(mask * attn, dim=1)
    lam1 = w2 / (w1 + w2)  # (b, )
    lam = (lam0 + lam1) / 2  # ()+(b,) ratio=0.5
    target = y1 * (1. - lam).unsqueeze(1) + y2 * lam.unsqueeze(1)
    return target


@contextmanager
def unfused_softmax(attn_module):
    """The last attention switched to timm's unfused path; its softmax read where it enters the dropout (what the
    reference's patched model cloned): the independent recomputation the mode is checked against."""
    seen = []
    attn_module.fused_attn = False
    handle = attn_module.attn_drop.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach()))
    try:
        yield seen
    finally:
        handle.remove()
        attn_module.fused_attn = True


@pytest.mark.parametrize('smoothing', [0.0, 0.1])
@pytest.mark.parametrize('seed', range(4))
def test_reference_rule_from_the_training_forward(seed, smoothing):
    """Weights equal the reference's transmix_label on the attention of the same training forward (DropPath on)."""
    model = vit(img_size=64, drop_path_rate=0.1)
    mix = build(model, size=64, seed=seed, label_smoothing=smoothing)
    x, y = batch(n=6, size=64, seed=seed)
    params = mix.make_params(x, y)
    assert params.use_cutmix.all()
    x_mixed, target = mix.apply(x, y, params)
    with unfused_softmax(model.blocks[-1].attn) as seen:
        model(x_mixed)
    completed = mix.finalize(target)
    attn = seen[0][:, :, 0, 1:].mean(1)       # the patched model's reduction: class row, heads averaged
    y1 = smooth_one_hot(y, K, smoothing)
    box = tuple(int(v) for v in params.boxes[0])
    ref = reference_transmix_label((None, y1, y1.flip(0), box), attn, x.shape)
    torch.testing.assert_close(completed, ref, rtol=0, atol=1e-3)
    assert (completed - ref).abs().max() < 1e-5          # in fact to float32 rounding
    # and the mixed images are timm's CutMix of the flipped batch in that box
    expected = x.clone()
    yl, yh, xl, xh = box
    expected[:, :, yl:yh, xl:xh] = x.flip(0)[:, :, yl:yh, xl:xh]
    assert torch.equal(x_mixed, expected)


def test_reference_rule_against_the_original_file():
    """With TRANSMIX_REFERENCE set to Beckschen/TransMix's transmix.py (or its git directory), its own
    transmix_label equals the rule here on random attention and boxes."""
    value = os.environ.get('TRANSMIX_REFERENCE')
    if not value:
        pytest.skip('set TRANSMIX_REFERENCE to the reference transmix.py or the TransMix git directory')
    path = Path(value)
    src = path.read_text() if path.is_file() else subprocess.run(
        ['git', f'--git-dir={path}', 'show', 'HEAD:transmix.py'], capture_output=True, text=True, check=True).stdout
    namespace = {}
    real_cuda = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *a, **k: self          # the original hard-codes .cuda()
    try:
        exec(compile(src, 'transmix.py', 'exec'), namespace)
        label = namespace['Mixup_transmix'].transmix_label
        g = torch.Generator().manual_seed(0)
        for _ in range(5):
            attn = torch.rand(6, 196, generator=g).softmax(-1)
            y0, x0 = (int(v) for v in torch.randint(0, 200, (2,), generator=g))
            box = (y0, min(224, y0 + 60), x0, min(224, x0 + 90))
            y1 = smooth_one_hot(torch.randint(0, K, (6,), generator=g), K, 0.1)
            ref = label(None, (None, y1, y1.flip(0), box), attn, (6, 3, 224, 224))
            area = torch.full((6,), (box[1] - box[0]) * (box[3] - box[2]) / 224 ** 2)
            weight, _ = transmix_pasted_weight(attn, patch_box_mask(torch.tensor([box] * 6), (224, 224), (14, 14)),
                                               area, 0.5)
            torch.testing.assert_close(y1 * (1 - weight)[:, None] + y1.flip(0) * weight[:, None], ref)
    finally:
        torch.Tensor.cuda = real_cuda


@pytest.mark.parametrize('hw,grid', [((224, 224), (14, 14)), ((37, 53), (4, 6)), ((64, 48), (8, 6))])
def test_patch_mask_is_the_references_nearest_resize(hw, grid):
    g = torch.Generator().manual_seed(1)
    boxes = []
    for _ in range(20):
        y0, y1 = sorted(int(v) for v in torch.randint(0, hw[0] + 1, (2,), generator=g))
        x0, x1 = sorted(int(v) for v in torch.randint(0, hw[1] + 1, (2,), generator=g))
        boxes.append([y0, y1, x0, x1])
    boxes = torch.tensor(boxes)
    for b, got in zip(boxes, patch_box_mask(boxes, hw, grid)):
        full = torch.zeros(1, 1, *hw)
        full[..., b[0]:b[1], b[2]:b[3]] = 1
        assert torch.equal(got, F.interpolate(full, size=grid, mode='nearest').flatten())


def test_ratio_zero_is_cutmix_and_one_is_attention_only():
    model = vit()
    x, y = batch()
    out = {}
    for ratio in (0.0, 0.5, 1.0):
        mix = build(model, ratio=ratio, seed=3)
        params = mix.make_params(x, y)
        xm, t = mix.apply(x, y, params)
        model.eval()
        with torch.no_grad():
            model(xm)
        out[ratio] = (mix.finalize(t), t, params)
    area_target = out[0.0][1]                 # the call's own (timm CutMix, area) targets
    torch.testing.assert_close(out[0.0][0], area_target)
    p = out[1.0][2]
    torch.testing.assert_close(p.pasted_weight, p.evidence)
    torch.testing.assert_close(out[0.5][0], (out[0.0][0] + out[1.0][0]) / 2)


def test_completed_rows_sum_to_one_and_mix_two_labels():
    model = vit()
    mix = build(model, label_smoothing=0.1)
    x, y = batch(n=6)
    xm, t = mix(x, y)
    model(xm)
    done = mix.finalize(t)
    torch.testing.assert_close(done.sum(1), torch.ones(6))
    one_hot = smooth_one_hot(y, K, 0.1)
    perm = torch.arange(5, -1, -1)
    w = torch.linalg.lstsq(torch.stack([one_hot, one_hot[perm]], 2), done[:, :, None]).solution
    torch.testing.assert_close(torch.bmm(torch.stack([one_hot, one_hot[perm]], 2), w)[:, :, 0], done, rtol=1e-5, atol=1e-6)


# --- the extension: class maps of the final feature map

def test_extension_rule_by_hand():
    a = torch.tensor([[[1.0, -2.0], [0.0, 3.0]]])      # A's map: positive 1 (top-left), 3 (bottom-right)
    b = torch.tensor([[[2.0, 0.0], [-1.0, 4.0]]])      # B's map
    cover = torch.tensor([[[0.0, 0.0], [0.0, 0.5]]])   # the box covers half of the bottom-right cell
    # E_a = 1 + 3 * 0.5 = 2.5 ; E_b = 4 * 0.5 = 2 -> B's share 2 / 4.5
    torch.testing.assert_close(cam_pasted_share(a, b, cover, torch.tensor([0.1])), torch.tensor([2 / 4.5]))
    zero = torch.zeros(1, 2, 2)
    torch.testing.assert_close(cam_pasted_share(-a.abs(), zero, cover, torch.tensor([0.1])), torch.tensor([0.1]))


def test_cell_cover():
    cover = cell_box_cover(torch.tensor([[0, 16, 8, 32], [0, 0, 0, 0]]), (32, 32), (2, 2))
    torch.testing.assert_close(cover[0], torch.tensor([[0.5, 1.0], [0.0, 0.0]]))
    assert cover[1].sum() == 0
    assert torch.allclose(cell_box_cover(torch.tensor([[3, 29, 5, 31]]), (37, 41), (5, 6)).sum() * (37 * 41) / 30,
                          torch.tensor(26.0 * 26.0), rtol=1e-6)


@pytest.mark.parametrize('name,kw,size', [('resnet18', {}, 64), ('convnext_atto', {}, 64),
                                          ('vit_tiny_patch16_224', dict(img_size=32, global_pool='avg'), 32)])
def test_extension_equals_cam_engine_on_the_mixed_image(name, kw, size):
    """The extension's maps are the CAM engine's 'auto' maps of the mixed image for both labels (BatchNorm with
    the batch's statistics, as the training forward normalises)."""
    model = cnn(name, **kw)
    mix = build(model, size=size, seed=2)
    assert mix.reader == 'cam'
    x, y = batch(n=4, size=size, seed=2)
    y = torch.tensor([0, 1, 2, 3])
    params = mix.make_params(x, y)
    xm, t = mix.apply(x, y, params)
    model(xm)
    done = mix.finalize(t)
    perm = params.perm
    maps_a = layer_maps(model, xm, y, method='auto', target_layer='features', bn='batch').maps
    maps_b = layer_maps(model, xm, y[perm], method='auto', target_layer='features', bn='batch').maps
    cover = cell_box_cover(params.boxes, (size, size), maps_a.shape[-2:])
    area = params.area
    share = cam_pasted_share(maps_a, maps_b, cover, area)
    torch.testing.assert_close(params.evidence, share, rtol=1e-4, atol=1e-5)
    one_hot = smooth_one_hot(y, K)
    torch.testing.assert_close(done, (1 - share)[:, None] * one_hot + share[:, None] * one_hot[perm],
                               rtol=1e-4, atol=1e-5)


def test_auto_reads_attention_only_where_the_classifier_reads_the_class_token():
    assert build(vit()).reader == 'attention'
    assert build(vit(global_pool='avg')).reader == 'cam'
    assert build(cnn(), size=64).reader == 'cam'
    assert build(vit(global_pool='avg'), label_map='attention').reader == 'attention'
    distilled = timm.create_model('deit_tiny_distilled_patch16_224', img_size=32, num_classes=K)
    assert build(distilled).reader == 'attention'


# --- finalize's contract

def test_finalize_detaches_and_keeps_nothing():
    model = vit()
    mix = build(model)
    x, y = batch()
    xm, t = mix(x, y)
    assert hooks(model) == 1                      # the capture, while the CutMix batch is pending
    out = model(xm)
    assert out.requires_grad
    done = mix.finalize(t)
    assert not done.requires_grad and done.grad_fn is None
    assert hooks(model) == 0 and mix._capture.records == []
    model.eval()
    with torch.no_grad():                         # a validation forward: nothing captured
        model(x)
    assert mix._capture.records == [] and hooks(model) == 0


def test_finalize_errors():
    model = vit()
    mix = build(model)
    x, y = batch()
    with pytest.raises(RuntimeError, match=r'transmix: finalize\(\) without a pending mix'):
        mix.finalize(torch.zeros(4, K))
    xm, t = mix(x, y)
    with pytest.raises(RuntimeError, match=r'finalize\(\) found no training forward on the mixed batch'):
        mix.finalize(t)
    assert hooks(model) == 0                      # released even though it raised
    xm, t = mix(x, y)
    model(xm)
    mix.finalize(t)
    with pytest.raises(RuntimeError, match=r'finalize\(\) called twice for one mixed batch'):
        mix.finalize(t)
    xm, t = mix(x, y)
    for _ in range(5):
        model(xm)
    assert len(mix._capture.records) == 2           # enough to tell; a forgotten finalize cannot grow it
    with pytest.raises(RuntimeError, match=r'the model ran more than one forward between the mix and finalize\(\)'):
        mix.finalize(t)
    xm, t = mix(x, y)
    model(xm[:2])
    with pytest.raises(RuntimeError, match=r'ran on a batch of 2, not on the 4 mixed images'):
        mix.finalize(t)
    xm, t = mix(x, y)
    model(xm)
    with pytest.raises(ValueError, match=r'takes the \(4, 5\) soft target the call returned, got \(4,\)'):
        mix.finalize(y)
    assert hooks(model) == 0


def test_next_call_drops_an_unfinished_batch():
    model = vit()
    mix = build(model)
    x, y = batch()
    mix(x, y)
    assert hooks(model) == 1
    with pytest.warns(UserWarning, match=r'finalize\(target\) was not called after the forward'):
        xm, t = mix(x, y)          # no forward, no finalize for the first: dropped
    assert hooks(model) == 1
    model(xm)
    assert mix.finalize(t).shape == (4, K)
    assert hooks(model) == 0


@pytest.mark.parametrize('how', ['mixup', 'prob0', 'disabled'])
def test_batches_without_cutmix_finalize_to_their_target(how):
    model = vit()
    kw = {'mixup': dict(mixup_alpha=0.8, cutmix_alpha=0.0), 'prob0': dict(prob=0.0), 'disabled': {}}[how]
    mix = build(model, **kw)
    if how == 'disabled':
        mix.mixup_enabled = False
    x, y = batch()
    xm, t = mix(x, y)
    assert hooks(model) == 0               # nothing to read: no hook
    assert mix.finalize(t) is t            # without a forward: nothing to complete
    with pytest.raises(RuntimeError, match='called twice'):
        mix.finalize(t)


def test_no_memory_growth_over_1000_steps():
    """A training loop of 1,000 steps (mix, forward, finalize, loss, backward): no tensor, hook or capture kept."""
    torch.manual_seed(0)
    model = timm.create_model('test_vit', num_classes=K, img_size=16, patch_size=8, depth=1, embed_dim=16,
                              num_heads=2).train()
    mix = create_mix_fn('transmix', model=model, num_classes=K, generator=torch.Generator().manual_seed(0),
                        data_config={'input_size': (3, 16, 16)})
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = batch(n=4, size=16)

    def step():
        xm, t = mix(x, y)
        out = model(xm)
        loss = torch.sum(-mix.finalize(t) * F.log_softmax(out, -1), -1).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def live():
        gc.collect()
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))
    for _ in range(10):
        step()
    start = live()
    for _ in range(1000):
        step()
    assert live() <= start
    assert hooks(model) == 0 and mix._capture.records == [] and mix._pending is None


# --- precision, layout, modes, sizes

@pytest.mark.parametrize('amp_dtype', [torch.bfloat16, torch.float16], ids=['bf16', 'fp16'])
def test_autocast(amp_dtype):
    model = vit()
    x, y = batch(n=6)
    ref_mix = build(model, seed=4)
    xm, t = ref_mix(x, y)
    model.eval()
    with torch.no_grad():
        model(xm)
    ref = ref_mix.finalize(t)
    mix = build(model, seed=4)
    with torch.autocast('cpu', dtype=amp_dtype):
        xm2, t2 = mix(x, y)
        with torch.no_grad():
            model(xm2)
        done = mix.finalize(t2)
    assert done.dtype == torch.float32 and torch.isfinite(done).all()
    torch.testing.assert_close(done, ref, rtol=0, atol=2e-2)


def test_channels_last_cnn():
    model = cnn()
    x, y = batch(n=4, size=64)
    mix = build(model, size=64, seed=1)
    xm, t = mix(x, y)
    model.eval()
    with torch.no_grad():
        model(xm)
    ref = mix.finalize(t)
    model_cl = model.to(memory_format=torch.channels_last)
    mix = build(model_cl, size=64, seed=1)
    xm, t = mix(x.contiguous(memory_format=torch.channels_last), y)
    with torch.no_grad():
        model_cl(xm)
    torch.testing.assert_close(mix.finalize(t), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('mixup_mode', ['pair', 'elem'])
def test_pair_and_elem_modes_complete_each_row(mixup_mode):
    model = vit()
    x, y = batch(n=8, seed=5)
    for seed in range(20):          # a draw with both CutMix and Mixup rows
        mix = build(model, mixup_mode=mixup_mode, mixup_alpha=0.8, switch_prob=0.5, seed=seed)
        params = mix.make_params(x, y)
        cut = params.active & params.use_cutmix
        if cut.any() and (~cut).any():
            break
    xm, t = mix.apply(x, y, params)
    with unfused_softmax(model.blocks[-1].attn) as seen:
        model(xm)
    done = mix.finalize(t)
    assert cut.any() and (~cut).any()
    torch.testing.assert_close(done[~cut], t[~cut])         # blends keep timm's targets
    attn = seen[0][:, :, 0, 1:].mean(1)
    y1 = smooth_one_hot(y, K)
    for i in torch.nonzero(cut)[:, 0].tolist():
        box = tuple(int(v) for v in params.boxes[i])
        ref = reference_transmix_label((None, y1, y1.flip(0), box), attn, x.shape)
        torch.testing.assert_close(done[i], ref[i], rtol=0, atol=1e-5)


def test_odd_batch_middle_sample_is_its_own_partner():
    model = vit()
    mix = build(model)
    x, y = batch(n=5)
    xm, t = mix(x, y)
    model(xm)
    done = mix.finalize(t)
    assert torch.equal(xm[2], x[2])
    torch.testing.assert_close(done[2], smooth_one_hot(y, K)[2])
    with pytest.raises(ValueError, match='needs an even batch'):
        build(model, mixup_mode='pair')(x, y)


def test_input_size_changes_between_steps():
    model = vit(dynamic_img_size=True)
    mix = build(model)
    for size in (32, 48, 24, 32):
        x, y = batch(size=size, seed=size)
        xm, t = mix(x, y)
        model(xm)
        done = mix.finalize(t)
        assert done.shape == (4, K) and torch.isfinite(done).all()
        assert mix._pending is None


def test_replay():
    model = vit().eval()
    mix = build(model, seed=9, mixup_alpha=0.8)
    x, y = batch(seed=9)
    params = mix.make_params(x, y)
    results = []
    for _ in range(2):
        xm, t = mix.apply(x, y, params)
        with torch.no_grad():
            model(xm)
        results.append((xm, mix.finalize(t)))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


# --- start-up

class _Hidden(nn.Module):
    """A wrapper whose forward runs a traced copy of the model: hooks on the model's modules never fire."""

    def __init__(self, model, x):
        super().__init__()
        self.inner = model
        self.traced = torch.jit.trace(model.eval(), x, check_trace=False)
        self.cls_token, self.blocks, self.num_prefix_tokens = model.cls_token, model.blocks, 1
        self.patch_embed, self.num_classes, self.global_pool = model.patch_embed, K, 'token'

    def forward(self, x):
        return self.traced(x)


def _refused_models():
    return [
        ('no class token, no classifier', lambda: timm.create_model('resnet18', num_classes=0), {},
         r"transmix: ResNet has no class-token attention to read \(ResNet has no class token\) and no final feature "
         r"map and classifier to form class maps with \(ResNet has no classifier \(num_classes=0\)\)"),
        ('attention asked of a CNN', cnn, {'label_map': 'attention'},
         r"transmix: label_map='attention': ResNet has no class token; use label_map='cam'"),
        ('class maps asked of a class-token ViT', vit, {'label_map': 'cam'},
         r"transmix: label_map='cam': VisionTransformer's classifier reads its class token"),
        ('patch dropout', lambda: vit(patch_drop_rate=0.25), {},
         r'drops patch tokens in training \(patch_drop_rate > 0\)'),
        ('TorchScript', lambda: torch.jit.script(timm.create_model('resnet18', num_classes=K)), {},
         r'a TorchScript model runs no Python hooks'),
        ('hidden forward', lambda: _Hidden(vit(), torch.zeros(2, 3, 32, 32)), {},
         r"_Hidden's forward does not run inner.blocks.5.attn \(class-token attention, vit\) where a hook can see it"),
        ('wrong size', lambda: timm.create_model('vit_tiny_patch16_224', img_size=64, num_classes=K), {},
         r'transmix: VisionTransformer cannot take 32x32 inputs'),
        ('fewer classes', lambda: timm.create_model('test_vit', num_classes=3, img_size=32, patch_size=8), {},
         r'transmix: the model has 3 classes, fewer than num_classes=5'),
        ('no model', lambda: None, {}, r"transmix needs the model under training"),
    ]


@pytest.mark.filterwarnings('ignore::FutureWarning', 'ignore::torch.jit.TracerWarning')
@pytest.mark.parametrize('what,make,kw,message', _refused_models(), ids=[r[0] for r in _refused_models()])
def test_start_up_refusals(what, make, kw, message):
    with pytest.raises(ValueError, match=message):
        build(make(), **kw)


@pytest.mark.parametrize('kw,message', [
    (dict(ratio=1.5), r'transmix: ratio must be a number in \[0, 1\], got 1.5'),
    (dict(cam_ratio=-0.1), r'transmix: cam_ratio must be a number in \[0, 1\], got -0.1'),
    (dict(label_map='rollout'), r"transmix: label_map must be one of auto, attention, value, cam, got 'rollout'"),
    (dict(mixup_mode='row'), r'transmix: mixup_mode must be one of batch, pair, elem'),
    (dict(ratio='half'), r'transmix: ratio must be a number'),
    (dict(mixup_alpha=0.0, cutmix_alpha=0.0), r'must turn something on'),
])
def test_bad_options(kw, message):
    with pytest.raises(ValueError, match=message):
        create_mix_fn('transmix', model=vit(), num_classes=K, data_config={'input_size': (3, 32, 32)}, **kw)


def _args(*argv):
    parser = argparse.ArgumentParser()
    parser.add_argument('--num-classes', type=int, default=K)
    parser.add_argument('--smoothing', type=float, default=0.1)
    parser.add_argument('--torchcompile', nargs='?', const='inductor', default=None)
    parser.add_argument('--torchscript', action='store_true')
    add_args(parser, validate=False)
    return parser.parse_args(['--mix-mode', 'transmix', *argv])


def test_train_py_flags_defaults_and_checks():
    from timm_camaug import check_train_args
    args = _args()
    assert (args.transmix_prob, args.transmix_mixup_alpha, args.transmix_cutmix_alpha, args.transmix_switch_prob,
            args.transmix_ratio, args.transmix_mixup_mode, args.transmix_correct_lam, args.transmix_label_map,
            args.transmix_cam_ratio) == (1.0, 0.8, 1.0, 0.5, 0.5, 'batch', True, 'auto', 1.0)
    assert check_train_args(args) == []
    assert check_train_args(_args('--torchcompile')) == []        # the hook is kept from start-up instead
    assert any('--torchscript' in p for p in check_train_args(_args('--torchscript')))
    assert any('--transmix-ratio' in p for p in check_train_args(_args('--transmix-ratio', '2')))
    mix = create_mix_fn(_args('--torchcompile'), model=vit(), data_config={'input_size': (3, 32, 32)})
    assert mix.keep_hook and mix.label_smoothing == 0.1 and hooks(mix.model) == 1
    mix.close()
    assert hooks(mix.model) == 0
    assert not create_mix_fn(_args(), model=vit(), data_config={'input_size': (3, 32, 32)}).keep_hook


def test_class_declares_what_callers_ask():
    cls = get_mode_class('transmix')
    assert cls is TransMix
    assert cls.uses_model and cls.reads_training_forward and cls.needs_hooks and cls.guided_by_model
    assert cls.weights_sum_to_one and cls.mixes_pairs and cls.prob_per == 'batch' and cls.default_prob == 1.0


# --- preview and the fidelity measure

def test_regions_and_row_notes():
    model = vit()
    mix = build(model, seed=1)
    x, y = batch(seed=1)
    params = mix.make_params(x, y)
    xm, t = mix.apply(x, y, params)
    regions = mix.regions(params, (32, 32))
    assert regions.perm.tolist() == [3, 2, 1, 0] and torch.equal(regions.target, regions.source)
    assert mix.row_notes(params, y) == ['(label completed after the forward)'] * 4
    model(xm)
    done = mix.finalize(t)
    notes = mix.row_notes(params, y)
    w = float(params.pasted_weight[0])
    assert notes[0] == f'box: area {float(params.area[0]):.2f}, attention {float(params.evidence[0]):.2f}'
    torch.testing.assert_close(done[0, y[3]] if y[0] != y[3] else torch.tensor(w), torch.tensor(w))


def test_doctest():
    assert doctest.testmod(transmix_module, optionflags=doctest.ELLIPSIS).failed == 0


@pytest.mark.parametrize('cutmix', [True, False], ids=['cutmix', 'mixup'])
def test_batch_mode_mixes_as_timm_mixup(cutmix):
    """The batch-mode fast path gives timm's Mixup's own images and targets (TimmMixup with the same draws)."""
    from timm_camaug.modes.timm_mixup import TimmMixup
    kw = dict(mixup_alpha=0.0 if cutmix else 0.8, cutmix_alpha=1.0 if cutmix else 0.0)
    x, y = batch(n=6)
    mix = build(vit(), seed=3, label_smoothing=0.1, **kw)
    params = mix.make_params(x, y)
    xm, t = mix.apply(x, y, params)
    mix._drop_pending(warn=False)
    ref = TimmMixup(num_classes=K, label_smoothing=0.1, **kw)
    ref_x, ref_t = ref.apply(x, y, params)
    assert torch.equal(xm, ref_x) and torch.equal(t, ref_t)
    from timm.data import Mixup
    from timm_camaug.modes.timm_mixup import numpy_seeded
    timm_mixup = Mixup(num_classes=K, label_smoothing=0.1, **kw)
    with numpy_seeded(params.seed):          # timm's own call, under the numpy state the params were drawn with
        timm_x, timm_t = timm_mixup(x.clone(), y)
    assert torch.equal(xm, timm_x)
    torch.testing.assert_close(t, timm_t)


def test_share_measure_by_hand():
    """The label-fidelity measure's second part: |w_a/(w_a+w_b) - v_a/(v_a+v_b)|, undefined rows left out."""
    from timm_camaug import fidelity as fd
    w_a, w_b = torch.tensor([0.7, 0.5, 1.0, 0.0]), torch.tensor([0.3, 0.5, 0.0, 0.0])
    v_a, v_b = torch.tensor([0.5, 1.0, 0.0, 0.4]), torch.tensor([0.5, 0.0, 0.0, 0.2])
    e = fd.share_errors(w_a, w_b, v_a, v_b, keep=torch.tensor([True, True, True, True]))
    # row 2: no part visible; row 3: both weights 0 -> skipped
    torch.testing.assert_close(e.err, torch.tensor([0.2, 0.5], dtype=torch.float64))
    assert e.skipped == 2 and e.mae == pytest.approx(0.35)
    snap = fd.share_errors(torch.tensor([1.2]), torch.tensor([0.6]), torch.tensor([1.0]), torch.tensor([0.5]))
    assert snap.mae == pytest.approx(0.0)       # weights that do not sum to one are compared by their share


def test_member_of_a_schedule():
    """transmix:0.5+cutmix:0.5: the drawn member's finalize completes the labels."""
    model = vit()
    mix = create_mix_fn('transmix:0.5+cutmix:0.5', model=model, num_classes=K,
                        options={'transmix': {'mixup_alpha': 0.0}}, generator=torch.Generator().manual_seed(0),
                        data_config={'input_size': (3, 32, 32)})
    x, y = batch()
    drawn = set()
    for _ in range(8):
        params = mix.make_params(x, y)
        xm, t = mix.apply(x, y, params)
        model(xm)
        done = mix.finalize(t)
        assert hooks(model) == 0 and torch.isfinite(done).all()
        drawn.add(mix.drawn_name(params))
        if mix.drawn_name(params) == 'transmix':
            assert params.params.pasted_weight is not None     # completed from the forward
            torch.testing.assert_close(done.sum(1), torch.ones(4))
    assert drawn == {'transmix', 'cutmix'}


def test_gives_way_before_cam_start_epoch():
    """Until cam_start_epoch TransMix (its labels follow the model under training's attention) gives way to the
    rest of the schedule."""
    model = vit()
    mix = create_mix_fn('transmix:0.5+cutmix:0.5', model=model, num_classes=K, cam_start_epoch=2,
                        options={'transmix': {'mixup_alpha': 0.0}}, generator=torch.Generator().manual_seed(0),
                        data_config={'input_size': (3, 32, 32)})
    x, y = batch()
    drawn = []
    for epoch in (0, 1, 2, 3):
        mix.set_epoch(epoch)
        for _ in range(6):
            xm, t = mix(x, y)
            model(xm)
            mix.finalize(t)
            drawn.append((epoch, mix.last_drawn))
    assert all(name != 'transmix' for epoch, name in drawn if epoch < 2)
    assert any(name == 'transmix' for epoch, name in drawn if epoch >= 2)


def test_value_weighted_attention_by_hand():
    """label_map='value': each patch's share of the class token's attention output (attention weight times value,
    through the projection and LayerScale), centred, along each label's classifier row times the final norm's
    weight; then the extension's rule. Checked against the whole attention computed from the weights."""
    model = timm.create_model('deit3_small_patch16_224', img_size=32, num_classes=K).eval()    # LayerScale
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    mix = build(model, label_map='value', seed=4)
    assert mix.reader == 'value'
    x, y = batch(n=4, seed=4)
    params = mix.make_params(x, y)
    xm, t = mix.apply(x, y, params)
    seen = {}
    attn = model.blocks[-1].attn
    h = attn.register_forward_pre_hook(lambda m, a: seen.update(x=a[0].detach()))
    with torch.no_grad():
        model(xm)
    h.remove()
    done = mix.finalize(t)
    tokens = seen['x']
    b, n, d = tokens.shape
    qkv = F.linear(tokens, attn.qkv.weight, attn.qkv.bias).view(b, n, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
    a = ((qkv[0] @ qkv[1].transpose(-2, -1)) * attn.scale).softmax(-1)[:, :, 0]        # (B, H, N)
    per_token = (a[..., None] * qkv[2]).transpose(1, 2).reshape(b, n, d)
    parts = F.linear(per_token, attn.proj.weight) * model.blocks[-1].ls1.gamma
    parts = (parts - parts.mean(-1, keepdim=True))[:, 1:]
    rows = model.head.weight * model.norm.weight
    perm = params.perm
    maps = [torch.einsum('npd,nd->np', parts, rows[lab]).view(b, 2, 2) for lab in (y, y[perm])]
    share = cam_pasted_share(maps[0], maps[1], cell_box_cover(params.boxes, (32, 32), (2, 2)), params.area)
    torch.testing.assert_close(params.evidence, share, rtol=1e-4, atol=1e-5)
    one_hot = smooth_one_hot(y, K)
    torch.testing.assert_close(done, (1 - share)[:, None] * one_hot + share[:, None] * one_hot[perm], rtol=1e-4,
                               atol=1e-5)
    assert mix.row_notes(params, y)[0].startswith('box: area ')


def test_value_map_refusals():
    with pytest.raises(ValueError, match=r"label_map='value' needs a linear classifier of the class token"):
        build(vit(global_pool='avg'), label_map='value')
    with pytest.raises(ValueError, match=r"transmix: label_map='value': ResNet has no class token"):
        build(cnn(), size=64, label_map='value')


# --- a batch left without finalize, and class maps that give no evidence

UNFINALIZED = ("transmix: the labels of a mixed batch were left at CutMix's box-area rule because finalize(target) was "
               "not called after the forward; in the loop: loss = loss_fn(model(x), mix_fn.finalize(target)) "
               "(warned once)")


def _recorded(steps):
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter('always')
        steps()
    return [w for w in seen if issubclass(w.category, UserWarning)]


@pytest.mark.parametrize('spec', ['transmix', 'transmix:0.5+cutmix:0.5'])
def test_a_batch_left_without_finalize_warns_once(spec):
    """A loop that never calls finalize keeps CutMix's area labels: the next call says so, once per mix function,
    pointing at the caller's line (also through a schedule, whose member drops the batch)."""
    model = vit()
    mix = create_mix_fn(spec, model=model, num_classes=K, options={'transmix': {'mixup_alpha': 0.0}},
                        generator=torch.Generator().manual_seed(0), data_config={'input_size': (3, 32, 32)},
                        **({'mixup_alpha': 0.0} if spec == 'transmix' else {}))
    x, y = batch()

    def forgetful_loop():
        for _ in range(8):
            xm, t = mix(x, y)
            model(xm)               # the forward, then the loss on t without finalize

    (w,) = _recorded(forgetful_loop)
    assert str(w.message) == UNFINALIZED
    assert w.filename == __file__
    assert _recorded(forgetful_loop) == []          # once per instance
    if spec == 'transmix':
        assert hooks(model) == 1                    # the last batch still pending: close drops it, quietly
        assert _recorded(mix.close) == [] and hooks(model) == 0


def test_no_warning_when_finalize_is_called_or_has_nothing_to_complete():
    model = vit()
    x, y = batch()
    mix = build(model)
    loss_fn = MixedTargetLoss(nn.CrossEntropyLoss()).bind(mix)      # train.py's patched loss
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        for _ in range(3):                  # the documented loop
            xm, t = mix(x, y)
            model(xm)
            mix.finalize(t)
        for _ in range(3):                  # train.py's patched path: the wrapped loss finalizes
            xm, t = mix(x, y)
            loss_fn(model(xm), t).backward()
        mix(x, y)                           # close drops a pending batch without a warning
        mix.close()
        # Mixup and unmixed batches: finalize returns the target as it is, so dropping them loses nothing
        for kw in (dict(mixup_alpha=0.8, cutmix_alpha=0.0), dict(prob=0.0)):
            other = build(vit(), **kw)
            for _ in range(3):
                other(x, y)


def zero_head_resnet():
    torch.manual_seed(0)
    model = timm.create_model('test_resnet', num_classes=K).train()
    with torch.no_grad():
        model.get_classifier().weight.zero_()
    return model


def mixer():
    """timm's MLP-Mixer, whose head timm initialises to zero (small, for a CPU)."""
    from timm.models.mlp_mixer import MlpMixer
    torch.manual_seed(0)
    return MlpMixer(num_classes=K, img_size=32, patch_size=8, num_blocks=2, embed_dim=32).train()


def _fallback_warnings(caplog):
    return [r.getMessage() for r in caplog.records
            if r.name == transmix_module.__name__ and r.levelno == logging.WARNING]


@pytest.mark.parametrize('make', [zero_head_resnet, mixer], ids=['zeroed_head', 'mixer'])
def test_class_maps_without_evidence_warn_once(make, caplog):
    """A zero classifier gives all-zero class maps: every CutMix row falls back to the area share. Said once."""
    model = make()
    mix = build(model, size=32)
    assert mix.reader == 'cam'
    x, y = batch()
    with caplog.at_level(logging.WARNING, logger=transmix_module.__name__):
        for _ in range(3):
            params = mix.make_params(x, y)
            xm, t = mix.apply(x, y, params)
            model(xm)
            mix.finalize(t)
            torch.testing.assert_close(params.evidence, params.area)      # the fallback
    (message,) = _fallback_warnings(caplog)
    name = type(model).__name__
    assert message == (
        f"transmix: the class maps of {name} gave no evidence for any row of this CutMix batch (epoch 0), so their "
        f"labels fell back to CutMix's box-area rule; {name}'s classifier is all zeros (timm zero-initialises some "
        "heads, MLP-Mixer's among them), so its maps appear only once the head has trained; start from pretrained "
        "weights (train.py: --pretrained)")


def test_class_maps_with_evidence_do_not_warn(caplog):
    model = cnn('test_resnet')
    mix = build(model, size=32)
    x, y = batch()
    with caplog.at_level(logging.WARNING, logger=transmix_module.__name__):
        for seed in range(3):
            xm, t = mix(*batch(seed=seed))
            model(xm)
            mix.finalize(t)
        mix.set_epoch(1)
    assert _fallback_warnings(caplog) == []


def test_fallback_count_is_read_only_at_set_epoch_on_an_accelerator(monkeypatch, caplog):
    """On an accelerator the count stays on the device (no host sync per step) and is read at set_epoch."""
    monkeypatch.setattr(transmix_module._AreaFallbacks, 'on_host', property(lambda self: False))
    model = zero_head_resnet()
    mix = build(model, size=32)
    x, y = batch()
    with caplog.at_level(logging.WARNING, logger=transmix_module.__name__):
        for _ in range(3):
            xm, t = mix(x, y)
            model(xm)
            mix.finalize(t)
        assert _fallback_warnings(caplog) == []
        mix.set_epoch(1)
        (message,) = _fallback_warnings(caplog)
        assert message.startswith("transmix: the class maps of ResNet gave no evidence for any row of 3 of the last 3 "
                                  "CutMix batches (epoch 0), so their labels fell back to CutMix's box-area rule")
        mix.set_epoch(2)
        assert len(_fallback_warnings(caplog)) == 1
