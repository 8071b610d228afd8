""" The manifest ``prepare`` writes into every tree (``manifest.json``): each folder, file (with its size) and
link (with its target) it wrote, and the checksum of its own small class files. With it, ``--overwrite``
tells whether a tree is still exactly what prepare wrote from one ``lstat`` per entry (no image is read), and
replacing a tree removes only what it lists.
"""
import hashlib
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Collection, Dict, List, Optional

__all__ = ['MANIFEST_FILE', 'WRITTEN_BY', 'Entry', 'ManifestError', 'scan', 'write_manifest', 'read_manifest',
           'first_difference', 'remove_listed']

MANIFEST_FILE = 'manifest.json'
WRITTEN_BY = 'timm-camaug prepare'  # the mark in manifest.json (and classes.json) of a tree prepare wrote
_FORMAT = 1


class ManifestError(Exception):
    """A manifest that cannot be read or was not written by prepare (the message says which)."""


@dataclass(frozen=True)
class Entry:
    """One entry of a tree: ``kind`` 'dir', 'file', 'link' or 'other' (a device, fifo, socket), a file's
    ``size`` in bytes, a link's ``target``, and for the files whose content the manifest keeps, ``sha256``."""
    kind: str
    size: int = 0
    target: str = ''
    sha256: str = ''

    def describe(self) -> str:
        """The entry in words, for a message."""
        if self.kind == 'file':
            return f'a file of {self.size:,} byte{"" if self.size == 1 else "s"}'
        if self.kind == 'link':
            return f'a link to {self.target}'
        return 'a folder' if self.kind == 'dir' else 'neither a file, a folder nor a link'


def _entry(path: str, st: Optional[os.stat_result] = None) -> Entry:
    st = os.lstat(path) if st is None else st
    if stat.S_ISLNK(st.st_mode):
        return Entry('link', target=os.readlink(path))
    if stat.S_ISDIR(st.st_mode):
        return Entry('dir')
    if stat.S_ISREG(st.st_mode):
        return Entry('file', size=st.st_size)
    return Entry('other')


