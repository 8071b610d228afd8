""" The CAM engine: equivalence with pytorch-grad-cam, layer resolution, errors, and the training-step hazards. """
import gc
import os
import socket
import warnings

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from conftest import (assert_same_state, fill_grads, imagenet_normalize, pretrained_efficientnet_lite0, real_photo,
                      state_snapshot)
from timm_camaug import CAM_METHODS, class_activation_maps
from timm_camaug.cam import layer_maps, pool_linear_classifier, upsample_maps

pgc = pytest.importorskip('pytorch_grad_cam')
from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, XGradCAM  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

ORACLES = {'gradcam': GradCAM, 'gradcam++': GradCAMPlusPlus, 'xgradcam': XGradCAM, 'layercam': LayerCAM,
           'hirescam': HiResCAM, 'eigencam': EigenCAM}


def _minmax(m: torch.Tensor) -> torch.Tensor:
    m = m - m.amin((1, 2), keepdim=True)
    return m / (m.amax((1, 2), keepdim=True) + 1e-7)


@pytest.fixture(scope='module')
def resnet():
    torch.manual_seed(0)
    return timm.create_model('resnet18', num_classes=7).eval()


@pytest.fixture(scope='module')
def vit():
    torch.manual_seed(0)
    return timm.create_model('vit_tiny_patch16_224', num_classes=7, img_size=96).eval()


def _oracle_setup(name, model):
    if name == 'resnet':
        return model.layer4, None, 'layer4', (2, 3, 64, 80)
    def reshape(t):  # vit_tiny at 96 px: 6 x 6 patches behind one class token
        return t[:, 1:].reshape(t.shape[0], 6, 6, t.shape[2]).permute(0, 3, 1, 2)
    return model.blocks[-1].norm1, reshape, 'blocks.-1.norm1', (2, 3, 96, 96)


@pytest.mark.parametrize('net', ['resnet', 'vit'])
@pytest.mark.parametrize('method', sorted(ORACLES))
def test_equals_pytorch_grad_cam(net, method, resnet, vit):
    model = resnet if net == 'resnet' else vit
    layer, reshape, layer_name, shape = _oracle_setup(net, model)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    target = torch.tensor([3, 5])
    ours = layer_maps(model, x, target, method=method, target_layer=layer_name)
    with ORACLES[method](model=model, target_layers=[layer], reshape_transform=reshape) as cam:
        expected = torch.from_numpy(cam(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in target]))
        acts = cam.activations_and_grads.activations[0].numpy()
        grads = cam.activations_and_grads.gradients[0].numpy() if cam.activations_and_grads.gradients else None
        raw = torch.from_numpy(np.asarray(cam.get_cam_image(x, layer, None, acts, grads, False)))
    maps = ours.maps
    if method == 'eigencam':  # the SVD fixes a projection only up to its sign, per sample
        sign = torch.sign((maps * raw).sum((1, 2)))
        maps = maps * sign[:, None, None]
    # the raw, signed maps at the layer's grid
    torch.testing.assert_close(maps, raw.float(), rtol=1e-4, atol=1e-4 * float(raw.abs().max()))
    # and pytorch-grad-cam's post-processing (ReLU, min-max, resize, min-max) of them: its final output
    processed = _minmax(upsample_maps(_minmax(F.relu(maps)), x.shape[-2:]))
    assert (processed - expected).abs().max() < 1e-3
    if method != 'eigencam':
        assert torch.equal(ours.target, target)


def test_full_resolution_is_bilinear_upsampling_of_the_grid(resnet):
    x = torch.randn(3, 3, 70, 50)
    full = class_activation_maps(resnet, x, 2, method='gradcam')
    grid = layer_maps(resnet, x, 2, method='gradcam').maps
    assert full.shape == (3, 70, 50) and full.dtype == torch.float32
    torch.testing.assert_close(full, F.interpolate(grid[:, None], size=(70, 50), mode='bilinear',
                                                   align_corners=False)[:, 0])


def test_closed_form_cam_is_gradcam_times_grid_size(resnet):
    x = torch.randn(4, 3, 64, 64)
    t = torch.tensor([0, 1, 2, 6])
    cam = layer_maps(resnet, x, t, method='cam')
    grad = layer_maps(resnet, x, t, method='gradcam')
    assert cam.method == 'cam'
    h, w = cam.maps.shape[-2:]
    torch.testing.assert_close(cam.maps, grad.maps * (h * w), rtol=1e-4, atol=1e-5)
    auto = layer_maps(resnet, x, t, method='auto')
    assert auto.method == 'cam' and torch.equal(auto.maps, cam.maps)


