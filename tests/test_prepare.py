""" `timm-camaug prepare cub|cars|aircraft SRC DST` on miniature trees in the exact official formats,
written here (a few classes, a few tiny JPEGs each; Cars' .mat files with scipy), checked against timm's
folder reader and torchvision's StanfordCars / FGVCAircraft readers. """
import errno
import json
import os
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from timm_camaug import cli
from timm_camaug.datasets import prepare_dataset, read_listing, tree
from timm_camaug.datasets.listing import PrepareError, class_folder_names, id_ranges, safe_name

# ---------------------------------------------------------------------------------------------------------
# miniature official trees

CUB_CLASSES = ['Black_footed_Albatross', 'Laysan_Albatross', 'Sooty_Albatross']
CARS_CLASSES = ['Ram C/V Cargo Van Minivan 2012', 'AM General Hummer SUV 2000', 'Acura RL Sedan 2012']
# (variant, family, manufacturer), in variants.txt order (not alphabetical)
AIRCRAFT = [
    ('707-320', 'Boeing 707', 'Boeing'),
    ('F/A-18', 'F/A-18', 'McDonnell Douglas'),
    ('F-16A/B', 'F-16', 'Lockheed Martin'),
    ('Falcon 2000', 'Falcon 2000', 'Dassault Aviation'),
    ('737-200', 'Boeing 737', 'Boeing'),
]
BANNER = 20


def _jpeg(path: Path, color, size=(24, 18), mode='RGB', banner=False):
    """A small solid-colour JPEG; with ``banner`` its bottom 20 rows are white with a black stripe."""
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    arr = np.empty((h, w, 3), np.uint8)
    arr[:] = color
    if banner:
        arr[h - BANNER:] = 255
        arr[h - 12:h - 8, 2:w - 2] = 0
    img = Image.fromarray(arr)
    if mode != 'RGB':
        img = img.convert(mode)
    img.save(path, 'JPEG', quality=95)


def _color(i: int):
    return (40 + 50 * (i % 4), 200 - 30 * (i % 5), 60 + 40 * (i % 3))


def _lines(path: Path, lines):
    path.write_text(''.join(f'{line}\n' for line in lines), encoding='utf-8')


def make_cub(parent: Path, per_class=4, train_per_class=2, val_classes=None):
    """``parent/CUB_200_2011`` in the official format; returns (root, {relative image path: (label, split)}).
    The first image is grayscale, as some CUB images are. ``val_classes`` limits the test images to those."""
    root = parent / 'CUB_200_2011'
    truth, images, labels, split, boxes = {}, [], [], [], []
    image_id = 0
    for c, name in enumerate(CUB_CLASSES):
        folder = f'{c + 1:03d}.{name}'
        for j in range(per_class):
            image_id += 1
            is_train = j % 2 == 1 if train_per_class == per_class // 2 else j < train_per_class
            if not is_train and val_classes is not None and c not in val_classes:
                is_train = True
            rel = f'{folder}/{name.replace("_a", "_A")}_{j + 1:04d}_{7960 + image_id}.jpg'
            _jpeg(root / 'images' / rel, _color(image_id), mode='L' if image_id == 1 else 'RGB')
            images.append(f'{image_id} {rel}')
            labels.append(f'{image_id} {c + 1}')
            split.append(f'{image_id} {int(is_train)}')
            boxes.append(f'{image_id} 1.0 2.0 10.0 8.0')
            truth[rel] = (c, 'train' if is_train else 'val')
    _lines(root / 'classes.txt', [f'{c + 1} {c + 1:03d}.{n}' for c, n in enumerate(CUB_CLASSES)])
    _lines(root / 'images.txt', images)
    _lines(root / 'image_class_labels.txt', labels)
    _lines(root / 'train_test_split.txt', split)
    _lines(root / 'bounding_boxes.txt', boxes)
    (root / 'README').write_text('CUB-200-2011 (miniature)\n')
    return root, truth


def _savemat_annotations(path: Path, rows, fields):
    """rows: dicts with the given fields, saved as MATLAB's 1xN struct array ``annotations``."""
    import scipy.io
    a = np.zeros((1, len(rows)), dtype=[(f, 'O') for f in fields])
    for i, row in enumerate(rows):
        for f in fields:
            v = row[f]
            a[0, i][f] = np.array([v]) if isinstance(v, str) else np.array([[v]], dtype=np.uint16)
    scipy.io.savemat(str(path), {'annotations': a})


def _class_names_cell(names):
    return np.array(names, dtype=object).reshape(1, -1)


