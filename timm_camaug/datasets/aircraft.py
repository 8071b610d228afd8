""" FGVC-Aircraft (Maji et al., "Fine-Grained Visual Classification of Aircraft", arXiv:1306.5151, 2013),
as ``fgvc-aircraft-2013b.tar.gz`` unpacks: ``fgvc-aircraft-2013b/data/`` with ``images/<id>.jpg``, the
class lists ``variants.txt``, ``families.txt``, ``manufacturers.txt`` (official order = file order) and
``images_<level>_<split>.txt`` lines ``<image id> <label>`` (labels contain spaces and ``/``).

The official protocol trains on ``trainval`` (6,667 images) and tests on ``test`` (3,333). Every image
has a 20-pixel copyright banner at the bottom that the dataset's README asks users to remove: it is
cropped by default, which writes new JPEG files (``keep_banner`` links the originals instead).
"""
import os
from pathlib import Path
from typing import Dict, List

from .common import Listing, PrepareError, Sample

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
    if not path.is_file():
        raise PrepareError(f'FGVC-Aircraft {level} list not found: {path}')
    with open(path, encoding='utf-8') as f:
        classes = [line.strip() for line in f if line.strip()]
    if not classes:
        raise PrepareError(f'{path} is empty (extract it again from fgvc-aircraft-2013b.tar.gz)')
    seen = set()
    for c in classes:
        if c in seen:
            raise PrepareError(f'{path} lists {c!r} twice (the file is damaged)')
        seen.add(c)
    return classes


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
        if not list_file.is_file():
            raise PrepareError(f'FGVC-Aircraft {official} list not found: {list_file}')
        with open(list_file, encoding='utf-8') as f:
            for lineno, line in enumerate(f, 1):
                line = line.strip()
                if not line:
                    continue
                parts = line.split(' ', 1)
                if len(parts) != 2 or not parts[0].isdigit() or not parts[1].strip():
                    raise PrepareError(
                        f'{list_file}, line {lineno}: expected "<image id> <{level}>", got {line!r} '
                        f'(is the file truncated? extract it again)')
                image_id, name = parts[0], parts[1].strip()
                if name not in index:
                    raise PrepareError(
                        f'{list_file}, line {lineno}: {level} {name!r} is not in {class_file} '
                        f'(is the file truncated? extract it again)')
                samples.append(Sample(
                    path=str(data / 'images' / f'{image_id}.jpg'), split=split, label=index[name],
                    name=f'{image_id}.jpg', listed_in=list_file.name))
    root = data.parent if data.name == 'data' else data
    return Listing(
        dataset='aircraft', title=TITLE, root=str(root), classes=classes, samples=samples,
        official_counts={**OFFICIAL_IMAGES, 'classes': n_official}, split_names=dict(SPLIT_FILES),
        crop_bottom=0 if keep_banner else BANNER_HEIGHT, level=level)
