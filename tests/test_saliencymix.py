""" SaliencyMix: boxes on the source's saliency peak, pasted in place, label weights from the pasted area. """
import argparse
import math
from functools import lru_cache

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import imagenet_normalize, real_photo
from timm_camaug import add_args, create_mix_fn
from timm_camaug.modes.saliencymix import SaliencyMix, SaliencyMixParams
from timm_camaug.pixels import to_uint8
from timm_camaug.saliency import fine_grained_saliency, opencv_float_saliency, saliency_peaks
from timm_camaug.targets import smooth_one_hot

K = 5
PHOTOS = ('chelsea', 'astronaut', 'coffee', 'rocket')
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def make(seed=0, **kw):
    return create_mix_fn('saliencymix', num_classes=K, generator=torch.Generator().manual_seed(seed), **kw)


@lru_cache(maxsize=None)
def _photos(size):
    return imagenet_normalize(torch.stack([real_photo(p, size) for p in PHOTOS]))


def photos(size=64):
    """Four real photos, ImageNet-normalised, and distinct labels."""
    return _photos(size).clone(), torch.tensor([0, 1, 2, 3])


def noise(n=6, h=48, w=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, h, w, generator=g), torch.randint(0, K, (n,), generator=g)


def reference_mix(x, perm, boxes):
    """The paste, one sample at a time."""
    out = x.clone()
    for i, (y0, y1, x0, x1) in enumerate(boxes.tolist()):
        out[i, :, y0:y1, x0:x1] = x[perm[i], :, y0:y1, x0:x1]
    return out


