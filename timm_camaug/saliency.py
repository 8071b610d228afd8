""" Fine-grained static saliency (Montabone & Soto, 2010) exactly as OpenCV-contrib computes it, batched in torch.

Paper: Human detection using a mobile platform and novel features derived from a visual saliency mechanism,
Montabone & Soto, Image and Vision Computing 28(3), 2010. Reference implementation:
``cv2.saliency.StaticSaliencyFineGrained`` (opencv_contrib ``modules/saliency/src/staticSaliencyFineGrained.cpp``),
the detector SaliencyMix uses.

A grey image is blurred twice (3x3 Gaussian); at six scales each pixel is compared with the mean of a square
surround read from an integral image ("on": brighter than the surround, "off": darker); the on and off maps
are summed over scales, scaled by their maxima and added. Every step here repeats OpenCV's integer and float32
arithmetic (fixed-point colour conversion, 8-bit blur rounding, float32 integral image, float-to-uchar casts),
so :func:`fine_grained_saliency` equals OpenCV's output bit for bit on 8-bit images.

Channel order: batches here are RGB, as torch models see them. OpenCV expects BGR, and its ``COLOR_BGR2GRAY``
of a BGR image is the usual RGB-to-grey conversion of the same picture, so
``fine_grained_saliency(rgb)`` equals ``computeSaliency(rgb[..., ::-1])`` (the BGR copy of the same photo).

:func:`opencv_float_saliency` reproduces what the detector returns for a float32 image (what SaliencyMix's
released code hands it): it blurs and integrates the float grey image, but reads each pixel's centre value
as ``gray.at<uchar>(y, x)``, a byte of the float buffer.
"""
import sys
from typing import Tuple

import torch
import torch.nn.functional as F

__all__ = ['NEIGHBOURHOODS', 'fine_grained_saliency', 'opencv_float_saliency', 'rgb_to_gray_u8', 'saliency_peaks']

# half-widths of the surrounds: 3*4, 3*4*2, 3*4*2*2, 7*4, 7*4*2, 7*4*2*2
NEIGHBOURHOODS: Tuple[int, ...] = (12, 24, 48, 28, 56, 112)

# OpenCV's 8-bit RGB->grey: fixed point with 15 fractional bits, round half up (0.299, 0.587, 0.114)
_R2Y, _G2Y, _B2Y, _GRAY_SHIFT = 9798, 19235, 3735, 15
_F32_EXACT_INT = 1 << 24     # integers up to this are exact in float32
# OpenCV's float BGR->grey weights (float32 constants B2YF, G2YF, R2YF)
_B2YF, _G2YF, _R2YF = (torch.tensor(v, dtype=torch.float32).item() for v in (0.114, 0.587, 0.299))


def _as_gray_or_rgb(images: torch.Tensor, what: str) -> torch.Tensor:
    """(N, C, H, W) with C in (1, 3) from (N, H, W), (N, 1, H, W) or (N, 3, H, W)."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{what}: expected a tensor, got {type(images).__name__}")
    if images.ndim == 3:
        images = images[:, None]
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"{what}: expected (N, H, W), (N, 1, H, W) or (N, 3, H, W) images, got {tuple(images.shape)}")
    if images.shape[-1] < 1 or images.shape[-2] < 1:
        raise ValueError(f"{what}: empty images of size {tuple(images.shape[-2:])}")
    return images


def rgb_to_gray_u8(images: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) uint8 RGB -> (N, H, W) int32 grey, as OpenCV's ``COLOR_BGR2GRAY`` of the BGR image."""
    x = images.to(torch.int32)
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    return (b * _B2Y + g * _G2Y + r * _R2Y + (1 << (_GRAY_SHIFT - 1))) >> _GRAY_SHIFT


def _reflect101_index(n: int, device: torch.device) -> torch.Tensor:
    """Indices of a 1-pixel BORDER_REFLECT_101 padding of an axis of length n (n == 1 repeats the pixel)."""
    idx = torch.arange(-1, n + 1, device=device)
    idx = torch.where(idx < 0, -idx, idx)
    idx = torch.where(idx > n - 1, 2 * (n - 1) - idx, idx)
    return idx.clamp(0, n - 1)


def _pad_reflect101(x: torch.Tensor) -> torch.Tensor:
    h, w = x.shape[-2:]
    return x.index_select(-2, _reflect101_index(h, x.device)).index_select(-1, _reflect101_index(w, x.device))


