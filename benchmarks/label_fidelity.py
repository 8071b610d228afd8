""" Label fidelity of each mix mode on the synthetic fine-grained set, against timm's CutMix.

For every mixed image whose two sources have different labels, the label weight each source receives is
compared with the fraction of that source's discriminative part (the bird's head, whose mask the synthetic
set provides) that the mixed image actually shows: |w_a - visible_a| and |w_b - visible_b|. The visible
fractions come from each mode's params (boxes, cells, perm), never from its label weights; see
:mod:`timm_camaug.fidelity`. Erasing modes (gutout, cam-erase) keep one label at weight 1: their error is the
share of the part they erased, over the samples they were applied to.

One small model (the demo's ``test_resnet`` by default) is trained on the set without mixing (or loaded from
the cache) and serves every CAM-guided mode; attentive uses the offline ImageNet EfficientNet-Lite0 as its
extractor. CutMix is timm's own ``Mixup(cutmix_alpha=1.0, mixup_alpha=0)``, run as a black box: an extra input
channel holding each sample's index tells which pixels came from where. Because CutMix draws its boxes from
Beta(1, 1) and SnapMix from Beta(5, 5), the table also has the control "snapmix boxes, area labels":
SnapMix's own boxes with area-proportional labels, so that the CAM's contribution is seen on equal boxes.

Run: ``python benchmarks/label_fidelity.py`` (``--quick`` for a fast, noisier run; ``--json PATH`` to save).
"""
import argparse
import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, Optional

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, markdown_table, save_json  # noqa: E402

import timm_camaug  # noqa: E402
from timm_camaug import fidelity as fd  # noqa: E402
from timm_camaug.train_loop import train_synthetic  # noqa: E402
from timm_camaug.pixels import normalize  # noqa: E402
from timm_camaug.synthetic import make_split  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--model', default='test_resnet')
    p.add_argument('--img-size', type=int, default=64)
    p.add_argument('--num-classes', type=int, default=8)
    p.add_argument('--train-size', type=int, default=2048)
    p.add_argument('--epochs', type=int, default=6)
    p.add_argument('--val-size', type=int, default=1024, help='images mixed per variant')
    p.add_argument('--batch-size', type=int, default=32)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--finer-layers', default='layer3,layer2',
                   help="comma-separated finer CAM layers of --model for snapmix's cam_layer option")
    p.add_argument('--cache-dir', default=os.path.join(tempfile.gettempdir(), 'timm-camaug-bench'),
                   help='where the trained model is cached')
    p.add_argument('--quick', action='store_true', help='small training set, 3 epochs, 256 images mixed')
    p.add_argument('--json', default=None, metavar='PATH')
    args = p.parse_args(argv)
    if args.quick:
        args.train_size, args.epochs, args.val_size = 1024, 3, 256
    if args.batch_size % 2:
        p.error("--batch-size must be even (timm's Mixup needs an even batch)")
    return args


def trained_model(args):
    """The classifier every CAM-guided mode uses: trained here without mixing, or loaded from the cache."""
    import timm
    from timm_camaug.synthetic import VERSION
    key = f'{VERSION}-{args.model}-{args.img_size}-{args.num_classes}-{args.train_size}-{args.epochs}-{args.seed}'
    path = os.path.join(args.cache_dir, f'label_fidelity-{hashlib.sha1(key.encode()).hexdigest()[:12]}.pth')
    model = timm.create_model(args.model, num_classes=args.num_classes)
    if os.path.isfile(path):
        model.load_state_dict(torch.load(path, map_location='cpu', weights_only=True))
        return model.eval(), f'loaded from {path}'
    train = make_split('train', args.train_size, args.img_size, args.seed, args.num_classes)[:2]
    val = make_split('val', 256, args.img_size, args.seed + 1, args.num_classes)[:2]
    res, model = train_synthetic(args.model, 'none', train=train, val=val, num_classes=args.num_classes,
                                 epochs=args.epochs, seed=args.seed, progress=True, return_model=True)
    os.makedirs(args.cache_dir, exist_ok=True)
    torch.save(model.state_dict(), path)
    return model.eval(), f'trained here in {res.seconds:.0f} s, cached at {path}'