def expected_box(h, w, lam, cy, cx):
    """int(side * sqrt(1 - lam)) centred on the peak, clipped (timm's / the released code's rule)."""
    ch, cw = int(h * math.sqrt(1 - lam)), int(w * math.sqrt(1 - lam))
    return [min(max(cy - ch // 2, 0), h), min(max(cy + ch // 2, 0), h),
            min(max(cx - cw // 2, 0), w), min(max(cx + cw // 2, 0), w)]


@pytest.fixture(scope='module')
def cv2():
    cv2 = pytest.importorskip('cv2', reason='opencv-contrib-python-headless (test extra) is the saliency oracle')
    if not hasattr(cv2, 'saliency'):
        pytest.skip("cv2.saliency is missing: opencv-python-headless (a grad-cam dependency) shadows the contrib "
                    "wheel's cv2; install opencv-contrib-python-headless last (`make venv-test`)")
    return cv2


@pytest.mark.parametrize('variant', ['paper', 'official'])
@pytest.mark.parametrize('smoothing', [0.0, 0.1])
def test_shapes_targets_and_boxes(variant, smoothing):
    x, y = photos()
    x_orig = x.clone()
    mix = make(variant=variant, label_smoothing=smoothing)
    params = mix.make_params(x, y)
    xm, t = mix.apply(x, y, params)
    assert torch.equal(x, x_orig), 'the input must not be modified'
    assert xm.shape == x.shape and xm.dtype == x.dtype and xm.device == x.device
    assert t.shape == (4, K) and t.dtype == torch.float32
    assert (t >= 0).all()
    torch.testing.assert_close(t.sum(1), torch.ones(4))
    b = params.boxes
    assert b.dtype == torch.int64 and b.shape == (4, 4)
    assert ((b[:, 0] >= 0) & (b[:, 0] <= b[:, 1]) & (b[:, 1] <= 64)).all()
    assert ((b[:, 2] >= 0) & (b[:, 2] <= b[:, 3]) & (b[:, 3] <= 64)).all()
    # weights: lam * one_hot(y) + (1 - lam) * one_hot(y[perm]) with lam = 1 - area / (H * W)
    lam = 1 - ((b[:, 1] - b[:, 0]) * (b[:, 3] - b[:, 2])).double() / (64 * 64)
    oh = smooth_one_hot(y, K, smoothing)
    torch.testing.assert_close(t, lam[:, None].float() * oh + (1 - lam[:, None].float()) * oh[params.perm])


def test_paper_boxes_centred_on_each_source_peak(cv2):
    """Peaks recomputed independently: OpenCV on the 8-bit BGR image de-normalised in the test."""
    x, y = photos(96)
    mix = make(seed=1)
    params = mix.make_params(x, y)
    lam = float(params.lam[0])
    assert torch.equal(params.lam, torch.full((4,), lam, dtype=torch.float64)), 'one lam per batch'
    mean, std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)
    for i in range(4):
        src = x[params.perm[i]]
        u8 = ((src * std + mean) * 255).round().clamp(0, 255).to(torch.uint8)
        bgr = np.ascontiguousarray(u8.permute(1, 2, 0).numpy()[..., ::-1])
        sal = cv2.saliency.StaticSaliencyFineGrained_create().computeSaliency(bgr)[1]
        cy, cx = np.unravel_index(np.argmax(sal), sal.shape)
        assert params.peaks[i].tolist() == [cy, cx]
        assert params.boxes[i].tolist() == expected_box(96, 96, lam, int(cy), int(cx))
    assert len({tuple(p) for p in params.peaks.tolist()}) > 1, 'per-sample peaks on different photos'


def test_official_reproduces_the_released_code(cv2):
    """One box for the batch, from OpenCV run on the normalised float image x[perm[0]] the released way."""
    x, y = photos(112)
    for seed in range(3):
        params = make(seed=seed, variant='official').make_params(x, y)
        lam = float(params.lam[0])
        img = x[params.perm[0]]
        temp_img = img.cpu().numpy().transpose(1, 2, 0)
        _, saliency_map = cv2.saliency.StaticSaliencyFineGrained_create().computeSaliency(temp_img)
        saliency_map = (saliency_map * 255).astype('uint8')
        cx, cy = np.unravel_index(np.argmax(saliency_map, axis=None), saliency_map.shape)   # row, column
        W, H = img.shape[1], img.shape[2]
        cut_w, cut_h = int(W * np.sqrt(1. - lam)), int(H * np.sqrt(1. - lam))
        released = [np.clip(cx - cut_w // 2, 0, W), np.clip(cx + cut_w // 2, 0, W),
                    np.clip(cy - cut_h // 2, 0, H), np.clip(cy + cut_h // 2, 0, H)]
        assert params.boxes.tolist() == [[int(v) for v in released]] * 4
        assert params.guidance.shape == (1, 112, 112)


def test_replay_from_fixed_params():
    x, y = noise(4, 30, 36)
    perm = torch.tensor([2, 0, 3, 1])
    boxes = torch.tensor([[0, 10, 5, 20], [3, 30, 0, 36], [7, 8, 9, 10], [0, 0, 0, 0]])
    params = SaliencyMixParams(active=torch.ones(4, dtype=torch.bool), perm=perm,
                               lam=torch.full((4,), 0.5, dtype=torch.float64),
                               peaks=torch.zeros(4, 2, dtype=torch.long), boxes=boxes, guidance=None)
    mix = make()
    xm, t = mix.apply(x, y, params)
    assert torch.equal(xm, reference_mix(x, perm, boxes))
    area = torch.tensor([10 * 15, 27 * 36, 1, 0]) / (30 * 36)
    oh = smooth_one_hot(y, K)
    torch.testing.assert_close(t, (1 - area)[:, None] * oh + area[:, None] * oh[perm])
    # inactive samples are left alone
    params.active = torch.tensor([True, False, True, False])
    xm2, t2 = mix.apply(x, y, params)
    assert torch.equal(xm2[1], x[1]) and torch.equal(t2[1], oh[1]) and torch.equal(xm2[0], xm[0])


def test_label_weight_is_one_minus_the_pasted_fraction():
    x, y = noise(8, 40, 56, seed=3)
    for seed in range(4):
        mix = make(seed=seed)
        params = mix.make_params(x, y)
        xm, t = mix.apply(x, y, params)
        changed = (xm != x).any(1).flatten(1).sum(1).double()     # pixels that differ, counted independently
        for i in range(8):
            if params.perm[i] == i:
                continue
            lam_i = 1 - changed[i] / (40 * 56)
            y_i, y_j = int(y[i]), int(y[params.perm[i]])
            expected = torch.zeros(K, dtype=torch.float64)
            expected[y_i] += lam_i
            expected[y_j] += 1 - lam_i
            torch.testing.assert_close(t[i].double(), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize('variant', ['paper', 'official'])
def test_prob_zero_and_mixup_disabled(variant):
    x, y = noise()
    for mix in (make(prob=0.0, variant=variant, label_smoothing=0.1), make(variant=variant, label_smoothing=0.1)):
        if mix.prob > 0:
            mix.mixup_enabled = False
        xm, t = mix(x, y)
        assert xm is x
        assert torch.equal(t, smooth_one_hot(y, K, 0.1))
        assert mix.make_params(x, y).guidance is None


def test_default_prob_and_options():
    mix = create_mix_fn('saliencymix', num_classes=K)
    assert mix.prob == 1.0 and mix.beta == 1.0 and mix.variant == 'paper'
    assert SaliencyMix.prob_per == 'batch' and SaliencyMix.default_prob == 1.0


@pytest.mark.parametrize('variant', ['paper', 'official'])
@pytest.mark.parametrize('shape', [(1, 32, 32), (3, 37, 53), (2, 80, 48), (2, 1, 1)])
def test_batch_size_one_and_odd_sizes(variant, shape):
    x, y = noise(*shape)
    mix = make(variant=variant)
    params = mix.make_params(x, y)
    xm, t = mix.apply(x, y, params)
    assert xm.shape == x.shape and t.shape == (shape[0], K)
    assert torch.equal(xm, reference_mix(x, params.perm, params.boxes))
    h, w = shape[1:]
    assert ((params.boxes[:, 1] <= h) & (params.boxes[:, 3] <= w)).all()
    torch.testing.assert_close(t.sum(1), torch.ones(shape[0]))


@pytest.mark.parametrize('variant', ['paper', 'official'])
def test_constant_images(variant):
    x = torch.zeros(4, 3, 32, 32)
    y = torch.tensor([0, 1, 2, 3])
    params = make(variant=variant).make_params(x, y)
    xm, t = make(variant=variant)(x, y)
    assert torch.isfinite(xm).all() and torch.isfinite(t).all() and (t >= 0).all()
    if variant == 'paper':
        assert params.peaks.tolist() == [[0, 0]] * 4, 'a flat map peaks at its first pixel'


def test_bf16_autocast_and_channels_last():
    x, y = photos()
    ref = make(seed=2)(x, y)
    xb = x.bfloat16()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        params = make(seed=2).make_params(xb, y)
        xm, t = make(seed=2).apply(xb, y, params)
    assert xm.dtype == torch.bfloat16 and t.dtype == torch.float32
    assert torch.isfinite(t).all()
    # the saliency is that of the bf16 images' 8-bit pixels, as outside autocast
    expected = make(seed=2).make_params(xb.float(), y)
    assert torch.equal(params.boxes, expected.boxes)
    assert torch.equal(xm, reference_mix(xb, params.perm, params.boxes))
    xc = x.contiguous(memory_format=torch.channels_last)
    out_c = make(seed=2)(xc, y)
    assert torch.equal(out_c[0], ref[0]) and torch.equal(out_c[1], ref[1])


def test_seeded_generator_reproduces():
    x, y = photos()
    a, b = make(seed=4)(x, y), make(seed=4)(x, y)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    c = make(seed=5)(x, y)
    assert not (torch.equal(a[0], c[0]) and torch.equal(a[1], c[1]))


def test_soft_targets_in():
    x, y = photos()
    ints = make(seed=6)(x, y)
    soft_in = F.one_hot(y, K).float() * 0.8 + 0.2 / K
    soft = make(seed=6)(x, soft_in)
    torch.testing.assert_close(soft[0], ints[0])
    params = make(seed=6).make_params(x, y)
    lam = 1 - ((params.boxes[:, 1] - params.boxes[:, 0]) * (params.boxes[:, 3] - params.boxes[:, 2])) / 64 ** 2
    torch.testing.assert_close(soft[1], lam[:, None] * soft_in + (1 - lam[:, None]) * soft_in[params.perm])


def test_maps_stored_for_replay_match_the_detector():
    x, y = photos()
    mix = make(seed=7)
    params = mix.make_params(x, y)
    assert torch.equal(params.guidance, fine_grained_saliency(to_uint8(x[params.perm], MEAN, STD)))
    assert torch.equal(params.peaks, saliency_peaks(params.guidance))
    off = make(seed=7, variant='official').make_params(x, y)
    assert torch.equal(off.guidance, opencv_float_saliency(x[off.perm[0]][None]))


def test_errors():
    with pytest.raises(ValueError, match='saliencymix: beta must be > 0, got 0.0'):
        make(beta=0.0)
    with pytest.raises(ValueError, match="saliencymix: variant must be one of paper, official, got 'released'"):
        make(variant='released')
    mix = make()
    x, y = noise()
    with pytest.raises(ValueError, match='saliencymix: the saliency detector takes 1- or 3-channel images, got 4'):
        mix(torch.randn(2, 4, 16, 16), y[:2])
    with pytest.raises(ValueError, match="saliencymix: the data config's mean/std have 3 values for 1-channel"):
        mix(torch.randn(2, 1, 16, 16), y[:2])
    params = mix.make_params(x, y)
    with pytest.raises(ValueError, match='saliencymix: params are for a batch of 6, x has 5 images'):
        mix.apply(x[:5], y[:5], params)
    with pytest.raises(ValueError, match='x must be a float tensor'):
        mix(x.to(torch.uint8), y)


def test_grey_images_with_grey_stats():
    mix = make(data_config={'mean': (0.5,), 'std': (0.25,)})
    x, y = noise(3, 24, 24)
    xm, t = mix(x[:, :1], y[:3])
    assert xm.shape == (3, 1, 24, 24) and t.shape == (3, K)


def test_create_from_train_args():
    parser = argparse.ArgumentParser()
    parser.add_argument('--num-classes', type=int, default=K)
    parser.add_argument('--smoothing', type=float, default=0.0)
    add_args(parser)
    args = parser.parse_args(['--mix-mode', 'saliencymix', '--saliencymix-beta', '2.5',
                              '--saliencymix-variant', 'official', '--saliencymix-prob', '0.7', '--smoothing', '0.1'])
    mix = create_mix_fn(args, generator=torch.Generator().manual_seed(0))
    assert isinstance(mix, SaliencyMix)
    assert (mix.beta, mix.variant, mix.prob, mix.label_smoothing, mix.num_classes) == (2.5, 'official', 0.7, 0.1, K)
    with pytest.raises(SystemExit):
        parser.parse_args(['--mix-mode', 'saliencymix', '--saliencymix-variant', 'released'])
    x, y = photos()
    xm, t = mix(x, y)
    torch.testing.assert_close(t.sum(1), torch.ones(4))