def test_predicted_class_by_default(resnet):
    x = torch.randn(5, 3, 64, 64)
    with torch.no_grad():
        pred = resnet(x).argmax(1)
    for method in ('cam', 'gradcam', 'eigencam'):
        lm = layer_maps(resnet, x, None, method=method)
        assert torch.equal(lm.target, pred)
    torch.testing.assert_close(class_activation_maps(resnet, x), class_activation_maps(resnet, x, pred))


@pytest.mark.parametrize('name,kwargs,size,auto_method,layout', [
    ('resnet18', {}, 64, 'cam', 'NCHW'),
    ('resnext26ts', {}, 64, 'cam', 'NCHW'),
    ('densenet121', {}, 64, 'cam', 'NCHW'),
    ('efficientnet_b0', {}, 64, 'cam', 'NCHW'),
    ('mobilenetv3_small_100', {}, 64, 'gradcam', 'NCHW'),   # conv_head after the pool: not pool + linear
    ('regnetx_002', {}, 64, 'cam', 'NCHW'),
    ('convnext_atto', {}, 64, 'gradcam', 'NCHW'),           # pool, norm, linear
    ('vit_tiny_patch16_224', {'img_size': 64}, 64, 'gradcam', 'tokens'),
    ('deit_tiny_distilled_patch16_224', {'img_size': 64}, 64, 'gradcam', 'tokens'),
    ('swin_tiny_patch4_window7_224', {}, 224, 'cam', 'NHWC'),
])
def test_model_families(name, kwargs, size, auto_method, layout):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=5, **kwargs).eval()
    x = torch.randn(2, 3, size, size)
    lm = layer_maps(model, x, torch.tensor([1, 4]), method='auto')
    assert lm.method == auto_method
    if layout == 'tokens':
        assert lm.layer.name == f'blocks.{len(model.blocks) - 1}.norm1'
        assert lm.maps.shape[-2:] == (size // 16, size // 16)
    else:
        assert lm.layer.name == 'features' and lm.layer.layout == layout
    maps = class_activation_maps(model, x, torch.tensor([1, 4]))
    assert maps.shape == (2, size, size) and torch.isfinite(maps).all()
    assert maps.flatten(1).std(1).min() > 0
    if auto_method == 'cam':  # the closed form is Grad-CAM up to a positive per-sample scale
        g = class_activation_maps(model, x, torch.tensor([1, 4]), method='gradcam')
        scale = (maps * g).sum((1, 2)) / (g * g).sum((1, 2))
        assert (scale > 0).all()
        torch.testing.assert_close(maps, g * scale[:, None, None], rtol=1e-3, atol=1e-3 * float(maps.abs().max()))


def test_deit_distilled_prefix_tokens_dropped():
    torch.manual_seed(0)
    model = timm.create_model('deit_tiny_distilled_patch16_224', num_classes=3, img_size=64).eval()
    assert model.num_prefix_tokens == 2
    lm = layer_maps(model, torch.randn(1, 3, 64, 64), 0)
    assert lm.maps.shape == (1, 4, 4)


def test_named_layer_and_module(resnet):
    x = torch.randn(2, 3, 64, 64)
    by_name = layer_maps(resnet, x, 1, method='gradcam', target_layer='layer3')
    by_module = layer_maps(resnet, x, 1, method='gradcam', target_layer=resnet.layer3)
    assert by_name.maps.shape == (2, 4, 4)
    torch.testing.assert_close(by_name.maps, by_module.maps)
    # the last stage named explicitly gives the final feature map's Grad-CAM
    torch.testing.assert_close(layer_maps(resnet, x, 1, method='gradcam', target_layer='layer4').maps,
                               layer_maps(resnet, x, 1, method='gradcam').maps, rtol=1e-5, atol=1e-6)


def test_plain_torch_module_with_named_layer():
    tv = pytest.importorskip('torchvision')
    model = tv.models.resnet18(num_classes=4).eval()
    maps = class_activation_maps(model, torch.randn(2, 3, 64, 64), 1, target_layer='layer4')
    assert maps.shape == (2, 64, 64)
    with pytest.raises(ValueError, match='cannot choose a default target layer for ResNet'):
        class_activation_maps(model, torch.randn(2, 3, 64, 64), 1)


class _NoSpatial(nn.Module):
    num_classes = 3

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 3)

    def forward_features(self, x):
        return x.mean((2, 3))

    def forward_head(self, x):
        return self.fc(x)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


