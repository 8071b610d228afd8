""" The class token's attention row recomputed from a hook (timm_camaug.attention) against an explicit unfused
attention computation, per family; the capture hook and the final-feature-map site (timm_camaug.capture). """
import pytest
import timm
import torch
import torch.nn.functional as F

from timm_camaug.attention import NoClassAttention, class_attention_rows, find_class_attention, patch_attention
from timm_camaug.capture import ForwardCapture, NoFeatureMap, class_maps, find_feature_site

# (model, kwargs, image size): every family of timm_camaug.attention, with their optional terms switched on
FAMILIES = [
    ('vit_tiny_patch16_224', dict(img_size=64, attn_drop_rate=0.1), 'vit'),
    ('vit_tiny_patch16_224', dict(img_size=64, qk_norm=True), 'vit'),
    ('test_vit', dict(img_size=48, patch_size=8), 'vit'),
    ('deit_tiny_distilled_patch16_224', dict(img_size=64), 'vit'),
    ('deit3_small_patch16_224', dict(img_size=32), 'vit'),
    ('vit_small_patch14_reg4_dinov2', dict(img_size=56), 'vit'),
    ('eva02_tiny_patch14_224', dict(img_size=56), 'eva'),
    ('eva02_tiny_patch14_224', dict(img_size=56, qkv_fused=False), 'eva'),
    ('vit_small_patch16_rope_224', dict(img_size=64), 'eva'),
    ('vit_small_patch16_rope_mixed_224', dict(img_size=64), 'eva'),
    ('vit_small_patch16_rope_224', dict(img_size=64, qkv_fused=False, num_kv_heads=2), 'eva'),
    ('beit_base_patch16_224', dict(img_size=32), 'beit'),
    ('beit_base_patch16_224', dict(img_size=32, use_rel_pos_bias=False, use_shared_rel_pos_bias=True), 'beit'),
    ('beitv2_base_patch16_224', dict(img_size=32), 'beit'),
    ('cait_xxs24_224', dict(img_size=64), 'class-attention'),
    ('xcit_nano_12_p16_224', dict(img_size=64), 'class-attention'),
]


def _perturbed(name, **kw):
    """A model in train mode whose every parameter is moved off its init (biases, tables, scales non-trivial)."""
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=5, **kw)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.train()


def _unfused_rows(model, spec, x, **forward_kw):
    """The reference: timm's own unfused path (fused_attn off) on the same forward, its softmax read where it
    enters the attention dropout (what TransMix's patched model cloned), row 0; and the hook's capture."""
    capture = ForwardCapture(spec.module, 'pre')
    seen = {}
    spec.module.fused_attn = False
    handle = spec.module.attn_drop.register_forward_pre_hook(lambda m, a: seen.__setitem__('p', a[0].detach()))
    capture.arm()
    try:
        model(x, **forward_kw)
    finally:
        handle.remove()
        records = list(capture.records)
        capture.close()
    assert len(records) == 1
    return seen['p'][:, :, 0].float(), records[0]


@pytest.mark.parametrize('name,kw,family', FAMILIES, ids=[f'{n}-{"-".join(k for k in kw if k != "img_size")}'
                                                          for n, kw, _ in FAMILIES])
