""" The label-fidelity measure (timm_camaug.fidelity): visible part fractions from hand-built params, the
provenance trick on timm's own CutMix, and SnapMix's labels when its map is the part itself. """
import numpy as np
import pytest
import torch

from timm_camaug import fidelity as fd
from timm_camaug.modes.attentive import AttentiveParams
from timm_camaug.modes.cam_erase import CamEraseParams
from timm_camaug.modes.saliencymix import SaliencyMixParams
from timm_camaug.modes.snapmix import SnapMixParams


def _mode(name):
    """A mode to ask for its regions (its params are built by hand below)."""
    import timm
    from timm_camaug import create_mix_fn, get_mode_class
    cls = get_mode_class(name)
    kw = {}
    if cls.uses_model:
        kw = dict(model=timm.create_model('test_resnet', num_classes=2), check_model=False)
    if cls.auxiliary_network:
        kw = {cls.auxiliary_network[0]: timm.create_model('test_resnet', num_classes=0), 'extractor_size': 64, 'top_n': 1}
    return create_mix_fn(name, num_classes=2, **kw)


def _masks():
    """Two 8x8 images: image 0's part is rows 0-1 x cols 0-3 (8 px), image 1's is rows 4-7 x cols 4-5 (8 px)."""
    m = torch.zeros(2, 8, 8, dtype=torch.bool)
    m[0, 0:2, 0:4] = True
    m[1, 4:8, 4:6] = True
    return m


def test_snapmix_visible_fractions_by_hand():
    m = _masks()
    perm = torch.tensor([1, 0])
    # sample 0: target box rows 0-1, cols 0-2 hides 6 of its 8 part pixels -> keeps 1/4;
    #           source box in image 1 rows 4-5, cols 4-7 holds 4 of image 1's 8 -> shows 1/2
    # sample 1: target box rows 6-7, cols 0-7 hides 4 of 8 -> keeps 1/2;
    #           source box in image 0 rows 0-7, cols 0-0 holds 2 of image 0's 8 -> shows 1/4
    box_t = torch.tensor([[0, 2, 0, 3], [6, 8, 0, 8]])
    box_s = torch.tensor([[4, 6, 4, 8], [0, 8, 0, 1]])
    p = SnapMixParams(torch.tensor([True, True]), perm, None, None, box_t, box_s, None)
    vis_a, vis_b, active = fd.visible_fractions(_mode('snapmix'), p, m)
    assert vis_a.tolist() == [0.25, 0.5]
    assert vis_b.tolist() == [0.5, 0.25]
    assert active.tolist() == [True, True]


def test_snapmix_inactive_or_empty_boxes_show_nothing_pasted():
    m = _masks()
    box_t = torch.tensor([[0, 2, 0, 3], [0, 0, 0, 8]])         # sample 1: empty target box: nothing pasted
    box_s = torch.tensor([[4, 6, 4, 8], [0, 8, 0, 8]])
    p = SnapMixParams(torch.tensor([False, True]), torch.tensor([1, 0]), None, None, box_t, box_s, None)
    vis_a, vis_b, _ = fd.visible_fractions(_mode('snapmix'), p, m)
    assert vis_a.tolist() == [1.0, 1.0] and vis_b.tolist() == [0.0, 0.0]


def test_same_place_paste_by_hand():
    m = _masks()
    perm = torch.tensor([1, 0])
    # one box rows 0-5, cols 2-5 for both samples: image 0 loses cols 2-3 of rows 0-1 (4 of 8) -> keeps 1/2 and
    # receives image 1's rows 4-5 x cols 4-5 (4 of 8) -> shows 1/2; image 1 loses the same 4 and gets
    # image 0's 4.
    boxes = torch.tensor([[0, 6, 2, 6], [0, 6, 2, 6]])
    p = SaliencyMixParams(torch.tensor([True, True]), perm, torch.ones(2, dtype=torch.float64),
                          torch.zeros(2, 2, dtype=torch.long), boxes, None)
    vis_a, vis_b, _ = fd.visible_fractions(_mode('saliencymix'), p, m)
    assert vis_a.tolist() == [0.5, 0.5] and vis_b.tolist() == [0.5, 0.5]


def test_attentive_cells_by_hand():
    m = _masks()
    cells = torch.zeros(2, 4, 4, dtype=torch.bool)     # 4x4 grid on 8x8: 2x2-pixel cells
    cells[0, 0, 0] = True                               # image 0 receives rows 0-1, cols 0-1 from image 1
    cells[1, 2, 2] = cells[1, 3, 2] = True              # image 1 receives rows 4-7, cols 4-5 from image 0
    p = AttentiveParams(torch.tensor([True, True]), torch.tensor([1, 0]), None, cells)
    vis_a, vis_b, _ = fd.visible_fractions(_mode('attentive'), p, m)
    assert vis_a.tolist() == [0.5, 0.0]
    assert vis_b.tolist() == [0.0, 0.0]


