""" The torch fine-grained saliency against its oracle, OpenCV-contrib's ``cv2.saliency.StaticSaliencyFineGrained``. """
from functools import lru_cache

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import imagenet_normalize
from timm_camaug import saliency as S
from timm_camaug.saliency import fine_grained_saliency, opencv_float_saliency, rgb_to_gray_u8, saliency_peaks

PHOTOS = ('chelsea', 'astronaut', 'coffee', 'rocket')


@pytest.fixture(scope='module')
def cv2():
    cv2 = pytest.importorskip('cv2', reason='opencv-contrib-python-headless (test extra) is the saliency oracle')
    if not hasattr(cv2, 'saliency'):
        pytest.skip("cv2.saliency is missing: the cv2 package installed is opencv-python-headless (a grad-cam "
                    "dependency), which shares the cv2 package with the contrib wheel; install "
                    "opencv-contrib-python-headless last (pip install --force-reinstall --no-deps "
                    "opencv-contrib-python-headless, or `make venv-test`)")
    return cv2


def opencv_saliency(cv2, img: np.ndarray) -> np.ndarray:
    """OpenCV's map as uint8 (OpenCV >= 3.4.3 returns the 8-bit map converted to float32 / 255)."""
    ok, m = cv2.saliency.StaticSaliencyFineGrained_create().computeSaliency(img)
    assert ok
    if m.dtype == np.uint8:
        return m
    u = np.rint(m * 255).astype(np.uint8)
    assert np.array_equal(u.astype(np.float32) * np.float32(1 / 255), m), 'not an 8-bit map scaled by 1/255'
    return u


@lru_cache(maxsize=None)
def _full_photo(name: str) -> torch.Tensor:
    skdata = pytest.importorskip('skimage.data', reason='scikit-image (test extra) provides the real photos')
    return torch.from_numpy(getattr(skdata, name)()).permute(2, 0, 1).float() / 255.0


def photo(name: str, hw) -> torch.Tensor:
    """(3, H, W) float in [0, 1]: a real photo resized (any aspect)."""
    return F.interpolate(_full_photo(name)[None], size=hw, mode='bilinear', align_corners=False, antialias=True)[0]


def photo_u8(name: str, hw) -> torch.Tensor:
    return (photo(name, hw) * 255).round().to(torch.uint8)


def bgr(rgb_chw: torch.Tensor) -> np.ndarray:
    """HWC BGR copy of an RGB (3, H, W) tensor, as OpenCV expects photos."""
    return np.ascontiguousarray(rgb_chw.permute(1, 2, 0).numpy()[..., ::-1])


@pytest.mark.parametrize('hw', [(224, 224), (97, 131), (300, 200), (33, 45)])
def test_bit_exact_on_real_photos(cv2, hw):
    batch = torch.stack([photo_u8(p, hw) for p in PHOTOS])        # one batched call for all photos
    ours = fine_grained_saliency(batch)
    assert ours.shape == (4,) + hw and ours.dtype == torch.uint8
    for i, name in enumerate(PHOTOS):
        ref = opencv_saliency(cv2, bgr(batch[i]))
        assert np.array_equal(ours[i].numpy(), ref), f'{name} {hw}: differs from OpenCV'


def test_bit_exact_where_the_float32_integral_rounds(cv2):
    """Above ~65k pixels OpenCV's float32 integral image rounds; the maps still match exactly."""
    img = photo_u8('coffee', (448, 448))
    gray = S._blur3_u8(S._blur3_u8(rgb_to_gray_u8(img[None])))
    integral = S._integral_f32_from_u8(gray)
    ref_integral = cv2.integral(gray[0].to(torch.uint8).numpy(), sdepth=cv2.CV_32F)
    assert np.array_equal(integral[0].numpy(), ref_integral)
    exact = gray.to(torch.int64).cumsum(-1).cumsum(-2).to(torch.float32)
    assert not torch.equal(integral[:, 1:, 1:], exact), 'this image must exercise the rounding path'
    assert np.array_equal(fine_grained_saliency(img[None])[0].numpy(), opencv_saliency(cv2, bgr(img)))