def _blur3_u8(gray: torch.Tensor) -> torch.Tensor:
    """OpenCV's ``GaussianBlur(gray, (3, 3), 0)`` of 8-bit images: kernel [1, 2, 1]/4 twice, exact fixed point,
    rounded half up."""
    p = _pad_reflect101(gray)
    rows = p[..., :-2] + 2 * p[..., 1:-1] + p[..., 2:]
    s = rows[..., :-2, :] + 2 * rows[..., 1:-1, :] + rows[..., 2:, :]
    return (s + 8) >> 4


def _blur3_f32(gray: torch.Tensor) -> torch.Tensor:
    """OpenCV's ``GaussianBlur(gray, (3, 3), 0)`` of float32 images (rows first, ``(l + r) * .25 + c * .5``)."""
    p = _pad_reflect101(gray)
    rows = (p[..., :-2] + p[..., 2:]) * 0.25 + p[..., 1:-1] * 0.5
    return (rows[..., :-2, :] + rows[..., 2:, :]) * 0.25 + rows[..., 1:-1, :] * 0.5


def _integral_f32_from_u8(gray: torch.Tensor, opencv_rounding: bool = True) -> torch.Tensor:
    """``integral(gray8u, sum, CV_32F)``: (N, H+1, W+1) float32.

    OpenCV adds each row's exact prefix sums to the float32 row above, one row at a time. While the sums
    stay within 2**24 that is the exact integer integral; from the first row where 255-valued pixels could
    take them past it, the row-by-row float32 additions are repeated (only images above 65793 pixels; the
    bound depends on the size alone, so no value is read back from the device). ``opencv_rounding=False``
    skips that sequential part and returns the exact integer integral rounded once to float32.
    """
    n, h, w = gray.shape
    rows = gray.to(torch.int64).cumsum(-1)                     # exact row prefix sums
    out = gray.new_zeros((n, h + 1, w + 1), dtype=torch.float32)
    out[:, 1:, 1:] = rows.cumsum(-2).to(torch.float32)
    first = _F32_EXACT_INT // (255 * w)                       # rows 0..first-1 sum to at most 2**24
    if opencv_rounding and first < h:
        rows_f = rows.to(torch.float32)
        for y in range(first, h):
            out[:, y + 1, 1:] = out[:, y, 1:] + rows_f[:, y]
    return out


def _scan4(v: torch.Tensor) -> torch.Tensor:
    """Inclusive float32 prefix sum of the last axis (length 4) by two shifted adds, as a SIMD lane does it."""
    v = torch.cat([v[..., :1], v[..., 1:] + v[..., :-1]], -1)
    return torch.cat([v[..., :2], v[..., 2:] + v[..., :-2]], -1)