def test_errors(resnet):
    x = torch.randn(2, 3, 64, 64)
    with pytest.raises(ValueError, match=r'x must have shape \(N, C, H, W\), got \(3, 64, 64\)'):
        class_activation_maps(resnet, x[0])
    with pytest.raises(ValueError, match='unknown CAM method .gradcamm.'):
        class_activation_maps(resnet, x, method='gradcamm')
    with pytest.raises(ValueError, match='target 7 is out of range for a model with 7 classes'):
        class_activation_maps(resnet, x, torch.tensor([0, 7]))
    with pytest.raises(ValueError, match=r'target must be None, an int or a \(2,\) tensor'):
        class_activation_maps(resnet, x, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="no module named 'layer5' in ResNet; close names: layer4, layer3"):
        class_activation_maps(resnet, x, target_layer='layer5')
    with pytest.raises(ValueError, match='has no classifier .num_classes=0.'):
        class_activation_maps(timm.create_model('resnet18', num_classes=0), x)
    with pytest.raises(ValueError, match='_NoSpatial has no spatial feature map'):
        class_activation_maps(_NoSpatial(), x, method='gradcam')
    with pytest.raises(ValueError, match="method='cam' needs .* global-average-pool"):
        class_activation_maps(timm.create_model('convnext_atto', num_classes=3), x, method='cam')
    with pytest.raises(ValueError, match='x must be a float tensor'):
        class_activation_maps(resnet, x.to(torch.uint8))


def test_pool_linear_probe():
    assert pool_linear_classifier(timm.create_model('resnet18', num_classes=3)) is not None
    assert pool_linear_classifier(timm.create_model('resnet18', num_classes=3, global_pool='avgmax')) is None
    assert pool_linear_classifier(timm.create_model('convnext_atto', num_classes=3)) is None


@pytest.mark.parametrize('pool', ['avg', 'max'])
def test_probe_follows_reset_classifier(pool):
    """The cached head probe is redone when reset_classifier replaces the head: maps as for a fresh model."""
    import copy
    torch.manual_seed(0)
    model = timm.create_model('resnet18', num_classes=7).eval()
    x = torch.randn(2, 3, 64, 64)
    assert layer_maps(model, x, 1).method == 'cam'          # probed (pool + linear) and cached
    torch.manual_seed(1)
    model.reset_classifier(3, global_pool=pool)
    fresh = copy.deepcopy(model)                            # never probed
    lm, expected = layer_maps(model, x, 2), layer_maps(fresh, x, 2)
    assert lm.method == expected.method == ('cam' if pool == 'avg' else 'gradcam')
    assert lm.logits.shape == (2, 3)
    torch.testing.assert_close(lm.maps, expected.maps)


class _InplaceNet(nn.Module):
    """A timm-like classifier whose target layer and feature map are followed by in-place ReLUs."""
    num_classes = 4

    def __init__(self, inplace: bool):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.body = nn.Conv2d(8, 16, 3, padding=1)
        self.act = nn.ReLU(inplace=inplace)
        self.head_act = nn.ReLU(inplace=inplace)
        self.fc = nn.Linear(16, 4)

    def forward_features(self, x):
        return self.body(self.stem(x))

    def forward_head(self, x):
        return self.fc(self.head_act(x).mean((2, 3)))

    def forward(self, x):
        x = self.act(self.stem(x))
        return self.forward_head(self.body(x))


@pytest.mark.parametrize('method', ['gradcam', 'hirescam', 'eigencam'])
@pytest.mark.parametrize('layer', ['stem', None], ids=['hooked-layer', 'final-features'])
def test_inplace_op_after_the_target_layer(method, layer):
    """ReLU(inplace=True) right after the target layer (or first in the head) neither fails nor changes the map."""
    torch.manual_seed(0)
    model = _InplaceNet(inplace=True).eval()
    reference = _InplaceNet(inplace=False).eval()
    reference.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 16, 16)
    lm = layer_maps(model, x, torch.tensor([1, 3]), method=method, target_layer=layer)
    expected = layer_maps(reference, x, torch.tensor([1, 3]), method=method, target_layer=layer)
    assert (lm.maps < 0).any(), 'the activation must be read before the ReLU'
    torch.testing.assert_close(lm.maps, expected.maps)
    torch.testing.assert_close(lm.logits, expected.logits)
    # the head starts with a ReLU: it is not global-average-pool + linear, even when that ReLU works in place
    assert layer_maps(model, x, 1, method='auto').method == 'gradcam'
    with pytest.raises(ValueError, match="method='cam' needs the final feature map and a global-average-pool"):
        layer_maps(model, x, 1, method='cam')


