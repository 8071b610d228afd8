""" timm's Mixup / CutMix as a mode: the same draws and results as timm's own class, replayable, and refusals. """
import numpy as np
import pytest
import torch
from timm.data import Mixup

from timm_camaug.boxes import box_masks
from timm_camaug.modes.timm_mixup import TimmMixup, numpy_seeded

K = 5


def _batch(n=6, h=17, w=23, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, h, w, generator=g), torch.randint(0, K, (n,), generator=g)


@pytest.mark.parametrize('mode', ['batch', 'pair', 'elem'])
@pytest.mark.parametrize('alphas', [(0.8, 1.0), (0.0, 1.0), (0.8, 0.0)], ids=['both', 'cutmix', 'mixup'])
def test_equals_timms_mixup_under_the_same_numpy_seed(mode, alphas):
    """timm's own Mixup, called under the numpy state the params record, gives the same images and targets."""
    for seed in range(4):
        mix = TimmMixup(num_classes=K, mixup_alpha=alphas[0], cutmix_alpha=alphas[1], mixup_mode=mode, prob=0.8,
                        label_smoothing=0.1, generator=torch.Generator().manual_seed(seed))
        x, y = _batch(seed=seed)
        params = mix.make_params(x, y)
        xm, t = mix.apply(x, y, params)
        ref = Mixup(mixup_alpha=alphas[0], cutmix_alpha=alphas[1], prob=0.8, mode=mode, label_smoothing=0.1,
                    num_classes=K)
        with numpy_seeded(params.seed):
            xr, tr = ref(x.clone(), y.clone())
        torch.testing.assert_close(xm, xr, rtol=0, atol=1e-6)
        torch.testing.assert_close(t, tr, rtol=0, atol=1e-6)


def test_params_describe_the_mix_and_replay_exactly():
    mix = TimmMixup(num_classes=K, mixup_alpha=0.0, cutmix_alpha=1.0, generator=torch.Generator().manual_seed(3))
    x, y = _batch(n=8, h=32, w=32)
    params = mix.make_params(x, y)
    assert params.perm.tolist() == list(range(7, -1, -1))
    assert params.active.all() and params.use_cutmix.all()
    xm, t = mix.apply(x, y, params)
    xr, tr = mix.apply(x, y, params)
    assert torch.equal(xm, xr) and torch.equal(t, tr)
    region = box_masks(params.boxes, (32, 32))
    assert torch.equal(xm[region[:, None].expand_as(x)], x.flip(0)[region[:, None].expand_as(x)])
    assert torch.equal(xm[~region[:, None].expand_as(x)], x[~region[:, None].expand_as(x)])
    # the label weight is the box's area after clipping (timm's correct_lam)
    area = region.flatten(1).double().mean(1)
    torch.testing.assert_close(params.lam, 1.0 - area)
    regions = mix.regions(params, (32, 32))
    assert torch.equal(regions.target, region) and torch.equal(regions.source, region)
    assert torch.equal(regions.blend, torch.zeros(8, dtype=torch.float64))


def test_callers_numpy_state_is_untouched():
    """timm's draws come from a numpy state seeded from the mode's generator: the global stream goes on as if
    the call never happened."""
    np.random.seed(5)
    expected = np.random.rand(3)
    np.random.seed(5)
    mix = TimmMixup(num_classes=K, mixup_alpha=0.8, cutmix_alpha=1.0)
    mix(*_batch())
    assert np.array_equal(np.random.rand(3), expected)


def test_disabled_and_prob_zero_give_smoothed_one_hot():
    x, y = _batch()
    disabled = TimmMixup(num_classes=K, label_smoothing=0.1)
    disabled.mixup_enabled = False          # train.py's --mixup-off-epoch
    for mix in (TimmMixup(num_classes=K, prob=0.0, label_smoothing=0.1), disabled):
        xm, t = mix(x, y)
        assert torch.equal(xm, x)
        torch.testing.assert_close(t, torch.full((6, K), 0.1 / K) + torch.eye(K)[y] * 0.9)


def test_takes_train_pys_own_mixup():
    ref = Mixup(mixup_alpha=0.4, cutmix_alpha=1.0, prob=0.7, switch_prob=0.3, mode='elem', label_smoothing=0.2,
                num_classes=K)
    mix = TimmMixup(mixup=ref)
    assert (mix.mixup_alpha, mix.cutmix_alpha, mix.prob, mix.switch_prob, mix.mixup_mode, mix.label_smoothing,
            mix.num_classes) == (0.4, 1.0, 0.7, 0.3, 'elem', 0.2, K)


@pytest.mark.parametrize('kwargs, error, match', [
    (dict(mixup_alpha=0.0, cutmix_alpha=0.0), ValueError, 'mixup_alpha, cutmix_alpha or cutmix_minmax must turn'),
    (dict(mixup_alpha=-1.0), ValueError, 'mixup_alpha must be >= 0, got -1.0'),
    (dict(switch_prob=1.5), ValueError, r'switch_prob must be in \[0, 1\], got 1.5'),
    (dict(mixup_mode='row'), ValueError, "mixup_mode must be one of batch, pair, elem, got 'row'"),
    (dict(cutmix_minmax=(0.5, 0.2)), ValueError, r'cutmix_minmax must be \(min, max\)'),
    (dict(mixup=object()), TypeError, 'mixup must be a timm.data.Mixup, got object'),
    (dict(mixup_alpha='1'), ValueError, "mixup_alpha must be a number, got str '1'"),
])
def test_refused_options(kwargs, error, match):
    with pytest.raises(error, match=match):
        TimmMixup(num_classes=K, **kwargs)


def test_odd_batch_is_refused_with_the_fix():
    mix = TimmMixup(num_classes=K)
    with pytest.raises(ValueError, match=r"needs an even batch, got 5 images \(train.py: an even --batch-size"):
        mix(*_batch(n=5))
