""" CUB-200-2011 (Wah et al., "The Caltech-UCSD Birds-200-2011 Dataset", 2011), as ``CUB_200_2011.tgz``
unpacks: ``CUB_200_2011/{classes,images,image_class_labels,train_test_split}.txt`` and ``images/``.

Every annotation file holds ``<id> <value>`` lines; ``train_test_split.txt`` marks training images with
1 and test images with 0 (the official 5,994 / 5,794 split). The three per-image files must list the same
image ids: one that lacks ids the others list was cut short, and is named in the error rather than turned
into a silent subset. Some images are grayscale: they are linked as they are (timm converts to RGB when it
loads them).
"""
import os
import re
from pathlib import Path
from typing import Dict

from .listing import (Listing, PrepareError, Sample, class_folder_names, id_ranges, lists_lacking_entries,
                      read_id_value_file)

__all__ = ['TITLE', 'TOP_FOLDER', 'OFFICIAL_COUNTS', 'locate', 'read']

TITLE = 'CUB-200-2011'
TOP_FOLDER = 'CUB_200_2011'
OFFICIAL_COUNTS = {'train': 5994, 'val': 5794, 'classes': 200}
_FILES = ('images.txt', 'image_class_labels.txt', 'train_test_split.txt', 'classes.txt')


def _looks_like_cub(path: Path) -> bool:
    return path.name == TOP_FOLDER or any((path / f).exists() for f in _FILES)


def locate(src: str) -> Path:
    """The ``CUB_200_2011`` folder: SRC itself or its child of that name."""
    src_path = Path(os.path.abspath(src))
    if not src_path.is_dir():
        raise PrepareError(f'SRC {src_path} is not a directory')
    for cand in (src_path, src_path / TOP_FOLDER):
        if cand.is_dir() and _looks_like_cub(cand):
            return cand
    raise PrepareError(
        f'no {TITLE} in {src_path}: expected {src_path}/images.txt or {src_path}/{TOP_FOLDER}/images.txt '
        f'(unpack CUB_200_2011.tgz there)')


def _check_same_ids(root: Path, tables: Dict[str, Dict[int, str]]) -> None:
    """Raise, naming the file, when one of the per-image annotation files (name -> {image id: value})
    lacks ids that another lists: cut at a line boundary, a file still parses, and only this comparison
    tells a truncated download from a deliberate subset (which removes the same ids from every file)."""
    problems = []
    for fname, missing, holders in lists_lacking_entries(tables):
        table = tables[fname]
        verdict = (f'all after its last id, {max(table)}: {fname} is probably truncated' if missing[0] > max(table)
                   else f'{fname} is damaged or edited')
        problems.append(f'{root / fname} lacks {len(missing)} image id(s) that {" and ".join(holders)} list: '
                        f'{id_ranges(missing)}; {verdict}')
    if problems:
        again = 'it' if len(problems) == 1 else 'them'
        raise PrepareError(
            '\n'.join(problems) + f'\nextract {again} again from {TOP_FOLDER}.tgz (a subset made on purpose must '
            f'drop the same ids from images.txt, image_class_labels.txt and train_test_split.txt)')


def read(src: str) -> Listing:
    """The official train/test split of the CUB-200-2011 download at ``src`` (see ``locate``)."""
    root = locate(src)
    classes = read_id_value_file(root / 'classes.txt', 'CUB class list classes.txt')
    images = read_id_value_file(root / 'images.txt', 'CUB image list images.txt')
    labels = read_id_value_file(root / 'image_class_labels.txt', 'CUB labels image_class_labels.txt', int_values=True)
    split = read_id_value_file(root / 'train_test_split.txt', 'CUB split train_test_split.txt', int_values=True)

    _check_same_ids(root, {
        'images.txt': images, 'image_class_labels.txt': labels, 'train_test_split.txt': split})

    if not (root / 'images').is_dir():
        raise PrepareError(f'image folder not found: {root / "images"} (extract CUB_200_2011.tgz completely)')
    class_ids = sorted(classes)  # official order: by class id (001..200)
    label_of = {cid: i for i, cid in enumerate(class_ids)}
    names = [classes[cid] for cid in class_ids]
    samples = []
    for image_id, rel in images.items():
        cid = int(labels[image_id])
        if cid not in label_of:
            truncated = (f'classes.txt is probably truncated (it ends at class {class_ids[-1]})'
                         if cid > class_ids[-1] else 'the two files do not belong together')
            raise PrepareError(
                f'{root / "image_class_labels.txt"}: image {image_id} has class {cid}, which '
                f'{root / "classes.txt"} does not list; {truncated} (extract it again from {TOP_FOLDER}.tgz)')
        flag = split[image_id]
        if flag not in ('0', '1'):
            raise PrepareError(
                f'{root / "train_test_split.txt"}: image {image_id} has {flag!r}; expected 1 (train) or 0 (test)')
        samples.append(Sample(
            path=str(root / 'images' / rel), split='train' if flag == '1' else 'val', label=label_of[cid],
            name=os.path.basename(rel), listed_in='images.txt'))
    # the official names carry their 1-based id ("001.Black_footed_Albatross"); folders carry the 0-based label
    folders = class_folder_names([re.sub(r'^\d+\.', '', n) for n in names])
    return Listing(
        dataset='cub', title=TITLE, root=str(root), classes=names, samples=samples,
        official_counts=dict(OFFICIAL_COUNTS), folder_names=folders)