def test_inplace_relu_after_a_timm_layer():
    """timm's BasicBlock applies act1 = ReLU(inplace=True) to bn1's output: maps there are bn1's own output's."""
    torch.manual_seed(0)
    model = timm.create_model('resnet18', num_classes=7, zero_init_last=False).eval()
    x = torch.randn(2, 3, 64, 64)
    t = torch.tensor([3, 5])
    assert model.layer3[0].act1.inplace
    inplace = {m: layer_maps(model, x, t, method=m, target_layer='layer3.0.bn1').maps for m in ('gradcam', 'eigencam')}
    model.layer3[0].act1.inplace = False
    for m, maps in inplace.items():
        assert maps.abs().amax() > 0 and (maps < 0).any()
        torch.testing.assert_close(maps, layer_maps(model, x, t, method=m, target_layer='layer3.0.bn1').maps)


@pytest.mark.parametrize('method,layer', [('cam', None), ('gradcam', None), ('eigencam', None),
                                          ('gradcam', 'layer3'), ('eigencam', 'layer3')])
def test_gradient_checkpointing(method, layer):
    """timm's set_grad_checkpointing runs layer3's blocks directly (its hook would never fire): the CAM forward
    runs without checkpointing, and the flag is back on afterwards."""
    import copy
    model = _train_model()
    plain = copy.deepcopy(model)
    model.set_grad_checkpointing(True)
    before = state_snapshot(model)
    x = torch.randn(2, 3, 64, 64)
    maps = class_activation_maps(model, x, torch.tensor([1, 2]), method=method, target_layer=layer, bn='batch')
    torch.testing.assert_close(maps, class_activation_maps(plain, x, torch.tensor([1, 2]), method=method,
                                                           target_layer=layer, bn='batch'))
    assert model.grad_checkpointing is True
    assert_same_state(before, state_snapshot(model))


class _SkipsItsStage(nn.Module):
    """Runs its stage's blocks one by one, as checkpointing code of its own might: the stage's hook never fires."""
    num_classes = 3

    def __init__(self):
        super().__init__()
        self.stage = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1))
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        for block in self.stage:
            x = block(x)
        return self.fc(x.mean((2, 3)))


def test_layer_that_is_never_called():
    with pytest.raises(ValueError, match=r"target layer 'stage' was not called in the forward of _SkipsItsStage, so "
                                         r"its output cannot be read \(gradient checkpointing .* turn it off, or name "
                                         r"a module that is called, e.g. 'stage.1'\)"):
        class_activation_maps(_SkipsItsStage(), torch.randn(1, 3, 8, 8), 0, method='gradcam', target_layer='stage')
    assert class_activation_maps(_SkipsItsStage(), torch.randn(1, 3, 8, 8), 0, method='gradcam',
                                 target_layer='stage.1').shape == (1, 8, 8)


# ---------------------------------------------------------------------------------------------- hazards

def _train_model(name='resnet18'):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=5, drop_rate=0.5)
    model.train()
    model.layer1.eval()       # a user-frozen part: must stay in eval mode
    fill_grads(model)
    return model


@pytest.mark.parametrize('method', CAM_METHODS)
@pytest.mark.parametrize('bn', ['eval', 'batch'])
def test_no_side_effects(method, bn):
    model = _train_model()
    before = state_snapshot(model)
    x = torch.randn(3, 3, 64, 64)
    maps = class_activation_maps(model, x, torch.tensor([0, 1, 2]), method=method, bn=bn)
    assert torch.isfinite(maps).all()
    assert_same_state(before, state_snapshot(model))
    # named (hooked) layer route too
    if method not in ('auto', 'cam'):
        class_activation_maps(model, x, 1, method=method, target_layer='layer3', bn=bn)
        assert_same_state(before, state_snapshot(model))


