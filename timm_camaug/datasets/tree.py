""" Building the tree from a ``Listing``: ``DST/train/<class>/<image>`` and ``DST/val/<class>/<image>`` as links,
copies or cropped copies (each image checked), plus ``DST/class_map.txt`` (one class folder per line, in
class-index order: train.py's ``--class-map``) and ``DST/classes.json`` (official names and per-split counts;
it also marks the tree as prepare's, the only kind of DST that ``--overwrite`` replaces). The tree is built in a
temporary sibling and renamed into place once complete.
"""
import errno
import glob
import json
import os
import shutil
import tempfile
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from ..console import CLASS_MAP_FILE, format_bytes, progress_bar
from .listing import SPLITS, Listing, PrepareError, Sample, check_sources, list_names, list_paths

__all__ = [
    'BuildResult', 'LINK_MODES', 'VERIFY_MODES', 'CLASS_MAP_FILE', 'CLASSES_FILE', 'WRITTEN_BY',
    'prepare_tree_problem', 'check_destination', 'build_tree',
]

LINK_MODES = ('symlink', 'relative', 'hardlink', 'copy')
VERIFY_MODES = ('full', 'header', 'none')
CLASSES_FILE = 'classes.json'
WRITTEN_BY = 'timm-camaug prepare'  # classes.json's "written_by": how --overwrite recognises an earlier output


@dataclass
class BuildResult:
    """Per-split, per-class image counts of a finished tree, and where it is."""
    dst: str
    counts: Dict[str, Counter]
    link: str
    written_bytes: int = 0

    def images(self, split: str) -> int:
        return sum(self.counts[split].values())

    def classes(self, split: str) -> int:
        return len(self.counts[split])


# ----------------------------------------------------------------------------------------------------------
# destination

def _is_within(path: str, parent: str) -> bool:
    path, parent = os.path.realpath(path), os.path.realpath(parent)
    return path == parent or path.startswith(parent.rstrip(os.sep) + os.sep)


def prepare_tree_problem(path: Path) -> Optional[str]:
    """Why the directory ``path`` is not a tree written by ``prepare``, or None when it is one: the only
    kind of DST that ``--overwrite`` may replace, so that nothing the user put there is ever deleted.

    A prepare tree holds nothing but ``train/``, ``val/``, the class map and ``classes.json`` (which says
    it was written by prepare and lists the class folders with their image counts); ``train/`` and ``val/``
    hold only those class folders, each with no sub-folders and no more files than were written into it
    (only links where links were written). Files removed since are fine: nothing of the user's is lost.
    """
    try:
        return _tree_problem(path)
    except OSError as e:
        return f'{e.filename or path} cannot be read ({e.strerror or e})'


def _tree_problem(path: Path) -> Optional[str]:
    entries = sorted(p.name for p in path.iterdir())
    extra = [n for n in entries if n not in (*SPLITS, CLASS_MAP_FILE, CLASSES_FILE)]
    if extra:
        return f'it holds {list_names(extra)}, which prepare does not write'
    if CLASSES_FILE not in entries:
        return f'it has no {CLASSES_FILE}'
    try:
        with open(path / CLASSES_FILE, encoding='utf-8') as f:
            meta = json.load(f)
    except (OSError, ValueError) as e:
        return f'its {CLASSES_FILE} cannot be read ({type(e).__name__})'
    if not isinstance(meta, dict) or meta.get('written_by') != WRITTEN_BY:
        return (f'its {CLASSES_FILE} was not written by {WRITTEN_BY} (a tree from an earlier timm-camaug has no such '
                'mark: remove it yourself)')
    try:
        expected = {split: {c['folder']: int(c[split]) for c in meta['classes']} for split in SPLITS}
    except (KeyError, TypeError, ValueError):
        return f'its {CLASSES_FILE} does not list the class folders'
    if CLASS_MAP_FILE in entries:
        try:
            class_map = (path / CLASS_MAP_FILE).read_text(encoding='utf-8').splitlines()
        except (OSError, ValueError) as e:
            return f'its {CLASS_MAP_FILE} cannot be read ({type(e).__name__})'
        if class_map != [c['folder'] for c in meta['classes']]:
            return f'its {CLASS_MAP_FILE} is not the one prepare wrote'
    only_links = meta.get('files') in ('symlink', 'relative')
    for split in SPLITS:
        split_dir = path / split
        if not os.path.lexists(split_dir):
            continue
        if split_dir.is_symlink() or not split_dir.is_dir():
            return f'{split} is not a folder'
        for folder in os.scandir(split_dir):
            if folder.name not in expected[split] or not folder.is_dir(follow_symlinks=False):
                return f'{split}/{folder.name} is not one of its class folders'
            n = 0
            for entry in os.scandir(folder.path):
                if entry.is_dir(follow_symlinks=False):
                    return f'{split}/{folder.name}/{entry.name} is a folder'
                if only_links and not entry.is_symlink():
                    return f'{split}/{folder.name}/{entry.name} is not a link (prepare wrote links there)'
                n += 1
            if n > expected[split][folder.name]:
                return (f'{split}/{folder.name} holds {n} files, but prepare wrote '
                        f'{expected[split][folder.name]}')
    return None


