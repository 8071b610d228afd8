""" The synthetic fine-grained set: determinism, shapes, the part masks, the image-folder writer. """
import os

import numpy as np
import pytest
import torch

from timm_camaug.synthetic import (
    CHUNK, COLOURS, MAX_CLASSES, SyntheticFineGrained, class_names, load_part_masks, make_split, write_image_folder,
)


def test_shapes_dtypes_and_ranges():
    x, y, m = make_split('train', 40, size=48, seed=3)
    assert x.shape == (40, 3, 48, 48) and x.dtype == torch.uint8
    assert y.shape == (40,) and y.dtype == torch.int64 and int(y.min()) >= 0 and int(y.max()) < 8
    assert m.shape == (40, 48, 48) and m.dtype == torch.bool


def test_deterministic_and_independent_of_n():
    """Image i is fixed by (seed, split, i, size): asking for more images does not change the first ones,
    across a chunk boundary too."""
    a = make_split('train', 10, size=32, seed=1)
    b = make_split('train', CHUNK + 5, size=32, seed=1)
    c = make_split('train', CHUNK + 5, size=32, seed=1)
    for u, v in zip(a, b):
        assert torch.equal(u, v[:10])
    for u, v in zip(b, c):
        assert torch.equal(u, v)
    # the second chunk is not a copy of the first
    assert not torch.equal(b[0][CHUNK:CHUNK + 5], b[0][:5])


def test_splits_and_seeds_differ():
    tr = make_split('train', 8, size=32, seed=0)[0]
    va = make_split('val', 8, size=32, seed=0)[0]
    other = make_split('train', 8, size=32, seed=1)[0]
    assert not torch.equal(tr, va)
    assert not torch.equal(tr, other)


def test_part_is_a_small_head_in_the_image():
    x, y, m = make_split('val', 256, size=64, seed=0)
    area = m.flatten(1).float().mean(1)
    # the discriminative part covers a few per cent of the image (3-8 % asked; 2.5-6 % by construction)
    assert float(area.min()) > 0.02 and float(area.max()) < 0.08
    # never clipped by the border: a full disc, away from the edges
    assert not bool(m[:, 0].any() or m[:, -1].any() or m[:, :, 0].any() or m[:, :, -1].any())
    # every class is present and roughly balanced
    counts = torch.bincount(y, minlength=8)
    assert int(counts.min()) > 256 // 8 // 3


