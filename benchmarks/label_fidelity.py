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

A second measure, for rules whose two weights sum to one (and SnapMix's weights normalised the same way):
the error of A's *share* of the label, w_a / (w_a + w_b), against A's share of the visible parts,
v_a / (v_a + v_b) (:func:`timm_camaug.fidelity.share_errors`).

Labels from the training forward (TransMix, issue 13), on the same boxes: TransMix's CutMix boxes (timm's own
draws) labelled by each rule in turn, for the CNN above and for a small ViT trained on the same set (cached
too): CutMix's area rule, TransMix's reference rule (area and class-token attention, half each), its
attention alone, attention rollout, Grad-CAM of the mixed image, the value-weighted class attention, the
extension's class maps of the mixed image (CNN; our rule), and SnapMix's rule on the unmixed images. Each
forward on a mixed batch runs in eval mode (no dropout, running BatchNorm statistics).

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
    p.add_argument('--vit-model', default='test_vit', help="the ViT of the TransMix table ('none': no ViT table)")
    p.add_argument('--vit-kwargs', default='', help='comma-separated KEY=VALUE model kwargs of --vit-model (e.g. patch_size=8)')
    p.add_argument('--vit-epochs', type=int, default=40)
    p.add_argument('--vit-lr', type=float, default=1e-3)
    p.add_argument('--quick', action='store_true', help='small training set, 3 epochs, 256 images mixed')
    p.add_argument('--json', default=None, metavar='PATH')
    args = p.parse_args(argv)
    if args.quick:
        args.train_size, args.epochs, args.val_size, args.vit_epochs = 1024, 3, 256, 3
    if args.batch_size % 2:
        p.error("--batch-size must be even (timm's Mixup needs an even batch)")
    return args


def trained_model(args, name=None, kwargs=None, epochs=None, lr=None):
    """A classifier trained here without mixing (the CNN every CAM-guided mode uses, or the ViT of the TransMix
    table), or loaded from the cache."""
    import timm
    from timm_camaug.synthetic import VERSION
    name, kwargs, epochs = name or args.model, dict(kwargs or {}), epochs or args.epochs
    key = f'{VERSION}-{name}-{args.img_size}-{args.num_classes}-{args.train_size}-{epochs}-{args.seed}'
    if kwargs or lr:    # (the CNN's key is unchanged: its cached file stays valid)
        key += f'-{sorted(kwargs.items())}-{lr}'
    path = os.path.join(args.cache_dir, f'label_fidelity-{hashlib.sha1(key.encode()).hexdigest()[:12]}.pth')
    model = timm.create_model(name, num_classes=args.num_classes, **kwargs)
    if os.path.isfile(path):
        model.load_state_dict(torch.load(path, map_location='cpu', weights_only=True))
        return model.eval(), f'loaded from {path}'
    train = make_split('train', args.train_size, args.img_size, args.seed, args.num_classes)[:2]
    val = make_split('val', 256, args.img_size, args.seed + 1, args.num_classes)[:2]
    res, model = train_synthetic(name, 'none', train=train, val=val, num_classes=args.num_classes, epochs=epochs,
                                 seed=args.seed, progress=True, return_model=True, model_kwargs=kwargs,
                                 **({'lr': lr} if lr else {}))
    os.makedirs(args.cache_dir, exist_ok=True)
    torch.save(model.state_dict(), path)
    return model.eval(), f'trained here in {res.seconds:.0f} s, cached at {path}'


