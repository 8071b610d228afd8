""" SnapMix against the authors' algorithm (per-sample loops, all-class CAM), label weights and edge cases. """
import copy
import logging

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from conftest import assert_same_state, fill_grads, state_snapshot
from timm_camaug import class_activation_maps, create_mix_fn
from timm_camaug.boxes import box_area
from timm_camaug.modes.snapmix import SnapMixParams, semantic_percent_map_normalise
from timm_camaug.targets import smooth_one_hot

K = 5


def _model(name='resnet18'):
    torch.manual_seed(0)
    return timm.create_model(name, num_classes=K).train()


def _mix(model, seed=0, **kw):
    return create_mix_fn('snapmix', model=model, num_classes=K, generator=torch.Generator().manual_seed(seed),
                         data_config={'input_size': (3, 64, 64)}, **kw)


def reference_spm(model, x, y, bn):
    """The authors' get_spm: all K class maps, then one picked per sample, upsampled, per-image loop."""
    ref = copy.deepcopy(model).eval()
    if bn == 'batch':
        for m in ref.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.train()
    with torch.no_grad():
        fms = F.relu(ref.forward_features(x))
        clsw = ref.get_classifier()
        out = F.conv2d(fms, clsw.weight.view(K, -1, 1, 1), bias=clsw.bias)
        maps = torch.stack([out[i, y[i]] for i in range(x.shape[0])])
        maps = F.interpolate(maps[:, None], x.shape[-2:], mode='bilinear', align_corners=False)[:, 0]
        for i in range(x.shape[0]):
            maps[i] -= maps[i].min()
            maps[i] /= maps[i].sum()
    return maps


def reference_mix(x, y, spm, p: SnapMixParams):
    """The authors' snapmix() body on given draws: slicing, F.interpolate per batch, label fix-ups."""
    x = x.clone()
    (t0, t1, t2, t3), (s0, s1, s2, s3) = p.box_t[0].tolist(), p.box_s[0].tolist()
    perm = p.perm
    spm_b = spm[perm]
    ncont = x[perm, :, s0:s1, s2:s3].clone()
    x[:, :, t0:t1, t2:t3] = F.interpolate(ncont, size=(t1 - t0, t3 - t2), mode='bilinear', align_corners=True)
    lam_a = 1 - spm[:, t0:t1, t2:t3].sum(2).sum(1) / (spm.sum(2).sum(1) + 1e-8)
    lam_b = spm_b[:, s0:s1, s2:s3].sum(2).sum(1) / (spm_b.sum(2).sum(1) + 1e-8)
    same = y == y[perm]
    tmp = lam_a.clone()
    lam_a[same] += lam_b[same]
    lam_b[same] += tmp[same]
    lam = 1 - (t1 - t0) * (t3 - t2) / (x.shape[-1] * x.shape[-2])
    lam_a[torch.isnan(lam_a)] = lam
    lam_b[torch.isnan(lam_b)] = 1 - lam
    return x, lam_a, lam_b


@pytest.mark.parametrize('bn', ['batch', 'eval'])
def test_matches_the_reference_algorithm(bn):
    model = _model()
    mix = _mix(model, seed=1, cam_bn=bn)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 3, 64, 64, generator=g)
    y = torch.tensor([0, 1, 2, 3, 4, 0, 1, 1])   # repeated labels exercise the same-label rule
    p = mix.make_params(x, y)
    spm = reference_spm(model, x, y, bn)
    torch.testing.assert_close(p.guidance, spm, rtol=1e-4, atol=1e-7)
    xm, t = mix.apply(x, y, p)
    rx, lam_a, lam_b = reference_mix(x, y, spm, p)
    torch.testing.assert_close(xm, rx, rtol=1e-4, atol=1e-4)
    expected = lam_a[:, None] * F.one_hot(y, K) + lam_b[:, None] * F.one_hot(y[p.perm], K)
    torch.testing.assert_close(t, expected.float(), rtol=1e-4, atol=1e-6)
    # smoothing multiplies through the same weights
    _, ts = _mix(model, seed=1, cam_bn=bn, label_smoothing=0.1).apply(x, y, p)
    oh = smooth_one_hot(y, K, 0.1)
    torch.testing.assert_close(ts, lam_a[:, None] * oh + lam_b[:, None] * oh[p.perm], rtol=1e-4, atol=1e-6)


def test_same_label_weights_are_both_the_sum():
    model = _model()
    x = torch.randn(4, 3, 64, 64)
    y = torch.tensor([2, 2, 2, 2])
    p = _mix(model, seed=2).make_params(x, y)
    _, t = _mix(model).apply(x, y, p)
    w_a = 1 - (p.guidance * _box_mask(p.box_t, 64, 64)).sum((1, 2))
    w_b = (p.guidance[p.perm] * _box_mask(p.box_s, 64, 64)).sum((1, 2))
    torch.testing.assert_close(t[:, 2], 2 * (w_a + w_b), rtol=1e-5, atol=1e-6)
    assert (t[:, [0, 1, 3, 4]] == 0).all()