def make_cars(parent: Path, layout='devkit', train_per_class=2, test_per_class=2):
    """Stanford Cars in one of the layouts users have; returns (root, {(split, file name): label}).

    'devkit': car_devkit.tgz + cars_{train,test}.tgz unpacked into ``parent``, the labelled test file kept
    inside devkit/; 'torchvision': ``parent/stanford_cars`` with the labelled test file beside devkit/;
    'nested': a Kaggle copy with car_devkit/devkit/ and cars_train/cars_train/; 'all_in_one':
    cars_annos.mat + car_ims/.
    """
    import scipy.io
    root = parent / 'stanford_cars' if layout == 'torchvision' else parent
    root.mkdir(parents=True, exist_ok=True)
    bbox = dict(bbox_x1=1, bbox_y1=2, bbox_x2=20, bbox_y2=15)
    truth = {}
    if layout == 'all_in_one':
        rows, n = [], 0
        for test in (0, 1):
            for c in range(len(CARS_CLASSES)):
                for _ in range(test_per_class if test else train_per_class):
                    n += 1
                    rel = f'car_ims/{n:06d}.jpg'
                    _jpeg(root / rel, _color(n))
                    rows.append(dict(relative_im_path=rel, **bbox, **{'class': c + 1}, test=test))
                    truth[('val' if test else 'train', f'{n:06d}.jpg')] = c
        import scipy.io
        fields = ['relative_im_path', 'bbox_x1', 'bbox_y1', 'bbox_x2', 'bbox_y2', 'class', 'test']
        a = np.zeros((1, len(rows)), dtype=[(f, 'O') for f in fields])
        for i, row in enumerate(rows):
            for f in fields:
                v = row[f]
                a[0, i][f] = np.array([v]) if isinstance(v, str) else np.array([[v]], dtype=np.uint16)
        scipy.io.savemat(str(root / 'cars_annos.mat'),
                         {'annotations': a, 'class_names': _class_names_cell(CARS_CLASSES)})
        return root, truth

    devkit = root / ('car_devkit/devkit' if layout == 'nested' else 'devkit')
    devkit.mkdir(parents=True)
    scipy.io.savemat(str(devkit / 'cars_meta.mat'), {'class_names': _class_names_cell(CARS_CLASSES)})
    fields = ['bbox_x1', 'bbox_y1', 'bbox_x2', 'bbox_y2', 'class', 'fname']
    for split, folder, per in (('train', 'cars_train', train_per_class), ('val', 'cars_test', test_per_class)):
        images = root / folder / folder if layout == 'nested' else root / folder
        rows, n = [], 0
        for rep in range(per):
            for c in reversed(range(len(CARS_CLASSES))):  # annotation order is not class order
                n += 1
                fname = f'{n:05d}.jpg'
                _jpeg(images / fname, _color(n + (50 if split == 'val' else 0)))
                rows.append(dict(**bbox, **{'class': c + 1}, fname=fname))
                truth[(split, fname)] = c
        if split == 'train':
            _savemat_annotations(devkit / 'cars_train_annos.mat', rows, fields)
        else:
            _savemat_annotations(devkit / 'cars_test_annos.mat', rows, [f for f in fields if f != 'class'])
            where = root if layout == 'torchvision' else devkit
            _savemat_annotations(where / 'cars_test_annos_withlabels.mat', rows, fields)
    return root, truth


def make_aircraft(parent: Path, per_class=3, size=(26, 44)):
    """``parent/fgvc-aircraft-2013b`` in the official format: every image has a 20-pixel banner; per class
    one image in each of train, val, test (so trainval has 2). Returns (data dir, {image id: (variant,
    official split)})."""
    data = parent / 'fgvc-aircraft-2013b' / 'data'
    truth = {}
    split_of = ['train', 'val', 'test']
    lists = {s: [] for s in split_of}
    n = 0
    for v, (variant, family, manufacturer) in enumerate(AIRCRAFT):
        for j in range(per_class):
            n += 1
            image_id = f'{1000000 + 7919 * n:07d}'
            _jpeg(data / 'images' / f'{image_id}.jpg', _color(n), size=size, banner=True)
            s = split_of[j % 3]
            lists[s].append((image_id, variant, family, manufacturer))
            truth[image_id] = (variant, s)
    unique = lambda xs: list(dict.fromkeys(xs))  # noqa: E731
    _lines(data / 'variants.txt', [a[0] for a in AIRCRAFT])
    _lines(data / 'families.txt', unique(a[1] for a in AIRCRAFT))
    _lines(data / 'manufacturers.txt', unique(a[2] for a in AIRCRAFT))
    lists['trainval'] = lists['train'] + lists['val']
    for s, rows in lists.items():
        if s != 'trainval':
            _lines(data / f'images_{s}.txt', [r[0] for r in rows])
        for k, level in enumerate(('variant', 'family', 'manufacturer')):
            _lines(data / f'images_{level}_{s}.txt', [f'{r[0]} {r[1 + k]}' for r in rows])
    _lines(data / 'images_box.txt', [f'{i} 2 3 20 20' for i in truth])
    (data.parent / 'README.md').write_text('FGVC-Aircraft (miniature)\n')
    return data, truth


def prepare(*argv):
    return cli.main(['prepare', *map(str, argv), '--quiet'])


def timm_split(dst: Path, split: str, class_map=''):
    """The dataset train.py builds for ``split``, with its default split names (train, validation)."""
    from timm.data import create_dataset
    ds = create_dataset('', root=str(dst), split='validation' if split == 'val' else split, class_map=class_map)
    assert ds.reader.root == str(dst / split)
    return ds


def leftovers(dst: Path):
    return sorted(p.name for p in dst.parent.iterdir() if p.name.startswith(dst.name + '.'))


def drop_lines(path: Path, keep):
    """Rewrite ``path`` with only the lines ``keep(index, line)`` accepts (a file cut at a line boundary,
    or a subset made on purpose)."""
    lines = path.read_text().splitlines()
    _lines(path, [line for i, line in enumerate(lines) if keep(i, line)])


def snapshot(root: Path):
    """Every path under ``root`` with what it is (link target, file bytes or 'dir')."""
    out = {}
    for p in sorted(root.rglob('*')):
        rel = str(p.relative_to(root))
        out[rel] = ('link', os.readlink(p)) if p.is_symlink() else ('dir',) if p.is_dir() else ('file', p.read_bytes())
    return out


# ---------------------------------------------------------------------------------------------------------
# names

def test_safe_names_have_no_separators_and_keep_the_words():
    assert safe_name('F/A-18') == 'F-A-18'
    assert safe_name('F-16A/B') == 'F-16A-B'
    assert safe_name('Ram C/V Cargo Van Minivan 2012') == 'Ram_C-V_Cargo_Van_Minivan_2012'
    assert safe_name('Falcon 2000') == 'Falcon_2000'
    assert safe_name('de Havilland') == 'de_Havilland'
    assert safe_name('..\\weird: name?') == 'weird_name'
    for name in ['a/b', ' x\ty ', 'Ä<>|"*', '.hidden']:
        s = safe_name(name)
        assert s and '/' not in s and '\\' not in s and not s.startswith('.') and ' ' not in s


