""" ``timm-camaug preview``: a PNG grid showing what a mix mode does to a batch of real images.

One row per image: the image with the class the model predicts for it, the map the mode is guided by (the
mode names it: SnapMix's semantic percent map, a CAM, a saliency map, an extractor's cell map) over it, for
mixing modes the partner image with the region taken from it, and the mixed or erased result with its
boxes (or cut region) drawn and its label weights printed under it. Everything mode-specific comes from the
mode itself (:meth:`~timm_camaug.modes.base.MixMode.regions`, ``image_guidance``, ``row_notes``), so a new
mode previews without a change here. Default images: scikit-image's bundled photos; default model: the
offline ImageNet EfficientNet-Lite0 (both in the ``preview`` extra). ``--model NAME --checkpoint FILE``
takes any timm model (its class count read from the checkpoint's classifier), ``--class-names FILE`` names
a fine-tuned model's classes (see :mod:`timm_camaug.readers`).
"""
import argparse
import functools
import os
from typing import Any, Dict, Optional, Sequence

from .console import command_error
from .readers import DEFAULT_PHOTOS, ReadError, checkpoint_num_classes, load_images, read_class_names

__all__ = ['render_preview', 'parse_mode_options', 'register', 'run']

_BOX_COLOURS = {'target': '#ffff00', 'source': '#00ffff'}
_MAX_NAME = 32      # longest class name printed (longer ones end in '...')


_fail = functools.partial(command_error, 'preview')


def parse_mode_options(mode: str, items: Sequence[str]) -> Dict[str, Any]:
    """``KEY=VALUE`` strings -> keyword options of ``mode``, typed as the mode's train.py flags are."""
    from .factory import mode_options_from_strings
    try:
        return mode_options_from_strings(mode, items)
    except ValueError as e:
        raise _fail(str(e)) from None


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
        try:
            names = read_class_names(path)
        except ReadError as e:
            raise _fail(str(e)) from None
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
    """uint8 (3, H, W) with ``[y0, y1, x0, x1]`` half-open boxes drawn (torchvision's draw_bounding_boxes);
    empty boxes are skipped."""
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


def _weights_text(soft_row, names, limit: int = 3) -> str:
    import torch
    vals, idx = torch.sort(soft_row.cpu(), descending=True)
    parts = [f'{float(v):.2f} x {_label(int(k), names)}' for v, k in zip(vals[:limit], idx[:limit]) if float(v) > 5e-3]
    return '\n'.join(parts) if parts else '(all weights 0)'


def render_preview(mix_fn, x, labels, x_mixed, soft, params, output: str, *, names=None,
                   image_names: Optional[Sequence[str]] = None, title: str = '', cmap: str = 'jet') -> str:
    """Draw the grid (rows = images) of one call of the mode ``mix_fn`` with ``params`` and save it as a PNG at
    ``output``; returns ``output``."""
    import matplotlib
    matplotlib.use('Agg', force=False)
    import matplotlib.pyplot as plt
    import torch
    from matplotlib import colormaps
    from torchvision.utils import draw_segmentation_masks

    from .pixels import denormalize
    n, _, h, w = x.shape
    regions = mix_fn.regions(params, (h, w))
    mixing = regions.perm is not None
    perm = regions.perm if mixing else torch.arange(n)
    imgs = denormalize(x.detach().cpu(), mix_fn.mean, mix_fn.std).clamp(0, 1)
    outs = denormalize(x_mixed.detach().cpu(), mix_fn.mean, mix_fn.std).clamp(0, 1)
    shown = mix_fn.describing(params)         # a schedule: the member it drew (None: no mixing)
    maps = mix_fn.image_guidance(params)
    levels = mix_fn.guidance_levels(params)
    notes = mix_fn.row_notes(params, labels)
    zero_one = shown is not None and shown.guidance_scale == '0-1'
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
        tiles.append(to8(_heat(imgs[i], m, colour_map, scale='0-1' if zero_one else 'min-max')))
        if no_map:
            texts.append('no map for this image')
        else:
            caption = shown.guidance_name + (', colours 0-1' if zero_one else '')
            if levels is not None and active[i]:
                t = float(levels[i])
                caption += f'\nwhite line: threshold t = {t:.2f}'
                level = _at_image_size(m, (h, w))
                if float(level.min()) < t < float(level.max()):
                    contours[len(tiles) - 1] = (level.numpy(), t)
            elif levels is not None:
                caption += '\n(not applied: prob < 1)'
            texts.append(caption)
        if mixing:
            j = int(perm[i])
            source_boxes = None if regions.source_boxes is None else regions.source_boxes[i]
            tiles.append(_draw_boxes(to8(imgs[j]), source_boxes if active[i] else None, _BOX_COLOURS['source']))
            blended = float(regions.blend[i]) if regions.blend is not None else 0.0
            texts.append(f"partner: row {j}" + (f" ({image_names[j]})" if image_names else '')
                         + (f"\nblended in at {blended:.2f} (Mixup)" if blended > 0 else ''))
        res = to8(outs[i])
        if regions.target_boxes is None:     # an irregular region: tint its pixels
            res = draw_segmentation_masks(res, regions.target[i], alpha=0.3, colors='#ff00ff')
        elif active[i]:
            res = _draw_boxes(res, regions.target_boxes[i], _BOX_COLOURS['target'])
        tiles.append(res)
        texts.append(_weights_text(soft[i], names) + (f'\n{notes[i]}' if notes[i] else ''))
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
    p.add_argument('--mode', required=True, metavar='MODE',
                   help=f"the mix mode to show: {', '.join(MIX_MODES)}, cutmix/mixup (timm's), or a schedule such as "
                        "a:0.5+b:0.5 (one member drawn)")
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
                        "--set cam_layer=blocks.4 (repeatable; in a schedule MEMBER:KEY=VALUE); prob is 1 unless set")
    p.add_argument('--cmap', default='jet', help="matplotlib colour map of the guidance map (default: jet)")
    p.set_defaults(func=run)