def _box_mask(boxes, h, w):
    m = torch.zeros(boxes.shape[0], h, w)
    for i, (a, b, c, d) in enumerate(boxes.tolist()):
        m[i, a:b, c:d] = 1
    return m


@pytest.mark.parametrize('y', [[0, 1, 2, 3], [0, 0, 1, 1]], ids=['distinct labels', 'same labels'])
def test_constant_maps_fall_back_to_area(y):
    """A constant CAM gives NaN percent maps; the weights fall back to area ratios, same-label pairs too
    (the NaN passes the same-label sum, as in the reference, so both become the area ratios)."""
    model = _model()
    x = torch.zeros(4, 3, 64, 64)
    y = torch.tensor(y)
    mix = _mix(model, seed=5)
    p = mix.make_params(x, y)
    p.guidance = semantic_percent_map_normalise(torch.full((4, 64, 64), 3.0))   # a constant CAM
    assert torch.isnan(p.guidance).all()
    _, t = mix.apply(x, y, p)
    assert torch.isfinite(t).all()
    area = float(box_area(p.box_t)[0]) / (64 * 64)
    perm = p.perm
    if len(set(y.tolist())) < 4:
        assert any(perm[i] != i and y[perm[i]] == y[i] for i in range(4)), 'seed must pair two same-label images'
    for i in range(4):
        if y[perm[i]] == y[i]:
            assert t[i, y[i]] == pytest.approx(1.0, abs=1e-6)
        else:
            assert t[i, y[i]] == pytest.approx(1 - area, abs=1e-6)
            assert t[i, y[perm[i]]] == pytest.approx(area, abs=1e-6)


def test_empty_box_leaves_batch_unmixed():
    model = _model()
    x, y = torch.randn(3, 3, 64, 64), torch.tensor([0, 1, 2])
    mix = _mix(model)
    p = mix.make_params(x, y)
    p.box_t = torch.tensor([[10, 10, 5, 30]]).expand(3, 4)     # zero height
    xm, t = mix.apply(x, y, p)
    assert torch.equal(xm, x) and torch.equal(t, F.one_hot(y, K).float())


@pytest.mark.parametrize('boxes', ['batch', 'sample'])
def test_boxes_inside_image(boxes):
    model = _model()
    mix = _mix(model, boxes=boxes)
    for seed in range(5):
        x = torch.randn(6, 3, 48, 72)
        p = mix.make_params(x, torch.randint(0, K, (6,)))
        for b in (p.box_t, p.box_s):
            assert (b[:, 0] >= 0).all() and (b[:, 0] <= b[:, 1]).all() and (b[:, 1] <= 48).all()
            assert (b[:, 2] >= 0).all() and (b[:, 2] <= b[:, 3]).all() and (b[:, 3] <= 72).all()
        if boxes == 'batch':
            assert (p.box_t == p.box_t[0]).all() and (p.lam_t == p.lam_t[0]).all()
    assert boxes == 'batch' or len(set(map(tuple, p.box_t.tolist()))) > 1


def test_per_sample_boxes_paste_each_pair():
    model = _model()
    mix = _mix(model, seed=3, boxes='sample')
    x, y = torch.randn(5, 3, 40, 56), torch.randint(0, K, (5,))
    p = mix.make_params(x, y)
    xm, _ = mix.apply(x, y, p)
    for i in range(5):   # independent per-sample reference
        t0, t1, t2, t3 = p.box_t[i].tolist()
        s0, s1, s2, s3 = p.box_s[i].tolist()
        ref = x[i].clone()
        if (t1 - t0) * (t3 - t2) > 0 and (s1 - s0) * (s3 - s2) > 0:
            src = x[p.perm[i], :, s0:s1, s2:s3][None]
            ref[:, t0:t1, t2:t3] = F.interpolate(src, size=(t1 - t0, t3 - t2), mode='bilinear', align_corners=True)[0]
        torch.testing.assert_close(xm[i], ref, rtol=1e-4, atol=1e-4)