def test_id_ranges():
    assert id_ranges([12, 10, 11, 15]) == '10-12, 15'
    assert id_ranges([7]) == '7'
    assert id_ranges(list(range(0, 20, 2)), limit=3) == '0, 2, 4, ... (7 more)'


@pytest.mark.parametrize('n', [3, 100, 200, 1001])
def test_class_folders_sort_in_official_order(n):
    from timm.utils.misc import natural_key
    rng = np.random.default_rng(n)
    names = [f'{"".join(rng.choice(list("abcXYZ 9/"), 6))}{i % 7}' for i in range(n)]
    folders = class_folder_names(names)
    assert sorted(folders, key=natural_key) == folders == sorted(folders)
    assert len(set(folders)) == n
    assert folders[0].startswith('0' * max(3, len(str(n - 1))) + '_')


# ---------------------------------------------------------------------------------------------------------
# CUB

@pytest.mark.parametrize('src_is', ['dataset folder', 'parent folder'])
def test_cub_tree_loads_in_timm_with_official_split_and_order(tmp_path, capsys, src_is):
    root, truth = make_cub(tmp_path / 'dl')
    dst = tmp_path / 'data' / 'cub'
    src = root if src_is == 'dataset folder' else root.parent
    assert prepare('cub', src, dst) == 0
    out = capsys.readouterr()
    folders = ['000_Black_footed_Albatross', '001_Laysan_Albatross', '002_Sooty_Albatross']
    assert (dst / 'class_map.txt').read_text().splitlines() == folders
    meta = json.loads((dst / 'classes.json').read_text())
    assert [c['name'] for c in meta['classes']] == [f'{i + 1:03d}.{n}' for i, n in enumerate(CUB_CLASSES)]
    assert [(c['train'], c['val']) for c in meta['classes']] == [(2, 2)] * 3
    assert leftovers(dst) == []

    for split in ('train', 'val'):
        ds = timm_split(dst, split)
        reader = ds.reader
        assert reader.class_to_idx == {f: i for i, f in enumerate(folders)}
        assert len(reader.samples) == sum(1 for _, s in truth.values() if s == split)
        for path, target in reader.samples:
            assert os.path.islink(path) and os.path.isabs(os.readlink(path))
            rel = os.path.relpath(os.readlink(path), root / 'images')
            assert truth[rel] == (target, split)
        for i in range(len(ds)):
            img, _ = ds[i]
            assert img.mode == 'RGB'  # the grayscale image too (timm converts on load)
    # the summary compares with the official counts and says the miniature differs
    assert 'official' in out.out and '5,994 / 200 (train)' in out.out and '5,794 / 200 (test)' in out.out
    assert 'warning: train has 6 images in 3 classes; the official train split of CUB-200-2011 has 5,994' in out.err
    assert f'done: {dst}\ntrain with: python train.py --data-dir {dst} --num-classes 3\n' in out.out


def test_training_hint_gives_the_absolute_destination(tmp_path, capsys, monkeypatch):
    root, _ = make_cub(tmp_path / 'dl')
    monkeypatch.chdir(tmp_path)
    assert prepare('cub', 'dl', 'data/cub') == 0
    out = capsys.readouterr().out
    dst = tmp_path / 'data' / 'cub'
    assert f'-> {dst}' in out and f'done: {dst}\ntrain with: python train.py --data-dir {dst} --num-classes 3' in out


def test_cub_summary_has_no_warning_when_counts_are_official(tmp_path, capsys, monkeypatch):
    from timm_camaug.datasets import cub
    monkeypatch.setattr(cub, 'OFFICIAL_COUNTS', {'train': 6, 'val': 6, 'classes': 3})
    root, _ = make_cub(tmp_path / 'dl')
    assert prepare('cub', root, tmp_path / 'cub') == 0
    out = capsys.readouterr()
    assert 'warning' not in out.err and 'differs' not in out.out
    assert out.out.count(' ok') == 2


def test_classes_missing_from_val_get_a_class_map_that_keeps_labels_consistent(tmp_path, capsys):
    root, truth = make_cub(tmp_path / 'dl', val_classes={0, 2})  # class 1 only in train
    dst = tmp_path / 'cub'
    assert prepare('cub', root, dst) == 0
    out = capsys.readouterr()
    assert f'--class-map {dst / "class_map.txt"}' in out.err and '--num-classes 3' in out.err
    assert f'--class-map {dst / "class_map.txt"}' in out.out
    # without the map timm would number val's two folders 0 and 1; with it, labels are the official ones
    assert timm_split(dst, 'val').reader.class_to_idx == {'000_Black_footed_Albatross': 0, '002_Sooty_Albatross': 1}
    for split in ('train', 'val'):
        for path, target in timm_split(dst, split, class_map=str(dst / 'class_map.txt')).reader.samples:
            assert truth[os.path.relpath(os.readlink(path), root / 'images')][0] == target


def test_link_modes(tmp_path):
    root, _ = make_cub(tmp_path / 'project' / 'downloads')
    files = sorted((root / 'images').rglob('*.jpg'))

    def outputs(dst):
        return sorted(p for p in dst.rglob('*.jpg'))

    # relative links survive moving the download and the tree together
    dst = tmp_path / 'project' / 'data' / 'cub'
    assert prepare('cub', root, dst, '--link', 'relative') == 0
    links = outputs(dst)
    assert len(links) == len(files) and all(p.is_symlink() and not os.path.isabs(os.readlink(p)) for p in links)
    shutil.move(str(tmp_path / 'project'), str(tmp_path / 'moved'))
    moved = tmp_path / 'moved' / 'data' / 'cub'
    assert all(p.resolve().is_file() for p in outputs(moved))
    root = tmp_path / 'moved' / 'downloads' / 'CUB_200_2011'

    # hard links share the inode; copies are independent regular files with the same bytes
    dst = tmp_path / 'hard'
    assert prepare('cub', root, dst, '--link', 'hardlink') == 0
    by_name = {p.name: p for p in (root / 'images').rglob('*.jpg')}
    for p in outputs(dst):
        assert not p.is_symlink() and p.stat().st_ino == by_name[p.name].stat().st_ino
    dst = tmp_path / 'copies'
    assert prepare('cub', root, dst, '--copy') == 0
    for p in outputs(dst):
        assert not p.is_symlink() and p.stat().st_ino != by_name[p.name].stat().st_ino
        assert p.read_bytes() == by_name[p.name].read_bytes()