def _member_options(members: Sequence[str], items: Sequence[str], single: bool) -> Dict[str, Dict[str, Any]]:
    """``--set`` items per member: ``KEY=VALUE`` for a single mode, ``MEMBER:KEY=VALUE`` in a schedule."""
    out: Dict[str, Dict[str, Any]] = {m: {} for m in members}
    by_member: Dict[str, list] = {m: [] for m in members}
    for item in items:
        member, sep, kv = item.partition(':')
        if single and (not sep or '=' in member):
            by_member[members[0]].append(item)
            continue
        if not sep or member not in by_member:
            raise _fail(f"--set {item!r}: in a schedule write MEMBER:KEY=VALUE with MEMBER one of {', '.join(members)}")
        by_member[member].append(kv)
    for member, kvs in by_member.items():
        if kvs:
            out[member] = parse_mode_options(member, kvs)
    return out


def _auxiliary_network(cls, options: Dict[str, Any], model, default_model: bool) -> None:
    """A mode that takes a frozen pretrained network (Attentive CutMix's extractor) gets one that needs no
    download: the preview's own model when it is the offline default, else the offline EfficientNet-Lite0."""
    if cls.auxiliary_network is None or cls.auxiliary_network[0] in options:
        return
    option, checkpoint = cls.auxiliary_network
    if default_model:
        options[option] = model
        return
    from .pretrained import pretrained_efficientnet_lite0
    try:
        options[option] = pretrained_efficientnet_lite0(num_classes=0)
    except ImportError as e:
        raise _fail(f"{cls.name} needs a pretrained {option}: {e}; or --set {option}=NAME "
                    f"--set {checkpoint}=FILE") from None


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
    from .modes import get_mode_class
    from .modes.schedule import ScheduleError, is_timm_member, schedule_members
    try:
        members = schedule_members(args.mode)
    except ScheduleError as e:
        raise _fail(str(e)) from None
    single = members == [args.mode]
    per_member = _member_options(members, args.set, single)
    try:
        images, image_names = load_images(args.images, args.size)
    except ReadError as e:
        raise _fail(str(e)) from None
    classes = [None if is_timm_member(m) else get_mode_class(m) for m in members]
    if len(images) < 2 and any(c is None or c.mixes_pairs for c in classes):
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
    for member, cls in zip(members, classes):
        if cls is None:
            continue
        _auxiliary_network(cls, per_member[member], model, default_model=args.model is None)
        if 'cam_bn' in {o.name for o in cls.options} and 'cam_bn' not in per_member[member]:
            # a frozen pretrained model shown a few unrelated photos: batch statistics (a training default of
            # some modes) would describe this odd batch, not the model, and smear its CAM off the objects
            per_member[member]['cam_bn'] = 'eval'
    from . import create_mix_fn
    common = dict(model=model, num_classes=k, data_config=data_config,
                  generator=torch.Generator().manual_seed(args.seed))
    try:
        if single:
            options = per_member[args.mode]
            mix_fn = create_mix_fn(args.mode, prob=options.pop('prob', 1.0), **common, **options)
        else:
            mix_fn = create_mix_fn(args.mode, options=per_member, **common)
    except (ValueError, TypeError, RuntimeError, FileNotFoundError) as e:
        raise _fail(str(e)) from None
    params = mix_fn.make_params(x, labels)
    x_mixed, soft = mix_fn.apply(x, labels, params)
    if mix_fn.reads_training_forward:      # labels completed from the forward on the mixed batch (TransMix)
        with torch.no_grad():
            model(x_mixed)
    soft = mix_fn.finalize(soft)
    title = f"{args.mode} on {model_desc}; seed {args.seed}\n{mix_fn!r}"
    render_preview(mix_fn, x, labels, x_mixed, soft, params, args.output,
                   names=names, image_names=image_names, title=title, cmap=args.cmap)
    notes = mix_fn.row_notes(params, labels)
    for i in range(len(images)):
        note = (' ' + notes[i].replace('\n', ' ')) if notes[i] else ''
        print(f"{image_names[i]}: predicted {_label(int(labels[i]), names)}; mixed target: "
              f"{_weights_text(soft[i], names).replace(chr(10), ' + ')}{note}")
    print(f"wrote {args.output}")
    return 0
