""" Building the tree from a ``Listing``: ``DST/train/<class>/<image>`` and ``DST/val/<class>/<image>`` as links,
copies or cropped copies (each image checked), plus ``DST/class_map.txt`` (one class folder per line, in
class-index order: train.py's ``--class-map``), ``DST/classes.json`` (official names and per-split counts)
and ``DST/manifest.json`` (everything prepare wrote: see ``manifest``).

The tree is built in a temporary folder and moved into place once complete, so a failure leaves no partial
tree. ``--overwrite`` replaces only a tree that is exactly what its manifest lists, and removes only what it
lists; a DST that exists is kept itself (its permissions, owner, mount), only its contents are replaced.
Everything written gets the permissions ``mkdir`` and ``cp -r`` would give under the user's umask.
"""
import errno
import json
import os
import shlex
import shutil
import stat
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from ..console import CLASS_MAP_FILE, format_bytes, printable, progress_bar
from .listing import SPLITS, Listing, PrepareError, Sample, check_sources, list_names, list_paths
from .manifest import (MANIFEST_FILE, WRITTEN_BY, ManifestError, first_difference, read_manifest, remove_listed,
                       write_manifest)

__all__ = [
    'BuildResult', 'LINK_MODES', 'VERIFY_MODES', 'CLASS_MAP_FILE', 'CLASSES_FILE', 'MANIFEST_FILE', 'WRITTEN_BY',
    'prepare_tree_problem', 'check_destination', 'build_tree',
]

LINK_MODES = ('symlink', 'relative', 'hardlink', 'copy')
VERIFY_MODES = ('full', 'header', 'none')
CLASSES_FILE = 'classes.json'
# temporary folders inside an existing DST: the new tree while it is built, the old one while it is replaced
_TMP_PREFIX, _OLD_PREFIX = '.timm-camaug-tmp-', '.timm-camaug-old-'


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


def _is_leftover(name: str) -> bool:
    """A temporary folder of an interrupted run inside DST: reported, never counted as DST's content."""
    return name.startswith((_TMP_PREFIX, _OLD_PREFIX))


def _contents(path: Path) -> List[str]:
    try:
        return sorted(n for n in os.listdir(path) if not _is_leftover(n))
    except OSError as e:
        raise PrepareError(f'DST {path} cannot be read ({e.strerror or e})') from None


def _legacy_mark(path: Path) -> bool:
    """Whether ``path`` holds a classes.json of a prepare that kept no manifest."""
    try:
        with open(path / CLASSES_FILE, encoding='utf-8') as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get('written_by') == WRITTEN_BY


def prepare_tree_problem(path: Path) -> Optional[str]:
    """Why the non-empty folder ``path`` is not exactly a tree that prepare wrote (its first difference from
    the manifest, or the manifest's own problem), or None when it is: the only kind of DST that
    ``--overwrite`` replaces."""
    if not (path / MANIFEST_FILE).is_file():
        return f'it has no {MANIFEST_FILE}'
    try:
        return first_difference(path, read_manifest(path), _is_leftover)
    except ManifestError as e:
        return f'its {MANIFEST_FILE} {e}'
    except OSError as e:
        return f'{e.filename or path} cannot be read ({e.strerror or e})'


def _refusal(path: Path, names: List[str]) -> Optional[str]:
    """The message that refuses the non-empty DST ``path`` (holding ``names``), or None when it is an
    unchanged prepare tree."""
    problem = prepare_tree_problem(path)
    if problem is None:
        return None
    rm = f'rm -r {shlex.quote(str(path))}'
    if not (path / MANIFEST_FILE).is_file():
        if _legacy_mark(path):
            return (f'DST {path} was written by {WRITTEN_BY} without a {MANIFEST_FILE} (an earlier version), so '
                    f'whether you added or changed anything in it cannot be checked; nothing in it is touched.\n'
                    f'Remove it yourself ({rm}: links are removed, never the images they point to) and run again, '
                    f'or choose another DST')
        return (f'DST {path} exists, is not empty (it holds {list_names(names)}) and is not a tree written by '
                f'{WRITTEN_BY} ({problem}); nothing in it is touched.\n'
                f'Choose another DST, or move its contents away yourself')
    return (f'DST {path} is not exactly the tree {WRITTEN_BY} wrote ({problem}); --overwrite replaces only an '
            f'unchanged tree, so nothing in it is touched.\n'
            f'Move what you want to keep out of it and remove the rest yourself ({rm}), or choose another DST')


