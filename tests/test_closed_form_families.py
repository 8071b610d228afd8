""" Which map the closed form may use, per timm family: wherever the CAM engine (and SnapMix's semantic percent
map) takes the closed form, it equals Grad-CAM's map up to a positive per-sample scale; where the head is not
global-average-pool + linear (ConvNeXt's pool-norm-linear, MobileNetV3's conv head), the closed form is not
taken. Also: the start-up probe runs at the model's own input size (a ViT or MLP built for 64 px gets every
CAM mode), and Gutout's upsampling option. Tiny models, random weights. """
import pytest
import timm
import torch

from timm_camaug import create_mix_fn
from timm_camaug.cam import layer_maps, pool_linear_classifier

K = 5
# family -> (model name, keyword arguments, input size); tiny variants so the whole table costs seconds
FAMILIES = {
    'resnet': ('resnet18', {}, 64),
    'efficientnet': ('test_efficientnet', {}, 64),
    'regnet': ('regnetx_002', {}, 64),
    'densenet': ('densenet121', {'growth_rate': 8, 'block_config': (2, 2, 2, 2)}, 64),
    'convnext': ('test_convnext', {}, 64),
    'vit': ('test_vit', {}, 64),
    'swin': ('swin_tiny_patch4_window7_224', {'img_size': 112, 'embed_dim': 24, 'depths': (1, 1, 1, 1),
                                              'num_heads': (1, 1, 1, 1)}, 112),
    'mobilenetv3': ('mobilenetv3_small_050', {}, 64),
}
CLOSED_FORM = {'resnet', 'efficientnet', 'regnet', 'densenet', 'swin'}


def _model(family):
    name, kwargs, size = FAMILIES[family]
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=K, **kwargs).eval()
    with torch.no_grad():       # a bias that is not zero, so that a map that adds it would show
        clf = model.get_classifier()
        if isinstance(clf, torch.nn.Linear) and clf.bias is not None:
            clf.bias.normal_()
    g = torch.Generator().manual_seed(1)
    return model, torch.randn(3, 3, size, size, generator=g), torch.tensor([0, 3, 4])


@pytest.mark.parametrize('family', FAMILIES)
def test_closed_form_equals_grad_cam_up_to_a_positive_scale(family):
    model, x, y = _model(family)
    closed = pool_linear_classifier(model) is not None
    assert closed == (family in CLOSED_FORM), f'{family}: closed form taken: {closed}'
    auto = layer_maps(model, x, y, method='auto')
    grad = layer_maps(model, x, y, method='gradcam')
    assert auto.method == ('cam' if closed else 'gradcam')
    a, g = auto.maps.flatten(1).double(), grad.maps.flatten(1).double()
    scale = (a * g).sum(1) / (g * g).sum(1)
    assert (scale > 0).all(), f'{family}: negative scale'
    torch.testing.assert_close(a, scale[:, None] * g, rtol=1e-4, atol=1e-5 * float(a.abs().max()))


@pytest.mark.parametrize('family', sorted(CLOSED_FORM))
def test_snapmix_semantic_percent_map_is_the_map_behind_the_logit(family):
    """SnapMix's closed-form map (features times the label's row, plus its bias) min-shifted and normalised is
    Grad-CAM's, min-shifted and normalised: the bias shifts every cell alike, and no ReLU of the features
    (a no-op on a ResNet, whose features come out of a ReLU; a different map on Swin's normalised tokens)."""
    model, x, y = _model(family)
    mix = create_mix_fn('snapmix', model=model, num_classes=K, cam_bn='eval',
                        data_config={'input_size': tuple(x.shape[1:])})
    spm = mix.guidance_maps(x, y)
    grad = layer_maps(model, x, y, method='gradcam').maps
    from timm_camaug.cam import upsample_maps
    from timm_camaug.modes.snapmix import semantic_percent_map_normalise
    expected = semantic_percent_map_normalise(upsample_maps(grad, x.shape[-2:]))
    torch.testing.assert_close(spm, expected, rtol=1e-3, atol=1e-7)


def test_resnet_features_are_non_negative_so_the_references_relu_changes_nothing():
    model, x, y = _model('resnet')
    with torch.no_grad():
        assert bool((model.forward_features(x) >= 0).all())
    plain = layer_maps(model, x, y, method='cam', class_bias=True).maps
    relu = layer_maps(model, x, y, method='cam', class_bias=True, feature_relu=True).maps
    assert torch.equal(plain, relu)


@pytest.mark.parametrize('name, kwargs', [('vit_tiny_patch16_224', {'img_size': 64}),
                                          ('mixer_s16_224', {'img_size': 64})])
@pytest.mark.parametrize('mode', ['gutout', 'cam-erase', 'snapmix'])
def test_start_up_probe_at_the_models_own_size(name, kwargs, mode):
    """A ViT or MLP-Mixer built for 64 px: the probe runs at 64 px (its patch embedding's size), not 224."""
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=K, **kwargs)
    mix = create_mix_fn(mode, model=model, num_classes=K)
    assert mix.probe_input_size() == (3, 64, 64)
    x, t = mix(torch.randn(2, 3, 64, 64), torch.tensor([0, 1]))
    assert x.shape == (2, 3, 64, 64) and t.shape == (2, K)


def test_start_up_probe_at_a_size_the_model_cannot_take_says_what_to_pass():
    model = timm.create_model('vit_tiny_patch16_224', num_classes=K, img_size=64)
    with pytest.raises(ValueError, match=r"gutout: VisionTransformer cannot take 96x96 inputs .*build the model for "
                                         r"the training size \(timm.create_model\(..., img_size=...\); train.py: "
                                         r"--model-kwargs img_size=<size>\)"):
        create_mix_fn('gutout', model=model, num_classes=K, data_config={'input_size': (3, 96, 96)})


def test_gutout_nearest_upsampling_is_the_released_codes_cells():
    """upsample='nearest' cuts whole grid cells (the released code); the default bilinear cut has smooth edges.
    The two agree on most pixels."""
    model, x, y = _model('resnet')
    common = dict(model=model, num_classes=K, data_config={'input_size': (3, 64, 64)})
    near = create_mix_fn('gutout', upsample='nearest', **common)
    bil = create_mix_fn('gutout', **common)
    cut_near = near.regions(near.make_params(x, y), (64, 64)).target
    cut_bil = bil.regions(bil.make_params(x, y), (64, 64)).target
    cells = cut_near.reshape(3, 2, 32, 2, 32)       # resnet18 at 64 px: a 2 x 2 grid of 32 px cells
    assert bool((cells.all(2).all(3) | ~cells.any(2).any(3)).all()), 'nearest: every cell cut whole or not at all'
    agree = float((cut_near == cut_bil).float().mean())
    assert 0.6 < agree < 1.0
    with pytest.raises(ValueError, match=r"gutout: upsample must be one of \('bilinear', 'nearest'\), got 'bicubic'"):
        create_mix_fn('gutout', upsample='bicubic', **common)
