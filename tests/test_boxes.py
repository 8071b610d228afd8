""" Box, mask and sampling primitives. """
import pytest
import torch
import torch.nn.functional as F

from timm_camaug.boxes import (box_area, box_masks, cell_masks, centred_bbox, cut_size, paste_resized, rand_bbox,
                               region_sum, sample_beta, sample_from_weights)


def test_sample_beta_distribution_and_generator():
    draws = sample_beta(5.0, 20000, torch.Generator().manual_seed(0))
    assert draws.dtype == torch.float64 and ((draws > 0) & (draws < 1)).all()
    assert abs(float(draws.mean()) - 0.5) < 0.005
    assert abs(float(draws.std()) - (0.25 / 11) ** 0.5) < 0.005      # Beta(5,5): var = 1/44
    again = sample_beta(5.0, 20000, torch.Generator().manual_seed(0))
    assert torch.equal(draws, again)
    skewed = sample_beta(0.5, 20000, torch.Generator().manual_seed(1))
    assert float(((skewed < 0.1) | (skewed > 0.9)).double().mean()) > 0.35   # U-shaped


def test_rand_bbox_follows_timm_rule():
    """timm's rand_bbox: cut = int(side * sqrt(1 - lam)), centre uniform, clipped, half-cut each side."""
    g = torch.Generator().manual_seed(0)
    lam = torch.rand(500, generator=g, dtype=torch.float64)
    boxes = rand_bbox((37, 53), lam, torch.Generator().manual_seed(1))
    g2 = torch.Generator().manual_seed(1)
    cy = torch.randint(0, 37, (500,), generator=g2)
    cx = torch.randint(0, 53, (500,), generator=g2)
    for (y0, y1, x0, x1), l, a, b in zip(boxes.tolist(), lam.tolist(), cy.tolist(), cx.tolist()):
        ch, cw = int(37 * (1 - l) ** 0.5), int(53 * (1 - l) ** 0.5)
        assert (y0, y1, x0, x1) == (max(a - ch // 2, 0), min(a + ch // 2, 37), max(b - cw // 2, 0), min(b + cw // 2, 53))


def test_centred_bbox_and_cut_size():
    h, w = cut_size((100, 60), torch.tensor([0.75]))
    assert (int(h), int(w)) == (50, 30)
    box = centred_bbox((100, 60), torch.tensor([0.75, 0.75]), torch.tensor([50, 2]), torch.tensor([30, 59]))
    assert box.tolist() == [[25, 75, 15, 45], [0, 27, 44, 60]]


def test_masks_areas_and_region_sums():
    boxes = torch.tensor([[1, 3, 2, 5], [0, 0, 0, 4], [0, 4, 0, 6]])
    masks = box_masks(boxes, (4, 6))
    assert masks.shape == (3, 4, 6)
    assert masks.sum((1, 2)).tolist() == box_area(boxes).tolist() == [6, 0, 24]
    assert masks[0, 1:3, 2:5].all() and masks[0].sum() == 6
    maps = torch.arange(3 * 24, dtype=torch.float32).view(3, 4, 6)
    assert region_sum(maps, boxes).tolist() == [float(maps[0, 1:3, 2:5].sum()), 0.0, float(maps[2].sum())]


@pytest.mark.parametrize('hw,grid', [((70, 50), (7, 7)), ((64, 64), (8, 8)), ((9, 13), (7, 7))])
def test_cell_masks_partition_the_image(hw, grid):
    cells = torch.zeros(grid[0] * grid[1], *grid, dtype=torch.bool)
    cells.view(-1, grid[0] * grid[1])[torch.arange(grid[0] * grid[1]), torch.arange(grid[0] * grid[1])] = True
    masks = cell_masks(cells, hw)
    assert torch.equal(masks.sum(0), torch.ones(hw, dtype=torch.long))   # every pixel in exactly one cell
    for k in range(grid[0] * grid[1]):
        i, j = divmod(k, grid[1])
        rows = masks[k].any(1).nonzero()[:, 0]
        cols = masks[k].any(0).nonzero()[:, 0]
        if rows.numel():
            assert int(rows.min()) == -(-i * hw[0] // grid[0]) and int(rows.max()) + 1 == -(-(i + 1) * hw[0] // grid[0])
            assert int(cols.min()) == -(-j * hw[1] // grid[1]) and int(cols.max()) + 1 == -(-(j + 1) * hw[1] // grid[1])


def test_paste_resized_equals_interpolate_per_sample():
    g = torch.Generator().manual_seed(0)
    dst, src = torch.randn(4, 3, 30, 40, generator=g), torch.randn(4, 3, 30, 40, generator=g)
    sb = torch.tensor([[0, 10, 0, 10], [5, 6, 7, 20], [2, 30, 0, 40], [3, 9, 4, 5]])
    db = torch.tensor([[10, 30, 5, 35], [0, 12, 0, 1], [0, 0, 3, 9], [20, 29, 30, 39]])
    out = paste_resized(dst, src, sb, db)
    for i in range(4):
        ref = dst[i].clone()
        (s0, s1, s2, s3), (d0, d1, d2, d3) = sb[i].tolist(), db[i].tolist()
        if (d1 - d0) * (d3 - d2) > 0:
            ref[:, d0:d1, d2:d3] = F.interpolate(src[i:i + 1, :, s0:s1, s2:s3], size=(d1 - d0, d3 - d2),
                                                 mode='bilinear', align_corners=True)[0]
        torch.testing.assert_close(out[i], ref, rtol=1e-5, atol=1e-5)
    inactive = paste_resized(dst, src, sb, db, active=torch.tensor([False, True, True, False]))
    assert torch.equal(inactive[0], dst[0]) and torch.equal(inactive[3], dst[3])


def test_sample_from_weights():
    w = torch.zeros(3, 5, 7)
    w[0, 2, 3] = 1.0
    w[1, 4, 6] = 2.0
    w[1, 0, 0] = 2.0
    u = torch.tensor([0.3, 0.75, 0.2], dtype=torch.float64)
    cy, cx = sample_from_weights(w, u)
    assert (int(cy[0]), int(cx[0])) == (2, 3)
    assert (int(cy[1]), int(cx[1])) == (4, 6)          # second half of the mass
    assert (int(cy[2]), int(cx[2])) == (0, 0)          # all-zero weights
    many = sample_from_weights(torch.ones(1, 4, 4).expand(4000, 4, 4), torch.rand(4000, dtype=torch.float64))
    counts = torch.bincount(many[0] * 4 + many[1], minlength=16).double()
    assert counts.min() > 170 and counts.max() < 330   # uniform over the region