def test_dropout_off_and_bn_mode_numerics():
    model = _train_model()
    x = torch.randn(4, 3, 64, 64)
    a = class_activation_maps(model, x, 1, method='gradcam')
    b = class_activation_maps(model, x, 1, method='gradcam')
    assert torch.equal(a, b), 'dropout must be off in the CAM forward'
    batch = class_activation_maps(model, x, 1, method='cam', bn='batch')
    feats_batch = None
    # reference: a train-mode BN forward (on a copy, so the real running stats are not consulted)
    import copy
    ref = copy.deepcopy(model)
    ref.eval()
    for m in ref.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.train()
    with torch.no_grad():
        feats_batch = ref.forward_features(x)
    w = ref.get_classifier().weight
    expected = upsample_maps(torch.einsum('nchw,c->nhw', feats_batch, w[1]), x.shape[-2:])
    torch.testing.assert_close(batch, expected, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(batch, class_activation_maps(model, x, 1, method='cam', bn='eval'))


@pytest.mark.parametrize('bn', ['eval', 'batch'])
def test_dropblock_inside_batchnorm_act_stays_off(bn):
    """timm's BatchNormAct2d holds its DropBlock as a child: batch statistics must not switch it on."""
    import timm
    from timm_camaug.model_state import cam_forward_mode
    torch.manual_seed(0)
    model = timm.create_model('gernet_s', drop_block_rate=0.5, num_classes=5).train()
    drops = [m for m in model.modules() if 'DropBlock' in type(m).__name__]
    assert drops, 'gernet_s with drop_block_rate should hold DropBlock modules'
    with cam_forward_mode(model, bn):
        assert not any(m.training for m in drops)
    assert all(m.training for m in drops)
    x = torch.randn(2, 3, 64, 64)
    a = class_activation_maps(model, x, torch.tensor([0, 1]), method='cam', bn=bn)
    b = class_activation_maps(model, x, torch.tensor([0, 1]), method='cam', bn=bn)
    assert torch.equal(a, b), 'DropBlock must be off in the CAM forward'


def test_batch_statistics_without_writing_the_running_statistics():
    """bn='batch' switches the running statistics off for the CAM forward instead of updating and restoring
    them: the buffers are never written (their version counters do not move)."""
    model = _train_model()
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    versions = [(m.running_mean._version, m.running_var._version, m.num_batches_tracked._version) for m in bns]
    class_activation_maps(model, torch.randn(3, 3, 64, 64), 1, method='gradcam', bn='batch')
    assert [(m.running_mean._version, m.running_var._version, m.num_batches_tracked._version) for m in bns] == versions
    assert all(m.track_running_stats for m in bns)


class _OwnForwardBN(nn.BatchNorm2d):
    """A BatchNorm with a forward of its own, which updates its statistics whatever track_running_stats says."""

    def forward(self, x):
        mean, var = x.mean((0, 2, 3)), x.var((0, 2, 3))
        with torch.no_grad():
            self.running_mean.lerp_(mean, 0.5)
            self.running_var.lerp_(var, 0.5)
            self.num_batches_tracked += 1
        return (x - mean[:, None, None]) / (var[:, None, None] + self.eps).sqrt()


def test_batch_statistics_of_a_custom_batchnorm_are_restored():
    model = _train_model()
    model.bn1 = _OwnForwardBN(64)
    before = state_snapshot(model)
    class_activation_maps(model, torch.randn(3, 3, 64, 64), 1, method='gradcam', bn='batch')
    assert_same_state(before, state_snapshot(model))


def test_hooks_released_when_the_call_raises(monkeypatch):
    model = _train_model()
    before = state_snapshot(model)

    def boom(*a, **k):
        raise RuntimeError('boom in forward')
    monkeypatch.setattr(model.layer4[1], 'forward', boom)
    with pytest.raises(RuntimeError, match='boom in forward'):
        class_activation_maps(model, torch.randn(2, 3, 64, 64), 1, method='gradcam', target_layer='layer3')
    monkeypatch.undo()
    assert_same_state(before, state_snapshot(model))
    assert torch.is_grad_enabled()


def test_grad_mode_restored_inside_no_grad(resnet):
    with torch.no_grad():
        class_activation_maps(resnet, torch.randn(1, 3, 64, 64), 1, method='gradcam', target_layer='layer3')
        assert not torch.is_grad_enabled()
    assert torch.is_grad_enabled()


def _live_tensors() -> int:
    gc.collect()
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # isinstance() on deprecated torch module attributes warns
        return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))


def test_no_memory_growth():
    model = _train_model()
    x = torch.randn(2, 3, 64, 64)
    for method in ('cam', 'gradcam', 'eigencam'):
        class_activation_maps(model, x, 1, method=method, target_layer=None)
        class_activation_maps(model, x, 1, method='gradcam', target_layer='layer3')
    start = _live_tensors()
    for _ in range(20):
        for method in ('cam', 'gradcam', 'eigencam'):
            class_activation_maps(model, x, 1, method=method)
        class_activation_maps(model, x, 1, method='gradcam', target_layer='layer3')
    assert _live_tensors() <= start