def test_erase_visible_fraction_and_single_label_error():
    m = _masks()
    erased = torch.zeros(2, 8, 8, dtype=torch.bool)
    erased[0, 0, :] = True                      # 4 of image 0's 8 part pixels
    vis = fd.erase_visible_fraction(erased, m)
    assert vis.tolist() == [0.5, 1.0]
    e = fd.fidelity_errors(torch.ones(2), vis, keep=torch.tensor([True, False]))
    assert e.err_a.tolist() == [0.5] and e.err_b.numel() == 0 and e.mae == 0.5
    p = CamEraseParams(torch.tensor([True, True]), torch.tensor([[0, 1, 0, 8], [0, 8, 4, 5]]),
                       torch.zeros(2, 2, dtype=torch.long), 0, None)
    from timm_camaug.boxes import box_masks
    assert fd.erase_visible_fraction(box_masks(p.boxes, (8, 8)), m).tolist() == [0.5, 0.5]
    vis_a, vis_b, active = fd.visible_fractions(_mode('cam-erase'), p, m)      # the erased boxes, from the mode
    assert vis_a.tolist() == [0.5, 0.5] and vis_b is None and active.tolist() == [True, True]


def test_label_weights_and_errors():
    soft = torch.tensor([[0.7, 0.2, 0.0], [0.1, 0.0, 0.6]])
    labels = torch.tensor([0, 2])
    perm = torch.tensor([1, 0])
    w_a, w_b = fd.label_weights(soft, labels, perm)
    assert w_a.tolist() == pytest.approx([0.7, 0.6]) and w_b.tolist() == pytest.approx([0.0, 0.1])
    e = fd.fidelity_errors(w_a, torch.tensor([0.5, 0.6]), w_b, torch.tensor([0.5, 0.1]))
    assert e.err_a.tolist() == pytest.approx([0.2, 0.0]) and e.err_b.tolist() == pytest.approx([0.5, 0.0])
    assert e.mae == pytest.approx(0.175)


def test_empty_part_mask_is_an_error():
    m = _masks()
    m[1] = False
    with pytest.raises(ValueError, match=r'1 part mask\(s\) are empty'):
        fd.kept_fraction(m, torch.zeros_like(m))


def test_source_map_regions_by_hand():
    src = torch.tensor([[[0, 1], [0, 0]], [[1, 1], [1, 1]], [[2, 2], [0, 2]]]).float()
    perm, region = fd.source_map_regions(src)
    assert perm.tolist() == [1, 1, 0]        # sample 1 received nothing: its own partner
    assert region[0].tolist() == [[False, True], [False, False]] and not bool(region[1].any())
    bad = torch.tensor([[[0, 1], [2, 0]], [[1, 1], [1, 1]], [[2, 2], [2, 2]]]).float()
    with pytest.raises(ValueError, match=r'pixels of more than two samples'):
        fd.source_map_regions(bad)


def test_provenance_channel_reads_back_timms_cutmix():
    """timm's Mixup is a black box: an extra channel of sample indices tells exactly which pixels it pasted
    and from where; its label weights are 1 - area and area of that region."""
    from timm.data import Mixup
    np.random.seed(3)
    mixup = Mixup(mixup_alpha=0.0, cutmix_alpha=1.0, label_smoothing=0.0, num_classes=10)
    n, h, w = 6, 16, 12
    x = torch.randn(n, 3, h, w)
    y = torch.tensor([0, 1, 2, 3, 4, 5])
    idx = torch.arange(n, dtype=torch.float32)[:, None, None, None].expand(n, 1, h, w)
    out, soft = mixup(torch.cat([x, idx], 1), y.clone())
    perm, region = fd.source_map_regions(out[:, 3])
    assert perm.tolist() == [5, 4, 3, 2, 1, 0]                  # timm's batch mode pairs x with x.flip(0)
    assert torch.equal(out[:, :3], torch.where(region[:, None], x.flip(0), x))
    area = region.flatten(1).float().mean(1)
    w_a, w_b = fd.label_weights(soft, y, perm)
    assert torch.allclose(w_a, 1 - area.double(), atol=1e-6) and torch.allclose(w_b, area.double(), atol=1e-6)


def test_snapmix_labels_are_exact_when_its_map_is_the_part():
    """SnapMix's label rule with a semantic percent map equal to the normalised part mask gives each source
    exactly its visible part share: the measure and the method agree on what a faithful label is."""
    import timm

    import timm_camaug
    torch.manual_seed(0)
    model = timm.create_model('test_resnet', num_classes=4)
    mix = timm_camaug.create_mix_fn('snapmix', model=model, num_classes=4, generator=torch.Generator().manual_seed(1),
                                    boxes='sample', data_config={'input_size': (3, 32, 32)})
    from timm_camaug.synthetic import make_split
    images, labels, masks = make_split('val', 16, 32, seed=0, num_classes=4)
    x = images.float() / 255.0
    params = mix.make_params(x, labels)
    params.guidance = masks.float() / masks.flatten(1).sum(1)[:, None, None]
    _, soft = mix.apply(x, labels, params)
    vis_a, vis_b, active = fd.visible_fractions(mix, params, masks)
    w_a, w_b = fd.label_weights(soft, labels, params.perm)
    keep = active & (labels != labels[params.perm])
    assert int(keep.sum()) >= 4
    e = fd.fidelity_errors(w_a, vis_a, w_b, vis_b, keep)
    assert e.mae < 1e-6
    # and the area-proportional label on the same boxes is not faithful
    area = (params.box_t[:, 1] - params.box_t[:, 0]) * (params.box_t[:, 3] - params.box_t[:, 2]) / 32 ** 2
    e_area = fd.fidelity_errors(1 - area.double(), vis_a, area.double(), vis_b, keep)
    assert e_area.mae > 0.05