def test_relative_links_through_a_symlinked_destination_parent(tmp_path):
    root, _ = make_cub(tmp_path / 'dl')
    (tmp_path / 'disk' / 'deep' / 'data').mkdir(parents=True)
    (tmp_path / 'data').symlink_to(tmp_path / 'disk' / 'deep' / 'data')  # data/ lives elsewhere
    dst = tmp_path / 'data' / 'cub'
    assert prepare('cub', root, dst, '--link', 'relative') == 0
    links = list(dst.rglob('*.jpg'))
    assert len(links) == 12
    for p in links:
        assert not os.path.isabs(os.readlink(p))
        assert p.resolve().is_file() and p.resolve().parent.parent == (root / 'images').resolve()


def test_python_api_and_progress_fallback_without_tqdm(tmp_path, capsys, monkeypatch):
    from timm_camaug.datasets import prepare_dataset
    monkeypatch.setitem(sys.modules, 'tqdm', None)  # import tqdm -> ImportError
    root, _ = make_cub(tmp_path / 'dl')
    result = prepare_dataset('cub', root.parent, tmp_path / 'cub', workers=1)
    assert (result.images('train'), result.images('val'), result.classes('train')) == (6, 6, 3)
    err = capsys.readouterr().err
    assert 'cub: linking: 12 images' in err and '100% (12/12)' in err


# ---------------------------------------------------------------------------------------------------------
# Stanford Cars

@pytest.mark.parametrize('layout', ['devkit', 'torchvision', 'nested', 'all_in_one'])
def test_cars_layouts(tmp_path, layout):
    pytest.importorskip('scipy.io')
    root, truth = make_cars(tmp_path / 'dl', layout)
    src = tmp_path / 'dl'  # the folder users unpack into (torchvision: the parent of stanford_cars)
    dst = tmp_path / 'data' / 'cars'
    assert prepare('cars', src, dst) == 0
    folders = ['000_Ram_C-V_Cargo_Van_Minivan_2012', '001_AM_General_Hummer_SUV_2000', '002_Acura_RL_Sedan_2012']
    assert (dst / 'class_map.txt').read_text().splitlines() == folders
    assert [c['name'] for c in json.loads((dst / 'classes.json').read_text())['classes']] == CARS_CLASSES
    found = {}
    for split in ('train', 'val'):
        reader = timm_split(dst, split).reader
        assert reader.class_to_idx == {f: i for i, f in enumerate(folders)}
        for path, target in reader.samples:
            found[(split, os.path.basename(os.readlink(path)))] = target
    assert found == truth

    if layout == 'torchvision':  # the same samples as torchvision's own reader of this layout
        from torchvision.datasets import StanfordCars
        for split, tv_split in (('train', 'train'), ('val', 'test')):
            tv = StanfordCars(str(src), split=tv_split)
            assert tv.classes == CARS_CLASSES
            assert {(os.path.basename(p), t) for p, t in tv._samples} == {
                (f, t) for (s, f), t in found.items() if s == split}


def test_cars_without_labelled_test_file(tmp_path, capsys):
    pytest.importorskip('scipy.io')
    root, _ = make_cars(tmp_path / 'dl', 'devkit')
    (root / 'devkit' / 'cars_test_annos_withlabels.mat').unlink()
    assert prepare('cars', root, tmp_path / 'cars') == 1
    err = capsys.readouterr().err
    assert 'test labels not found: put cars_test_annos_withlabels.mat in' in err
    assert 'devkit/cars_test_annos.mat has no labels' in err
    # the unlabelled list saved under the labelled name
    shutil.copy(root / 'devkit' / 'cars_test_annos.mat', root / 'cars_test_annos_withlabels.mat')
    assert prepare('cars', root, tmp_path / 'cars') == 1
    err = capsys.readouterr().err
    assert 'cars_test_annos_withlabels.mat has no class labels (it is the unlabelled test list)' in err
    assert not (tmp_path / 'cars').exists()


def test_cars_annos_without_car_ims_points_to_the_devkit(tmp_path, capsys):
    pytest.importorskip('scipy.io')
    root, _ = make_cars(tmp_path / 'dl', 'all_in_one')
    shutil.rmtree(root / 'car_ims')
    (root / 'cars_train').mkdir()
    assert prepare('cars', root, tmp_path / 'cars') == 1
    err = capsys.readouterr().err
    assert 'lists images in car_ims/, which is not in' in err and 'put devkit/ (car_devkit.tgz)' in err


def test_cars_truncated_mat_file(tmp_path, capsys):
    pytest.importorskip('scipy.io')
    root, _ = make_cars(tmp_path / 'dl', 'devkit')
    annos = root / 'devkit' / 'cars_train_annos.mat'
    annos.write_bytes(annos.read_bytes()[:200])
    assert prepare('cars', root, tmp_path / 'cars') == 1
    err = capsys.readouterr().err
    assert f'error: cannot read {annos}' in err and 'truncated' in err


def test_cars_needs_scipy_and_says_so(tmp_path, capsys, monkeypatch):
    pytest.importorskip('scipy.io')
    root, _ = make_cars(tmp_path / 'dl', 'devkit')
    monkeypatch.setitem(sys.modules, 'scipy', None)
    monkeypatch.setitem(sys.modules, 'scipy.io', None)
    assert prepare('cars', root, tmp_path / 'cars') == 1
    assert 'error: reading the Stanford Cars .mat files needs scipy: pip install scipy' in capsys.readouterr().err


