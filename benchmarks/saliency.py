""" SaliencyMix cost: one mix call divided by one plain training step of the same batch.

The training step is timm ``resnet50`` forward + backward + SGD step at 224 px, batch 16 (``--model``,
``--size``, ``--batch`` change it). Measured in the same run, interleaved: the ``paper`` and ``official``
variants of the mode (saliency batched in torch on the batch's device), and the reference way of the
``paper`` variant's saliency, OpenCV-contrib one image at a time (de-normalise on the CPU, NumPy, BGR,
``computeSaliency``, ``argmax``). Real photos (scikit-image) make up the batch.
Run: ``python benchmarks/saliency.py`` (``--json PATH`` also saves the numbers).
"""
import argparse
import sys
from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, markdown_table, save_json, time_interleaved  # noqa: E402

from timm_camaug import create_mix_fn  # noqa: E402
from timm_camaug.pixels import to_uint8  # noqa: E402

PHOTOS = ('chelsea', 'astronaut', 'coffee', 'rocket')
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def photo_batch(n, size, device):
    from skimage import data
    imgs = [torch.from_numpy(getattr(data, p)()).permute(2, 0, 1).float() / 255 for p in PHOTOS]
    x = torch.stack([F.interpolate(imgs[i % len(imgs)][None], size=(size, size), mode='bilinear',
                                   align_corners=False, antialias=True)[0] for i in range(n)])
    if n > len(imgs):       # different crops of the same photos: flip every other repeat
        x[len(imgs)::2] = x[len(imgs)::2].flip(-1)
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    return ((x - mean) / std).to(device)


def opencv_per_image(x):
    import cv2
    detector = cv2.saliency.StaticSaliencyFineGrained_create()
    u8 = to_uint8(x, MEAN, STD).permute(0, 2, 3, 1).cpu().numpy()
    peaks = []
    for img in u8:
        _, sal = detector.computeSaliency(np.ascontiguousarray(img[..., ::-1]))
        peaks.append(np.unravel_index(np.argmax(sal), sal.shape))
    return peaks


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--model', default='resnet50')
    ap.add_argument('--size', type=int, default=224)
    ap.add_argument('--batch', type=int, default=16)
    ap.add_argument('--repeats', type=int, default=3)
    ap.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    ap.add_argument('--json', default=None)
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = timm.create_model(args.model, num_classes=200).to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = photo_batch(args.batch, args.size, device)
    y = torch.randint(0, 200, (args.batch,), device=device)

    def train_step():
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    paper = create_mix_fn('saliencymix', num_classes=200, generator=torch.Generator().manual_seed(0))
    official = create_mix_fn('saliencymix', num_classes=200, variant='official',
                             generator=torch.Generator().manual_seed(0))
    fns = {'train step': train_step, 'saliencymix paper': lambda: paper(x, y),
           'saliencymix official': lambda: official(x, y)}
    try:
        import cv2
        if hasattr(cv2, 'saliency'):
            fns['OpenCV per image (paper saliency)'] = lambda: opencv_per_image(x)
    except ImportError:
        pass
    times = time_interleaved(fns, repeats=args.repeats, device=device)
    step = times['train step']
    rows = [(k, f'{v * 1000:.1f}', f'{100 * v / step:.2f} %') for k, v in times.items()]
    print(f'Machine: {machine()}\n')
    print(f'{args.model} {args.size} px, batch {args.batch}: medians of {args.repeats} interleaved repeats\n')
    print(markdown_table(['what', 'ms', 'of a training step'], rows))
    if args.json:
        save_json(args.json, {'machine': machine(), 'args': vars(args), 'seconds': times})


if __name__ == '__main__':
    main()