def _integral_f32_from_f32(gray: torch.Tensor) -> torch.Tensor:
    """``integral(gray32f, sum, CV_32F)``: (N, H+1, W+1) float32, with OpenCV's (x86 SIMD) summation order.

    Row prefix sums go 8 pixels at a time: each half of 4 is scanned, the upper half gets the lower half's
    total, then the running total of the previous blocks is added; leftover pixels are added one by one.
    Rows are then accumulated top to bottom.
    """
    n, h, w = gray.shape
    w8 = w // 8 * 8
    pre = gray.new_empty((n, h, w))
    carry = gray.new_zeros((n, h))
    if w8:
        blk = gray[..., :w8].reshape(n, h, w8 // 8, 2, 4)
        lo, hi = _scan4(blk[..., 0, :]), _scan4(blk[..., 1, :])
        blocks = torch.cat([lo, hi + lo[..., 3:]], -1)          # (N, H, W/8, 8)
        for k in range(w8 // 8):
            blocks[:, :, k] += carry[..., None]
            carry = blocks[:, :, k, 7]
        pre[..., :w8] = blocks.reshape(n, h, w8)
    for x in range(w8, w):
        carry = carry + gray[..., x]
        pre[..., x] = carry
    out = gray.new_zeros((n, h + 1, w + 1))
    for y in range(h):
        out[:, y + 1, 1:] = out[:, y, 1:] + pre[:, y]
    return out


def _on_off_sums(integral: torch.Tensor, centre: torch.Tensor, wrap: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per pixel, the on and off contrasts of all scales summed (OpenCV's ``getIntensityScaled`` + ``mixScales``
    sums), (N, H, W) float32 each (integer valued).

    Surround of pixel (y, x) at scale n: the integral-image rectangle from (y-n+1, x-n+1) to (y+n+1, x+n+1),
    corners clipped to the integral image (so up to row H / column W), minus the centre pixel. ``wrap``: keep
    the low byte of contrasts above 255, as OpenCV's ``(uchar)`` cast does on x86 (reachable only when the
    centre values are not the integrated image's own, as in :func:`opencv_float_saliency`).
    """
    h, w = centre.shape[-2:]
    dev = integral.device
    centre = centre.to(torch.float32)
    # clipping the corners to the integral image is replicate padding; with the widest surround padded once,
    # every corner of every scale is a strided view, no gather
    lo, hi = max(NEIGHBOURHOODS) - 1, max(NEIGHBOURHOODS)
    padded = F.pad(integral[:, None], (lo, hi, lo, hi), mode='replicate')[:, 0]
    ys, xs = torch.arange(h, device=dev), torch.arange(w, device=dev)
    sum_on = torch.zeros_like(centre)
    sum_off = torch.zeros_like(centre)
    if h * w == 1:
        return sum_on, sum_off      # no surround: C++ divides 0 by 0, and the NaN contrasts become 0
    for nb in NEIGHBOURHOODS:
        near, far = lo - nb + 1, lo + nb + 1        # offsets of corners P1 and P2 in the padded image

        def corner(dy, dx):
            return padded[:, dy:dy + h, dx:dx + w]
        # float32, left to right as in C++: I(P2) + I(P1) - I(P2.y, P1.x) - I(P1.y, P2.x)
        value = corner(far, far) + corner(near, near)
        value -= corner(far, near)
        value -= corner(near, far)
        value -= centre
        count = ((ys + nb + 1).clamp(0, h) - (ys - nb + 1).clamp(0, h))[:, None] \
            * ((xs + nb + 1).clamp(0, w) - (xs - nb + 1).clamp(0, w))[None, :] - 1
        value /= count.to(torch.float32)
        # meanOn = centre - value, and meanOff = value - centre = -meanOn exactly; (uchar) of a positive
        # float truncates toward zero
        contrast = torch.sub(centre, value, out=value).trunc_()
        on = contrast.clamp_min(0)
        off = contrast.clamp_max_(0).neg_()
        if wrap:
            on = on.remainder_(256)
            off = off.remainder_(256)
        sum_on += on
        sum_off += off
    return sum_on, sum_off


def _floor_255_times(q: torch.Tensor) -> torch.Tensor:
    """``(int)(255. * (double)q)`` for float32 ``q`` in [0, 1], exactly, in integer arithmetic (no float64, which
    some devices lack): q is mantissa * 2**-shift, so the product's integer part is a shift."""
    bits = q.view(torch.int32).to(torch.int64)
    mant = (bits & 0x7FFFFF) | 0x800000
    shift = (150 - (bits >> 23)).clamp(0, 63)              # q = mant * 2**-(shift)
    return torch.where(q > 0, (255 * mant) >> shift, 0)


def _mix(sum_on: torch.Tensor, sum_off: torch.Tensor) -> torch.Tensor:
    """OpenCV's ``mixScales`` scaling and ``mixOnOff``: (N, H, W) uint8.

    Both steps map small integers through a per-image function, so each is a lookup table per image
    (N x 1531 and N x 511 entries) computed with OpenCV's arithmetic, and one gather.
    """
    n, h, w = sum_on.shape
    dev = sum_on.device
    sums = torch.arange(len(NEIGHBOURHOODS) * 255 + 1, device=dev)

    def scale(s):
        s = s.reshape(n, -1).to(torch.int64)
        peak = s.amax(1, keepdim=True)
        # (uchar)(255. * (float)(sum / (float)max)); max 0 makes it 0/0, NaN, whose cast gives 0 on x86
        q = sums.to(torch.float32) / peak.clamp_min(1).to(torch.float32)
        table = torch.where(peak > 0, _floor_255_times(q), 0)
        return table.gather(1, s)

    on, off = scale(sum_on), scale(sum_off)
    peak = torch.maximum(on.amax(1, keepdim=True), off.amax(1, keepdim=True))
    # (uchar)(255. * (on + off) / maxVal): the double quotient of integers truncates to the integer quotient;
    # on + off can exceed maxVal (not seen on real images), and the cast keeps the low byte
    table = torch.where(peak > 0, (255 * sums[:511]) // peak.clamp_min(1) & 255, 0)
    return table.gather(1, on + off).to(torch.uint8).view(n, h, w)


def fine_grained_saliency(images: torch.Tensor, *, opencv_rounding: bool = True) -> torch.Tensor:
    """OpenCV-contrib's ``StaticSaliencyFineGrained`` saliency maps of a batch of 8-bit images.

    Args:
        images: uint8 images, (N, 3, H, W) RGB, or grey (N, H, W) / (N, 1, H, W), on any device.
        opencv_rounding: repeat OpenCV's row-by-row float32 rounding of the integral image, which only
            matters above 65,793 pixels per image and costs one small step per image row there. False
            integrates exactly in integers instead (no per-row loop): on real photos at 448 px under 0.1 %
            of the pixels then differ from OpenCV's map by one or two grey levels, and the peaks agree.

    Returns:
        (N, H, W) uint8 saliency maps on the images' device, equal to
        ``cv2.saliency.StaticSaliencyFineGrained_create().computeSaliency(bgr)[1]`` for each image (``bgr``
        the HWC BGR copy of the RGB image) when ``opencv_rounding`` is True.
    """
    images = _as_gray_or_rgb(images, 'fine_grained_saliency')
    if images.dtype != torch.uint8:
        raise ValueError(f"fine_grained_saliency: expected uint8 images, got {images.dtype} "
                         "(convert normalised batches with timm_camaug.pixels.to_uint8)")
    with torch.autocast(images.device.type, enabled=False):
        gray = rgb_to_gray_u8(images) if images.shape[1] == 3 else images[:, 0].to(torch.int32)
        gray = _blur3_u8(_blur3_u8(gray))
        sum_on, sum_off = _on_off_sums(_integral_f32_from_u8(gray, opencv_rounding), gray, wrap=False)
        return _mix(sum_on, sum_off)


def opencv_float_saliency(images: torch.Tensor) -> torch.Tensor:
    """What OpenCV-contrib's ``StaticSaliencyFineGrained`` returns for float32 images, as SaliencyMix's released
    code calls it (on the normalised model input).

    OpenCV converts to a float grey image (channel 0 weighted as blue, 0.114; channel 2 as red, 0.299: the
    channels are taken in the order given), blurs and integrates it as float, but reads each centre pixel as
    ``gray.at<uchar>(y, x)``: byte x of row y of the float32 buffer, i.e. the first W bytes of each row.

    Args:
        images: (N, 3, H, W) or (N, 1, H, W) / (N, H, W) images; cast to float32.

    Returns:
        (N, H, W) uint8 maps, what ``computeSaliency(img.permute(1, 2, 0).numpy())`` returns on an x86-64 CPU
        with AVX2 (the float integral's summation order follows OpenCV's SIMD code there). Since OpenCV 3.4.3
        (2018) the Python call returns this map as float32 divided by 255, so the released code's
        ``(saliencyMap * 255).astype('uint8')`` gives back exactly these values (no uint8 wrap-around).
    """
    images = _as_gray_or_rgb(images, 'opencv_float_saliency')
    if sys.byteorder != 'little':
        raise RuntimeError("opencv_float_saliency reads float bytes as OpenCV does on little-endian machines only")
    with torch.autocast(images.device.type, enabled=False):
        x = images.float()
        if x.shape[1] == 3:
            # cvtColor(BGR2GRAY) of float32: fma(c2, 0.299, fma(c0, 0.114, c1 * 0.587)); fma emulated in float64
            # (a float32 product is exact there)
            g = (x[:, 1] * torch.tensor(_G2YF, dtype=torch.float32, device=x.device)).double()
            g = (x[:, 0].double() * _B2YF + g).float().double()
            gray = (x[:, 2].double() * _R2YF + g).float()
        else:
            gray = x[:, 0]
        gray = _blur3_f32(_blur3_f32(gray)).contiguous()
        n, h, w = gray.shape
        centre = gray.view(torch.uint8).view(n, h, 4 * w)[..., :w].to(torch.int32)
        sum_on, sum_off = _on_off_sums(_integral_f32_from_f32(gray), centre, wrap=True)
        return _mix(sum_on, sum_off)


def saliency_peaks(maps: torch.Tensor) -> torch.Tensor:
    """(N, 2) int64 (row, column) of each map's first maximum in row-major order."""
    n, h, w = maps.shape
    idx = maps.reshape(n, -1).to(torch.int32).argmax(1)
    return torch.stack([idx // w, idx % w], 1)
