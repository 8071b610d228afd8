""" CAM-erase: warm-up, box sizes and placement in the CAM region, fills, per-sample probability. """
import pytest
import timm
import torch

from timm_camaug import class_activation_maps, create_mix_fn
from timm_camaug.boxes import box_masks
from timm_camaug.modes.cam_guided import normalise_min_max
from timm_camaug.targets import smooth_one_hot

K = 5


def _model():
    torch.manual_seed(0)
    return timm.create_model('resnet18', num_classes=K).train()


def _mix(model, seed=0, **kw):
    kw.setdefault('prob', 1.0)
    return create_mix_fn('cam-erase', model=model, num_classes=K, generator=torch.Generator().manual_seed(seed),
                         data_config={'input_size': (3, 64, 64)}, **kw)


def _batch(n=8, h=64, w=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, h, w, generator=g), torch.randint(0, K, (n,), generator=g)


def grad_cam_oracle(model, x, y, layer='layer4'):
    """pytorch-grad-cam's own GradCAM (ReLU, bilinear resize, min-max), on a copy: it switches the model to
    eval and writes parameter gradients."""
    import copy
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    m = copy.deepcopy(model).eval()
    with GradCAM(model=m, target_layers=[m.get_submodule(layer)]) as cam:
        out = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(k)) for k in y])
    return torch.from_numpy(out)


def _check_boxes(p, h, w, mix):
    b = p.boxes
    bh, bw = b[:, 1] - b[:, 0], b[:, 3] - b[:, 2]
    assert (b[:, 0] >= 0).all() and (b[:, 1] <= h).all() and (b[:, 2] >= 0).all() and (b[:, 3] <= w).all()
    assert (bh >= 1).all() and (bw >= 1).all()
    area = (bh * bw).double() / (h * w)
    # sides are rounded and clamped to the image, so allow a pixel's worth of slack
    slack = (bh + bw + 1).double() / (h * w)
    assert (area <= mix.area_max + slack).all()
    unclamped = (bh < h) & (bw < w)
    assert (area[unclamped] >= mix.area_min - slack[unclamped]).all()


def test_warmup_is_plain_random_erasing():
    model = _model()
    mix = _mix(model, warmup_epochs=2)
    x, y = _batch()
    mix.set_epoch(1)
    p = mix.make_params(x, y)
    assert p.guidance is None and not mix.cam_guided
    _check_boxes(p, 64, 64, mix)
    mix.set_epoch(2)
    p = mix.make_params(x, y)
    assert p.guidance is not None and mix.cam_guided


def test_box_centres_lie_in_the_cam_region():
    """The vicinity {cam >= t} is the one Grad-CAM shows: pytorch-grad-cam's own map (ReLU at the grid, bilinear
    resize, min-max), not the min-max of the signed map."""
    model = _model()
    x, y = _batch(n=16, h=48, w=80)
    mix = _mix(model, t=0.5)
    p = mix.make_params(x, y)
    expected = grad_cam_oracle(model, x, y)
    torch.testing.assert_close(p.guidance, expected, rtol=1e-4, atol=1e-5)
    region = expected >= 0.5
    cy, cx = p.centres[:, 0], p.centres[:, 1]
    has_region = expected.flatten(1).amax(1) > 0        # no positive CAM value: plain random erasing
    assert has_region.sum() >= 8
    assert region[torch.arange(16), cy, cx][has_region].all()
    _check_boxes(p, 48, 80, mix)
    # the box contains its centre, shifted only as far as needed to fit
    b = p.boxes
    assert ((b[:, 0] <= cy) & (cy < b[:, 1]) & (b[:, 2] <= cx) & (cx < b[:, 3])).all()


