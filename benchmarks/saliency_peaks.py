""" Where SaliencyMix's released code puts its box: the 'official' peak against the 'paper' peak on real photos.

The released code hands OpenCV the normalised float tensor; the detector then reads bytes of a float image
as pixel values. This prints, for real photos resized to 224 px and normalised with ImageNet's mean/std, the
official peak (and, when ``cv2.saliency`` is installed, the peak of OpenCV + NumPy run exactly as the released
code does, to confirm they agree), the paper peak (saliency of the 8-bit image), their distance, and the
medians. ``--crops N`` adds N seeded random resized crops (with flips) of the same photos for a larger sample.
Run: ``python benchmarks/saliency_peaks.py``.
"""
import argparse
import statistics

import numpy as np
import torch
import torch.nn.functional as F

from timm_camaug.pixels import to_uint8
from timm_camaug.saliency import fine_grained_saliency, opencv_float_saliency, saliency_peaks

PHOTOS = ('chelsea', 'astronaut', 'coffee', 'rocket')
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def released_peak(img_chw):
    import cv2
    temp_img = img_chw.cpu().numpy().transpose(1, 2, 0)
    _, saliency_map = cv2.saliency.StaticSaliencyFineGrained_create().computeSaliency(temp_img)
    saliency_map = (saliency_map * 255).astype('uint8')
    return tuple(int(v) for v in np.unravel_index(np.argmax(saliency_map, axis=None), saliency_map.shape))


def images(size, crops, seed):
    from skimage import data
    g = torch.Generator().manual_seed(seed)
    out = []
    for name in PHOTOS:
        img = torch.from_numpy(getattr(data, name)()).permute(2, 0, 1).float() / 255
        out.append((name, F.interpolate(img[None], size=(size, size), mode='bilinear', align_corners=False,
                                        antialias=True)[0]))
    for k in range(crops):
        name = PHOTOS[k % len(PHOTOS)]
        img = torch.from_numpy(getattr(data, name)()).permute(2, 0, 1).float() / 255
        h, w = img.shape[-2:]
        scale = float(torch.empty(()).uniform_(0.25, 1.0, generator=g))
        ch, cw = max(8, int(h * scale ** 0.5)), max(8, int(w * scale ** 0.5))
        y0 = int(torch.randint(0, h - ch + 1, (), generator=g))
        x0 = int(torch.randint(0, w - cw + 1, (), generator=g))
        crop = img[:, y0:y0 + ch, x0:x0 + cw]
        if bool(torch.rand((), generator=g) < 0.5):
            crop = crop.flip(-1)
        out.append((f'{name} crop {k}', F.interpolate(crop[None], size=(size, size), mode='bilinear',
                                                      align_corners=False, antialias=True)[0]))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--size', type=int, default=224)
    ap.add_argument('--crops', type=int, default=0)
    ap.add_argument('--seed', type=int, default=0)
    args = ap.parse_args()
    try:
        import cv2
        oracle = hasattr(cv2, 'saliency')
    except ImportError:
        oracle = False
    mean, std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)
    rows, dists, agree = [], [], 0
    print('| image | official peak | released code (OpenCV) | paper peak | distance px |')
    print('|---|---|---|---|---|')
    for name, img in images(args.size, args.crops, args.seed):
        x = ((img - mean) / std)[None]
        off = tuple(saliency_peaks(opencv_float_saliency(x))[0].tolist())
        pap = tuple(saliency_peaks(fine_grained_saliency(to_uint8(x, MEAN, STD)))[0].tolist())
        ref = released_peak(x[0]) if oracle else None
        agree += ref == off
        d = float(np.hypot(off[0] - pap[0], off[1] - pap[1]))
        rows.append(off[0])
        dists.append(d)
        print(f'| {name} | {off} | {ref if oracle else "n/a"} | {pap} | {d:.1f} |')
    n = len(rows)
    print(f'\n{n} images at {args.size} px: median official peak row {statistics.median(rows):g} '
          f'(of {args.size}); median distance official-paper {statistics.median(dists):.1f} px'
          + (f'; torch official peak == released-code peak on {agree}/{n}' if oracle else ''))


if __name__ == '__main__':
    main()
