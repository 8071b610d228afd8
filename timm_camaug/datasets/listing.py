""" What a dataset reader returns and the helpers the readers share: the ``Listing`` of ``Sample`` images,
class folder names, the annotation-file readers and cross-checks, and the check that every listed image is
there. Every problem is a ``PrepareError`` whose message names the file and says what to do.
"""
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Collection, Dict, List, Optional, Sequence, Tuple

__all__ = [
    'PrepareError', 'Sample', 'Listing', 'SPLITS', 'safe_name', 'class_folder_names', 'read_text',
    'read_id_value_file', 'id_ranges', 'list_names', 'list_paths', 'lists_lacking_entries', 'check_sources',
]

SPLITS = ('train', 'val')
_MAX_LISTED = 10  # how many offending files an error message names before summarising the rest


class PrepareError(Exception):
    """A problem with the download or the destination, reported to the user as one clear message."""


@dataclass(frozen=True)
class Sample:
    """One image of the official split: its source path, split ('train'/'val'), 0-based official label,
    file name inside its class folder, and the annotation file that lists it (for error messages)."""
    path: str
    split: str
    label: int
    name: str
    listed_in: str


@dataclass
class Listing:
    """Everything a reader found in the official download; ``build_tree`` turns it into the folder tree."""
    dataset: str  # 'cub' | 'cars' | 'aircraft'
    title: str  # human-readable name, e.g. 'CUB-200-2011'
    root: str  # the dataset folder that was read
    classes: List[str]  # official class names in official order
    samples: List[Sample]
    official_counts: Dict[str, int]  # {'train': ..., 'val': ..., 'classes': ...} of the full official release
    split_names: Dict[str, str] = field(default_factory=lambda: {'train': 'train', 'val': 'test'})
    crop_bottom: int = 0  # rows cut from the bottom of every image (FGVC-Aircraft's copyright banner)
    level: Optional[str] = None  # FGVC-Aircraft's annotation level
    folder_names: Optional[List[str]] = None  # defaults to class_folder_names(classes)

    def __post_init__(self):
        if self.folder_names is None:
            self.folder_names = class_folder_names(self.classes)


# ----------------------------------------------------------------------------------------------------------
# names

def safe_name(name: str) -> str:
    """A file-system-safe folder name for an official class name: ``/`` and ``\\`` become ``-``, white
    space and anything but letters, digits, ``.``, ``+``, ``-`` and ``_`` become ``_``."""
    s = re.sub(r'[/\\]', '-', name.strip())
    s = re.sub(r'\s+', '_', s)
    s = re.sub(r'[^\w.+-]', '_', s)
    s = re.sub(r'_+', '_', s).strip('._-')
    return s or 'class'


def class_folder_names(classes: Sequence[str]) -> List[str]:
    """``<index>_<safe name>`` per class, the index zero-padded (at least 3 digits) so that natural and
    plain sorting both give the official order."""
    width = max(3, len(str(len(classes) - 1)))
    return [f'{i:0{width}d}_{safe_name(c)}' for i, c in enumerate(classes)]


# ----------------------------------------------------------------------------------------------------------
# annotation files

def read_text(path: Path, what: str) -> str:
    """The text of the annotation file ``path`` (UTF-8; a byte-order mark is dropped); a missing, unreadable
    or undecodable file is a ``PrepareError`` naming it (``what``: how the message calls the file)."""
    if not path.is_file():
        raise PrepareError(f'{what} not found: {path}')
    try:
        with open(path, encoding='utf-8-sig') as f:  # universal newlines: lines end in '\n' only
            return f.read()
    except UnicodeDecodeError as e:
        raise PrepareError(
            f'{path} is not a text file (byte {e.start} is not UTF-8); is it damaged? extract it again from the '
            f'archive') from None
    except OSError as e:
        raise PrepareError(f'{path} cannot be read ({e.strerror or e})') from None