def cam_on_part(model, x, y, masks, layer=None) -> Dict[str, float]:
    """Where the model's CAM of the true class lies (pointing game at the map's own grid): how often its peak
    cell holds head pixels, against chance (the share of cells that hold head pixels), and the share of its
    positive mass (upsampled) that falls on the head."""
    from timm_camaug.boxes import cell_masks
    from timm_camaug.cam import layer_maps, upsample_maps
    lm = layer_maps(model, x, y, target_layer=layer)
    n, gh, gw = lm.maps.shape
    peak = torch.zeros(n, gh * gw, dtype=torch.bool)
    peak[torch.arange(n), lm.maps.flatten(1).argmax(1)] = True
    peak_px = cell_masks(peak.view(n, gh, gw), masks.shape[-2:])
    hit = (peak_px & masks).flatten(1).any(1)
    every = torch.eye(gh * gw, dtype=torch.bool).view(gh * gw, gh, gw)
    touch = torch.stack([(cell_masks(every[c:c + 1].expand(n, gh, gw), masks.shape[-2:]) & masks).flatten(1).any(1)
                         for c in range(gh * gw)], 1)
    pos = upsample_maps(lm.maps, masks.shape[-2:]).clamp_min(0)
    mass = (pos * masks).flatten(1).sum(1) / pos.flatten(1).sum(1).clamp_min(1e-12)
    return {'grid': f'{gh}x{gw}', 'method': lm.method, 'peak_on_part': float(hit.float().mean()),
            'chance': float(touch.float().mean()), 'positive_mass_on_part': float(mass.mean()),
            'part_area': float(masks.float().mean())}


def mode_runner(mode: str, model, args, data_config, area_labels=False, **opts):
    """A function (x, y, masks) -> FidelityErrors for one mode variant (fresh generator per variant, so
    variants of one mode share their random draws)."""
    gen = torch.Generator().manual_seed(args.seed)
    mix_fn = timm_camaug.create_mix_fn(mode, model=model, num_classes=args.num_classes, data_config=data_config,
                                       generator=gen, **opts)

    def run(x, y, masks):
        params = mix_fn.make_params(x, y)
        _, soft = mix_fn.apply(x, y, params)
        soft = mix_fn.finalize(soft)
        vis_a, vis_b, active = fd.visible_fractions(mix_fn, params, masks)
        if not mix_fn.mixes_pairs:      # erasing: one label at weight 1, over the samples it was applied to
            w = soft.gather(1, y[:, None])[:, 0]
            return fd.fidelity_errors(w, vis_a, keep=active)
        perm = mix_fn.regions(params, masks.shape[-2:]).perm
        w_a, w_b = fd.label_weights(soft, y, perm)
        if area_labels:     # the mode's own regions, CutMix's area-proportional labels
            frac = mix_fn.regions(params, masks.shape[-2:]).target.flatten(1).double().mean(1)
            w_a, w_b = 1.0 - frac, frac
        keep = active & (y != y[perm])
        return fd.fidelity_errors(w_a, vis_a, w_b, vis_b, keep)
    return run


def cutmix_runner(args):
    """timm's own CutMix as a black box; pixel provenance read back from an index channel."""
    from timm.data import Mixup
    np.random.seed(args.seed)
    mixup = Mixup(mixup_alpha=0.0, cutmix_alpha=1.0, label_smoothing=0.0, num_classes=args.num_classes)

    def run(x, y, masks):
        n, _, h, w = x.shape
        index = torch.arange(n, dtype=x.dtype)[:, None, None, None].expand(n, 1, h, w)
        out, soft = mixup(torch.cat([x, index], 1), y.clone())
        perm, region = fd.source_map_regions(out[:, -1])
        vis_a, vis_b = fd.kept_fraction(masks, region), fd.shown_fraction(masks[perm], region)
        w_a, w_b = fd.label_weights(soft, y, perm)
        return fd.fidelity_errors(w_a, vis_a, w_b, vis_b, y != y[perm])
    return run