def test_class_row_equals_unfused_attention(name, kw, family):
    model = _perturbed(name, **kw)
    spec = find_class_attention(model)
    assert spec.family == family
    size = kw['img_size']
    x = torch.randn(2, 3, size, size)
    ref, (captured, kwargs) = _unfused_rows(model, spec, x)
    rows = class_attention_rows(spec, captured, kwargs)
    assert rows.shape == ref.shape and rows.dtype == torch.float32
    torch.testing.assert_close(rows, ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(rows.sum(-1), torch.ones(rows.shape[:2]), rtol=0, atol=1e-5)
    patches = patch_attention(spec, captured, kwargs)
    torch.testing.assert_close(patches, ref.mean(1)[:, spec.num_prefix_tokens:], rtol=0, atol=1e-5)


def test_prefix_tokens_are_dropped():
    """Class, distillation and register tokens precede the patches: the patch attention has one entry per patch."""
    for name, kw, prefix in [('vit_tiny_patch16_224', dict(img_size=64), 1),
                             ('deit_tiny_distilled_patch16_224', dict(img_size=64), 2),
                             ('vit_small_patch14_reg4_dinov2', dict(img_size=56), 5)]:
        model = _perturbed(name, **kw)
        spec = find_class_attention(model)
        assert spec.num_prefix_tokens == prefix
        capture = ForwardCapture(spec.module)
        capture.arm()
        model(torch.randn(2, 3, kw['img_size'], kw['img_size']))
        (captured, kwargs), = capture.records
        capture.close()
        assert patch_attention(spec, captured, kwargs).shape == (2, 16)


def test_plain_vit_row_by_hand():
    """An independent computation for the plain ViT: the whole (N, N) attention from the qkv weights."""
    model = _perturbed('vit_tiny_patch16_224', img_size=64)
    spec = find_class_attention(model)
    attn = spec.module
    x = torch.randn(3, 17, 192)
    qkv = F.linear(x, attn.qkv.weight, attn.qkv.bias).view(3, 17, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k = qkv[0], qkv[1]
    full = ((q @ k.transpose(-2, -1)) / q.shape[-1] ** 0.5).softmax(-1)
    torch.testing.assert_close(class_attention_rows(spec, x, {}), full[:, :, 0], rtol=0, atol=1e-6)


@pytest.mark.parametrize('mask_kind', ['bool', 'float', 'bool-2d', 'causal'])
def test_masks_passed_to_the_model_are_applied(mask_kind):
    model = _perturbed('vit_tiny_patch16_224', img_size=64)
    spec = find_class_attention(model)
    g = torch.Generator().manual_seed(0)
    kw = {}
    if mask_kind == 'bool':
        kw['attn_mask'] = torch.rand(2, 1, 17, 17, generator=g) > 0.3
        kw['attn_mask'][..., 0] = True          # every query keeps one key
    elif mask_kind == 'float':
        kw['attn_mask'] = torch.randn(2, 1, 17, 17, generator=g)
    elif mask_kind == 'bool-2d':
        kw['attn_mask'] = torch.rand(17, 17, generator=g) > 0.3
        kw['attn_mask'][:, 0] = True
    x = torch.randn(2, 3, 64, 64)
    if mask_kind == 'causal':       # the block passes is_causal on: compare with the explicit causal row
        spec.module.fused_attn = False
        captured = {}
        h = spec.module.register_forward_pre_hook(lambda m, a, k: captured.update(x=a[0], kw=dict(k)), with_kwargs=True)
        model.forward_features(x)
        h.remove()
        rows = class_attention_rows(spec, captured['x'], {'is_causal': True})
        expected = torch.zeros_like(rows)
        expected[..., 0] = 1.0
        torch.testing.assert_close(rows, expected)
        return
    ref, (captured, kwargs) = _unfused_rows(model, spec, x, **kw)
    assert 'attn_mask' in kwargs
    torch.testing.assert_close(class_attention_rows(spec, captured, kwargs), ref, rtol=0, atol=1e-5)


REFUSED = [
    ('resnet18', {}, 'ResNet has no class token'),
    ('vit_tiny_patch16_224', dict(img_size=32, class_token=False, global_pool='avg'), 'VisionTransformer has no class token'),
    ('vit_relpos_small_patch16_224', dict(img_size=32, class_token=True, global_pool='token'),
     'whose maths this version does not recompute'),
    ('swin_tiny_patch4_window7_224', dict(img_size=64, window_size=2), 'SwinTransformer has no class token'),
]


@pytest.mark.parametrize('name,kw,message', REFUSED, ids=[r[0] for r in REFUSED])
def test_models_without_a_readable_class_attention(name, kw, message):
    model = timm.create_model(name, num_classes=3, **kw)
    with pytest.raises(NoClassAttention, match=message):
        find_class_attention(model)


def test_parallel_block_is_refused():
    from timm.models.vision_transformer import ParallelScalingBlock
    model = timm.create_model('vit_tiny_patch16_224', img_size=32, num_classes=3, block_fn=ParallelScalingBlock)
    with pytest.raises(NoClassAttention, match=r"has no 'attn' module \(a parallel or fused block\)"):
        find_class_attention(model)


# --- the capture hook

def test_capture_exists_only_while_armed_and_keeps_nothing_after():
    model = timm.create_model('test_vit', img_size=32, patch_size=8, num_classes=3).train()
    module = model.blocks[-1].attn
    capture = ForwardCapture(module)
    assert not capture.registered and not module._forward_pre_hooks
    model(torch.randn(2, 3, 32, 32))
    assert capture.records == []
    capture.arm()
    assert len(module._forward_pre_hooks) == 1
    model(torch.randn(2, 3, 32, 32))
    assert len(capture.records) == 1 and not capture.records[0][0].requires_grad
    capture.disarm()
    assert capture.records == [] and not module._forward_pre_hooks


def test_persistent_capture_keeps_its_hook_but_records_only_when_armed():
    model = timm.create_model('test_vit', img_size=32, patch_size=8, num_classes=3).train()
    module = model.blocks[-1].attn
    capture = ForwardCapture(module, persistent=True)
    assert len(module._forward_pre_hooks) == 1
    model(torch.randn(2, 3, 32, 32))
    assert capture.records == []
    capture.arm()
    model(torch.randn(2, 3, 32, 32))
    assert len(capture.records) == 1
    capture.disarm()
    assert capture.records == [] and len(module._forward_pre_hooks) == 1
    capture.close()
    assert not module._forward_pre_hooks


def test_persistent_capture_under_torch_compile_without_recompiles():
    """torch.compile ignores a hook added after its first compiled call; one registered before it fires while
    armed, and arming/disarming costs one extra graph, not one per step."""
    import torch._dynamo
    torch._dynamo.reset()
    model = timm.create_model('test_vit', img_size=32, patch_size=8, num_classes=3).train()
    spec = find_class_attention(model)
    capture = ForwardCapture(spec.module, persistent=True)
    compiled = torch.compile(model, backend='eager')
    x = torch.randn(2, 3, 32, 32)
    fired = []
    for step in range(6):
        armed = step % 3 != 2
        if armed:
            capture.arm()
        compiled(x).sum().backward()
        fired.append(len(capture.records))
        if armed:
            eager = capture.records[0][0]
        capture.disarm()
    assert fired == [1, 1, 0, 1, 1, 0]
    capture.arm()
    model(x)
    torch.testing.assert_close(capture.records[0][0], eager)
    capture.close()
    from torch._dynamo.utils import counters
    assert counters['stats']['unique_graphs'] <= 2


# --- where the final feature map passes, and its class maps

SITES = [
    ('resnet18', {}, 64, 'global_pool'),
    ('efficientnet_b0', {}, 64, 'global_pool'),
    ('convnext_atto', {}, 64, 'head'),
    ('swin_tiny_patch4_window7_224', dict(img_size=64, window_size=2), 64, 'head'),
    ('vit_tiny_patch16_224', dict(img_size=32, global_pool='avg'), 32, 'norm'),
    ('regnety_002', {}, 64, 'head'),
    ('densenet121', {}, 64, 'global_pool'),
    ('mobilenetv3_small_050', {}, 64, 'global_pool'),
]


@pytest.mark.parametrize('name,kw,size,site_name', SITES, ids=[s[0] for s in SITES])
def test_feature_site_and_class_maps(name, kw, size, site_name):
    from timm_camaug.cam import layer_maps
    model = _perturbed(name, **kw).eval()
    x = torch.randn(2, 3, size, size)
    site = find_feature_site(model, x)
    assert site.name == site_name
    capture = ForwardCapture(site.module, site.kind)
    capture.arm()
    with torch.no_grad():
        model(x)
    (feats, _), = capture.records
    capture.close()
    torch.testing.assert_close(feats, model.forward_features(x).detach())
    y = torch.tensor([1, 3])
    maps, = class_maps(model, feats, (size, size), [y])
    # the CAM engine's own 'auto' map (closed-form CAM, else Grad-CAM at the final features) for the same class
    ref = layer_maps(model, x, y, method='auto', target_layer='features').maps
    assert maps.shape == ref.shape
    torch.testing.assert_close(maps, ref, rtol=1e-4, atol=1e-5)


def test_no_feature_site():
    class Plain(torch.nn.Module):
        def forward(self, x):
            return x.mean((2, 3))
    with pytest.raises(NoFeatureMap, match='Plain has no forward_features/forward_head'):
        find_feature_site(Plain(), torch.zeros(2, 3, 8, 8))


VALUE_FAMILIES = [f for f in FAMILIES if f[0] in ('vit_tiny_patch16_224', 'deit_tiny_distilled_patch16_224',
                                                   'eva02_tiny_patch14_224', 'vit_small_patch16_rope_224',
                                                   'beit_base_patch16_224', 'cait_xxs24_224')]


@pytest.mark.parametrize('name,kw,family', VALUE_FAMILIES, ids=[f'{n}-{"-".join(k for k in kw if k != "img_size")}'
                                                                for n, kw, _ in VALUE_FAMILIES])
def test_value_contributions_sum_to_the_class_output(name, kw, family):
    """Each key token's share of the class token's attention output: with the projection's bias they add up to
    the module's own (fused) output for the class token."""
    from timm_camaug.attention import class_value_contributions
    model = _perturbed(name, **kw).eval()
    spec = find_class_attention(model)
    capture, outputs = ForwardCapture(spec.module), []
    handle = spec.module.register_forward_hook(lambda m, a, o: outputs.append(o.detach()))
    capture.arm()
    with torch.no_grad():
        model(torch.randn(2, 3, kw['img_size'], kw['img_size']))
    handle.remove()
    (captured, kwargs), = capture.records
    capture.close()
    parts = class_value_contributions(spec, captured, kwargs)
    total = parts.sum(1) + (spec.module.proj.bias.float() if spec.module.proj.bias is not None else 0)
    torch.testing.assert_close(total, outputs[0][:, 0].float(), rtol=1e-4, atol=1e-5)