def check_destination(dst: str, overwrite: bool, source_root: Optional[str] = None) -> Path:
    """Refuse a DST that cannot be (re)built safely; returns it as an absolute path.

    DST may be missing or an empty directory. A non-empty one is replaced only with ``overwrite`` and only
    when it is an earlier prepare output (see ``prepare_tree_problem``); anything else is refused, so
    nothing the user owns is deleted. A DST that is a file, a symbolic link, or contains the dataset being
    read is always refused.
    """
    path = Path(os.path.abspath(dst))
    if path.is_symlink():
        raise PrepareError(f'DST {path} is a symbolic link; give the real directory instead')
    if path.exists() and not path.is_dir():
        raise PrepareError(f'DST {path} exists and is not a directory')
    if source_root is not None and _is_within(source_root, str(path)):
        raise PrepareError(f'DST {path} contains the dataset being read ({source_root}); choose another DST')
    if path.exists() and any(path.iterdir()):
        problem = prepare_tree_problem(path)
        if problem is not None:
            raise PrepareError(
                f'DST {path} exists, is not empty and is not a tree written by {WRITTEN_BY} ({problem}); '
                f'--overwrite replaces only such a tree, so nothing in it is touched: choose another DST, or '
                f'move its contents away yourself')
        if not overwrite:
            raise PrepareError(
                f'DST {path} holds an earlier prepare output; pass --overwrite to replace it (only DST itself '
                f'is replaced, once the new tree is complete)')
    if path.parent.exists() and not path.parent.is_dir():
        raise PrepareError(f'the parent of DST, {path.parent}, is not a directory')
    return path


# ----------------------------------------------------------------------------------------------------------
# per-image work (run in threads: PIL decodes and file-system calls release the GIL)

class _ImageProblem(Exception):
    """An image that cannot be read; collected per file and reported together."""