def _sha256(path: str) -> str:
    with open(path, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest()


def _same(path: str, now: Entry, wrote: Entry) -> bool:
    """Whether the entry found at ``path`` (``now``, from ``scan``) is the one the manifest lists."""
    if (now.kind, now.size, now.target) != (wrote.kind, wrote.size, wrote.target):
        return False
    return not wrote.sha256 or _sha256(path) == wrote.sha256


def _sort_key(rel: str):
    return rel.split('/')  # a folder right before its contents: 'a' < 'a/x' < 'a-b'


def scan(root: Path, skip: Callable[[str], bool] = lambda name: False) -> Dict[str, Entry]:
    """Every entry under ``root`` (links are not followed) by its '/'-separated path relative to ``root``;
    ``root``'s own manifest and the top-level names for which ``skip`` is true are left out."""
    out: Dict[str, Entry] = {}

    def walk(folder: str, prefix: str) -> None:
        with os.scandir(folder) as it:
            for d in it:
                if not prefix and (d.name == MANIFEST_FILE or skip(d.name)):
                    continue
                rel = prefix + d.name
                e = _entry(d.path, d.stat(follow_symlinks=False))
                out[rel] = e
                if e.kind == 'dir':
                    walk(d.path, rel + '/')

    walk(str(root), '')
    return out


def write_manifest(root: Path, keep_content: Collection[str] = ()) -> None:
    """Write ``root/manifest.json`` listing everything now under ``root``, with the checksum of the files
    named in ``keep_content`` (small ones: checking them reads them)."""
    entries = scan(root)
    rows = []
    for rel in sorted(entries, key=_sort_key):
        e = entries[rel]
        row = [rel, e.kind] + ([e.size] if e.kind == 'file' else [e.target] if e.kind == 'link' else [])
        if e.kind == 'file' and rel in keep_content:
            row.append(_sha256(os.path.join(root, rel)))
        rows.append(json.dumps(row))  # ASCII with escapes: names that are not UTF-8 survive the round trip
    with open(root / MANIFEST_FILE, 'w', encoding='ascii') as f:
        f.write(f'{{"written_by": {json.dumps(WRITTEN_BY)}, "format": {_FORMAT}, "entries": [\n')
        f.write(',\n'.join(rows))
        f.write('\n]}\n')


def read_manifest(root: Path) -> Dict[str, Entry]:
    """The entries ``root/manifest.json`` lists; ``ManifestError`` when it cannot be read, was not written
    by prepare or is of an unknown format."""
    try:
        with open(root / MANIFEST_FILE, encoding='ascii') as f:
            meta = json.load(f)
    except (OSError, ValueError) as e:
        raise ManifestError(f'cannot be read ({getattr(e, "strerror", None) or type(e).__name__})') from None
    if not isinstance(meta, dict) or meta.get('written_by') != WRITTEN_BY:
        raise ManifestError(f'was not written by {WRITTEN_BY}')
    if meta.get('format') != _FORMAT:
        raise ManifestError(f'is of format {meta.get("format")!r}; this version reads format {_FORMAT}')
    out: Dict[str, Entry] = {}
    try:
        for row in meta['entries']:
            rel, kind = row[0], row[1]
            if kind == 'file':
                out[rel] = Entry('file', size=int(row[2]), sha256=str(row[3]) if len(row) > 3 else '')
            elif kind == 'link':
                out[rel] = Entry('link', target=str(row[2]))
            elif kind == 'dir':
                out[rel] = Entry('dir')
            else:
                raise ValueError(kind)
    except (KeyError, TypeError, ValueError, IndexError):
        raise ManifestError('is damaged (an entry is not a folder, file or link)') from None
    return out


def first_difference(root: Path, entries: Dict[str, Entry], skip: Callable[[str], bool] = lambda name: False
                     ) -> Optional[str]:
    """The first path (in tree order) where ``root`` differs from ``entries``, in words, or None when the tree
    holds exactly those entries (files of the same size, links to the same target)."""
    found = scan(root, skip)
    for rel in sorted(found.keys() | entries.keys(), key=_sort_key):
        now, wrote = found.get(rel), entries.get(rel)
        if now is not None and wrote is not None and _same(os.path.join(root, rel), now, wrote):
            continue
        if wrote is None:
            return f'{rel} was added ({now.describe()})'
        if now is None:
            return f'{rel} was removed (prepare wrote {wrote.describe()} there)'
        if now.kind != wrote.kind:
            return f'{rel} is now {now.describe()}; prepare wrote {wrote.describe()}'
        if now.kind == 'file' and now.size != wrote.size:
            return f'{rel} has changed: it has {now.size:,} bytes, prepare wrote {wrote.size:,}'
        if now.kind == 'file':
            return f'{rel} has changed: same size, other content'
        return f'{rel} has changed: it links to {now.target}, prepare linked it to {wrote.target}'
    return None


def remove_listed(root: Path, entries: Dict[str, Entry]) -> List[str]:
    """Remove from ``root`` what ``entries`` lists while it is unchanged (deepest first; folders only once
    empty), then its manifest and ``root`` itself when empty. Returns what is left under ``root``."""
    for rel in sorted(entries, key=_sort_key, reverse=True):
        path = os.path.join(root, rel)
        try:
            if not _same(path, _entry(path), entries[rel]):
                continue
            if entries[rel].kind == 'dir':
                os.rmdir(path)
            else:
                os.unlink(path)
        except OSError:  # gone already, a folder that holds something else, no permission: left in place
            continue
    try:
        os.unlink(root / MANIFEST_FILE)
        os.rmdir(root)
    except OSError:
        pass
    if not os.path.lexists(root):
        return []
    try:
        return sorted(scan(root), key=_sort_key)
    except OSError:
        return [str(root)]
