""" ``timm-camaug preview``: a PNG grid showing what a mix mode does to a batch of real images.

One row per image: the image with the class the model predicts for it, the map the mode is guided by
(SnapMix's semantic percent map, Gutout's and CAM-erase's normalised CAMs, SaliencyMix's saliency map,
Attentive CutMix's extractor cell map) over it, for mixing modes the partner image with the region taken
from it, and the mixed or erased result with its boxes (or cut region) drawn and its label weights printed
under it. Default images: scikit-image's bundled photos; default model: the offline ImageNet
EfficientNet-Lite0 (both in the ``preview`` extra). ``--model NAME --checkpoint FILE`` takes any timm model
(its class count read from the checkpoint's classifier), ``--class-names FILE`` names a fine-tuned model's
classes (one per line, or the ``class_map.txt`` / ``classes.json`` that ``timm-camaug prepare`` writes).
"""
import argparse
import json
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

__all__ = ['DEFAULT_PHOTOS', 'load_images', 'guidance_overlays', 'render_preview', 'parse_mode_options',
           'checkpoint_num_classes', 'read_class_names', 'register', 'run']

DEFAULT_PHOTOS = ('chelsea', 'astronaut', 'coffee', 'rocket')
_BOX_COLOURS = {'target': '#ffff00', 'source': '#00ffff'}
_SAME_LABEL_NOTE = '(same label: weights summed,\nas the reference)'
_MAX_NAME = 32      # longest class name printed (longer ones end in '...')


def _fail(msg: str) -> 'SystemExit':
    return SystemExit(f"timm-camaug preview: {msg}")


def load_images(paths: Sequence[str], size: int):
    """(N, 3, size, size) float images in [0, 1] and their names: files (resized on the short side, centre
    cropped), or scikit-image's bundled photos when ``paths`` is empty."""
    import torch
    from torchvision.transforms import functional as TF
    arrays: List[Tuple[str, Any]] = []
    if not paths:
        try:
            import skimage.data as skdata
        except ImportError:
            raise _fail("the default photos come from scikit-image: pip install 'timm-camaug[preview]', "
                        "or name image files") from None
        arrays = [(name, torch.from_numpy(getattr(skdata, name)().copy()).permute(2, 0, 1)) for name in DEFAULT_PHOTOS]
    else:
        from PIL import Image, UnidentifiedImageError
        for p in paths:
            if not os.path.isfile(p):
                raise _fail(f"image file {p!r} does not exist")
            try:
                with Image.open(p) as im:
                    arrays.append((os.path.basename(p), TF.pil_to_tensor(im.convert('RGB'))))
            except (UnidentifiedImageError, OSError) as e:
                raise _fail(f"cannot read image {p!r}: {e}") from None
    out = []
    for _, img in arrays:
        img = TF.resize(img, size, antialias=True)
        out.append(TF.center_crop(img, [size, size]).float() / 255.0)
    return torch.stack(out), [name for name, _ in arrays]


def parse_mode_options(mode: str, items: Sequence[str]) -> Dict[str, Any]:
    """``KEY=VALUE`` strings -> keyword options of ``mode``, typed as the mode's train.py flags are."""
    from .factory import mode_options_from_strings
    try:
        return mode_options_from_strings(mode, items)
    except ValueError as e:
        raise _fail(str(e)) from None


def checkpoint_num_classes(name: str, checkpoint: str) -> Optional[int]:
    """Classes of the head stored in ``checkpoint`` for timm model ``name``: the rows of its classifier weight
    (the key of ``model.get_classifier()`` + ``.weight``, in a train.py checkpoint's ``state_dict_ema`` /
    ``state_dict`` or a bare state dict). None when it cannot tell (no such key, unreadable file: loading
    the checkpoint then reports the problem)."""
    import timm
    import torch
    from timm.models import load_state_dict
    try:
        state = load_state_dict(checkpoint, use_ema=True)
    except Exception:
        return None
    try:
        with torch.device('meta'):      # the module names only: no memory, no initialisation
            model = timm.create_model(name, pretrained=False)
    except Exception:
        model = timm.create_model(name, pretrained=False)
    head = model.get_classifier()
    head = head[0] if isinstance(head, (tuple, list)) else head
    key = next((f'{n}.weight' for n, m in model.named_modules() if m is head and n), None)
    weight = state.get(key) if key is not None else None
    if not isinstance(weight, torch.Tensor) or weight.ndim < 2:
        return None
    return int(weight.shape[0])


