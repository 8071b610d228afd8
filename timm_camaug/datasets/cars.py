""" Stanford Cars (Krause et al., "3D Object Representations for Fine-Grained Categorization", 3dRR 2013).

Two official layouts, as users unpack them (SRC is that folder, or its parent holding ``stanford_cars``,
torchvision's name for it):

* the devkit: ``devkit/cars_meta.mat`` (``class_names``, official order), ``devkit/cars_train_annos.mat``
  and ``cars_test_annos_withlabels.mat`` (``annotations`` with ``bbox_x1..bbox_y2``, 1-based ``class``,
  ``fname``), images in ``cars_train/`` and ``cars_test/``. The labelled test file sits beside ``devkit/``
  in torchvision's ``stanford_cars`` layout and inside it in some copies; both are found. (The devkit's own
  ``cars_test_annos.mat`` has no labels; where it is present, the labelled file must list the same test
  images, or the error names the one with fewer.) Copies that nest ``cars_train/cars_train/`` or
  ``car_devkit/devkit/`` are found too.
* all in one: ``cars_annos.mat`` (``annotations`` with ``relative_im_path``, ``class``, ``test``, plus
  ``class_names``) and ``car_ims/``.

The ``.mat`` files are read with scipy (as torchvision's ``StanfordCars`` does), imported only here.
"""
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from .listing import Listing, PrepareError, Sample, list_names

__all__ = ['TITLE', 'TOP_FOLDER', 'OFFICIAL_COUNTS', 'TEST_LABELS_FILE', 'locate', 'read']

TITLE = 'Stanford Cars'
TOP_FOLDER = 'stanford_cars'
OFFICIAL_COUNTS = {'train': 8144, 'val': 8041, 'classes': 196}
TEST_LABELS_FILE = 'cars_test_annos_withlabels.mat'
_MARKERS = ('devkit', 'car_devkit', 'cars_train', 'cars_test', 'cars_annos.mat', 'car_ims')


def _loadmat(path: Path) -> Dict[str, Any]:
    try:
        import scipy.io
    except ImportError:
        raise PrepareError('reading the Stanford Cars .mat files needs scipy: pip install scipy') from None
    if not path.is_file():
        raise PrepareError(f'{path} not found')
    try:
        return scipy.io.loadmat(str(path), squeeze_me=True)
    except Exception as e:  # scipy raises MatReadError, OSError, ValueError, IndexError, ... on damaged files
        raise PrepareError(
            f'cannot read {path} ({type(e).__name__}: {e}); is it truncated? download it again') from None


def locate(src: str) -> Path:
    """The dataset folder: SRC itself or its ``stanford_cars`` child."""
    src_path = Path(os.path.abspath(src))
    if not src_path.is_dir():
        raise PrepareError(f'SRC {src_path} is not a directory')
    for cand in (src_path, src_path / TOP_FOLDER):
        if cand.is_dir() and any((cand / m).exists() for m in _MARKERS):
            return cand
    raise PrepareError(
        f'no {TITLE} in {src_path}: expected devkit/, cars_train/ and cars_test/ (or cars_annos.mat and '
        f'car_ims/) in {src_path} or in {src_path}/{TOP_FOLDER}')


def _find_devkit(root: Path) -> Optional[Path]:
    for d in (root / 'devkit', root / 'car_devkit' / 'devkit', root / 'car_devkit'):
        if (d / 'cars_meta.mat').is_file():
            return d
    return None


def _image_dir(root: Path, name: str, archive: str) -> Path:
    d = root / name
    if (d / name).is_dir():  # some copies nest cars_train/cars_train/
        return d / name
    if not d.is_dir():
        raise PrepareError(f'image folder not found: {d} (unpack {archive} into {root})')
    return d


def _class_names(path: Path, mat: Optional[Dict[str, Any]] = None) -> List[str]:
    mat = _loadmat(path) if mat is None else mat
    if 'class_names' not in mat:
        raise PrepareError(f'{path} has no class_names (is it the right file?)')
    import numpy as np
    names = [str(n).strip() for n in np.atleast_1d(mat['class_names']).tolist()]
    if not names:
        raise PrepareError(f'{path}: class_names is empty')
    return names


def _annotations(path: Path, fields: Sequence[str], mat: Optional[Dict[str, Any]] = None):
    import numpy as np
    mat = _loadmat(path) if mat is None else mat
    if 'annotations' not in mat:
        raise PrepareError(f'{path} has no annotations (is it the right file?)')
    ann = np.atleast_1d(mat['annotations'])
    have = ann.dtype.names or ()
    if 'class' in fields and 'class' not in have and 'fname' in have:
        raise PrepareError(
            f'{path} has no class labels (it is the unlabelled test list); the test labels are in '
            f'{TEST_LABELS_FILE}, a separate download')
    missing = [f for f in fields if f not in have]
    if missing:
        raise PrepareError(f'{path}: annotations lack {", ".join(missing)} (is it the right file?)')
    return ann