def test_head_colour_encodes_the_class():
    """Inside the head mask (below any cap) the pixel colour is the class's palette colour."""
    x, y, m = make_split('val', 64, size=64, seed=0)
    palette = torch.tensor(list(COLOURS.values()))
    rgb = x.float() / 255.0
    for i in range(16):
        mask = m[i]
        rows = mask.any(1).nonzero()[:, 0]
        lower = mask.clone()
        lower[: int(rows.float().mean().round()) + 1] = False     # the lower half of the head: never capped
        mean = rgb[i][:, lower].mean(1)
        expected = palette[int(y[i]) // 2]
        # brightness varies by +-15 % and the colour by +-0.05 per channel
        nearest = int(((palette - mean[None]) / palette.clamp_min(0.1)).abs().sum(1).argmin())
        assert nearest == int(y[i]) // 2, (i, mean, expected)


def test_capped_classes_have_a_black_cap():
    x, y, m = make_split('val', 64, size=64, seed=0)
    dark = (x.float().amax(1) < 40) & m            # near-black pixels inside the head
    has_cap = dark.flatten(1).sum(1) > 5
    assert torch.equal(has_cap, y % 2 == 1)


def test_class_names_sort_in_class_order():
    names = class_names(MAX_CLASSES)
    assert names == sorted(names) and len(set(names)) == MAX_CLASSES
    assert names[0] == '00_red_solid' and names[1] == '01_red_capped'


@pytest.mark.parametrize('kwargs, match', [
    ({'num_classes': 1}, r'num_classes must be an int in 2\.\.12'),
    ({'num_classes': 13}, r'num_classes must be an int in 2\.\.12'),
    ({'size': 8}, r'size must be an int >= 16'),
    ({'split': 'dev'}, r"unknown split 'dev'; choose one of train, val, test"),
    ({'n': -1}, r'n must be an int >= 0'),
])
def test_bad_arguments(kwargs, match):
    args = dict(split='train', n=4, size=32, seed=0, num_classes=8)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        make_split(**args)


def test_fewer_classes_use_fewer_labels():
    _, y, _ = make_split('train', 64, size=32, seed=0, num_classes=3)
    assert set(y.tolist()) <= {0, 1, 2}


def test_dataset_wrapper():
    ds = SyntheticFineGrained('val', n=6, size=32, seed=2, transform=lambda t: t.float() * 2)
    x, y, m = make_split('val', 6, size=32, seed=2)
    assert len(ds) == 6 and ds.classes == class_names(8)
    img, label = ds[3]
    assert torch.equal(img, x[3].float() * 2) and label == int(y[3])
    assert torch.equal(ds.part_masks, m)
    plain = SyntheticFineGrained('val', n=2, size=32, seed=2)
    assert float(plain[0][0].max()) <= 1.0 and plain[0][0].dtype == torch.float32


def test_write_image_folder(tmp_path):
    from PIL import Image
    root = tmp_path / 'syn'
    counts = write_image_folder(str(root), train_size=6, val_size=4, size=32, seed=5, num_classes=4)
    assert counts == {'train': 6, 'val': 4}
    assert sorted(os.listdir(root / 'train')) == class_names(4)
    masks = load_part_masks(str(root), 'val')
    x, y, m = make_split('val', 4, size=32, seed=5, num_classes=4)
    assert torch.equal(masks['masks'], m) and torch.equal(masks['labels'], y)
    for i, rel in enumerate(masks['files']):
        assert rel.split(os.sep)[0] == class_names(4)[int(y[i])]
        img = torch.from_numpy(np.array(Image.open(root / 'val' / rel))).permute(2, 0, 1)
        assert torch.equal(img, x[i])       # PNG is lossless
    # with the class map, timm's folder reader gives every file its label (classes missing from a small split
    # would otherwise shift the others) and ignores the mask files
    from timm.data import create_dataset
    ds = create_dataset('', root=str(root), split='val', class_map=str(root / 'class_map.txt'))
    got = {os.path.relpath(path, root / 'val'): label for path, label in ds.reader.samples}
    assert got == {rel: int(label) for rel, label in zip(masks['files'], y)}


def test_write_image_folder_refuses_non_empty(tmp_path):
    (tmp_path / 'train').mkdir()
    (tmp_path / 'train' / 'mine.txt').write_text('keep me')
    with pytest.raises(FileExistsError, match=r'train already exists and is not empty'):
        write_image_folder(str(tmp_path), train_size=2, val_size=2, size=32)
    assert (tmp_path / 'train' / 'mine.txt').read_text() == 'keep me'


def test_load_part_masks_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match=r'no part masks at .*part_masks_val\.pt'):
        load_part_masks(str(tmp_path), 'val')


# ---------------------------------------------------------------- the head set stays as it was (VERSION 2)

def test_head_set_is_unchanged():
    """Fingerprints of the head set as VERSION 2 made it (caches of trained models key on VERSION): labels and
    part-mask areas exactly, each image's pixel sum up to a few rounding flips."""
    from timm_camaug.synthetic import VERSION
    assert VERSION == 2
    x, y, m = make_split('train', 300, size=64, seed=0)
    assert y[:16].tolist() == [4, 7, 5, 0, 3, 3, 3, 7, 1, 3, 5, 2, 4, 7, 6, 0]
    assert m[:8].flatten(1).sum(1).tolist() == [211, 199, 160, 152, 218, 131, 162, 166]
    sums = [1603066, 1621263, 1380091, 1489831, 1624171, 1461832, 1275211, 1572709]
    assert all(abs(a - b) <= 16 for a, b in zip(x[:8].flatten(1).sum(1).tolist(), sums))
    x, y, m = make_split('val', 16, size=96, seed=3, num_classes=12)
    assert y[:8].tolist() == [2, 8, 7, 7, 4, 1, 2, 4]
    assert m[:4].flatten(1).sum(1).tolist() == [401, 379, 309, 344]
    assert all(abs(a - b) <= 16 for a, b in zip(x[:4].flatten(1).sum(1).tolist(), [3534297, 3704047, 3388290, 3628961]))


# ---------------------------------------------------------------- the parts variant

from timm_camaug.synthetic import PARTS, PARTS_MAX_CLASSES, make_parts_split, parts_codes  # noqa: E402


def test_parts_shapes_and_determinism():
    x, y, m = make_parts_split('train', 20, size=48, seed=3)
    assert x.shape == (20, 3, 48, 48) and x.dtype == torch.uint8
    assert y.shape == (20,) and int(y.max()) < 8
    assert m.shape == (20, len(PARTS), 48, 48) and m.dtype == torch.bool
    b = make_parts_split('train', CHUNK + 3, size=48, seed=3)
    for u, v in zip((x, y, m), b):
        assert torch.equal(u, v[:20])
    # not the head set's images
    assert not torch.equal(x, make_split('train', 20, size=48, seed=3)[0])