def read_class_names(path: str) -> List[str]:
    """Class names in class-index order from ``path``: a text file with one name per line, ``timm-camaug
    prepare``'s ``classes.json`` (official names) or ``class_map.txt`` (its ``<index>_<name>`` folders, shown
    without the index), or a prepared dataset folder holding either."""
    from .datasets.common import CLASS_MAP_FILE, CLASSES_FILE
    if os.path.isdir(path):
        found = [os.path.join(path, f) for f in (CLASSES_FILE, CLASS_MAP_FILE) if os.path.isfile(os.path.join(path, f))]
        if not found:
            raise _fail(f"--class-names {path!r}: a folder must hold {CLASSES_FILE} or {CLASS_MAP_FILE} "
                        "(as timm-camaug prepare writes)")
        path = found[0]
    if not os.path.isfile(path):
        raise _fail(f"--class-names file {path!r} does not exist")
    try:
        with open(path, encoding='utf-8') as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise _fail(f"cannot read --class-names file {path!r}: {e}") from None
    if path.lower().endswith('.json'):
        try:
            meta = json.loads(text)
            entries = meta['classes'] if isinstance(meta, dict) else meta
            if not isinstance(entries, list):
                raise TypeError(f'{type(entries).__name__} instead of a list')
            if all(isinstance(e, dict) for e in entries):
                entries = sorted(entries, key=lambda e: int(e['index']))
                if [int(e['index']) for e in entries] != list(range(len(entries))):
                    raise ValueError('the indices are not 0, 1, 2, ...')
                entries = [e['name'] for e in entries]
            names = [str(e).strip() for e in entries]
        except (ValueError, KeyError, TypeError) as e:
            raise _fail(f"--class-names {path!r}: expected timm-camaug prepare's {CLASSES_FILE} (a 'classes' list "
                        f"of {{'index', 'name'}}) or a JSON list of names ({type(e).__name__}: {e})") from None
    else:
        names = [line.strip() for line in text.rstrip('\n').split('\n')] if text.strip() else []
        width = len(names[0].split('_', 1)[0]) if names else 0
        if names and width >= 3 and all(n.startswith(f'{i:0{width}d}_') for i, n in enumerate(names)):
            # prepare's class_map.txt: folder names '<zero-padded index>_<safe name>'
            names = [n.split('_', 1)[1].replace('_', ' ') for n in names]
    if not names:
        raise _fail(f"--class-names {path!r} lists no class names")
    if any(not n for n in names):
        raise _fail(f"--class-names {path!r}: class {names.index('')} has an empty name (one name per line)")
    return names


def _load_model(args: argparse.Namespace):
    """The classifier whose predictions label the photos (and whose CAM guides the CAM modes)."""
    if args.model is None:
        if args.checkpoint:
            raise _fail("--checkpoint needs --model (the timm model name the checkpoint belongs to)")
        from .pretrained import pretrained_efficientnet_lite0
        try:
            return pretrained_efficientnet_lite0(), 'efficientnet_lite0 (offline ImageNet weights)'
        except ImportError as e:
            raise _fail(f"{e}; or name a timm model and checkpoint with --model/--checkpoint") from None
    import timm
    from .extractor import create_timm_model
    num_classes, source = args.num_classes, ''
    if num_classes is None and args.checkpoint and timm.is_model(args.model) and os.path.isfile(args.checkpoint):
        num_classes = checkpoint_num_classes(args.model, args.checkpoint)
        source = ' read from the checkpoint'
    kwargs = {} if num_classes is None else {'num_classes': num_classes}
    try:
        model = create_timm_model(args.model, args.checkpoint, offline_hint='--checkpoint FILE', **kwargs)
    except (ValueError, RuntimeError, FileNotFoundError) as e:
        raise _fail(str(e)) from None
    desc = [os.path.basename(args.checkpoint)] if args.checkpoint else []
    if num_classes is not None:
        desc.append(f'{num_classes} classes{source}')
    return model.eval(), args.model + (f" ({', '.join(desc)})" if desc else '')