def check_destination(dst: str, overwrite: bool, source_root: Optional[str] = None) -> Path:
    """Refuse a DST that cannot be (re)built safely; returns it as an absolute path.

    DST may be missing or an empty directory. A non-empty one is replaced only with ``overwrite`` and only
    when it is exactly a tree that prepare wrote (see ``prepare_tree_problem``); anything else is refused
    whatever the flags, so nothing the user owns is changed. A DST that is a file or a symbolic link, whose
    parent is not a folder, or that contains the dataset being read is refused too.
    """
    if not str(dst).strip():  # an unset shell variable: not the current directory by accident
        raise PrepareError('DST is empty; give the folder to write, e.g. data/cub')
    path = Path(os.path.abspath(dst))
    if path.is_symlink():
        raise PrepareError(f'DST {path} is a symbolic link; give the real directory instead')
    if path.exists() and not path.is_dir():
        raise PrepareError(f'DST {path} exists and is not a directory')
    if source_root is not None and _is_within(source_root, str(path)):
        raise PrepareError(f'DST {path} contains the dataset being read ({source_root}); choose another DST')
    if os.path.lexists(path.parent) and not path.parent.is_dir():
        what = 'a broken or looping symbolic link' if path.parent.is_symlink() else 'not a directory'
        raise PrepareError(f'the parent of DST, {path.parent}, is {what}')
    if path.is_dir():
        names = _contents(path)
        if names:
            refusal = _refusal(path, names)
            if refusal is not None:
                raise PrepareError(refusal)
            if not overwrite:
                raise PrepareError(
                    f'DST {path} holds an earlier prepare output; pass --overwrite to replace it (it is replaced '
                    f'once the new tree is complete)')
    return path


def _new_folder(where: Path, prefix: str) -> Path:
    """A new, uniquely named folder ``where/<prefix><random>``, with the mode ``mkdir`` gives."""
    while True:
        p = where / f'{prefix}{uuid.uuid4().hex[:8]}'
        try:
            os.mkdir(p)
            return p
        except FileExistsError:
            continue


def _leftovers(dst: Path, log: Callable[[str], None]) -> None:
    """Report the temporary folders of interrupted runs (they are never deleted here)."""
    def names(folder: Path) -> List[str]:
        try:
            return os.listdir(folder)
        except OSError:  # missing, or a parent the user may enter but not list
            return []

    parent = dst.parent
    tmp = [parent / n for n in names(parent) if n.startswith(f'{dst.name}.tmp-')]
    old = [parent / n for n in names(parent) if n.startswith(f'{dst.name}.old-')]
    tmp += [dst / n for n in names(dst) if n.startswith(_TMP_PREFIX)]
    old += [dst / n for n in names(dst) if n.startswith(_OLD_PREFIX)]
    if tmp:
        log(f'warning: leftovers of an interrupted run (safe to delete): {", ".join(map(str, sorted(tmp)))}')
    if old:
        log(f'warning: an earlier tree that --overwrite did not remove completely (check it, then delete it): '
            f'{", ".join(map(str, sorted(old)))}')


def _umask() -> int:
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith('Umask:'):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # no /proc: read it by setting it (before any worker thread starts)
    os.umask(mask)
    return mask


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


def _copy(src: str, dst: str, umask: int) -> int:
    """Copy like ``cp -r``: the source's permission bits less the umask; the modification time is kept."""
    shutil.copyfile(src, dst)
    st = os.stat(src)
    os.chmod(dst, stat.S_IMODE(st.st_mode) & ~umask & 0o777)
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
    return os.path.getsize(dst)


def _place(sample: Sample, target: str, link_target: str, link: str, verify: str, crop_bottom: int,
           umask: int) -> int:
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
    return _copy(sample.path, target, umask)


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
        'source': printable(listing.root),
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


# ----------------------------------------------------------------------------------------------------------
# the build

