""" benchmarks/accuracy.py: SnapMix's controls change one thing each, the table's statistics, and the kept runs
(resume, settings changed, shards). """
import importlib.util
import json
from pathlib import Path

import pytest
import torch

from timm_camaug import create_mix_fn, modes

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def accuracy(monkeypatch):
    """The benchmark module with its SnapMix controls registered; the registry is restored afterwards."""
    monkeypatch.setattr(modes, '_REGISTRY', dict(modes._REGISTRY))
    spec = importlib.util.spec_from_file_location('accuracy_bench', ROOT / 'benchmarks' / 'accuracy.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    before = modes.mix_modes()
    module.register_controls()
    assert set(modes.mix_modes()) - set(before) == {cls.name for cls in module.CONTROLS}
    return module


def test_importing_the_benchmark_registers_nothing(monkeypatch):
    monkeypatch.setattr(modes, '_REGISTRY', dict(modes._REGISTRY))
    before = modes.mix_modes()
    spec = importlib.util.spec_from_file_location('accuracy_bench', ROOT / 'benchmarks' / 'accuracy.py')
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
    assert modes.mix_modes() == before


def _mixes(name, x, y):
    import timm
    model = timm.create_model('test_resnet', num_classes=4)
    mix_fn = create_mix_fn(name, model=model, num_classes=4, generator=torch.Generator().manual_seed(3),
                           data_config={'input_size': (3, 64, 64)})
    params = mix_fn.make_params(x, y)
    xm, soft = mix_fn.apply(x, y, params)
    return params, xm, mix_fn.finalize(soft)


def test_snapmix_controls_change_one_thing_each(accuracy):
    """Same draws as SnapMix (same generator): the target box and the permutation are SnapMix's; the same-place
    control pastes the source's own pixels at their place, the same-size one a box of the target's size from
    elsewhere (no resize), the area-label one keeps SnapMix's pixels with labels summing to one."""
    torch.manual_seed(0)
    x, y = torch.randn(6, 3, 64, 64), torch.tensor([0, 1, 2, 3, 0, 1])
    snap, x_snap, t_snap = _mixes('snapmix', x, y)
    place, x_place, t_place = _mixes('snapmix-same-place', x, y)
    size, x_size, _ = _mixes('snapmix-same-size', x, y)
    area, x_area, t_area = _mixes('snapmix-area-labels', x, y)
    for p in (place, size, area):
        assert torch.equal(p.box_t, snap.box_t) and torch.equal(p.perm, snap.perm)
    y0, y1, x0, x1 = snap.box_t[0].tolist()
    perm = snap.perm
    # same place: CutMix's geometry, SnapMix's labels from the same maps
    assert torch.equal(place.box_s, place.box_t)
    # (SnapMix's paste samples through grid_sample in float32: equal up to rounding)
    torch.testing.assert_close(x_place[:, :, y0:y1, x0:x1], x[perm][:, :, y0:y1, x0:x1], atol=1e-4, rtol=0)
    # same size: the target box's size, its own place, the pixels copied unscaled
    s0, s1, c0, c1 = size.box_s[0].tolist()
    assert (s1 - s0, c1 - c0) == (y1 - y0, x1 - x0)
    torch.testing.assert_close(x_size[:, :, y0:y1, x0:x1], x[perm][:, :, s0:s1, c0:c1], atol=1e-4, rtol=0)
    assert (s0, c0) != (y0, x0)
    # area labels: SnapMix's image, CutMix's weights (1 - a, a) with a the box's share of the image
    assert torch.equal(x_area, x_snap)
    a = (y1 - y0) * (x1 - x0) / 64 / 64
    expect = (1 - a) * torch.eye(4)[y] + a * torch.eye(4)[y[perm]]
    torch.testing.assert_close(t_area, expect)
    assert not torch.allclose(t_snap, expect)


def test_mean_std_and_paired_differences(accuracy):
    assert accuracy.mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)
    m, s = accuracy.mean_std([5.0])
    assert m == 5.0 and s != s          # NaN: no spread from one value
    assert accuracy.fmt([80.0, 82.0, 84.0]) == '82.0 ± 2.0' and accuracy.fmt([80.0]) == '80.0'
    # per seed: +1, +3, -1 over the seeds both have (seed 3 only in a)
    a, b = {0: 81.0, 1: 85.0, 2: 83.0, 3: 99.0}, {0: 80.0, 1: 82.0, 2: 84.0}
    assert accuracy.fmt_diff(a, b) == '+1.0 ± 2.0 (2/3)'
    assert accuracy.fmt_diff(a, {}) == '-'


def _tiny_regimes(accuracy, epochs=1):
    regime = accuracy.Regime('tiny', model='test_resnet', pretrained=False, data='parts', img_size=32, train_size=32,
                             test_size=16, epochs=epochs, batch_size=16, lr=1e-3, head_lr=None, num_classes=4,
                             occluded=('head', 'tail'))
    rows = {'none': ('none', {}), 'cutmix': ('cutmix', {}), 'gutout': ('gutout', {})}
    return lambda quick: {'tiny': (regime, rows)}