def parse_kwargs(text: str) -> Dict[str, object]:
    import ast
    out = {}
    for item in filter(None, (t.strip() for t in text.split(','))):
        key, _, value = item.partition('=')
        try:
            out[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            out[key.strip()] = value.strip()
    return out


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
        x_mixed, soft = mix_fn.apply(x, y, params)
        if mix_fn.reads_training_forward:       # its labels come from the forward on the mixed batch
            with torch.no_grad():
                model(x_mixed)
        soft = mix_fn.finalize(soft)
        vis_a, vis_b, active = fd.visible_fractions(mix_fn, params, masks)
        if not mix_fn.mixes_pairs:      # erasing: one label at weight 1, over the samples it was applied to
            w = soft.gather(1, y[:, None])[:, 0]
            return fd.fidelity_errors(w, vis_a, keep=active), None
        perm = mix_fn.regions(params, masks.shape[-2:]).perm
        w_a, w_b = fd.label_weights(soft, y, perm)
        if area_labels:     # the mode's own regions, CutMix's area-proportional labels
            frac = mix_fn.regions(params, masks.shape[-2:]).target.flatten(1).double().mean(1)
            w_a, w_b = 1.0 - frac, frac
        keep = active & (y != y[perm])
        return fd.fidelity_errors(w_a, vis_a, w_b, vis_b, keep), fd.share_errors(w_a, w_b, vis_a, vis_b, keep)
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
        keep = y != y[perm]
        return fd.fidelity_errors(w_a, vis_a, w_b, vis_b, keep), fd.share_errors(w_a, w_b, vis_a, vis_b, keep)
    return run


# --- labels from the forward, on TransMix's boxes

def _attention_matrices(model, x):
    """(blocks, B, heads, N, N) softmax of every block of a timm ViT in eval mode (unfused path, read where each
    enters its dropout)."""
    seen, handles, fused = [], [], []
    for block in model.blocks:
        fused.append(block.attn.fused_attn)
        block.attn.fused_attn = False
        handles.append(block.attn.attn_drop.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach())))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
        for block, f in zip(model.blocks, fused):
            block.attn.fused_attn = f
    return torch.stack(seen)


def attention_rollout(model, x):
    """(B, P) Abnar & Zuidema's rollout of the class token (half residual, rows renormalised), patch columns."""
    attn = _attention_matrices(model, x).float().mean(2)          # (blocks, B, N, N)
    n = attn.shape[-1]
    eye = torch.eye(n)
    rollout = eye.expand_as(attn[0])
    for a in attn:
        a = 0.5 * a + 0.5 * eye
        rollout = (a / a.sum(-1, keepdim=True)) @ rollout
    return rollout[:, 0, model.num_prefix_tokens:]