def main(argv=None):
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    model, how = trained_model(args)
    import timm
    data_config = timm.data.resolve_data_config({'input_size': (3, args.img_size, args.img_size)}, model=model)
    mean, std = data_config['mean'], data_config['std']
    images, labels, masks = make_split('val', args.val_size, args.img_size, args.seed, args.num_classes)
    x_all = normalize(images.float() / 255.0, mean, std)
    with torch.no_grad():
        acc = float((model(x_all).argmax(1) == labels).float().mean()) * 100
    finer = [s for s in args.finer_layers.split(',') if s]
    where = {layer or 'final features': cam_on_part(model, x_all, labels, masks, layer) for layer in [None] + finer}

    from timm_camaug.pretrained import pretrained_efficientnet_lite0
    extractor = pretrained_efficientnet_lite0(num_classes=0)
    variants: Dict[str, Callable] = {
        'cutmix (timm Mixup, alpha 1)': cutmix_runner(args),
        'snapmix boxes, area labels (control)': mode_runner('snapmix', model, args, data_config, area_labels=True),
        'snapmix (default: SPM, final features)': mode_runner('snapmix', model, args, data_config),
    }
    for layer in finer:
        variants[f'snapmix cam_layer={layer} (Grad-CAM)'] = mode_runner('snapmix', model, args, data_config,
                                                                       cam_layer=layer)
    for layer in finer:
        for method in ('gradcam++', 'eigencam'):
            variants[f'snapmix cam_layer={layer} cam_method={method}'] = mode_runner(
                'snapmix', model, args, data_config, cam_layer=layer, cam_method=method)
    variants['snapmix spm_floor=zero (final features)'] = mode_runner('snapmix', model, args, data_config,
                                                                      spm_floor='zero')
    for layer in finer:
        variants[f'snapmix cam_layer={layer} spm_floor=zero (finer option)'] = mode_runner(
            'snapmix', model, args, data_config, cam_layer=layer, spm_floor='zero')
    variants['saliencymix (paper)'] = mode_runner('saliencymix', model, args, data_config)
    variants['attentive (EfficientNet-Lite0 extractor, 7x7, top 6)'] = mode_runner(
        'attentive', model, args, data_config, extractor=extractor)
    variants['gutout (erases; one label)'] = mode_runner('gutout', model, args, data_config)
    variants['cam-erase (erases; one label)'] = mode_runner('cam-erase', model, args, data_config, prob=1.0)

    results = {}
    for name, run in variants.items():
        parts = []
        for i in range(0, args.val_size - args.batch_size + 1, args.batch_size):
            sl = slice(i, i + args.batch_size)
            parts.append(run(x_all[sl], labels[sl], masks[sl]))
        e = fd.FidelityErrors(*[torch.cat([getattr(p, f) for p in parts])
                                for f in ('err_a', 'err_b', 'visible_a', 'visible_b')])
        results[name] = {'mae': e.mae, 'mae_a': float(e.err_a.mean()) if e.err_a.numel() else float('nan'),
                         'mae_b': float(e.err_b.mean()) if e.err_b.numel() else float('nan'),
                         'samples': int(e.err_a.numel()),
                         'visible_b': float(e.visible_b.mean()) if e.visible_b.numel() else float('nan')}
    ref = results['cutmix (timm Mixup, alpha 1)']['mae']
    rows = []
    for name, r in results.items():
        rows.append([name, r['samples'], f"{r['mae']:.3f}", f"{r['mae_a']:.3f}",
                     '-' if np.isnan(r['mae_b']) else f"{r['mae_b']:.3f}", f"{r['mae'] / ref:.2f}"])
        r['ratio_to_cutmix'] = r['mae'] / ref
    print(f"Label fidelity on the synthetic fine-grained set ({args.num_classes} classes, {args.img_size} px, "
          f"{args.val_size} val images in batches of {args.batch_size})")
    print(f"machine: {machine()}")
    print(f"model: {args.model}, {args.epochs} epochs on {args.train_size} images ({how}); val top-1 {acc:.1f} %")
    part_area = next(iter(where.values()))['part_area']
    print(f"where its CAM of the true class lies (the head covers {100 * part_area:.1f} % of the image):")
    for layer, w in where.items():
        print(f"- {layer} ({w['method']}, {w['grid']} grid): peak cell on the head in {100 * w['peak_on_part']:.0f} % "
              f"of images (chance {100 * w['chance']:.0f} %); {100 * w['positive_mass_on_part']:.0f} % of the "
              "positive map on the head")
    print()
    print(markdown_table(['variant', 'samples', 'MAE', 'MAE receiving image', 'MAE pasted image',
                          'ratio to CutMix'], rows))
    print()
    print("MAE: mean |label weight - visible share of that source's head| over both sources of every mixed "
          "image with two different labels; erasing modes: over the images they were applied to, one label at weight 1.")
    print(f"total time {time.perf_counter() - t0:.0f} s")
    if args.json:
        save_json(args.json, {'machine': machine(), 'settings': vars(args), 'model': how, 'val_top1': acc,
                              'cam_on_part': where, 'results': results})
    return results


if __name__ == '__main__':
    main()