def _label(value, n_classes: int, path: Path, i: int) -> int:
    try:
        c = int(value)
    except (TypeError, ValueError):
        raise PrepareError(f'{path}: annotation {i + 1} has class {value!r}, not a number') from None
    if not 1 <= c <= n_classes:
        raise PrepareError(f'{path}: annotation {i + 1} has class {c}, outside 1..{n_classes} (the class list)')
    return c - 1


def _test_labels_file(root: Path, devkit: Path) -> Path:
    cands = [root / TEST_LABELS_FILE, devkit / TEST_LABELS_FILE]
    for c in cands:
        if c.is_file():
            return c
    unlabelled = ' (devkit/cars_test_annos.mat has no labels)' if (devkit / 'cars_test_annos.mat').exists() else ''
    raise PrepareError(
        f'test labels not found: put {TEST_LABELS_FILE} in {root} or {devkit}{unlabelled}')


def _check_test_lists(labelled: Path, names: Sequence[str], devkit: Path) -> None:
    """The labelled test list must name the same images as the devkit's own unlabelled
    ``cars_test_annos.mat`` (when present): a file that lacks images the other lists is incomplete (or
    from another release), which would otherwise give a silent subset."""
    unlabelled = devkit / 'cars_test_annos.mat'
    if not unlabelled.is_file():
        return
    ann = _annotations(unlabelled, ('fname',))
    devkit_names = {str(a['fname']) for a in ann}
    labelled_names = set(names)
    for short, lacks, other in ((labelled, devkit_names - labelled_names, unlabelled),
                                (unlabelled, labelled_names - devkit_names, labelled)):
        if lacks:
            raise PrepareError(
                f'{short} lacks {len(lacks)} test image(s) that {other} lists ({list_names(sorted(lacks))}): '
                f'{short.name} is incomplete or from another copy of the dataset (both list the same '
                f'{OFFICIAL_COUNTS["val"]:,} images); get it again')


def _read_devkit(root: Path, devkit: Path) -> Listing:
    meta = devkit / 'cars_meta.mat'
    classes = _class_names(meta)
    sources = {
        'train': (devkit / 'cars_train_annos.mat', _image_dir(root, 'cars_train', 'cars_train.tgz')),
        'val': (_test_labels_file(root, devkit), _image_dir(root, 'cars_test', 'cars_test.tgz')),
    }
    samples = []
    for split, (annos, images) in sources.items():
        fnames = []
        for i, a in enumerate(_annotations(annos, ('class', 'fname'))):
            fname = str(a['fname'])
            fnames.append(fname)
            samples.append(Sample(
                path=str(images / fname), split=split, label=_label(a['class'], len(classes), annos, i),
                name=os.path.basename(fname), listed_in=annos.name))
        if split == 'val':
            _check_test_lists(annos, fnames, devkit)
    return Listing(dataset='cars', title=TITLE, root=str(root), classes=classes, samples=samples,
                   official_counts=dict(OFFICIAL_COUNTS))


def _read_all_in_one(root: Path) -> Listing:
    annos = root / 'cars_annos.mat'
    if not (root / 'car_ims').is_dir():
        raise PrepareError(
            f'{annos} lists images in car_ims/, which is not in {root} (unpack car_ims.tgz there); for '
            f'cars_train/ and cars_test/ the labels come from the devkit: put devkit/ (car_devkit.tgz) and '
            f'{TEST_LABELS_FILE} in {root}')
    mat = _loadmat(annos)
    classes = _class_names(annos, mat)
    samples = []
    for i, a in enumerate(_annotations(annos, ('relative_im_path', 'class', 'test'), mat)):
        rel = str(a['relative_im_path'])
        try:
            test = int(a['test'])
        except (TypeError, ValueError):
            raise PrepareError(f'{annos}: annotation {i + 1} has test={a["test"]!r}, expected 0 or 1') from None
        samples.append(Sample(
            path=str(root / rel), split='val' if test else 'train', label=_label(a['class'], len(classes), annos, i),
            name=os.path.basename(rel), listed_in=annos.name))
    return Listing(dataset='cars', title=TITLE, root=str(root), classes=classes, samples=samples,
                   official_counts=dict(OFFICIAL_COUNTS))


def read(src: str) -> Listing:
    """The official train/test split of the Stanford Cars download at ``src`` (see the module docstring)."""
    root = locate(src)
    devkit = _find_devkit(root)
    if devkit is not None:
        return _read_devkit(root, devkit)
    if (root / 'cars_annos.mat').is_file():
        return _read_all_in_one(root)
    raise PrepareError(
        f'no Stanford Cars annotations in {root}: expected devkit/cars_meta.mat (from car_devkit.tgz) '
        f'or cars_annos.mat')