def test_runs_are_kept_resumed_and_rerun_when_settings_change(accuracy, monkeypatch, tmp_path, capsys):
    calls = []

    def fake_run(regime, spec, seed, network):
        calls.append((spec[0], seed, regime.epochs))
        hidden = {'clean': 90.0, 'head hidden': 60.0 + seed, 'tail hidden': 70.0 + seed}
        return {'top1': 80.0 + seed + len(spec[0]), 'extra': hidden, 'history': [], 'history_epochs': [],
                'seconds': 60.0}
    monkeypatch.setattr(accuracy, 'run_one', fake_run)
    monkeypatch.setattr(accuracy, 'regimes', _tiny_regimes(accuracy))
    path = str(tmp_path / 'kept.json')
    argv = ['--regimes', 'tiny', '--seeds', '0,1', '--json', path]
    assert accuracy.main(argv) == 0
    assert sorted(calls) == sorted((m, s, 1) for m in ('none', 'cutmix', 'gutout') for s in (0, 1))
    first = capsys.readouterr().out
    # resumed: nothing runs again, the same table
    calls.clear()
    assert accuracy.main(argv) == 0
    assert calls == [] and capsys.readouterr().out.split('wall time')[0] == first.split('wall time')[0]
    # top-1 = 80 + seed + len(mode): none 84/85, gutout 86/87 -> +2.0 ± 0.0 in both seeds
    line = next(row for row in first.splitlines() if row.startswith('| gutout |'))
    assert line.startswith('| gutout | 2 | 86.5 ± 0.7 | +2.0 ± 0.0 (2/2) | ')
    assert '| 65.5 ± 0.7 |' in line          # one part hidden: mean of head and tail, then over seeds
    # a setting changed: every run again
    monkeypatch.setattr(accuracy, 'regimes', _tiny_regimes(accuracy, epochs=2))
    assert accuracy.main(argv) == 0
    assert len(calls) == 6 and {c[2] for c in calls} == {2}
    assert len(json.loads(Path(path).read_text())['runs']) == 12


def test_shards_split_the_runs(accuracy, monkeypatch, tmp_path):
    done = []
    monkeypatch.setattr(accuracy, 'run_one', lambda regime, spec, seed, network: done.append((spec[0], seed)) or {
        'top1': 50.0, 'extra': {'head hidden': 40.0, 'tail hidden': 45.0}, 'history': [], 'history_epochs': [],
        'seconds': 1.0})
    monkeypatch.setattr(accuracy, 'regimes', _tiny_regimes(accuracy))
    argv = ['--regimes', 'tiny', '--seeds', '0,1,2', '--json', str(tmp_path / 'k.json')]
    assert accuracy.main(argv + ['--shard', '0/2']) == 0
    half = list(done)
    assert accuracy.main(argv + ['--shard', '1/2']) == 0
    assert 0 < len(half) < 9 and sorted(done) == sorted((m, s) for m in ('none', 'cutmix', 'gutout') for s in range(3))
    with pytest.raises(SystemExit):
        accuracy.main(argv + ['--shard', '2/2'])


@pytest.mark.slow
def test_one_tiny_regime_end_to_end(accuracy, monkeypatch, tmp_path, capsys):
    """Real runs through the demo's loop: the parts set's hidden-part splits are scored and tabled."""
    monkeypatch.setattr(accuracy, 'regimes', _tiny_regimes(accuracy))
    path = tmp_path / 'kept.json'
    assert accuracy.main(['--regimes', 'tiny', '--seeds', '0', '--json', str(path)]) == 0
    out = capsys.readouterr().out
    runs = json.loads(path.read_text())['runs'].values()
    assert sorted(r['row'] for r in runs) == ['cutmix', 'gutout', 'none']
    for r in runs:
        assert set(r['extra']) == {'clean', 'head hidden', 'tail hidden'} and 0 <= r['top1'] <= 100
    assert '| none | 1 |' in out and 'machine: ' in out


def test_snapmix_fidelity_run_measures_without_changing_the_run(accuracy, monkeypatch):
    """Label errors at each checkpoint, from the same boxes; the measuring leaves the training as it was."""
    monkeypatch.setattr(accuracy, 'FIDELITY_IMAGES', 64)
    regime = accuracy.Regime('tiny', model='test_resnet', pretrained=False, data='head', img_size=64, train_size=32,
                             test_size=32, epochs=2, batch_size=16, lr=1e-3, head_lr=None, num_classes=4)
    rec = accuracy.snapmix_fidelity_run(regime, seed=1, checkpoints=(0, 2))
    assert set(rec['fidelity']) == {'0', '2'}
    for v in rec['fidelity'].values():
        assert v['pairs'] > 0 and 0 <= v['snapmix'] <= 2 and 0 <= v['area'] <= 1
    # the area errors use the same boxes at every checkpoint; SnapMix's follow the model's maps
    assert rec['fidelity']['0']['area'] == rec['fidelity']['2']['area']
    assert rec['fidelity']['0']['snapmix'] != rec['fidelity']['2']['snapmix']
    plain = accuracy.run_one(regime, ('snapmix', {}), 1, None)
    assert plain['top1'] == rec['top1']
    assert '| 2 |' in accuracy.fidelity_table(rec)