def test_cars_class_out_of_range(tmp_path, capsys):
    pytest.importorskip('scipy.io')
    import scipy.io
    root, _ = make_cars(tmp_path / 'dl', 'devkit')
    scipy.io.savemat(str(root / 'devkit' / 'cars_meta.mat'), {'class_names': _class_names_cell(CARS_CLASSES[:2])})
    assert prepare('cars', root, tmp_path / 'cars') == 1
    assert 'cars_train_annos.mat: annotation 1 has class 3, outside 1..2' in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------
# FGVC-Aircraft

def test_aircraft_variants_with_banner_cropped(tmp_path, capsys):
    data, truth = make_aircraft(tmp_path / 'dl')
    before = {p.name: p.read_bytes() for p in (data / 'images').iterdir()}
    dst = tmp_path / 'data' / 'aircraft'
    assert prepare('aircraft', tmp_path / 'dl', dst) == 0
    out = capsys.readouterr().out
    assert 'cropping the 20-pixel copyright banner: every image is written as a new JPEG' in out
    folders = ['000_707-320', '001_F-A-18', '002_F-16A-B', '003_Falcon_2000', '004_737-200']
    assert (dst / 'class_map.txt').read_text().splitlines() == folders

    from torchvision.datasets import FGVCAircraft
    for split, official in (('train', 'trainval'), ('val', 'test')):
        reader = timm_split(dst, split).reader
        assert reader.class_to_idx == {f: i for i, f in enumerate(folders)}
        tv = FGVCAircraft(str(tmp_path / 'dl'), split=official)
        tv_labels = {os.path.basename(f): t for f, t in zip(tv._image_files, tv._labels)}
        assert {os.path.basename(p): t for p, t in reader.samples} == tv_labels
        for path, target in reader.samples:
            assert not os.path.islink(path)
            with Image.open(path) as im:
                assert im.format == 'JPEG' and im.size == (26, 44 - BANNER)
                arr = np.asarray(im.convert('RGB')).astype(int)
            image_id = os.path.basename(path)[:-4]
            with Image.open(data / 'images' / f'{image_id}.jpg') as im:
                src = np.asarray(im.convert('RGB')).astype(int)
            assert src[-8:].mean() > 240  # the banner is there in the source...
            diff = np.abs(arr - src[:-BANNER])  # ... and the rest is what the crop keeps (up to re-encoding)
            # away from the cut the pixels are the source's; near it JPEG's chroma bleed from the banner changes
            assert diff[:16].max() <= 3 and diff.max() <= 16 and diff.mean() < 2
            assert (np.abs(arr - 255).max(axis=-1) > 40).all()  # no banner row left
            assert truth[image_id][0] == AIRCRAFT[target][0]
    assert {p.name: p.read_bytes() for p in (data / 'images').iterdir()} == before  # sources untouched


@pytest.mark.parametrize('level, expected', [
    ('family', ['000_Boeing_707', '001_F-A-18', '002_F-16', '003_Falcon_2000', '004_Boeing_737']),
    ('manufacturer', ['000_Boeing', '001_McDonnell_Douglas', '002_Lockheed_Martin', '003_Dassault_Aviation']),
])
def test_aircraft_levels_and_keep_banner(tmp_path, capsys, level, expected):
    data, truth = make_aircraft(tmp_path / 'dl')
    dst = tmp_path / 'aircraft'
    assert prepare('aircraft', data.parent, dst, '--level', level, '--keep-banner') == 0
    out = capsys.readouterr()
    assert f'FGVC-Aircraft ({level} level)' in out.out and 'absolute symbolic links' in out.out
    assert f'in {len(expected)} classes; the official trainval split of FGVC-Aircraft has 6,667 in ' \
           f'{70 if level == "family" else 30}' in out.err
    assert (dst / 'class_map.txt').read_text().splitlines() == expected
    col = {'family': 1, 'manufacturer': 2}[level]
    names = {a[0]: a[col] for a in AIRCRAFT}
    for split in ('train', 'val'):
        for path, target in timm_split(dst, split).reader.samples:
            assert os.path.islink(path)
            with Image.open(path) as im:
                assert im.size == (26, 44)
            image_id = os.path.basename(path)[:-4]
            assert safe_name(names[truth[image_id][0]]) == expected[target].split('_', 1)[1]


def test_aircraft_image_too_small_or_broken_for_crop(tmp_path, capsys):
    data, _ = make_aircraft(tmp_path / 'dl')
    images = sorted((data / 'images').iterdir())
    _jpeg(images[0], (1, 2, 3), size=(30, 20))
    images[1].write_bytes(b'not a jpeg')
    assert prepare('aircraft', tmp_path / 'dl', tmp_path / 'aircraft') == 1
    err = capsys.readouterr().err
    assert '2 image(s) cannot be read' in err
    assert f'{images[0]}: 30x20 pixels: too small to crop the 20-pixel banner' in err
    assert f'{images[1]}: UnidentifiedImageError' in err
    assert not (tmp_path / 'aircraft').exists() and leftovers(tmp_path / 'aircraft') == []


# ---------------------------------------------------------------------------------------------------------
# bad input

def test_missing_label_file(tmp_path, capsys):
    root, _ = make_cub(tmp_path / 'dl')
    (root / 'image_class_labels.txt').unlink()
    assert prepare('cub', root.parent, tmp_path / 'cub') == 1
    assert f'error: CUB labels image_class_labels.txt not found: {root / "image_class_labels.txt"}' in \
        capsys.readouterr().err
    assert not (tmp_path / 'cub').exists()