def _fill(tmp: Path, listing: Listing, link: str, verify: str, real_final: str, workers: Optional[int],
          progress: bool) -> Tuple[Dict[str, Counter], int]:
    """Write every image of ``listing`` into ``tmp`` (whose final place is ``real_final``); returns the
    per-split class counts and the bytes written."""
    folders = listing.folder_names
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

    umask = _umask()
    bad: List[Tuple[str, str]] = []
    written = 0
    verb = 'cropping' if listing.crop_bottom else {'copy': 'copying', 'hardlink': 'hard-linking'}.get(link, 'linking')
    bar = progress_bar(len(jobs), f'{listing.dataset}: {verb}', unit='image', enabled=progress)
    pool = ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1))
    try:
        futures = {pool.submit(_place, s, target, lt, link, verify, listing.crop_bottom, umask): s
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
    return counts, written


def _move_into(dst: Path, tmp: Path, overwrite: bool) -> Optional[Path]:
    """Move the finished tree in ``tmp`` (a folder inside the existing folder ``dst``) up into ``dst``; an
    earlier prepare tree there (checked again: DST may have changed during the build) is first moved into
    a new folder inside ``dst``, which is returned. On failure everything moved goes back."""
    moved: List[Tuple[Path, Path]] = []
    old: Optional[Path] = None

    def move(a: Path, b: Path) -> None:
        os.rename(a, b)
        moved.append((a, b))

    try:
        names = _contents(dst)
        if names:
            refusal = _refusal(dst, names)
            if refusal is not None:
                raise PrepareError(refusal)
            if not overwrite:
                raise PrepareError(f'DST {dst} was filled while the tree was built; nothing in it is touched')
            old = _new_folder(dst, _OLD_PREFIX)
            for name in [MANIFEST_FILE] + [n for n in names if n != MANIFEST_FILE]:  # no longer a complete tree
                move(dst / name, old / name)
        new = sorted(n for n in os.listdir(tmp) if n != MANIFEST_FILE) + [MANIFEST_FILE]  # complete at the end
        for name in new:
            if os.path.lexists(dst / name):
                raise PrepareError(f'{dst / name} appeared while the tree was built; nothing in DST is touched')
            move(tmp / name, dst / name)
        os.rmdir(tmp)
    except BaseException:
        for a, b in reversed(moved):
            try:
                os.rename(b, a)
            except OSError:
                pass
        if old is not None:
            try:
                os.rmdir(old)
            except OSError:
                pass
        raise
    return old


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
    """Write ``listing`` as ``dst/{train,val}/<class folder>/<image>`` plus the class files and the manifest.

    ``link``: 'symlink' (absolute links, the default), 'relative' (relative links), 'hardlink' or 'copy';
    ignored (files are written) when the listing crops images. ``verify``: 'full' decodes every linked or
    copied image (at reduced scale for JPEG), 'header' only parses headers, 'none' skips the check.
    ``workers``: threads for the images (default min(8, CPU count)). The new tree replaces an existing
    ``dst`` only with ``overwrite`` and only if ``dst`` is an unchanged prepare tree (``check_destination``),
    once the new tree is complete; a failure leaves ``dst`` as it was.
    """
    if link not in LINK_MODES:
        raise ValueError(f'link must be one of {LINK_MODES}, got {link!r}')
    if verify not in VERIFY_MODES:
        raise ValueError(f'verify must be one of {VERIFY_MODES}, got {verify!r}')
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ValueError(f'workers must be a whole number >= 1, got {workers!r}')
    dst_path = check_destination(dst, overwrite, listing.root)
    if not listing.samples:
        raise PrepareError(f'no images listed in {listing.root}')
    source_bytes = check_sources(listing)

    parent = dst_path.parent
    exists = dst_path.is_dir()
    if not exists:
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise PrepareError(f'cannot create {parent}: {e.strerror or e}') from None
    home = dst_path if exists else parent  # the temporary folder is built where its contents end up
    if listing.crop_bottom > 0 or link == 'copy':
        free = shutil.disk_usage(home).free
        if source_bytes > free:
            raise PrepareError(
                f'{"cropping" if listing.crop_bottom else "copying"} needs about {format_bytes(source_bytes)} in '
                f'{home}, but only {format_bytes(free)} is free')
    _leftovers(dst_path, log)

    real_final = os.path.join(os.path.realpath(parent), dst_path.name)  # where relative links are resolved from
    try:
        tmp = _new_folder(home, _TMP_PREFIX if exists else f'{dst_path.name}.tmp-')
    except OSError as e:
        raise PrepareError(f'cannot create a folder in {home}: {e.strerror or e}') from None
    old: Optional[Path] = None
    try:
        counts, written = _fill(tmp, listing, link, verify, real_final, workers, progress)
        _write_class_files(tmp, listing, counts, link)
        write_manifest(tmp, keep_content=(CLASS_MAP_FILE, CLASSES_FILE))
        if exists:
            old = _move_into(dst_path, tmp, overwrite)
        elif os.path.lexists(dst_path):
            raise PrepareError(f'DST {dst_path} appeared while the tree was built; nothing in it is touched')
        else:
            os.rename(tmp, dst_path)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)  # only ever the new tree: the old one was moved back
        if isinstance(e, OSError):  # writing the class files or moving the tree into place
            raise PrepareError(f'{e.filename or dst_path}: {e.strerror or e}') from None
        raise
    if old is not None:
        try:
            left = remove_listed(old, read_manifest(old))
        except ManifestError:  # cannot happen unless someone edits it meanwhile: then keep everything
            left = [MANIFEST_FILE]
        if left:
            shown = [p for p in left if not (old / p).is_dir()] or left  # the files say more than their folders
            log(f'warning: the new tree is in place, but {old} (the old tree) still holds {list_names(shown)}: '
                f'it changed while it was replaced, or could not be removed; check it and delete it yourself')
    return BuildResult(dst=str(dst_path), counts=counts, link='crop' if listing.crop_bottom else link,
                       written_bytes=written)