def _short(name: str) -> str:
    return name if len(name) <= _MAX_NAME else name[:_MAX_NAME - 3].rstrip() + '...'


def _class_names(num_classes: int, path: Optional[str] = None):
    """Index -> printed class name: from ``path`` (``--class-names``), else ImageNet's for 1000 classes."""
    if path is not None:
        names = read_class_names(path)
        if len(names) != num_classes:
            raise _fail(f"--class-names {path!r} lists {len(names)} class names, the model has {num_classes} "
                        "classes")
        return lambda k: _short(names[int(k)])
    if num_classes != 1000:
        return None
    try:
        from timm.data import ImageNetInfo
        info = ImageNetInfo()
        return lambda k: info.index_to_description(int(k)).split(',')[0]
    except Exception:   # class names are a nicety; indices are always printed
        return None


def _label(k: int, names) -> str:
    return f'{names(k)} ({k})' if names is not None else f'class {k}'


def guidance_overlays(params, n: int):
    """(N, H, W) float map shown for each image of the unmixed batch (None rows: the mode made no map for
    that image), from a mode's params: the map of image ``i`` itself, whatever sample it was used for."""
    import torch
    from .modes.attentive import AttentiveParams
    from .modes.cam_erase import CamEraseParams
    from .modes.gutout import GutoutParams
    from .modes.saliencymix import SaliencyMixParams
    from .modes.snapmix import SnapMixParams
    if isinstance(params, SnapMixParams):
        maps = params.spm
    elif isinstance(params, (GutoutParams, CamEraseParams)):
        maps = params.cam
    elif isinstance(params, SaliencyMixParams):
        if params.saliency is None:
            return None
        sal = params.saliency.float()
        perm = params.perm.cpu()
        if sal.shape[0] == n:           # maps of x[perm]: the map of image i is at the position where perm == i
            inv = torch.argsort(perm)
            return sal[inv.to(sal.device)]
        out = torch.full((n,) + tuple(sal.shape[-2:]), float('nan'))
        out[int(perm[0])] = sal[0].cpu()    # 'official': one map, of x[perm[0]]
        return out
    elif isinstance(params, AttentiveParams):
        maps = params.maps
    else:
        raise TypeError(f"no guidance map for {type(params).__name__}")
    return None if maps is None else maps.float()


def _at_image_size(m, hw):
    """Map ``m`` (h, w) as a CPU float map of size ``hw`` (nearest-resized: each map cell stays visible)."""
    import torch.nn.functional as F
    m = m.float().cpu()
    if tuple(m.shape) != tuple(hw):
        m = F.interpolate(m[None, None], size=tuple(hw), mode='nearest')[0, 0]
    return m


def _heat(img, m, cmap, scale: str = 'min-max'):
    """Image (3, H, W) in [0, 1] blended with map ``m`` (any size; nearest-resized) through a colour map:
    the map min-max normalised (``scale='min-max'``), or its values as they are, clipped to [0, 1]
    (``'0-1'``: a map already divided by its maximum keeps the scale its threshold applies to)."""
    import torch
    if m is None or bool(torch.isnan(m).all()):
        return img
    m = _at_image_size(m, img.shape[-2:])
    if scale == '0-1':
        m = m.clamp(0, 1)
    else:
        lo, hi = m.min(), m.max()
        m = (m - lo) / (hi - lo) if hi > lo else torch.zeros_like(m)
    rgb = torch.from_numpy(cmap(m.numpy())[..., :3]).permute(2, 0, 1).float()
    return 0.5 * img + 0.5 * rgb


def _draw_boxes(img, boxes, colour, width=3):
    """uint8 (3, H, W) with ``[y0, y1, x0, x1]`` half-open boxes drawn (torchvision's draw_bounding_boxes)."""
    import torch
    from torchvision.utils import draw_bounding_boxes
    if boxes is None or len(boxes) == 0:
        return img
    b = torch.as_tensor(boxes).reshape(-1, 4).cpu().long()
    b = b[(b[:, 1] > b[:, 0]) & (b[:, 3] > b[:, 2])]
    if len(b) == 0:
        return img
    xyxy = torch.stack([b[:, 2], b[:, 0], b[:, 3] - 1, b[:, 1] - 1], 1).float()
    return draw_bounding_boxes(img, xyxy, colors=colour, width=width)