@pytest.mark.parametrize('cut, message', [
    ('lines', 'image_class_labels.txt lacks 3 image id(s) that images.txt and train_test_split.txt list: 10-12; '
              'all after its last id, 9: image_class_labels.txt is probably truncated\n'),
    ('mid-line', 'image_class_labels.txt, line 12: expected "<id> <number>", got \'12\''),
])
def test_truncated_label_file(tmp_path, capsys, cut, message):
    root, _ = make_cub(tmp_path / 'dl')
    path = root / 'image_class_labels.txt'
    text = path.read_text()
    path.write_text(text[:text.index('\n10 ')] + '\n' if cut == 'lines' else text[:text.rindex(' ')])
    assert prepare('cub', root, tmp_path / 'cub') == 1
    err = capsys.readouterr().err
    assert message in err and str(path) in err


@pytest.mark.parametrize('truncated', ['images.txt', 'train_test_split.txt'])
def test_cub_image_list_cut_at_a_line_boundary_is_named_not_made_a_subset(tmp_path, truncated):
    root, _ = make_cub(tmp_path / 'dl')
    drop_lines(root / truncated, lambda i, line: i < 8)  # ids 1-8 of 12 left
    others = ' and '.join(f for f in ('images.txt', 'image_class_labels.txt', 'train_test_split.txt')
                          if f != truncated)
    with pytest.raises(PrepareError, match=re.escape(
            f'{root / truncated} lacks 4 image id(s) that {others} list: 9-12; all after its last id, 8: '
            f'{truncated} is probably truncated\nextract it again from CUB_200_2011.tgz')):
        prepare_dataset('cub', root, tmp_path / 'cub')
    assert not (tmp_path / 'cub').exists()


def test_cub_ids_missing_inside_a_file_and_in_two_files(tmp_path):
    root, _ = make_cub(tmp_path / 'dl')
    drop_lines(root / 'image_class_labels.txt', lambda i, line: not line.startswith(('3 ', '4 ')))
    drop_lines(root / 'images.txt', lambda i, line: i < 11)
    with pytest.raises(PrepareError) as e:
        read_listing('cub', root)
    msg = str(e.value)
    assert f'{root / "images.txt"} lacks 1 image id(s) that image_class_labels.txt and train_test_split.txt ' \
           f'list: 12; all after its last id, 11: images.txt is probably truncated\n' in msg
    assert f'{root / "image_class_labels.txt"} lacks 2 image id(s) that images.txt and train_test_split.txt ' \
           f'list: 3-4; image_class_labels.txt is damaged or edited\nextract them again' in msg


def test_cub_subset_made_on_purpose_is_prepared_with_a_warning(tmp_path, capsys):
    root, truth = make_cub(tmp_path / 'dl')
    for name in ('images.txt', 'image_class_labels.txt', 'train_test_split.txt'):
        drop_lines(root / name, lambda i, line: int(line.split()[0]) % 4 != 0)  # the same 3 ids from each
    assert prepare('cub', root, tmp_path / 'cub') == 0
    assert len(list((tmp_path / 'cub').rglob('*.jpg'))) == 9
    assert 'warning: train has ' in capsys.readouterr().err


def test_cub_class_list_cut_short(tmp_path):
    root, _ = make_cub(tmp_path / 'dl')
    drop_lines(root / 'classes.txt', lambda i, line: i < 2)
    with pytest.raises(PrepareError, match=re.escape(
            f'{root / "image_class_labels.txt"}: image 9 has class 3, which {root / "classes.txt"} does not list; '
            f'classes.txt is probably truncated (it ends at class 2)')):
        read_listing('cub', root)


def test_truncated_aircraft_list(tmp_path, capsys):
    data, _ = make_aircraft(tmp_path / 'dl')
    path = data / 'images_variant_test.txt'
    path.write_text(path.read_text()[:-3])  # "... 737-200\n" -> "... 737-2"
    assert prepare('aircraft', tmp_path / 'dl', tmp_path / 'aircraft') == 1
    assert f"{path}, line 5: variant '737-2' is not in {data / 'variants.txt'}; images_variant_test.txt is " \
           f"probably truncated (its last line is cut short): extract images_variant_test.txt and variants.txt " \
           f"again" in capsys.readouterr().err


@pytest.mark.parametrize('level, class_file, cut', [
    ('variant', 'variants.txt', 'lines'), ('variant', 'variants.txt', 'mid-line'),
    ('family', 'families.txt', 'lines'), ('manufacturer', 'manufacturers.txt', 'lines'),
])
def test_truncated_aircraft_class_list_is_blamed_not_the_image_list(tmp_path, level, class_file, cut):
    data, _ = make_aircraft(tmp_path / 'dl')
    path = data / class_file
    text = path.read_text()
    path.write_text(text[:text.rindex('\n', 0, -1) + 1] if cut == 'lines' else text[:-4])  # last name gone / cut
    kept = path.read_text().splitlines()
    n = {'variant': 100, 'family': 70, 'manufacturer': 30}[level]
    with pytest.raises(PrepareError, match=re.escape(
            f'is not in {path}; {class_file} is probably truncated (it lists {len(kept)} of the {n} {level}s and '
            f'ends at {kept[-1]!r}): extract images_{level}_trainval.txt and {class_file} again')):
        read_listing('aircraft', data.parent, level=level)


def test_aircraft_list_cut_at_a_line_boundary_is_named_not_made_a_subset(tmp_path):
    data, _ = make_aircraft(tmp_path / 'dl')
    path = data / 'images_variant_test.txt'
    ids = [line.split()[0] for line in path.read_text().splitlines()]
    drop_lines(path, lambda i, line: i < 3)
    with pytest.raises(PrepareError, match=re.escape(
            f'{path} lacks 2 image id(s) that images_test.txt and images_family_test.txt and '
            f'images_manufacturer_test.txt list ({ids[3]}, {ids[4]}): images_variant_test.txt is probably '
            f'truncated\nextract it again from fgvc-aircraft-2013b.tar.gz')):
        read_listing('aircraft', data.parent)
    # the id-only list cut short is named the same way, also when the level's list is the complete one
    _lines(path, [f'{i} x' for i in ids])  # restore the ids (labels do not matter for the other levels)
    ref = data / 'images_test.txt'
    drop_lines(ref, lambda i, line: i > 0)
    with pytest.raises(PrepareError, match=re.escape(
            f'{ref} lacks 1 image id(s) that images_family_test.txt and images_variant_test.txt and '
            f'images_manufacturer_test.txt list ({ids[0]}): images_test.txt is probably truncated')):
        read_listing('aircraft', data.parent, level='family')