def test_bf16_autocast_and_channels_last():
    model = _train_model()
    x = torch.randn(2, 3, 64, 64)
    ref = class_activation_maps(model, x, 1, method='gradcam')
    with torch.autocast('cpu', dtype=torch.bfloat16):
        low = class_activation_maps(model, x, 1, method='gradcam')
        low_hooked = class_activation_maps(model, x, 1, method='gradcam', target_layer='layer3')
    assert low.dtype == torch.float32 and low_hooked.dtype == torch.float32
    assert torch.isfinite(low).all() and torch.isfinite(low_hooked).all()
    assert F.cosine_similarity(low.flatten(1), ref.flatten(1)).min() > 0.95
    model_cl = model.to(memory_format=torch.channels_last)
    cl = class_activation_maps(model_cl, x.contiguous(memory_format=torch.channels_last), 1, method='gradcam')
    torch.testing.assert_close(cl, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))


def test_compiled_model_runs_unchanged_after_a_cam():
    """The compiled model is unwrapped for the CAM, and afterwards still runs the graph it compiled before
    (no hook or flag left behind that would make dynamo recompile)."""
    model = _train_model().eval()
    x = torch.randn(2, 3, 64, 64)
    compiled = torch.compile(model, backend='eager')   # dynamo's tracing and guards; inductor adds ~15 s on a CPU
    with torch.no_grad():
        first = compiled(x)
    for layer in (None, 'layer3'):
        torch.testing.assert_close(class_activation_maps(compiled, x, 1, method='gradcam', target_layer=layer),
                                   class_activation_maps(model, x, 1, method='gradcam', target_layer=layer))
    with torch._dynamo.config.patch(error_on_recompile=True), torch.no_grad():
        assert torch.equal(compiled(x), first)


def test_unwraps_ddp():
    model = _train_model()
    x = torch.randn(2, 3, 64, 64)
    ref = class_activation_maps(model, x, 1)
    import torch.distributed as dist
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    dist.init_process_group('gloo', rank=0, world_size=1)
    try:
        ddp = nn.parallel.DistributedDataParallel(model)
        before = state_snapshot(model)
        torch.testing.assert_close(class_activation_maps(ddp, x, 1), ref)
        assert_same_state(before, state_snapshot(model))
        # the DDP reducer is still usable: a normal training step goes through
        ddp(x).sum().backward()
    finally:
        dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------- real photos

def _textures():
    skdata = pytest.importorskip('skimage.data')
    out = []
    for name in ('brick', 'grass', 'gravel'):
        t = torch.from_numpy(getattr(skdata, name)()).float() / 255
        t = t[None].repeat(3, 1, 1) if t.ndim == 2 else t.permute(2, 0, 1)
        out.append(F.interpolate(t[None], size=(112, 112), mode='bilinear', antialias=True)[0])
    return out


@pytest.mark.parametrize('method', ['auto', 'gradcam', 'gradcam++', 'layercam', 'eigencam'])
def test_real_pretrained_cnn_localises_the_cat(method):
    """A real ImageNet CNN: the cat of skimage's `chelsea`, placed in each quadrant of a mosaic of textures,
    is predicted as a cat, and the top 20 % of the CAM lies mostly in the cat's quadrant (chance: 25 %)."""
    model = pretrained_efficientnet_lite0()
    cat = real_photo('chelsea', 112)
    mosaics, masks = [], []
    for q in range(4):
        tiles = _textures()
        tiles.insert(q, cat)
        mosaics.append(torch.cat([torch.cat(tiles[:2], 2), torch.cat(tiles[2:], 2)], 1))
        mask = torch.zeros(224, 224, dtype=torch.bool)
        r, c = divmod(q, 2)
        mask[r * 112:(r + 1) * 112, c * 112:(c + 1) * 112] = True
        masks.append(mask)
    x = imagenet_normalize(torch.stack(mosaics))
    lm = layer_maps(model, x, None, method=method)
    assert set(lm.target.tolist()) <= set(range(281, 286)), 'predicted classes should be domestic cats'
    cams = upsample_maps(lm.maps, (224, 224))
    for cam, mask in zip(cams, masks):
        top = cam >= cam.flatten().quantile(0.8)
        share = float((top & mask).sum() / top.sum())
        assert share > 0.5, f'only {share:.2f} of the top-20% CAM on the cat'