@pytest.mark.parametrize('hw', [(224, 224), (448, 448), (512, 384)])
def test_loop_free_integral_stays_within_two_grey_levels_of_opencv(cv2, hw):
    """The training path integrates exactly in integers: equal to OpenCV up to 65,793 pixels, within two grey
    levels of it above (where OpenCV's float32 integral rounds), with the same peaks on real photos."""
    batch = torch.stack([photo_u8(p, hw) for p in PHOTOS])
    fast = fine_grained_saliency(batch, opencv_rounding=False)
    exact = fine_grained_saliency(batch)
    refs = np.stack([opencv_saliency(cv2, bgr(batch[i])) for i in range(len(PHOTOS))])
    assert np.array_equal(exact.numpy(), refs)
    diff = (fast.int() - torch.from_numpy(refs).int()).abs()
    if hw[0] * hw[1] <= 65793:
        assert not diff.any()
    else:
        assert int(diff.max()) <= 2 and float((diff > 0).float().mean()) < 0.001
    assert torch.equal(saliency_peaks(fast), saliency_peaks(torch.from_numpy(refs)))


@pytest.mark.parametrize('hw', [(64, 64), (120, 77), (5, 7), (1, 9), (2, 2), (1, 1)])
def test_bit_exact_on_random_images(cv2, hw):
    g = torch.Generator().manual_seed(hw[0] * 1000 + hw[1])
    rgb = torch.randint(0, 256, (3, 3) + hw, generator=g, dtype=torch.uint8)
    ours = fine_grained_saliency(rgb)
    ours_gray = fine_grained_saliency(rgb[:, 0])                  # (N, H, W) grey input
    assert torch.equal(fine_grained_saliency(rgb[:, :1]), ours_gray)   # (N, 1, H, W) grey input
    for i in range(3):
        assert np.array_equal(ours[i].numpy(), opencv_saliency(cv2, bgr(rgb[i])))
        assert np.array_equal(ours_gray[i].numpy(), opencv_saliency(cv2, rgb[i, 0].numpy().copy()))


def test_constant_images(cv2):
    imgs = torch.stack([torch.full((3, 40, 50), v, dtype=torch.uint8) for v in (0, 128, 255)])
    ours = fine_grained_saliency(imgs)
    assert not ours.any()
    for i in range(3):
        assert np.array_equal(ours[i].numpy(), opencv_saliency(cv2, bgr(imgs[i])))
    assert saliency_peaks(ours).tolist() == [[0, 0]] * 3


def test_gray_conversion_equals_opencv_for_every_colour(cv2):
    a = torch.arange(1 << 24, dtype=torch.int32)
    rgb = torch.stack([a & 255, (a >> 8) & 255, a >> 16]).to(torch.uint8).view(3, 4096, 4096)
    ours = rgb_to_gray_u8(rgb[None])[0]
    ref = cv2.cvtColor(bgr(rgb), cv2.COLOR_BGR2GRAY)
    assert np.array_equal(ours.numpy(), ref)


def test_blur_and_float_integral_equal_opencv(cv2):
    g = torch.Generator().manual_seed(0)
    u8 = torch.randint(0, 256, (1, 37, 53), generator=g, dtype=torch.uint8)
    blurred = S._blur3_u8(u8.to(torch.int32))
    assert np.array_equal(blurred[0].numpy(), cv2.GaussianBlur(u8[0].numpy(), (3, 3), 0, 0))
    f = torch.randn(1, 37, 53, generator=g) * 3
    assert np.array_equal(S._blur3_f32(f)[0].numpy(), cv2.GaussianBlur(f[0].numpy(), (3, 3), 0, 0))
    for w in (53, 64, 7):     # 8-pixel SIMD blocks, plus a remainder, or a remainder only
        f = torch.randn(1, 29, w, generator=g) * 3
        ref = cv2.integral(f[0].numpy(), sdepth=cv2.CV_32F)
        assert np.array_equal(S._integral_f32_from_f32(f)[0].numpy(), ref)