def test_aircraft_subset_made_on_purpose_is_prepared(tmp_path):
    data, _ = make_aircraft(tmp_path / 'dl')
    for path in data.glob('images_*test.txt'):
        drop_lines(path, lambda i, line: i % 2 == 0)
    listing = read_listing('aircraft', data.parent, keep_banner=True)
    assert sum(s.split == 'val' for s in listing.samples) == 3


def test_cars_labelled_test_list_that_lacks_test_images(tmp_path):
    pytest.importorskip('scipy.io')
    root, truth = make_cars(tmp_path / 'dl', 'torchvision')
    labelled = root / 'cars_test_annos_withlabels.mat'
    rows = [dict(bbox_x1=1, bbox_y1=2, bbox_x2=20, bbox_y2=15, fname=f, **{'class': c + 1})
            for (s, f), c in sorted(truth.items()) if s == 'val'][:-2]
    _savemat_annotations(labelled, rows, ['bbox_x1', 'bbox_y1', 'bbox_x2', 'bbox_y2', 'class', 'fname'])
    with pytest.raises(PrepareError, match=re.escape(
            f'{labelled} lacks 2 test image(s) that {root / "devkit" / "cars_test_annos.mat"} lists '
            f'(00005.jpg, 00006.jpg): cars_test_annos_withlabels.mat is incomplete')):
        read_listing('cars', root.parent)


def test_image_listed_but_absent(tmp_path, capsys):
    root, truth = make_cub(tmp_path / 'dl')
    gone = root / 'images' / sorted(truth)[3]
    gone.unlink()
    dst = tmp_path / 'cub'
    assert prepare('cub', root, dst) == 1
    err = capsys.readouterr().err
    assert f'1 image(s) listed in images.txt are missing (or not files):\n  {gone}\n' in err
    assert not dst.exists() and leftovers(dst) == []


def test_unreadable_images(tmp_path, capsys):
    root, truth = make_cub(tmp_path / 'dl')
    garbage = root / 'images' / sorted(truth)[0]
    truncated = root / 'images' / sorted(truth)[5]
    garbage.write_bytes(b'\x00' * 100)
    truncated.write_bytes(truncated.read_bytes()[:-40])
    dst = tmp_path / 'cub'
    assert prepare('cub', root, dst) == 1
    err = capsys.readouterr().err
    assert '2 image(s) cannot be read' in err
    assert f'{garbage}: UnidentifiedImageError: cannot identify image file' in err
    assert f'{truncated}: OSError: ' in err  # PIL: 'Truncated File Read' or 'image file is truncated'
    assert 'or pass --verify none to link them unchecked' in err
    assert not dst.exists() and leftovers(dst) == []
    # header checks (cheaper, finds files that are no image at all); --verify none links everything
    assert prepare('cub', root, dst, '--verify', 'header') == 1
    assert f'{garbage}: UnidentifiedImageError' in capsys.readouterr().err
    assert prepare('cub', root, dst, '--verify', 'none') == 0
    assert len(list(dst.rglob('*.jpg'))) == 12


def test_existing_destination_that_prepare_did_not_write_is_never_replaced(tmp_path, capsys):
    root, _ = make_cub(tmp_path / 'dl')
    dst = tmp_path / 'data' / 'cub'
    (dst / 'train' / 'mine').mkdir(parents=True)
    (dst / 'notes.txt').write_text('keep me')
    (tmp_path / 'data' / 'other.txt').write_text('sibling')
    before = snapshot(tmp_path / 'data')
    for extra in ([], ['--overwrite']):
        assert prepare('cub', root, dst, *extra) == 1
        assert f'error: DST {dst} exists, is not empty (it holds notes.txt, train) and is not a tree written by ' \
               f'timm-camaug prepare (it has no manifest.json); nothing in it is touched.\nChoose another DST, or ' \
               f'move its contents away yourself' in capsys.readouterr().err
    with pytest.raises(PrepareError, match='is not a tree written by timm-camaug prepare'):
        prepare_dataset('cub', root, dst, overwrite=True)
    assert snapshot(tmp_path / 'data') == before and leftovers(dst) == []
    # an empty DST is simply used
    empty = tmp_path / 'empty'
    empty.mkdir()
    assert prepare('cub', root, empty) == 0 and (empty / 'train').is_dir()


def test_overwrite_replaces_an_earlier_prepare_output_only(tmp_path, capsys):
    root, _ = make_cub(tmp_path / 'dl')
    dst = tmp_path / 'data' / 'cub'
    (tmp_path / 'data').mkdir()
    (tmp_path / 'data' / 'other.txt').write_text('sibling')
    assert prepare('cub', root, dst, '--link', 'relative') == 0
    capsys.readouterr()
    assert json.loads((dst / 'classes.json').read_text())['written_by'] == 'timm-camaug prepare'
    assert prepare('cub', root, dst) == 1
    assert f'error: DST {dst} holds an earlier prepare output; pass --overwrite to replace it' in \
        capsys.readouterr().err
    assert prepare('cub', root, dst, '--overwrite') == 0
    assert sorted(p.name for p in dst.iterdir()) == ['class_map.txt', 'classes.json', 'manifest.json', 'train', 'val']
    assert all(p.is_symlink() and os.path.isabs(os.readlink(p)) for p in dst.rglob('*.jpg'))  # the new tree
    assert sorted(p.name for p in (tmp_path / 'data').iterdir()) == ['cub', 'other.txt']
    assert all(p.is_file() for p in (root / 'images').rglob('*.jpg'))  # the replaced links' targets remain
    # a tree with anything added, removed or changed: tests/test_prepare_overwrite.py


