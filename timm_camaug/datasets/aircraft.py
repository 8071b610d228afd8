""" FGVC-Aircraft (Maji et al., "Fine-Grained Visual Classification of Aircraft", arXiv:1306.5151, 2013),
as ``fgvc-aircraft-2013b.tar.gz`` unpacks: ``fgvc-aircraft-2013b/data/`` with ``images/<id>.jpg``, the
class lists ``variants.txt``, ``families.txt``, ``manufacturers.txt`` (official order = file order) and
``images_<level>_<split>.txt`` lines ``<image id> <label>`` (labels contain spaces and ``/``).

Each split is also listed by ``images_<split>.txt`` (ids only) and by the other levels' files: all of them
that are present must list the same image ids, so that a list cut at a line boundary is named in an error
instead of becoming a silent subset.

The official protocol trains on ``trainval`` (6,667 images) and tests on ``test`` (3,333). Every image
has a 20-pixel copyright banner at the bottom that the dataset's README asks users to remove: it is
cropped by default, which writes new JPEG files (``keep_banner`` links the originals instead).
"""
import os
from pathlib import Path
from typing import Dict, List, Set

from .listing import Listing, PrepareError, Sample, list_names, lists_lacking_entries, read_text

__all__ = ['TITLE', 'TOP_FOLDER', 'LEVELS', 'BANNER_HEIGHT', 'OFFICIAL_IMAGES', 'locate', 'read']

TITLE = 'FGVC-Aircraft'
TOP_FOLDER = 'fgvc-aircraft-2013b'
LEVELS = {'variant': ('variants.txt', 100), 'family': ('families.txt', 70), 'manufacturer': ('manufacturers.txt', 30)}
BANNER_HEIGHT = 20
OFFICIAL_IMAGES = {'train': 6667, 'val': 3333}
SPLIT_FILES = {'train': 'trainval', 'val': 'test'}


def _is_data_dir(path: Path) -> bool:
    return path.is_dir() and (
        (path / 'variants.txt').exists() or ((path / 'images').is_dir() and any(path.glob('images_*.txt'))))


def locate(src: str) -> Path:
    """The ``data`` folder of the download: in SRC (``fgvc-aircraft-2013b``), in its child of that name,
    or SRC itself."""
    src_path = Path(os.path.abspath(src))
    if not src_path.is_dir():
        raise PrepareError(f'SRC {src_path} is not a directory')
    for cand in (src_path / 'data', src_path / TOP_FOLDER / 'data', src_path):
        if _is_data_dir(cand):
            return cand
    raise PrepareError(
        f'no {TITLE} in {src_path}: expected {src_path}/data/variants.txt or '
        f'{src_path}/{TOP_FOLDER}/data/variants.txt (unpack fgvc-aircraft-2013b.tar.gz there)')


def _read_classes(path: Path, level: str) -> List[str]:
    classes = [line.strip() for line in read_text(path, f'FGVC-Aircraft {level} list').split('\n') if line.strip()]
    if not classes:
        raise PrepareError(f'{path} is empty (extract it again from fgvc-aircraft-2013b.tar.gz)')
    seen = set()
    for c in classes:
        if c in seen:
            raise PrepareError(f'{path} lists {c!r} twice (the file is damaged)')
        seen.add(c)
    return classes


def _unknown_class(list_file: Path, lineno: int, name: str, cut: bool, class_file: Path, classes: List[str],
                   level: str) -> PrepareError:
    """The error for a label of ``list_file`` that ``class_file`` lacks, naming the file that is probably
    at fault: the list when its last line is cut short, else the class list when it is shorter than the
    official one."""
    n_official = LEVELS[level][1]
    if cut and any(c.startswith(name) for c in classes):
        verdict = f'{list_file.name} is probably truncated (its last line is cut short)'
    elif len(classes) < n_official:
        verdict = (f'{class_file.name} is probably truncated (it lists {len(classes)} of the {n_official} '
                   f'{level}s and ends at {classes[-1]!r})')
    else:
        verdict = f'{list_file.name} and {class_file.name} do not belong together (damaged, or different releases)'
    return PrepareError(
        f'{list_file}, line {lineno}: {level} {name!r} is not in {class_file}; {verdict}: extract '
        f'{list_file.name} and {class_file.name} again from {TOP_FOLDER}.tar.gz')