def same_box_table(model, args, data_config, x_all, labels, masks, kind):
    """Every rule of the TransMix table on TransMix's own CutMix boxes (one draw sequence for all rules).

    ``kind``: 'cnn' (the extension's class maps) or 'vit' (the class token's attention and other ViT maps)."""
    import torch.nn.functional as F
    from timm_camaug.boxes import box_masks
    from timm_camaug.cam import layer_maps
    from timm_camaug.capture import class_maps
    from timm_camaug.modes.snapmix import snapmix_label_weights
    from timm_camaug.modes.transmix import cam_pasted_share, cell_box_cover, patch_box_mask, transmix_pasted_weight
    h = w = args.img_size
    mix = timm_camaug.create_mix_fn('transmix', model=model, num_classes=args.num_classes, data_config=data_config,
                                    generator=torch.Generator().manual_seed(args.seed), mixup_alpha=0.0)
    import logging
    logging.getLogger('timm_camaug.modes.snapmix').setLevel(logging.ERROR)    # the ViT's SPM is Grad-CAM: known
    snap = timm_camaug.create_mix_fn('snapmix', model=model, num_classes=args.num_classes, data_config=data_config,
                                     cam_bn='eval')
    value = None
    if kind == 'vit':       # the extension's ViT map, on the same draws (same generator seed)
        value = timm_camaug.create_mix_fn('transmix', model=model, num_classes=args.num_classes,
                                          data_config=data_config, generator=torch.Generator().manual_seed(args.seed),
                                          mixup_alpha=0.0, label_map='value')
    parts: Dict[str, list] = {}

    def add(name, w_a, w_b, vis_a, vis_b, keep):
        w_a, w_b = w_a.detach(), w_b.detach()
        parts.setdefault(name, []).append((fd.fidelity_errors(w_a, vis_a, w_b, vis_b, keep),
                                           fd.share_errors(w_a, w_b, vis_a, vis_b, keep)))

    for i in range(0, args.val_size - args.batch_size + 1, args.batch_size):
        sl = slice(i, i + args.batch_size)
        x, y, m = x_all[sl], labels[sl], masks[sl]
        params = mix.make_params(x, y)
        xm, soft = mix.apply(x, y, params)
        with torch.no_grad():
            model(xm)
        mix.finalize(soft)
        vis_a, vis_b, active = fd.visible_fractions(mix, params, m)
        perm = params.perm
        keep = active & (y != y[perm])
        area = params.area.float()
        rule = {}
        rule['CutMix area rule (ratio 0)'] = area
        if kind == 'vit':
            rule['TransMix reference: (area + attention) / 2'] = params.pasted_weight
            rule['attention only (ratio 1)'] = params.evidence
            grid = (h // int(model.patch_embed.patch_size[0]), w // int(model.patch_embed.patch_size[1]))
            mask = patch_box_mask(params.boxes, (h, w), grid)
            roll = attention_rollout(model, xm)
            rule['attention rollout only'] = transmix_pasted_weight(roll, mask, area, 1.0)[0]
            rule['(area + attention rollout) / 2'] = transmix_pasted_weight(roll, mask, area, 0.5)[0]
            cover = cell_box_cover(params.boxes, (h, w), grid)
            ga = layer_maps(model, xm, y, method='gradcam').maps
            gb = layer_maps(model, xm, y[perm], method='gradcam').maps
            rule['Grad-CAM of the mixed image (extension rule)'] = cam_pasted_share(ga, gb, cover, area)
            v_params = value.make_params(x, y)
            assert torch.equal(v_params.boxes, params.boxes)
            v_mixed, v_soft = value.apply(x, y, v_params)
            with torch.no_grad():
                model(v_mixed)
            value.finalize(v_soft)
            rule["value-weighted class attention (extension rule; label_map='value')"] = v_params.evidence
            rule['(area + value-weighted class attention) / 2'] = 0.5 * area + 0.5 * v_params.evidence
        else:
            rule['extension: class maps of the mixed image (our rule, cam_ratio 1)'] = params.evidence
            rule['extension, cam_ratio 0.5 (half area)'] = 0.5 * area + 0.5 * params.evidence
            with torch.no_grad():
                feats = model.forward_features(xm)
            ma, mb = class_maps(model, feats, (h, w), [y, y[perm]])
            up = lambda t: F.interpolate(t[:, None], size=(h, w), mode='bilinear', align_corners=False)[:, 0]  # noqa
            rule['extension, maps upsampled bilinearly to the pixels'] = cam_pasted_share(
                up(ma), up(mb), box_masks(params.boxes, (h, w)).float(), area)
            cover = cell_box_cover(params.boxes, (h, w), ma.shape[-2:])
            e_a = (ma.clamp_min(0) * (1 - cover)).flatten(1).amax(1)
            e_b = (mb.clamp_min(0) * cover).flatten(1).amax(1)
            rule['extension, largest cell instead of the sum'] = torch.where(
                e_a + e_b > 0, e_b / (e_a + e_b).clamp_min(1e-12), area)
        for name, w_b in rule.items():
            add(name, 1.0 - w_b, w_b, vis_a, vis_b, keep)
        spm = snap.guidance_maps(x, y)
        s_a, s_b = snapmix_label_weights(spm, y, perm, params.boxes, params.boxes, params.active)
        add("SnapMix's rule (SPM of the unmixed images; share: normalised)", s_a, s_b, vis_a, vis_b, keep)
    results = {}
    for name, errs in parts.items():
        e1 = torch.cat([torch.cat([e.err_a, e.err_b]) for e, _ in errs])
        e2 = torch.cat([s.err for _, s in errs])
        results[name] = {'mae': float(e1.mean()), 'share_mae': float(e2.mean()), 'samples': int(e2.numel()),
                         'skipped': sum(s.skipped for _, s in errs)}
    ref = results['CutMix area rule (ratio 0)']
    for r in results.values():
        r['ratio_to_area'] = r['mae'] / ref['mae']
        r['share_ratio_to_area'] = r['share_mae'] / ref['share_mae']
    return results


def _aggregate(parts):
    e = fd.FidelityErrors(*[torch.cat([getattr(p, f) for p, _ in parts])
                            for f in ('err_a', 'err_b', 'visible_a', 'visible_b')])
    r = {'mae': e.mae, 'mae_a': float(e.err_a.mean()) if e.err_a.numel() else float('nan'),
         'mae_b': float(e.err_b.mean()) if e.err_b.numel() else float('nan'),
         'samples': int(e.err_a.numel()),
         'visible_b': float(e.visible_b.mean()) if e.visible_b.numel() else float('nan')}
    shares = [s for _, s in parts if s is not None]
    r['share_mae'] = float(torch.cat([s.err for s in shares]).mean()) if shares else float('nan')
    return r


def _same_box_rows(results):
    return [[name, r['samples'], f"{r['mae']:.3f}", f"{r['ratio_to_area']:.2f}", f"{r['share_mae']:.3f}",
             f"{r['share_ratio_to_area']:.2f}"] for name, r in results.items()]


SAME_BOX_HEADER = ['rule', 'samples', 'MAE', 'ratio to area rule', 'share MAE', 'share ratio to area rule']


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
    variants['transmix (CutMix batches; extension: class maps of the mixed image)'] = mode_runner(
        'transmix', model, args, data_config, mixup_alpha=0.0)
    variants['gutout (erases; one label)'] = mode_runner('gutout', model, args, data_config)
    variants['cam-erase (erases; one label)'] = mode_runner('cam-erase', model, args, data_config, prob=1.0)

    results = {}
    for name, run in variants.items():
        parts = []
        for i in range(0, args.val_size - args.batch_size + 1, args.batch_size):
            sl = slice(i, i + args.batch_size)
            parts.append(run(x_all[sl], labels[sl], masks[sl]))
        results[name] = _aggregate(parts)
    ref = results['cutmix (timm Mixup, alpha 1)']
    rows = []
    for name, r in results.items():
        r['ratio_to_cutmix'] = r['mae'] / ref['mae']
        r['share_ratio_to_cutmix'] = r['share_mae'] / ref['share_mae']
        shares = not np.isnan(r['share_mae'])
        rows.append([name, r['samples'], f"{r['mae']:.3f}", f"{r['mae_a']:.3f}",
                     '-' if np.isnan(r['mae_b']) else f"{r['mae_b']:.3f}", f"{r['mae'] / ref['mae']:.2f}",
                     f"{r['share_mae']:.3f}" if shares else '-',
                     f"{r['share_ratio_to_cutmix']:.2f}" if shares else '-'])

    cnn_same = same_box_table(model, args, data_config, x_all, labels, masks, 'cnn')
    vit = None
    if args.vit_model != 'none':
        vit_kwargs = parse_kwargs(args.vit_kwargs)
        vit_model, vit_how = trained_model(args, args.vit_model, vit_kwargs, args.vit_epochs, args.vit_lr)
        vit_config = timm.data.resolve_data_config({'input_size': (3, args.img_size, args.img_size)}, model=vit_model)
        vit_x = normalize(images.float() / 255.0, vit_config['mean'], vit_config['std'])
        with torch.no_grad():
            vit_acc = float((vit_model(vit_x).argmax(1) == labels).float().mean()) * 100
        vit_same = same_box_table(vit_model, args, vit_config, vit_x, labels, masks, 'vit')
        vit = dict(how=vit_how, acc=vit_acc, results=vit_same, kwargs=vit_kwargs)

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
                          'ratio to CutMix', 'share MAE', 'share ratio to CutMix'], rows))
    print()
    print("MAE: mean |label weight - visible share of that source's head| over both sources of every mixed "
          "image with two different labels; erasing modes: over the images they were applied to, one label at weight 1. "
          "Share MAE: mean |w_a / (w_a + w_b) - v_a / (v_a + v_b)| over the same images (where a head is visible).")
    print()
    print(f"Labels from the training forward, on TransMix's CutMix boxes (timm's draws, alpha 1; one draw sequence "
          f"for every rule), {args.model}:")
    print()
    print(markdown_table(SAME_BOX_HEADER, _same_box_rows(cnn_same)))
    if vit is not None:
        print()
        kw = ', '.join(f'{k}={v}' for k, v in vit['kwargs'].items())
        grid = 'x'.join(str(args.img_size // p) for p in vit_model.patch_embed.patch_size)
        print(f"The same for a ViT: {args.vit_model}{f' ({kw})' if kw else ''}, a {grid} patch grid, "
              f"{args.vit_epochs} epochs on {args.train_size} images "
              f"({vit['how']}); val top-1 {vit['acc']:.1f} %:")
        print()
        print(markdown_table(SAME_BOX_HEADER, _same_box_rows(vit['results'])))
    print()
    print("Area rule: the pasted label weighs the box's share of the image (CutMix). Extension rule: E_a = positive "
          "part of A's map outside the box, E_b = B's inside it, B's weight E_b / (E_a + E_b). Value-weighted class "
          "attention: the class token's last attention output split by key token, read by the classifier row of "
          "each label. SnapMix's weights do not sum to one: its share MAE normalises them.")
    print(f"total time {time.perf_counter() - t0:.0f} s")
    if args.json:
        save_json(args.json, {'machine': machine(), 'settings': vars(args), 'model': how, 'val_top1': acc,
                              'cam_on_part': where, 'results': results, 'same_boxes_cnn': cnn_same,
                              'same_boxes_vit': vit})
    return results


if __name__ == '__main__':
    main()