def _check_image(path: str, verify: str) -> None:
    from PIL import Image
    try:
        with Image.open(path) as im:
            if verify == 'full':
                # JPEG: decode at 1/8 scale, which still reads every entropy-coded byte (finds truncation)
                im.draft(im.mode, (max(1, im.width // 8), max(1, im.height // 8)))
                im.load()
            else:
                im.verify()
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ... for broken files
        raise _ImageProblem(f'{type(e).__name__}: {e}') from None


def _write_cropped(src: str, dst: str, bottom: int) -> int:
    """Write ``src`` without its bottom ``bottom`` rows; JPEGs are re-encoded with the source's own
    quantisation tables and chroma subsampling (the closest to lossless a crop can be)."""
    from PIL import Image, JpegImagePlugin
    try:
        with Image.open(src) as im:
            im.load()
            w, h = im.size
            if h <= bottom:
                raise _ImageProblem(f'{w}x{h} pixels: too small to crop the {bottom}-pixel banner')
            out = im.crop((0, 0, w, h - bottom))
            kw = {k: im.info[k] for k in ('icc_profile', 'exif', 'dpi') if im.info.get(k)}
            fmt = im.format
            if fmt == 'JPEG':
                kw['qtables'] = im.quantization
                sampling = JpegImagePlugin.get_sampling(im)
                if sampling != -1:
                    kw['subsampling'] = sampling
    except _ImageProblem:
        raise
    except Exception as e:
        raise _ImageProblem(f'{type(e).__name__}: {e}') from None
    out.save(dst, format=fmt, **kw)
    return os.path.getsize(dst)


def _place(sample: Sample, target: str, link_target: str, link: str, verify: str, crop_bottom: int) -> int:
    """Put one image at ``target``; returns the bytes written (0 for links)."""
    if crop_bottom:
        return _write_cropped(sample.path, target, crop_bottom)
    if verify != 'none':
        _check_image(sample.path, verify)
    if link in ('symlink', 'relative'):
        os.symlink(link_target, target)
        return 0
    if link == 'hardlink':
        os.link(sample.path, target)
        return 0
    shutil.copy2(sample.path, target)
    return os.path.getsize(target)


# ----------------------------------------------------------------------------------------------------------
# the build

def _unique_sibling(dst: Path, tag: str) -> Path:
    while True:
        p = dst.with_name(f'{dst.name}.{tag}-{uuid.uuid4().hex[:8]}')
        if not os.path.lexists(p):
            return p


def build_tree(
        listing: Listing,
        dst: str,
        *,
        link: str = 'symlink',
        verify: str = 'full',
        overwrite: bool = False,
        workers: Optional[int] = None,
        progress: bool = True,
        log: Callable[[str], None] = print,
) -> BuildResult:
    """Write ``listing`` as ``dst/{train,val}/<class folder>/<image>`` plus the class map files.

    ``link``: 'symlink' (absolute links, the default), 'relative' (relative links), 'hardlink' or 'copy';
    ignored (files are written) when the listing crops images. ``verify``: 'full' decodes every linked or
    copied image (at reduced scale for JPEG), 'header' only parses headers, 'none' skips the check.
    Everything is built in a temporary sibling ``<dst>.tmp-XXXX`` that is renamed to ``dst`` at the end,
    so a failure leaves no partial tree; an existing ``dst`` (with ``overwrite``, and only if it is an
    earlier prepare output: see ``check_destination``) is removed only after the new tree is complete.
    """
    if link not in LINK_MODES:
        raise ValueError(f'link must be one of {LINK_MODES}, got {link!r}')
    if verify not in VERIFY_MODES:
        raise ValueError(f'verify must be one of {VERIFY_MODES}, got {verify!r}')
    dst_path = check_destination(dst, overwrite, listing.root)
    if not listing.samples:
        raise PrepareError(f'no images listed in {listing.root}')
    source_bytes = check_sources(listing)

    parent = dst_path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PrepareError(f'cannot create {parent}: {e.strerror or e}') from None
    writes = listing.crop_bottom > 0 or link == 'copy'
    if writes:
        free = shutil.disk_usage(parent).free
        if source_bytes > free:
            raise PrepareError(
                f'{"cropping" if listing.crop_bottom else "copying"} needs about {format_bytes(source_bytes)} in {parent}, '
                f'but only {format_bytes(free)} is free')
    stale = sorted(str(p) for p in parent.glob(f'{glob.escape(dst_path.name)}.tmp-*') if p.is_dir())
    if stale:
        log(f'warning: leftovers of an interrupted run (safe to delete): {", ".join(stale)}')

    folders = listing.folder_names
    real_final = os.path.join(os.path.realpath(parent), dst_path.name)  # where relative links are resolved from
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f'{dst_path.name}.tmp-', dir=parent))
    except OSError as e:
        raise PrepareError(f'cannot create a folder in {parent}: {e.strerror or e}') from None
    old: Optional[Path] = None
    moved_in = False
    try:
        counts = {split: Counter() for split in SPLITS}
        for s in listing.samples:
            counts[s.split][s.label] += 1
        for split in SPLITS:
            for label in counts[split]:
                (tmp / split / folders[label]).mkdir(parents=True)

        jobs = []
        for s in listing.samples:
            rel = os.path.join(s.split, folders[s.label], s.name)
            if link == 'relative':
                link_target = os.path.relpath(
                    os.path.realpath(s.path), os.path.join(real_final, s.split, folders[s.label]))
            else:
                link_target = os.path.abspath(s.path)
            jobs.append((s, str(tmp / rel), link_target))

        bad: List[Tuple[str, str]] = []
        written = 0
        n_workers = max(1, workers or min(8, os.cpu_count() or 1))
        verb = ('cropping' if listing.crop_bottom
                else {'copy': 'copying', 'hardlink': 'hard-linking'}.get(link, 'linking'))
        bar = progress_bar(len(jobs), f'{listing.dataset}: {verb}', unit='image', enabled=progress)
        pool = ThreadPoolExecutor(max_workers=n_workers)
        try:
            futures = {pool.submit(_place, s, target, lt, link, verify, listing.crop_bottom): s
                       for s, target, lt in jobs}
            for fut in as_completed(futures):
                s = futures[fut]
                try:
                    written += fut.result()
                except _ImageProblem as e:
                    bad.append((s.path, str(e)))
                except OSError as e:
                    raise PrepareError(_os_error_message(e, s, link)) from None
                bar.update()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)  # also on Ctrl-C: drop what has not started
            bar.close()
        if bad:
            bad.sort()
            lines = [f'{p}: {msg}' for p, msg in bad]
            hint = '' if listing.crop_bottom else ' (or pass --verify none to link them unchecked)'
            raise PrepareError(
                f'{len(bad)} image(s) cannot be read:\n{list_paths(lines)}\n'
                f'replace them from the original archive{hint}')

        _write_class_files(tmp, listing, counts, link)

        if dst_path.exists():
            if any(dst_path.iterdir()):
                check_destination(str(dst_path), overwrite)  # again: DST may have changed during the build
                old = _unique_sibling(dst_path, 'old')
                os.rename(dst_path, old)
            else:
                dst_path.rmdir()
        os.rename(tmp, dst_path)
        moved_in = True
    except BaseException as e:
        if not moved_in:
            shutil.rmtree(tmp, ignore_errors=True)
            if old is not None and not os.path.lexists(dst_path):
                os.rename(old, dst_path)
        if isinstance(e, OSError):  # writing the class files or moving the tree into place
            raise PrepareError(f'{e.filename or dst_path}: {e.strerror or e}') from None
        raise
    if old is not None:
        try:
            shutil.rmtree(old)  # the replaced DST: links are removed, never what they point to
        except OSError as e:
            log(f'warning: the new tree is in place, but the old one could not be fully removed: {old} ({e})')
    return BuildResult(dst=str(dst_path), counts=counts, link='crop' if listing.crop_bottom else link,
                       written_bytes=written)


