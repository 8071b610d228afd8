""" ``timm-camaug prepare cub|cars|aircraft SRC DST``: turn an official fine-grained download into the
folder tree stock timm ``train.py`` reads (``DST/train/<class>/``, ``DST/val/<class>/``), with the official
split and class order. See ``docs/datasets.md`` for the whole path from download to training.
"""
import argparse
import importlib
import os
import shlex
import sys
from typing import Optional

from ..console import CLASS_MAP_FILE, format_bytes, printable
from .listing import Listing, PrepareError
from .manifest import MANIFEST_FILE
from .summary import format_summary, summary_warnings
from .tree import CLASSES_FILE, LINK_MODES, VERIFY_MODES, BuildResult, build_tree, check_destination

__all__ = ['DATASETS', 'register', 'run', 'prepare_dataset', 'read_listing']

# dataset name -> (module, what SRC is, how the images are usually obtained)
DATASETS = {
    'cub': ('cub', 'CUB-200-2011: the unpacked CUB_200_2011.tgz (CUB_200_2011/ or its parent)'),
    'cars': ('cars', "Stanford Cars: devkit/, cars_train/, cars_test/ and cars_test_annos_withlabels.mat, "
                     "or torchvision's stanford_cars/ (that folder or its parent)"),
    'aircraft': ('aircraft', 'FGVC-Aircraft: the unpacked fgvc-aircraft-2013b.tar.gz (fgvc-aircraft-2013b/ or '
                             'its parent)'),
}

_LINK_HELP = {
    'symlink': 'absolute symbolic links (default): DST can move, the download must stay',
    'relative': 'relative symbolic links: DST and the download can move together',
    'hardlink': 'hard links (same file system only): independent of the download folder, no extra space',
    'copy': 'copies (same as --copy)',
}


def read_listing(dataset: str, src: str, **options) -> Listing:
    """Read the official split of ``dataset`` ('cub', 'cars' or 'aircraft') from ``src``. Aircraft takes
    ``level`` ('variant', 'family', 'manufacturer') and ``keep_banner``."""
    if dataset not in DATASETS:
        raise PrepareError(f'unknown dataset {dataset!r}; choose one of {", ".join(DATASETS)}')
    if not str(src).strip():  # an unset shell variable: not the current directory by accident
        raise PrepareError('SRC is empty; give the folder of the download')
    module = importlib.import_module(f'.{DATASETS[dataset][0]}', __package__)
    return module.read(src, **options)


def prepare_dataset(
        dataset: str,
        src: str,
        dst: str,
        *,
        link: str = 'symlink',
        verify: str = 'full',
        overwrite: bool = False,
        workers: Optional[int] = None,
        progress: bool = True,
        **options,
) -> BuildResult:
    """Python equivalent of ``timm-camaug prepare``: read ``dataset`` at ``src``, write the tree at ``dst``.
    Raises ``PrepareError`` with a message for the user on bad input."""
    check_destination(dst, overwrite)
    listing = read_listing(dataset, src, **options)
    return build_tree(listing, dst, link=link, verify=verify, overwrite=overwrite, workers=workers,
                      progress=progress)


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f'expected a whole number >= 1, got {text!r}')
    return n