@pytest.mark.parametrize('layer', ['layer2', 'layer3'])
def test_centres_in_pytorch_grad_cams_region_at_an_early_layer(layer):
    """Early in training (here: random weights) CAMs are signed everywhere; min-max of the signed map puts the
    region's threshold at the midpoint of (min, max), far from Grad-CAM's. Every centre must lie in Grad-CAM's
    own region; a sample whose CAM has no positive value is erased anywhere (plain Random Erasing)."""
    model = _model()
    x, y = _batch(n=24, seed=3)
    mix = _mix(model, t=0.5, cam_layer=layer, cam_method='gradcam')
    p = mix.make_params(x, y)
    oracle = grad_cam_oracle(model, x, y, layer)
    torch.testing.assert_close(p.guidance, oracle, rtol=1e-4, atol=1e-5)
    has_region = oracle.flatten(1).amax(1) > 0
    assert has_region.any()
    inside = (oracle >= 0.5)[torch.arange(24), p.centres[:, 0], p.centres[:, 1]]
    assert inside[has_region].all()


def test_no_positive_cam_is_plain_random_erasing():
    """A map with no positive value (ReLU: all zero) has no vicinity, even at t = 0: the box is drawn as plain
    Random Erasing draws it, from the same uniform draws."""
    model = _model()
    x, y = _batch(n=8)
    guided = _mix(model, t=0.0)
    plain = _mix(model, t=0.0, location='anywhere')
    with torch.no_grad():      # every class score below zero everywhere: a negative classifier on positive features
        model.fc.weight.copy_(-model.fc.weight.abs())
        model.fc.bias.zero_()
    p, q = guided.make_params(x, y), plain.make_params(x, y)
    assert p.guidance is not None and bool((p.guidance == 0).all())
    assert torch.equal(p.boxes, q.boxes)


def test_weighted_and_bbox_locations():
    model = _model()
    x, y = _batch(n=16)
    cam = grad_cam_oracle(model, x, y)
    has_region = cam.flatten(1).amax(1) > 0
    pw = _mix(model, location='weighted', gamma=4.0).make_params(x, y)
    assert (cam[torch.arange(16), pw.centres[:, 0], pw.centres[:, 1]] >= 0.5)[has_region].all()
    pb = _mix(model, location='bbox').make_params(x, y)
    region = cam >= 0.5
    for i in has_region.nonzero()[:, 0].tolist():
        rows, cols = region[i].any(1).nonzero()[:, 0], region[i].any(0).nonzero()[:, 0]
        y0, y1, x0, x1 = pb.boxes[i].tolist()
        assert rows.min() <= y0 and y1 <= rows.max() + 1 and cols.min() <= x0 and x1 <= cols.max() + 1


