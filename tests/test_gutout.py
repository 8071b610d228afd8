""" Gutout: the cut region is exactly {normalised CAM > t}; thresholds, targets, normalisation, ensemble CAM. """
import pytest
import timm
import torch

from conftest import assert_same_state, state_snapshot
from timm_camaug import class_activation_maps, create_mix_fn
from timm_camaug.targets import smooth_one_hot

K = 5


def _model(seed=0):
    torch.manual_seed(seed)
    return timm.create_model('resnet18', num_classes=K).train()


def _mix(model, seed=0, **kw):
    return create_mix_fn('gutout', model=model, num_classes=K, generator=torch.Generator().manual_seed(seed),
                         data_config={'input_size': (3, 64, 64)}, **kw)


def _batch(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 64, 64, generator=g), torch.randint(0, K, (n,), generator=g)


def _expected_cut(model, x, target, t, per='sample'):
    cam = class_activation_maps(model, x, target, method='gradcam')
    peak = cam.flatten(1).amax(1)[:, None, None] if per == 'sample' else cam.max()
    return (cam / peak > t) & (peak > 0)   # a map with no positive value cuts nothing


def test_cut_region_is_the_thresholded_gradcam():
    model = _model()
    x, y = _batch()
    mix = _mix(model, t=0.6, cam_method='gradcam')
    xm, t = mix(x, y)
    cut = _expected_cut(model, x, y, 0.6)
    assert cut.any() and not cut.all()
    assert torch.equal(xm == 0, cut[:, None].expand_as(x) | (x == 0))
    torch.testing.assert_close(xm[~cut[:, None].expand_as(x)], x[~cut[:, None].expand_as(x)])
    assert torch.equal(t, smooth_one_hot(y, K, 0.0))
    # the default 'auto' (closed-form CAM) gives the same normalised map, up to rounding at the threshold
    p = _mix(model, t=0.6).make_params(x, y)
    ref = class_activation_maps(model, x, y, method='gradcam')
    peak = ref.flatten(1).amax(1)[:, None, None]
    ref = torch.where(peak > 0, ref / peak, torch.zeros_like(ref))
    torch.testing.assert_close(p.guidance, ref, rtol=1e-5, atol=1e-5)
    differ = _mix(model).cut_masks(p) != cut
    assert ((ref[differ] - 0.6).abs() < 1e-5).all()


def test_predicted_class_and_batch_normalisation():
    model = _model()
    x, y = _batch()
    with torch.no_grad():
        pred = model.eval()(x).argmax(1)
    model.train()
    p = _mix(model, target='pred', cam_method='gradcam').make_params(x, y)
    assert torch.equal(_mix(model).cut_masks(p), _expected_cut(model, x, pred, 0.6))
    p = _mix(model, normalise='batch', cam_method='gradcam').make_params(x, y)
    assert torch.equal(_mix(model).cut_masks(p), _expected_cut(model, x, y, 0.6, per='batch'))
    assert float(p.guidance.max()) == pytest.approx(1.0)


def test_probability_is_per_sample():
    model = _model()
    x, y = _batch(n=16)
    mix = _mix(model, prob=0.5, seed=1)
    p = mix.make_params(x, y)
    assert 0 < int(p.active.sum()) < 16
    xm, _ = mix.apply(x, y, p)
    assert torch.equal(xm[~p.active], x[~p.active])
    cut = mix.cut_masks(p)
    assert not cut[~p.active].any() and cut[p.active].any()
    changed = (xm != x).flatten(1).any(1)
    assert torch.equal(changed, cut.flatten(1).any(1))


def test_threshold_draws():
    model = _model()
    x, y = _batch(n=8)
    run = _mix(model, t_draw='run', check_model=False)
    a, b = run.make_params(x, y).threshold, run._thresholds(8)
    assert torch.equal(a, b) and (a == a[0]).all()
    batch = _mix(model, t_draw='batch', check_model=False)
    a, b = batch._thresholds(8), batch._thresholds(8)
    assert (a == a[0]).all() and not torch.equal(a, b)
    sample = _mix(model, t_draw='sample', seed=2, check_model=False)._thresholds(8)
    assert len(set(sample.tolist())) == 8
    many = _mix(model, t_draw='sample', check_model=False)._thresholds(4000)
    assert abs(float(many.mean()) - 0.9) < 0.005 and abs(float(many.std()) - 0.05) < 0.005
    assert torch.equal(_mix(model, t=0.3, check_model=False)._thresholds(8), torch.full((8,), 0.3))


def test_fill_value_and_label_smoothing():
    model = _model()
    x, y = _batch()
    xm, t = _mix(model, fill=-1.5, label_smoothing=0.2, cam_method='gradcam')(x, y)
    cut = _expected_cut(model, x, y, 0.6)
    assert (xm.permute(1, 0, 2, 3)[:, cut] == -1.5).all()
    assert torch.equal(t, smooth_one_hot(y, K, 0.2))


def test_separate_cam_model_for_ensembles():
    member, other = _model(0), _model(1)
    before = state_snapshot(member)
    x, y = _batch()
    p = _mix(member, cam_model=other, cam_method='gradcam').make_params(x, y)
    cut = _mix(member).cut_masks(p)
    assert torch.equal(cut, _expected_cut(other, x, y, 0.6))
    assert not torch.equal(cut, _expected_cut(member, x, y, 0.6))
    assert_same_state(before, state_snapshot(member))


def test_errors():
    model = _model()
    with pytest.raises(ValueError, match=r'gutout: t must be in \[0, 1\), got 1.5'):
        _mix(model, t=1.5)
    with pytest.raises(ValueError, match="gutout: t_draw must be one of"):
        _mix(model, t_draw='epoch')
    with pytest.raises(ValueError, match="gutout: target must be 'label' or 'pred', got 'gt'"):
        _mix(model, target='gt')
    with pytest.raises(ValueError, match="gutout: normalise must be 'sample' or 'batch'"):
        _mix(model, normalise='global')
    with pytest.raises(ValueError, match='gutout: t_std must be >= 0, got nan'):
        _mix(model, t_draw='batch', t_std=float('nan'))
    with pytest.raises(ValueError, match='gutout: t_mean must be a finite number, got inf'):
        _mix(model, t_draw='batch', t_mean=float('inf'))
    with pytest.raises(ValueError, match='gutout: fill must be a finite number, got nan'):
        _mix(model, fill=float('nan'))
    with pytest.raises(ValueError, match='gutout needs the model under training'):
        create_mix_fn('gutout', num_classes=K)