def test_parts_are_small_and_on_the_bird():
    _, _, m = make_parts_split('val', 256, size=96, seed=0)
    area = m.flatten(2).float().mean(2)          # (n, 3)
    assert float(area.min()) > 0.005 and float(area.max()) < 0.06
    # every part visible on every bird, the three disjoint
    assert bool((area > 0).all()) and int(m.sum(1).max()) == 1


def test_parts_codes_name_the_class_from_any_one_part():
    codes = parts_codes(PARTS_MAX_CLASSES)
    for part in PARTS:
        assert len(set(codes[part])) == PARTS_MAX_CLASSES, part
    assert codes['head'][:2] == ['red solid', 'red capped']


def _mean_colour(x, mask):
    return (x.float() / 255.0)[:, mask].mean(1)


def test_parts_colours_follow_the_codes():
    """The wing's and the tail's colour (outside bar and tip) is their code's palette colour; the head's is the
    head set's rule."""
    from timm_camaug.synthetic import _TAIL_COLOURS, _WING_COLOURS
    x, y, m = make_parts_split('val', 48, size=96, seed=0)
    wing_pal, tail_pal = torch.tensor(_WING_COLOURS), torch.tensor(_TAIL_COLOURS)
    head_pal = torch.tensor(list(COLOURS.values()))[:4]
    for i in range(48):
        k = int(y[i])
        for part, pal, code in ((1, wing_pal, (3 * k + 1) % 8), (2, tail_pal, (5 * k + 2) % 8), (0, head_pal, k)):
            colours = (x[i].float() / 255.0)[:, m[i, part]]                 # (3, pixels)
            # the most common colour of the part: its body colour (bars, tips and caps are the minority)
            d = (colours[:, :, None] - pal.t()[:, None, :]).abs().sum(0)     # (pixels, 4)
            votes = torch.bincount(d.argmin(1), minlength=4)
            assert int(votes.argmax()) == code // 2, (i, part, votes)


@pytest.mark.parametrize('part', PARTS)
def test_parts_occluder_covers_exactly_that_part(part):
    clean, y, m = make_parts_split('test', 32, size=64, seed=1)
    occ, y2, m2 = make_parts_split('test', 32, size=64, seed=1, occlude=part)
    assert torch.equal(y, y2) and torch.equal(m, m2)
    p = PARTS.index(part)
    changed = (occ != clean).any(1)
    for i in range(32):
        inside = occ[i][:, m[i, p]]
        assert bool((inside == inside[:, :1]).all()), 'the part is under one flat grey'
        assert float(inside[:, 0].float().std()) < 1.0
        # the other parts are untouched where the occluder does not reach
        for q in range(len(PARTS)):
            if q != p:
                assert not bool((changed[i] & m[i, q]).all())
        # nothing changes far from the part (whose hidden rest, e.g. a tail's under the body, is covered too): the
        # changed pixels lie within the visible part's bounding box grown by its own size on every side
        rows, cols = m[i, p].any(1).nonzero()[:, 0], m[i, p].any(0).nonzero()[:, 0]
        dy, dx = int(rows[-1] - rows[0]) + 1, int(cols[-1] - cols[0]) + 1
        near = torch.zeros_like(changed[i])
        near[max(0, int(rows[0]) - dy):int(rows[-1]) + dy + 1, max(0, int(cols[0]) - dx):int(cols[-1]) + dx + 1] = True
        assert bool(changed[i].any()) and not bool((changed[i] & ~near).any())


def test_parts_random_occlusion_hides_one_part_per_image():
    clean, _, m = make_parts_split('val', 64, size=64, seed=2)
    occ, _, _ = make_parts_split('val', 64, size=64, seed=2, occlude='random')
    flat = (occ != clean).any(1)                                      # (n, H, W)
    hidden = (flat[:, None] & m).flatten(2).sum(2) > m.flatten(2).sum(2) // 2     # (n, 3) part mostly covered
    assert torch.equal(hidden.sum(1), torch.ones(64, dtype=torch.long))
    assert set(hidden.int().argmax(1).tolist()) == {0, 1, 2}


@pytest.mark.parametrize('kwargs, match', [
    ({'num_classes': 9}, r'num_classes must be an int in 2\.\.8 for the parts variant'),
    ({'num_classes': 1}, r'num_classes must be an int in 2\.\.8 for the parts variant'),
    ({'occlude': 'beak'}, r'occlude must be one of None, head, wing, tail, random'),
    ({'size': 8}, r'size must be an int >= 16'),
    ({'split': 'dev'}, r"unknown split 'dev'"),
    ({'n': -1}, r'n must be an int >= 0'),
])
def test_parts_bad_arguments(kwargs, match):
    args = dict(split='train', n=4, size=32, seed=0, num_classes=8)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        make_parts_split(**args)