def register(subparsers) -> argparse.ArgumentParser:
    shared = argparse.ArgumentParser(add_help=False)
    shared.add_argument('src', metavar='SRC', help='the downloaded dataset (its own top folder, or the folder '
                                                   'that contains it)')
    shared.add_argument('dst', metavar='DST', help='output folder, e.g. data/cub (created, or an empty folder; gets '
                                                   f'train/, val/, {CLASS_MAP_FILE}, {CLASSES_FILE} and '
                                                   f'{MANIFEST_FILE})')
    files = shared.add_mutually_exclusive_group()
    files.add_argument('--link', choices=LINK_MODES, default=None,
                       help='how images get into DST: ' + '; '.join(f'{k}: {v}' for k, v in _LINK_HELP.items()))
    files.add_argument('--copy', action='store_true', help='copy the images instead of linking them')
    shared.add_argument('--overwrite', action='store_true',
                        help='replace a DST that holds an earlier prepare output exactly as prepare wrote it '
                             f'(checked against its {MANIFEST_FILE}), once the new tree is complete; a DST with '
                             'anything added, removed or changed is never replaced')
    shared.add_argument('--verify', choices=VERIFY_MODES, default='full',
                        help='check that each linked/copied image can be read: full decodes it (at reduced scale '
                             'for JPEG, default), header only parses its header, none skips the check')
    shared.add_argument('--workers', type=_positive_int, default=None, metavar='N',
                        help='threads for checking/writing images (default: min(8, CPU count))')
    shared.add_argument('-q', '--quiet', action='store_true', help='no progress bar')

    parser = subparsers.add_parser(
        'prepare', help='convert CUB-200-2011 / Stanford Cars / FGVC-Aircraft into a train.py folder dataset',
        description='Convert an official fine-grained download into DST/train/<class>/ and DST/val/<class>/ '
                    '(the official split; class folders sort in the official class order) for stock timm '
                    'train.py --data-dir DST.')
    datasets = parser.add_subparsers(dest='dataset', metavar='DATASET', required=True)
    for name, (_, what) in DATASETS.items():
        p = datasets.add_parser(name, parents=[shared], help=what, description=f'SRC is {what}.')
        if name == 'aircraft':
            p.add_argument('--level', choices=('variant', 'family', 'manufacturer'), default='variant',
                           help='annotation level: 100 variants (default), 70 families or 30 manufacturers')
            p.add_argument('--keep-banner', action='store_true',
                           help="keep the 20-pixel copyright banner at the bottom of each image (then images are "
                                "linked; by default it is cropped, which writes new JPEG files)")
    parser.set_defaults(func=run)
    return parser


def _describe_files(listing: Listing, link: str) -> str:
    if listing.crop_bottom:
        return (f'cropping the {listing.crop_bottom}-pixel copyright banner: every image is written as a new JPEG '
                f'(same quantisation tables as the original; needs about as much disk space as the images); '
                f'--keep-banner links the originals instead')
    return _LINK_HELP[link]


def run(args: argparse.Namespace) -> int:
    explicit_link = 'copy' if args.copy else args.link
    link = explicit_link or 'symlink'
    options = {}
    if args.dataset == 'aircraft':
        options = dict(level=args.level, keep_banner=args.keep_banner)
    try:
        check_destination(args.dst, args.overwrite, args.src)
        listing = read_listing(args.dataset, args.src, **options)
        level = f' ({listing.level} level)' if listing.level else ''
        print(f'{listing.title}{level}: {printable(listing.root)} -> {printable(os.path.abspath(args.dst))}')
        print(f'  {len(listing.samples):,} images, {len(listing.classes)} classes; files: '
              f'{_describe_files(listing, link)}')
        if listing.crop_bottom and explicit_link and explicit_link != 'copy':
            print(f'note: --link {explicit_link} does not apply to cropped images', file=sys.stderr)
        sys.stdout.flush()
        result = build_tree(listing, args.dst, link=link, verify=args.verify, overwrite=args.overwrite,
                            workers=args.workers, progress=not args.quiet,
                            log=lambda m: print(printable(m), file=sys.stderr))
    except PrepareError as e:
        print(f'error: {printable(str(e))}', file=sys.stderr)
        return 1
    print(format_summary(listing, result))
    warnings = summary_warnings(listing, result)
    for w in warnings:
        print(f'warning: {printable(w)}', file=sys.stderr)
    if result.written_bytes:
        print(f'wrote {format_bytes(result.written_bytes)}')
    dst = printable(result.dst)  # absolute: the hint works from any directory
    needs_map = set(result.counts['train']) != set(result.counts['val'])
    n_classes = len(listing.classes) if needs_map else result.classes('train')
    extra = f' --class-map {shlex.quote(os.path.join(dst, CLASS_MAP_FILE))}' if needs_map else ''
    print(f'done: {dst}\ntrain with: python train.py --data-dir {shlex.quote(dst)} --num-classes {n_classes}{extra}')
    return 0