def test_box_sides_follow_the_lambda_draws():
    mix = _mix(_model(), seed=0, boxes='sample')
    p = mix.make_params(torch.randn(6, 3, 40, 60), torch.randint(0, K, (6,)))
    for box, lam in ((p.box_t, p.lam_t), (p.box_s, p.lam_s)):
        cut_h = (40 * torch.sqrt(1 - lam)).floor().long()
        cut_w = (60 * torch.sqrt(1 - lam)).floor().long()
        assert ((box[:, 1] - box[:, 0]) <= 2 * (cut_h // 2)).all()
        assert ((box[:, 3] - box[:, 2]) <= 2 * (cut_w // 2)).all()
        # unclipped boxes have exactly timm's rand_bbox size
        inside = (box[:, 0] > 0) & (box[:, 1] < 40) & (box[:, 2] > 0) & (box[:, 3] < 60)
        assert ((box[:, 1] - box[:, 0])[inside] == 2 * (cut_h // 2)[inside]).all()


def test_bn_running_stats_and_grads_untouched_in_batch_mode():
    model = _model()
    fill_grads(model)
    before = state_snapshot(model)
    mix = _mix(model)
    assert mix.cam_bn == 'batch'
    mix(torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 2, 3]))
    assert_same_state(before, state_snapshot(model))


def test_non_linear_head_falls_back_to_gradcam(caplog):
    model = _model('convnext_atto')
    with caplog.at_level(logging.WARNING):
        mix = _mix(model)
    assert 'falls back to Grad-CAM' in caplog.text
    x, y = torch.randn(2, 3, 64, 64), torch.tensor([0, 1])
    p = mix.make_params(x, y)
    torch.testing.assert_close(p.guidance.sum((1, 2)), torch.ones(2))


def test_finer_layer_and_reduced_scale_options(caplog):
    model = _model()
    x, y = torch.randn(3, 3, 64, 64), torch.tensor([0, 1, 2])
    with caplog.at_level(logging.WARNING):
        fine = _mix(model, cam_layer='layer3').make_params(x, y)
    assert 'falls back' not in caplog.text      # asked for, so no warning
    torch.testing.assert_close(fine.guidance, semantic_percent_map_normalise(
        class_activation_maps(model, x, y, method='gradcam', target_layer='layer3', bn='batch')),
        rtol=1e-4, atol=1e-7)
    coarse = _mix(model).make_params(x, y)
    assert fine.guidance.shape == coarse.guidance.shape == (3, 64, 64)
    torch.testing.assert_close(fine.guidance.sum((1, 2)), torch.ones(3))
    small = _mix(model, cam_scale=0.5).make_params(x, y)
    torch.testing.assert_close(small.guidance.sum((1, 2)), torch.ones(3))


def test_spm_floor_zero_keeps_only_positive_evidence():
    model = _model()
    x, y = torch.randn(3, 3, 64, 64), torch.tensor([0, 1, 2])
    mix = _mix(model, cam_layer='layer3', cam_method='gradcam', spm_floor='zero', cam_bn='eval')
    p = mix.make_params(x, y)
    cam = class_activation_maps(model, x, y, method='gradcam', target_layer='layer3', bn='eval')
    pos = cam.clamp_min(0)
    # a map with no positive value is NaN in both (the label weights then fall back to area ratios)
    torch.testing.assert_close(p.guidance, pos / pos.sum((1, 2), keepdim=True), rtol=1e-4, atol=1e-7, equal_nan=True)
    some = (cam > 0).flatten(1).any(1)
    assert bool(some.any()) and bool((cam < 0).any())
    assert bool((p.guidance[some][cam[some] <= 0] == 0).all())
    # the reference floor differs on the same maps: it lifts every negative pixel above zero
    ref = semantic_percent_map_normalise(cam, 'min')
    assert bool((ref[cam < 0] > 0).any())


def test_spm_floor_zero_without_positive_evidence_falls_back_to_area():
    spm = semantic_percent_map_normalise(-torch.rand(2, 8, 8), 'zero')
    assert torch.isnan(spm).all()


def test_errors():
    model = _model()
    with pytest.raises(ValueError, match=r"snapmix: spm_floor must be one of \('min', 'zero'\), got 'relu'"):
        _mix(model, spm_floor='relu')
    with pytest.raises(ValueError, match='snapmix: beta must be > 0, got 0'):
        _mix(model, beta=0)
    with pytest.raises(ValueError, match='snapmix: beta must be > 0, got nan'):
        _mix(model, beta=float('nan'))
    with pytest.raises(ValueError, match="snapmix: boxes must be 'batch' or 'sample', got 'pair'"):
        _mix(model, boxes='pair')
    with pytest.raises(ValueError, match="snapmix: unknown cam_method 'grad'"):
        _mix(model, cam_method='grad')
    with pytest.raises(ValueError, match="no module named 'layer9' in ResNet"):
        _mix(model, cam_layer='layer9')
    with pytest.raises(ValueError, match='has no classifier'):
        _mix(timm.create_model('resnet18', num_classes=0))
    with pytest.raises(ValueError, match=r'snapmix: cam_scale must be in \(0, 1\]'):
        _mix(model, cam_scale=1.5)