def _ids(path: Path) -> Set[str]:
    """The image ids (first word of each line) of one of the split lists."""
    return {line.split(' ', 1)[0].strip() for line in read_text(path, 'FGVC-Aircraft list').split('\n') if line.strip()}


def _check_same_ids(data: Path, official: str, level: str, ids: Set[str]) -> None:
    """All lists of one split (``images_<split>.txt`` and ``images_<level>_<split>.txt`` for each level,
    those present) must hold the same image ids; a list that lacks ids the others hold is named as the
    probably truncated one."""
    lists = {f'images_{level}_{official}.txt': ids}
    for name in [f'images_{official}.txt'] + [f'images_{lv}_{official}.txt' for lv in LEVELS if lv != level]:
        if (data / name).is_file():
            lists[name] = _ids(data / name)
    problems = [f'{data / name} lacks {len(missing)} image id(s) that {" and ".join(holders)} list '
                f'({list_names(missing)}): {name} is probably truncated'
                for name, missing, holders in lists_lacking_entries(lists)]
    if problems:
        again = 'it' if len(problems) == 1 else 'them'
        raise PrepareError(
            '\n'.join(problems) + f'\nextract {again} again from {TOP_FOLDER}.tar.gz (a subset made on purpose '
            f'must drop the same ids from every images_*{official}.txt list)')


def read(src: str, level: str = 'variant', keep_banner: bool = False) -> Listing:
    """The official trainval/test split of FGVC-Aircraft at ``src`` labelled at ``level`` (variant,
    family or manufacturer)."""
    if level not in LEVELS:
        raise PrepareError(f'level must be one of {", ".join(LEVELS)}, got {level!r}')
    data = locate(src)
    class_file, n_official = LEVELS[level]
    classes = _read_classes(data / class_file, level)
    if not (data / 'images').is_dir():
        raise PrepareError(f'image folder not found: {data / "images"} (extract {TOP_FOLDER}.tar.gz completely)')
    index: Dict[str, int] = {c: i for i, c in enumerate(classes)}
    samples = []
    for split, official in SPLIT_FILES.items():
        list_file = data / f'images_{level}_{official}.txt'
        lines = read_text(list_file, f'FGVC-Aircraft {official} list').split('\n')  # ends in '' unless cut short
        ids = set()
        for lineno, raw in enumerate(lines, 1):
            line = raw.strip()
            if not line:
                continue
            parts = line.split(' ', 1)
            if len(parts) != 2 or not parts[0].isdigit() or not parts[1].strip():
                raise PrepareError(
                    f'{list_file}, line {lineno}: expected "<image id> <{level}>", got {line!r} '
                    f'(is the file truncated? extract it again)')
            image_id, name = parts[0], parts[1].strip()
            if name not in index:
                cut = lineno == len(lines)  # the last line has no line end: the file was cut there
                raise _unknown_class(list_file, lineno, name, cut, data / class_file, classes, level)
            ids.add(image_id)
            samples.append(Sample(
                path=str(data / 'images' / f'{image_id}.jpg'), split=split, label=index[name],
                name=f'{image_id}.jpg', listed_in=list_file.name))
        _check_same_ids(data, official, level, ids)
    root = data.parent if data.name == 'data' else data
    return Listing(
        dataset='aircraft', title=TITLE, root=str(root), classes=classes, samples=samples,
        official_counts={**OFFICIAL_IMAGES, 'classes': n_official}, split_names=dict(SPLIT_FILES),
        crop_bottom=0 if keep_banner else BANNER_HEIGHT, level=level)