def released_saliency_peak(cv2, img_chw: torch.Tensor):
    """The released SaliencyMix code's peak: OpenCV on the normalised float tensor, then NumPy."""
    temp_img = img_chw.cpu().numpy().transpose(1, 2, 0)
    success, saliency_map = cv2.saliency.StaticSaliencyFineGrained_create().computeSaliency(temp_img)
    saliency_map = (saliency_map * 255).astype('uint8')
    return tuple(int(v) for v in np.unravel_index(np.argmax(saliency_map, axis=None), saliency_map.shape))


@pytest.mark.parametrize('hw', [(224, 224), (97, 131)])
def test_float_input_equals_opencv_and_the_released_peak(cv2, hw):
    x = imagenet_normalize(torch.stack([photo(p, hw) for p in PHOTOS]))
    ours = opencv_float_saliency(x)
    peaks = saliency_peaks(ours)
    for i in range(len(PHOTOS)):
        ref = opencv_saliency(cv2, x[i].numpy().transpose(1, 2, 0))
        assert np.array_equal(ours[i].numpy(), ref)
        assert tuple(peaks[i].tolist()) == released_saliency_peak(cv2, x[i])


def test_float_input_random_and_grey(cv2):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 31, 45, generator=g)
    for i, m in enumerate(opencv_float_saliency(x)):
        assert np.array_equal(m.numpy(), opencv_saliency(cv2, x[i].numpy().transpose(1, 2, 0)))
    grey = torch.randn(1, 1, 20, 24, generator=g)
    assert np.array_equal(opencv_float_saliency(grey)[0].numpy(), opencv_saliency(cv2, grey[0, 0].numpy()))


def test_mix_scaling_is_exact():
    """``(int)(255. * (double)(float)(s / (float)m))`` for every sum and maximum the detector can produce."""
    s = torch.arange(1531, dtype=torch.float32)
    m = torch.arange(1, 1531, dtype=torch.float32)[:, None]
    q = s / m
    q = torch.where(s <= m, q, torch.zeros_like(q))
    assert torch.equal(S._floor_255_times(q), (q.double() * 255.0).floor().long())


def test_peaks_are_the_first_row_major_maximum():
    maps = torch.zeros(2, 4, 5, dtype=torch.uint8)
    maps[0, 1, 3] = maps[0, 2, 0] = 9
    maps[1, 3, 4] = 1
    assert saliency_peaks(maps).tolist() == [[1, 3], [3, 4]]


def test_same_maps_under_autocast_and_on_views():
    g = torch.Generator().manual_seed(2)
    x = torch.randint(0, 256, (2, 3, 40, 30), generator=g, dtype=torch.uint8)
    ref = fine_grained_saliency(x)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert torch.equal(fine_grained_saliency(x), ref)
    assert torch.equal(fine_grained_saliency(x.contiguous(memory_format=torch.channels_last)), ref)
    xf = torch.randn(1, 3, 40, 30, generator=g)
    ref_f = opencv_float_saliency(xf)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert torch.equal(opencv_float_saliency(xf), ref_f)


def test_errors():
    with pytest.raises(ValueError, match=r'fine_grained_saliency: expected uint8 images, got torch.float32'):
        fine_grained_saliency(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match=r'expected \(N, H, W\), \(N, 1, H, W\) or \(N, 3, H, W\) images, '
                                         r'got \(1, 4, 8, 8\)'):
        fine_grained_saliency(torch.zeros(1, 4, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r'got \(8, 8\)'):
        fine_grained_saliency(torch.zeros(8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r'empty images of size \(0, 8\)'):
        fine_grained_saliency(torch.zeros(1, 3, 0, 8, dtype=torch.uint8))
    with pytest.raises(TypeError, match='expected a tensor, got ndarray'):
        opencv_float_saliency(np.zeros((1, 3, 8, 8), np.float32))