def test_centres_are_uniform_over_the_region():
    """With a region fixed by hand, centres spread evenly over its pixels."""
    w = torch.zeros(1, 64, 64)
    w[0, 10:14, 20:24] = 1
    counts = torch.zeros(64, 64)
    from timm_camaug.boxes import sample_from_weights
    u = torch.rand(4000, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    cy, cx = sample_from_weights(w.expand(4000, 64, 64), u)
    counts.index_put_((cy, cx), torch.ones(4000), accumulate=True)
    assert counts[10:14, 20:24].min() > 180 and counts.sum() == counts[10:14, 20:24].sum()


def test_empty_region_falls_back_to_anywhere():
    model = _model()
    x, y = torch.zeros(4, 3, 64, 64), torch.arange(4)
    p = _mix(model).make_params(x, y)
    assert (p.guidance == 0).all()               # constant CAM: the region {cam >= t} is empty
    _check_boxes(p, 64, 64, _mix(model))


@pytest.mark.parametrize('fill', ['pixel', 'zero', 'const'])
def test_fills_and_labels(fill):
    model = _model()
    x, y = _batch()
    mix = _mix(model, fill=fill, fill_value=2.5, label_smoothing=0.1)
    p = mix.make_params(x, y)
    xm, t = mix.apply(x, y, p)
    assert torch.equal(t, smooth_one_hot(y, K, 0.1))
    mask = box_masks(p.boxes, (64, 64))[:, None].expand_as(x)
    torch.testing.assert_close(xm[~mask], x[~mask])
    erased = xm[mask]
    if fill == 'zero':
        assert (erased == 0).all()
    elif fill == 'const':
        assert (erased == 2.5).all()
    else:
        assert abs(float(erased.mean())) < 0.1 and abs(float(erased.std()) - 1) < 0.1
        assert torch.equal(mix.apply(x, y, p)[0], xm)      # the noise replays from the params


def test_probability_is_per_sample_with_random_erasing_default():
    model = _model()
    mix = create_mix_fn('cam-erase', model=model, num_classes=K, generator=torch.Generator().manual_seed(0),
                        data_config={'input_size': (3, 64, 64)})
    assert mix.prob == 0.5 and mix.warmup_epochs == 0
    x, y = _batch(n=64)
    p = mix.make_params(x, y)
    assert 16 < int(p.active.sum()) < 48
    xm, _ = mix.apply(x, y, p)
    assert torch.equal(xm[~p.active], x[~p.active])


def test_errors():
    model = _model()
    with pytest.raises(ValueError, match='cam-erase: warmup_epochs must be >= 0'):
        _mix(model, warmup_epochs=-1)
    with pytest.raises(ValueError, match=r'cam-erase: t must be in \[0, 1\]'):
        _mix(model, t=2.0)
    with pytest.raises(ValueError, match='cam-erase: need 0 < area_min <= area_max <= 1'):
        _mix(model, area_min=0.5, area_max=0.1)
    with pytest.raises(ValueError, match='cam-erase: need 0 < aspect_min <= aspect_max'):
        _mix(model, aspect_min=0)
    with pytest.raises(ValueError, match="cam-erase: location must be one of"):
        _mix(model, location='centre')
    with pytest.raises(ValueError, match="cam-erase: fill must be one of"):
        _mix(model, fill='random')
    with pytest.raises(ValueError, match=r'cam-erase: need 0 < aspect_min <= aspect_max, got 0.3, inf'):
        _mix(model, aspect_max=float('inf'))
    with pytest.raises(ValueError, match=r'cam-erase: need 0 < area_min <= area_max <= 1, got nan, 0.4'):
        _mix(model, area_min=float('nan'))
    with pytest.raises(ValueError, match='cam-erase: gamma must be >= 0, got -1.0'):
        _mix(model, gamma=-1.0)
    with pytest.raises(ValueError, match='cam-erase: fill_value must be a finite number, got nan'):
        _mix(model, fill='const', fill_value=float('nan'))


def test_aspect_options_and_their_help():
    """aspect_min and aspect_max bound one uniform draw; neither follows the other (methods.md: 0.3-3.33)."""
    from timm_camaug.modes.cam_erase import CamErase
    helps = {o.name: o.help for o in CamErase.options}
    assert helps['aspect_min'] == 'smallest aspect ratio h/w of the erased box (drawn uniformly up to aspect_max)'
    assert helps['aspect_max'] == 'largest aspect ratio h/w of the erased box'
    mix = _mix(_model(), aspect_min=2.0, location='anywhere')
    assert (mix.aspect_min, mix.aspect_max) == (2.0, 1 / 0.3)
    p = mix.make_params(*_batch(n=64))
    hw = (p.boxes[:, 1] - p.boxes[:, 0]).double() / (p.boxes[:, 3] - p.boxes[:, 2]).double()
    assert hw.min() > 1.3 and hw.max() > 2.8          # tall boxes only (sides are rounded to pixels)


@pytest.mark.parametrize('location', ['region', 'bbox'])
def test_make_params_does_not_copy_to_the_host(location, monkeypatch):
    """The CAM-guided boxes are computed on the CAM's device: no .cpu() (a host-device sync on a GPU)."""
    mix = _mix(_model(), location=location)
    x, y = _batch()

    def no_host_copy(self, *a, **k):
        raise AssertionError('.cpu() called in make_params')
    monkeypatch.setattr(torch.Tensor, 'cpu', no_host_copy)
    p = mix.make_params(x, y)
    monkeypatch.undo()
    assert p.guidance is not None
    _check_boxes(p, 64, 64, mix)
