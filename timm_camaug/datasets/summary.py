""" The summary after a build: images and classes per split next to the official counts, and the warnings
about differences (a subset, classes missing from a split). """
import os
import shlex
from typing import List

from ..console import CLASS_MAP_FILE
from .listing import SPLITS, Listing
from .tree import BuildResult

__all__ = ['summary_warnings', 'format_summary']


def summary_warnings(listing: Listing, result: BuildResult) -> List[str]:
    """Differences from the official release (a subset is fine, but should be deliberate) and class sets
    that differ between the splits (then only ``--class-map`` keeps train and val labels consistent)."""
    out = []
    off = listing.official_counts
    for split in SPLITS:
        n, k = result.images(split), result.classes(split)
        if n != off[split] or k != off['classes']:
            out.append(
                f'{split} has {n:,} images in {k} classes; the official {listing.split_names[split]} split of '
                f'{listing.title} has {off[split]:,} in {off["classes"]} (fine for a subset, otherwise check '
                f'the download)')
    if len(listing.classes) != off['classes']:
        out.append(f'the class list has {len(listing.classes)} classes; {listing.title} has {off["classes"]}')
    train_set, val_set = set(result.counts['train']), set(result.counts['val'])
    if train_set != val_set:
        out.append(
            f'train and val hold different classes ({len(train_set - val_set)} only in train, '
            f'{len(val_set - train_set)} only in val): timm numbers each split\'s folders on its own, so pass '
            f'--class-map {shlex.quote(os.path.join(result.dst, CLASS_MAP_FILE))} and --num-classes '
            f'{len(listing.classes)} '
            f'to train.py')
    return out


def format_summary(listing: Listing, result: BuildResult) -> str:
    """A small table of images and classes per split next to the official counts."""
    off = listing.official_counts
    rows = [('split', 'images', 'classes', 'official', '')]
    for split in SPLITS:
        n, k = result.images(split), result.classes(split)
        ok = 'ok' if (n, k) == (off[split], off['classes']) else 'differs'
        rows.append((split, f'{n:,}', str(k), f'{off[split]:,} / {off["classes"]} ({listing.split_names[split]})', ok))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ['  '.join(c.rjust(w) if i in (1, 2) else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
             for r in rows]
    return '\n'.join(lines)