def _os_error_message(e: OSError, s: Sample, link: str) -> str:
    if link == 'hardlink' and e.errno == errno.EXDEV:
        return (f'cannot hard-link {s.path}: DST is on another file system than the dataset; '
                f'use the default symbolic links or --copy')
    if link in ('symlink', 'relative') and e.errno in (errno.EPERM, errno.EACCES, errno.ENOTSUP, errno.EOPNOTSUPP):
        return f'cannot create a symbolic link for {s.path} ({e.strerror}); use --copy or --link hardlink'
    return f'{s.path}: {e.strerror or e}'


def _write_class_files(root: Path, listing: Listing, counts: Dict[str, Counter], link: str) -> None:
    folders = listing.folder_names
    with open(root / CLASS_MAP_FILE, 'w', encoding='utf-8') as f:
        f.write(''.join(name + '\n' for name in folders))
    meta = {
        'written_by': WRITTEN_BY,
        'dataset': listing.title,
        'source': listing.root,
        'level': listing.level,
        'splits': {split: listing.split_names[split] for split in SPLITS},
        'files': 'cropped copies' if listing.crop_bottom else link,
        'cropped_bottom_pixels': listing.crop_bottom,
        'classes': [
            {'index': i, 'folder': folders[i], 'name': name,
             **{split: counts[split].get(i, 0) for split in SPLITS}}
            for i, name in enumerate(listing.classes)
        ],
    }
    with open(root / CLASSES_FILE, 'w', encoding='utf-8') as f:
        json.dump(meta, f, indent=1, ensure_ascii=False)
        f.write('\n')