def test_destination_changed_during_the_build_is_not_replaced(tmp_path, monkeypatch):
    root, _ = make_cub(tmp_path / 'dl')
    dst = tmp_path / 'cub'
    assert prepare('cub', root, dst) == 0
    real = tree._write_class_files

    def user_adds_a_file(*a, **kw):
        (dst / 'results.csv').write_text('mine')
        return real(*a, **kw)

    monkeypatch.setattr(tree, '_write_class_files', user_adds_a_file)
    with pytest.raises(PrepareError, match=re.escape('(results.csv was added (a file of 4 bytes))')):
        prepare_dataset('cub', root, dst, overwrite=True, progress=False)
    assert (dst / 'results.csv').read_text() == 'mine' and (dst / 'train').is_dir() and leftovers(dst) == []


def test_destination_that_is_a_file_or_holds_the_source(tmp_path, capsys):
    root, _ = make_cub(tmp_path / 'dl')
    (tmp_path / 'file').write_text('x')
    assert prepare('cub', root, tmp_path / 'file', '--overwrite') == 1
    assert 'exists and is not a directory' in capsys.readouterr().err
    assert prepare('cub', root, tmp_path / 'dl', '--overwrite') == 1
    assert f'DST {tmp_path / "dl"} contains the dataset being read' in capsys.readouterr().err
    assert (root / 'images.txt').is_file()
    (tmp_path / 'link').symlink_to(tmp_path / 'dl')
    assert prepare('cub', root, tmp_path / 'link', '--overwrite') == 1
    assert 'is a symbolic link' in capsys.readouterr().err


def test_failure_mid_build_keeps_the_old_tree_and_a_rerun_completes(tmp_path, capsys, monkeypatch):
    root, _ = make_cub(tmp_path / 'dl')
    dst = tmp_path / 'cub'
    assert prepare('cub', root, dst, '--link', 'relative') == 0
    old = snapshot(dst)
    real_symlink, calls = os.symlink, []

    def failing_symlink(src, target, *a, **kw):
        calls.append(target)
        if len(calls) == 5:
            raise OSError(errno.ENOSPC, 'No space left on device')
        return real_symlink(src, target, *a, **kw)

    monkeypatch.setattr(os, 'symlink', failing_symlink)
    assert prepare('cub', root, dst, '--overwrite') == 1
    assert 'No space left on device' in capsys.readouterr().err
    assert snapshot(dst) == old and leftovers(dst) == []

    # an interrupt (Ctrl-C) at the very end also leaves nothing half-made
    monkeypatch.setattr(os, 'symlink', real_symlink)

    def interrupted(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(tree, '_write_class_files', interrupted)
    assert prepare('cub', root, dst, '--overwrite') == 130
    assert snapshot(dst) == old and leftovers(dst) == []

    monkeypatch.undo()
    assert prepare('cub', root, dst, '--overwrite') == 0
    assert sorted(p.name for p in dst.iterdir()) == ['class_map.txt', 'classes.json', 'manifest.json', 'train', 'val']
    assert all(os.path.isabs(os.readlink(p)) for p in dst.rglob('*.jpg')) and leftovers(dst) == []


def test_leftovers_of_a_killed_run_are_reported_not_deleted(tmp_path, capsys):
    root, _ = make_cub(tmp_path / 'dl')
    stale = tmp_path / 'cub.tmp-k1ll3d'
    (stale / 'train').mkdir(parents=True)
    assert prepare('cub', root, tmp_path / 'cub') == 0
    assert f'leftovers of an interrupted run (safe to delete): {stale}' in capsys.readouterr().err
    assert (stale / 'train').is_dir() and (tmp_path / 'cub' / 'train').is_dir()


def test_failed_final_rename_leaves_nothing(tmp_path, capsys, monkeypatch):
    root, _ = make_cub(tmp_path / 'dl')
    dst = tmp_path / 'cub'
    real_rename = os.rename

    def rename(a, b):
        if f'{dst.name}.tmp-' in str(a):
            raise OSError(errno.EIO, 'Input/output error', str(a))
        return real_rename(a, b)

    monkeypatch.setattr(os, 'rename', rename)
    assert prepare('cub', root, dst) == 1
    assert 'Input/output error' in capsys.readouterr().err
    assert not dst.exists() and leftovers(dst) == []
    # into an existing DST (moved entry by entry) and permissions: tests/test_prepare_overwrite.py


def test_source_not_found(tmp_path, capsys):
    (tmp_path / 'empty').mkdir()
    for dataset, expected in [('cub', 'no CUB-200-2011 in'), ('cars', 'no Stanford Cars in'),
                              ('aircraft', 'no FGVC-Aircraft in')]:
        assert prepare(dataset, tmp_path / 'empty', tmp_path / dataset) == 1
        assert expected in capsys.readouterr().err
    assert prepare('cub', tmp_path / 'nowhere', tmp_path / 'cub') == 1
    assert 'is not a directory' in capsys.readouterr().err
    root, _ = make_cub(tmp_path / 'dl')
    shutil.rmtree(root / 'images')
    assert prepare('cub', root, tmp_path / 'cub') == 1
    assert f'image folder not found: {root / "images"}' in capsys.readouterr().err


def test_image_listed_twice(tmp_path, capsys):
    root, _ = make_cub(tmp_path / 'dl')
    images = root / 'images.txt'
    lines = images.read_text().splitlines()
    lines[1] = '2 ' + lines[0].split(' ', 1)[1]
    images.write_text('\n'.join(lines) + '\n')
    assert prepare('cub', root, tmp_path / 'cub') == 1
    assert 'is listed twice' in capsys.readouterr().err