def _cell_boxes(cells, hw):
    """[y0, y1, x0, x1] pixel boxes of the selected (g_h, g_w) grid cells (rows r with floor(r*g/H) == i)."""
    import torch
    gh, gw = cells.shape
    h, w = hw
    ys = [-(-i * h // gh) for i in range(gh + 1)]
    xs = [-(-j * w // gw) for j in range(gw + 1)]
    idx = cells.nonzero().tolist()
    return torch.tensor([[ys[i], ys[i + 1], xs[j], xs[j + 1]] for i, j in idx], dtype=torch.long).reshape(-1, 4)


def _regions(mode: str, params, n: int, hw) -> Tuple[List[Any], List[Any], Optional[Any]]:
    """Per row: boxes to draw on the result, boxes to draw on the partner, and (N, H, W) cut masks if any."""
    from .modes.attentive import AttentiveParams
    from .modes.cam_erase import CamEraseParams
    from .modes.gutout import GutoutParams
    from .modes.saliencymix import SaliencyMixParams
    from .modes.snapmix import SnapMixParams
    active = params.active.cpu()
    none = [None] * n
    if isinstance(params, SnapMixParams):
        return ([params.box_t[i] if active[i] else None for i in range(n)],
                [params.box_s[i] if active[i] else None for i in range(n)], None)
    if isinstance(params, SaliencyMixParams):
        boxes = [params.boxes[i] if active[i] else None for i in range(n)]
        return boxes, boxes, None
    if isinstance(params, AttentiveParams):
        boxes = [_cell_boxes(params.cells[i].cpu(), hw) if active[i] else None for i in range(n)]
        return boxes, boxes, None
    if isinstance(params, CamEraseParams):
        return [params.boxes[i] if active[i] else None for i in range(n)], none, None
    if isinstance(params, GutoutParams):
        if params.cam is None:
            return none, none, None
        cut = (params.cam.cpu() > params.threshold[:, None, None]) & active[:, None, None]
        return none, none, cut
    raise TypeError(f"no regions for {type(params).__name__}")


def _same_label(params, labels, n: int) -> List[bool]:
    """Per row: SnapMix mixed the image with one of its own label, so both label weights became w_a + w_b
    (the reference's rule) and the row's single weight is their sum (up to 4). Rows whose maps were empty
    (NaN: area weights instead, which add up to 1) are not flagged."""
    import torch
    from .modes.snapmix import SnapMixParams
    if not isinstance(params, SnapMixParams) or params.spm is None:
        return [False] * n
    active, perm, labels = params.active.cpu(), params.perm.cpu(), labels.cpu()
    has_map = ~torch.isnan(params.spm.detach().float().cpu()).flatten(1).any(1)
    return [bool(active[i] and has_map[i] and has_map[perm[i]]) and int(labels[i]) == int(labels[perm[i]])
            for i in range(n)]


def _weights_text(soft_row, names, limit: int = 3) -> str:
    import torch
    vals, idx = torch.sort(soft_row.cpu(), descending=True)
    parts = [f'{float(v):.2f} x {_label(int(k), names)}' for v, k in zip(vals[:limit], idx[:limit]) if float(v) > 5e-3]
    return '\n'.join(parts) if parts else '(all weights 0)'


def render_preview(mode: str, x, labels, x_mixed, soft, params, mean, std, output: str, *, names=None,
                   image_names: Optional[Sequence[str]] = None, title: str = '', cmap: str = 'jet') -> str:
    """Draw the grid (rows = images) and save it as a PNG at ``output``; returns ``output``."""
    import matplotlib
    matplotlib.use('Agg', force=False)
    import matplotlib.pyplot as plt
    import torch
    from matplotlib import colormaps
    from torchvision.utils import draw_segmentation_masks

    from .pixels import denormalize
    n, _, h, w = x.shape
    mixing = hasattr(params, 'perm')
    perm = params.perm.cpu() if mixing else torch.arange(n)
    imgs = denormalize(x.detach().cpu(), mean, std).clamp(0, 1)
    outs = denormalize(x_mixed.detach().cpu(), mean, std).clamp(0, 1)
    maps = guidance_overlays(params, n)
    result_boxes, source_boxes, cut = _regions(mode, params, n, (h, w))
    same = _same_label(params, labels, n)
    gutout = mode == 'gutout' and maps is not None
    active = params.active.cpu()
    colour_map = colormaps[cmap]
    to8 = lambda t: (t * 255).round().to(torch.uint8)  # noqa: E731
    cols = 4 if mixing else 3
    headers = ['image (predicted class)', 'guidance map', 'partner (region taken)', 'result (label weights)']
    if not mixing:
        headers = [headers[0], headers[1], 'result (label unchanged)']
    fig, axes = plt.subplots(n, cols, figsize=(3.2 * cols, 3.9 * n), squeeze=False)
    for i in range(n):
        tiles, texts, contours = [], [], {}
        tiles.append(to8(imgs[i]))
        texts.append(f"{image_names[i] if image_names else f'image {i}'}\n{_label(int(labels[i]), names)}")
        m = None if maps is None else maps[i]
        no_map = m is None or bool(torch.isnan(m.float()).all())
        # gutout cuts where CAM / max > t: show that map on a fixed 0-1 scale with the threshold's contour
        tiles.append(to8(_heat(imgs[i], m, colour_map, scale='0-1' if gutout else 'min-max')))
        if no_map:
            texts.append('no map for this image')
        elif gutout:
            t = float(params.threshold[i])
            texts.append(f"CAM / max, colours 0-1\nwhite line: cut threshold t = {t:.2f}" if active[i] else
                         "CAM / max, colours 0-1\n(not cut: prob < 1)")
            if active[i]:
                level = _at_image_size(m, (h, w))
                if float(level.min()) < t < float(level.max()):
                    contours[len(tiles) - 1] = (level.numpy(), t)
        else:
            texts.append({'snapmix': 'semantic percent map', 'cam-erase': 'CAM, min-max',
                          'saliencymix': 'saliency map', 'attentive': 'extractor cell map'}.get(mode, 'map'))
        if mixing:
            j = int(perm[i])
            tiles.append(_draw_boxes(to8(imgs[j]), source_boxes[i], _BOX_COLOURS['source']))
            texts.append(f"partner: row {j}" + (f" ({image_names[j]})" if image_names else ''))
        res = to8(outs[i])
        if cut is not None:
            res = draw_segmentation_masks(res, cut[i], alpha=0.3, colors='#ff00ff')   # cut pixels, tinted
        res = _draw_boxes(res, result_boxes[i], _BOX_COLOURS['target'])
        tiles.append(res)
        texts.append(_weights_text(soft[i], names) + (f'\n{_SAME_LABEL_NOTE}' if same[i] else ''))
        for c, (tile, text) in enumerate(zip(tiles, texts)):
            ax = axes[i, c]
            ax.imshow(tile.permute(1, 2, 0).numpy(), interpolation='nearest')
            if c in contours:
                level_map, t = contours[c]
                ax.contour(level_map, levels=[t], colors='white', linewidths=1.5)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel(text, fontsize=9)
            if i == 0:
                ax.set_title(headers[c], fontsize=10)
    if title:
        import textwrap
        fig.suptitle('\n'.join(textwrap.fill(line, 42 * cols) for line in title.split('\n')), fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    fig.savefig(output, dpi=100)
    plt.close(fig)
    return output


def register(subparsers) -> None:
    from .modes import MIX_MODES
    p = subparsers.add_parser(
        'preview', help='draw what a mix mode does to a batch of images (PNG grid)',
        description='Apply one mix mode to a batch of images and save a PNG grid: each image with its predicted '
                    'class, the CAM or saliency map the mode uses, the partner image and the mixed/erased result '
                    'with its boxes and label weights. Default images: scikit-image photos; default model: the '
                    "offline ImageNet EfficientNet-Lite0 (pip install 'timm-camaug[preview]').")
    p.add_argument('images', nargs='*', metavar='IMAGE', help='image files (default: scikit-image photos '
                                                               f"{', '.join(DEFAULT_PHOTOS)})")
    p.add_argument('--mode', required=True, choices=MIX_MODES, help='the mix mode to show')
    p.add_argument('--output', '-o', required=True, metavar='FILE.png', help='PNG file to write')
    p.add_argument('--model', default=None, help='timm model name (default: offline ImageNet efficientnet_lite0)')
    p.add_argument('--checkpoint', default=None, metavar='FILE', help="local weights of --model (else the hub's)")
    p.add_argument('--num-classes', type=int, default=None,
                   help="classes of --checkpoint's head (default: read from the checkpoint's classifier weight)")
    p.add_argument('--class-names', default=None, metavar='FILE',
                   help='class names, one per line in class-index order, or the class_map.txt / classes.json that '
                        "timm-camaug prepare writes (or its dataset folder); default: ImageNet's for 1000 classes")
    p.add_argument('--size', type=int, default=224, help='square image size fed to the model (default: 224)')
    p.add_argument('--seed', type=int, default=0, help='seed of the mode\'s random draws (default: 0)')
    p.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                   help="a mode option, as its train.py flag without the mode prefix, e.g. --set beta=1.0 or "
                        "--set cam_layer=blocks.4 (repeatable); prob is 1 unless set")
    p.add_argument('--cmap', default='jet', help="matplotlib colour map of the guidance map (default: jet)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise _fail("drawing needs matplotlib: pip install 'timm-camaug[preview]'") from None
    if not args.output.lower().endswith('.png'):
        raise _fail(f"--output must name a .png file, got {args.output!r}")
    if args.size < 32:
        raise _fail(f"--size must be >= 32, got {args.size}")
    from matplotlib import colormaps
    if args.cmap not in colormaps:
        raise _fail(f"unknown matplotlib colour map {args.cmap!r}")
    options = parse_mode_options(args.mode, args.set)
    images, image_names = load_images(args.images, args.size)
    if len(images) < 2 and args.mode in ('snapmix', 'saliencymix', 'attentive'):
        raise _fail(f"{args.mode} mixes pairs of images: give at least two")
    model, model_desc = _load_model(args)
    import timm
    data_config = timm.data.resolve_data_config({'input_size': (3, args.size, args.size)}, model=model)
    from .pixels import normalize
    x = normalize(images, data_config['mean'], data_config['std'])
    with torch.no_grad():
        labels = model(x).argmax(1)
    k = int(getattr(model, 'num_classes', 0) or 0)
    names = _class_names(k, args.class_names)
    if args.mode == 'attentive' and 'extractor' not in options:
        if args.model is None:
            options['extractor'] = model
        else:
            from .pretrained import pretrained_efficientnet_lite0
            try:
                options['extractor'] = pretrained_efficientnet_lite0(num_classes=0)
            except ImportError as e:
                raise _fail(f"attentive needs a pretrained extractor: {e}; or --set extractor=NAME "
                            "--set extractor_checkpoint=FILE") from None
    from .modes import get_mode_class
    if 'cam_bn' in {o.name for o in get_mode_class(args.mode).options} and 'cam_bn' not in options:
        # a frozen pretrained model shown a few unrelated photos: batch statistics (snapmix's training
        # default) would describe this odd batch, not the model, and smear its CAM off the objects
        options['cam_bn'] = 'eval'
    prob = options.pop('prob', 1.0)
    from . import create_mix_fn
    try:
        mix_fn = create_mix_fn(args.mode, model=model, num_classes=k, prob=prob, data_config=data_config,
                               generator=torch.Generator().manual_seed(args.seed), **options)
    except (ValueError, TypeError, RuntimeError, FileNotFoundError) as e:
        raise _fail(str(e)) from None
    params = mix_fn.make_params(x, labels)
    x_mixed, soft = mix_fn.apply(x, labels, params)
    title = f"{args.mode} on {model_desc}; seed {args.seed}\n{mix_fn!r}"
    render_preview(args.mode, x, labels, x_mixed, soft, params, mix_fn.mean, mix_fn.std, args.output,
                   names=names, image_names=image_names, title=title, cmap=args.cmap)
    same = _same_label(params, labels, len(images))
    note = ' ' + _SAME_LABEL_NOTE.replace('\n', ' ')
    for i in range(len(images)):
        print(f"{image_names[i]}: predicted {_label(int(labels[i]), names)}; mixed target: "
              f"{_weights_text(soft[i], names).replace(chr(10), ' + ')}{note if same[i] else ''}")
    print(f"wrote {args.output}")
    return 0