def read_id_value_file(path: Path, what: str, *, int_values: bool = False) -> Dict[int, str]:
    """Read a CUB-style ``<id> <value>`` file into an ordered {id: value} dict, with a clear error naming
    the file and line for anything that is not such a line (a truncated download, a wrong file)."""
    out: Dict[int, str] = {}
    for lineno, line in enumerate(read_text(path, what).split('\n'), 1):
        if not line.strip():
            continue
        parts = line.split(None, 1)
        if len(parts) != 2 or not parts[0].isdigit() or (int_values and not parts[1].strip().isdigit()):
            expected = '<id> <number>' if int_values else '<id> <value>'
            raise PrepareError(
                f'{path}, line {lineno}: expected "{expected}", got {line.rstrip()!r} '
                f'(is the file truncated? extract it again from the archive)')
        key = int(parts[0])
        if key in out:
            raise PrepareError(f'{path}, line {lineno}: id {key} appears twice (the file is damaged)')
        out[key] = parts[1].strip()
    if not out:
        raise PrepareError(f'{path} is empty (the file is truncated; extract it again from the archive)')
    return out


def lists_lacking_entries(lists: Dict[str, Collection]) -> List[Tuple[str, list, List[str]]]:
    """Lists that should hold the same entries (name -> entries): for each one lacking entries another holds,
    ``(its name, the sorted missing entries, the names of the lists that hold them)``."""
    union = set().union(*lists.values())
    out = []
    for name, have in lists.items():
        missing = sorted(union - set(have))
        if missing:
            holders = [o for o, other in lists.items() if o != name and not set(other).isdisjoint(missing)]
            out.append((name, missing, holders))
    return out


# ----------------------------------------------------------------------------------------------------------
# message parts

def id_ranges(ids: Sequence[int], limit: int = 6) -> str:
    """Sorted ids as compact ranges for a message: ``[3, 4, 5, 9]`` -> ``'3-5, 9'`` (at most ``limit``
    ranges, then how many more ids)."""
    ids = sorted(ids)
    ranges: List[Tuple[int, int]] = []
    for i in ids:
        if ranges and i == ranges[-1][1] + 1:
            ranges[-1] = (ranges[-1][0], i)
        else:
            ranges.append((i, i))
    shown = ', '.join(str(a) if a == b else f'{a}-{b}' for a, b in ranges[:limit])
    if len(ranges) > limit:
        rest = sum(b - a + 1 for a, b in ranges[limit:])
        shown += f', ... ({rest} more)'
    return shown


def list_names(names: Sequence[str], limit: int = 3) -> str:
    """The first ``limit`` names, comma-separated, then how many more (for a message)."""
    shown = ', '.join(names[:limit])
    return shown + (f' and {len(names) - limit} more' if len(names) > limit else '')


def list_paths(paths: Sequence[str]) -> str:
    """One indented line per path, the first ten, then how many more (for a message)."""
    shown = '\n'.join(f'  {p}' for p in paths[:_MAX_LISTED])
    more = f'\n  ... and {len(paths) - _MAX_LISTED} more' if len(paths) > _MAX_LISTED else ''
    return shown + more


# ----------------------------------------------------------------------------------------------------------
# the images

def check_sources(listing: Listing) -> int:
    """Every listed image must exist as a file, be listed once, and land at a distinct place in the tree;
    returns their total size in bytes."""
    missing, total = [], 0
    by_path: Dict[str, Sample] = {}
    by_target: Dict[Tuple[str, int, str], Sample] = {}
    for s in listing.samples:
        if s.path in by_path:
            raise PrepareError(f'{s.path} is listed twice ({by_path[s.path].listed_in} and {s.listed_in})')
        by_path[s.path] = s
        key = (s.split, s.label, s.name)
        if key in by_target:
            raise PrepareError(
                f'{s.path} and {by_target[key].path} would both become '
                f'{s.split}/{listing.folder_names[s.label]}/{s.name}')
        by_target[key] = s
        try:
            st = os.stat(s.path)
        except OSError:
            missing.append(s)
            continue
        if not stat.S_ISREG(st.st_mode):
            missing.append(s)
            continue
        total += st.st_size
    if missing:
        files = sorted({m.listed_in for m in missing})
        raise PrepareError(
            f'{len(missing)} image(s) listed in {", ".join(files)} are missing (or not files):\n'
            f'{list_paths([m.path for m in missing])}\n'
            f'(an incomplete download or extraction? extract the image archive again)')
    return total
