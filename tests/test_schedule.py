""" Schedules: a CAM mode beside timm's own Mixup / CutMix, one member drawn per batch. Shares, exact replay,
cost following the draw, the CAM warm-up, targets that agree, the loader not mixing, and the refusals. """
import argparse
import logging
import math

import pytest
import timm
import torch
import yaml

import timm_camaug
from helpers import mix_step
from timm_camaug import add_args, create_mix_fn
from timm_camaug.modes.schedule import Schedule
from timm_camaug.modes.snapmix import SnapMix
from timm_camaug.targets import smooth_one_hot

K = 4


def _model():
    torch.manual_seed(0)
    return timm.create_model('test_resnet', num_classes=K)


def _batch(n=4, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g), torch.randint(0, K, (n,), generator=g)


def _schedule(spec, seed=0, **kw):
    return create_mix_fn(spec, model=_model(), num_classes=K, generator=torch.Generator().manual_seed(seed),
                         data_config={'input_size': (3, 32, 32)}, **kw)


def test_each_members_share_lies_in_the_binomial_99_percent_interval():
    mix = _schedule('cutout:0.3+cutmix:0.3+mixup:0.2')       # 0.2 left: no mixing
    x, y = _batch(n=2, size=8)
    n = 2000
    counts = {}
    for _ in range(n):
        name = mix.drawn_name(mix.make_params(x, y))
        counts[name] = counts.get(name, 0) + 1
    for name, p in (('cutout', 0.3), ('cutmix', 0.3), ('mixup', 0.2), ('none', 0.2)):
        half = 2.576 * math.sqrt(p * (1 - p) / n)
        assert abs(counts.get(name, 0) / n - p) <= half, (name, counts)


def test_replays_exactly_and_reproduces_from_the_seed():
    x, y = _batch()
    mix = _schedule('snapmix:0.5+cutmix:0.5', seed=3)
    outcomes = set()
    for _ in range(6):
        params = mix.make_params(x, y)
        a, b = mix.apply(x, y, params), mix.apply(x, y, params)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        outcomes.add(mix.drawn_name(params))
    assert outcomes == {'snapmix', 'cutmix'}
    first = [_schedule('snapmix:0.5+cutmix:0.5', seed=3)(x, y) for _ in range(2)]
    assert torch.equal(first[0][0], first[1][0]) and torch.equal(first[0][1], first[1][1])


def test_cost_follows_the_draw():
    """No CAM forward on a CutMix batch: the model runs exactly on the batches that drew SnapMix."""
    model = _model()
    forwards = []
    model.conv1.register_forward_pre_hook(lambda m, a: forwards.append(1))
    mix = create_mix_fn('snapmix:0.5+cutmix:0.5', model=model, num_classes=K,
                        generator=torch.Generator().manual_seed(0), data_config={'input_size': (3, 32, 32)})
    forwards.clear()        # the start-up probe
    x, y = _batch()
    drawn = [mix.drawn_name(mix.make_params(x, y)) for _ in range(20)]
    assert 0 < drawn.count('snapmix') < 20
    assert len(forwards) == drawn.count('snapmix')


def test_a_single_member_at_probability_one_is_the_mode_itself():
    """Today's runs reproduce exactly: one mode at probability 1 is built as the mode, drawing nothing extra."""
    x, y = _batch()
    alone = create_mix_fn('snapmix', model=_model(), num_classes=K, generator=torch.Generator().manual_seed(1))
    spelled = create_mix_fn('snapmix:1.0', model=_model(), num_classes=K, generator=torch.Generator().manual_seed(1))
    assert type(alone) is SnapMix and type(spelled) is SnapMix
    a, b = alone(x, y), spelled(x, y)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_cam_start_epoch_gives_the_guided_members_way_to_the_rest():
    x, y = _batch()
    mix = _schedule('snapmix:0.5+cutmix:0.5', cam_start_epoch=2)
    for epoch, expected in ((0, {'cutmix'}), (1, {'cutmix'}), (2, {'snapmix', 'cutmix'})):
        mix.set_epoch(epoch)
        assert {mix.drawn_name(mix.make_params(x, y)) for _ in range(12)} == expected, epoch
    alone = _schedule('snapmix:1.0+cutout:0.0', cam_start_epoch=1, label_smoothing=0.1)
    xm, t = alone(x, y)        # no rest: no mixing until the epoch
    assert torch.equal(xm, x) and torch.equal(t, smooth_one_hot(y, K, 0.1))


def test_mixup_off_epoch_switches_every_member_off():
    x, y = _batch()
    mix = _schedule('snapmix:0.5+cutmix:0.5', label_smoothing=0.1)
    mix.mixup_enabled = False          # what train.py's --mixup-off-epoch does
    assert all(not m.mixup_enabled for _, _, m in mix.members)
    for _ in range(6):
        xm, t = mix(x, y)
        assert torch.equal(xm, x) and torch.equal(t, smooth_one_hot(y, K, 0.1))
        mix.finalize(t)


@pytest.mark.parametrize('spec', ['snapmix:0.5+cutmix:0.5', 'gutout:0.4+mixup:0.4', 'saliencymix:0.5+cutmix:0.5'])
def test_soft_targets_agree_across_members(spec):
    """Smoothing applied once, the same one-hot convention, float32 on the batch's device; the input untouched."""
    x, y = _batch()
    x0 = x.clone()
    mix = _schedule(spec, seed=2, label_smoothing=0.1)
    off = 0.1 / K
    seen = set()
    for _ in range(10):
        params = mix.make_params(x, y)
        xm, t = mix.apply(x, y, params)
        seen.add(mix.drawn_name(params))
        assert torch.equal(x, x0), 'a member changed the input batch in place'
        assert t.dtype == torch.float32 and t.shape == (4, K)
        member = mix.drawn(params)
        if member is None or not member.mixes_pairs or member.weights_sum_to_one:
            torch.testing.assert_close(t.sum(1), torch.ones(4))
            assert float(t.min()) >= off - 1e-6        # every class keeps the smoothed floor, once
    assert len(seen) >= 2


def test_finalize_belongs_to_the_drawn_member_and_runs_once():
    model = _model()
    mix = create_mix_fn('snapmix:0.5+cutmix:0.5', model=model, num_classes=K,
                        generator=torch.Generator().manual_seed(0), data_config={'input_size': (3, 32, 32)})
    x, y = _batch()
    xm, t, _ = mix_step(mix, model, x, y)
    with pytest.raises(RuntimeError, match='finalize\\(\\) without a pending mix'):
        mix.finalize(t)


def test_a_mixed_soft_target_is_refused():
    """A batch the loader mixed already (timm's FastCollateMixup) arrives with soft targets over two classes."""
    mix = _schedule('snapmix:0.5+cutmix:0.5')
    x, y = _batch()
    soft = 0.7 * torch.eye(K)[y] + 0.3 * torch.eye(K)[y.flip(0)]
    with pytest.raises(ValueError, match=r"soft target row 0 spreads its weight over several classes: the batch "
                                         r"arrives mixed already"):
        mix(x, soft)
    mix(x, smooth_one_hot(y, K, 0.1))     # a one-hot, smoothed or not, is one class


def test_repr_and_member_names():
    mix = _schedule('snapmix:0.3+cutmix:0.3')
    assert mix.member_names() == [('snapmix', 0.3), ('cutmix', 0.3), ('none', pytest.approx(0.4))]
    assert repr(mix).startswith('Schedule(snapmix:0.3=SnapMix(') and 'rest=none' in repr(mix)


@pytest.mark.parametrize('spec, kwargs, error, match', [
    ('snapmix:0.7+cutmix:0.7', {}, ValueError, r'the probabilities of snapmix, cutmix add up to 1.4, more than 1'),
    ('snapmix:0.5+snapmix:0.5', {}, ValueError, r'snapmix listed twice in the schedule'),
    ('snapmix:0.5+cutmix', {}, ValueError, r'give every member a probability, or none of them'),
    ('snapmix:-0.1+cutmix:0.5', {}, ValueError, r"snapmix: '-0.1' must be a probability in \[0, 1\]"),
    ('snapmix:x+cutmix:0.5', {}, ValueError, r"snapmix: 'x' is not a number"),
    ('snapmixx:0.5+cutmix:0.5', {}, ValueError, r"^unknown mix mode snapmixx; choose one of snapmix"),
    ('snapmix:0.5+cutmix:0.5', {'beta': 2.0}, TypeError, r"beta: a schedule takes each member's options as options="),
    ('snapmix:0.5+cutmix:0.5', {'prob': 0.5}, TypeError, r'prob= applies to a single mode'),
    ('snapmix:0.5+cutmix:0.5', {'options': {'gutout': {}}}, ValueError, r'options for gutout, which the schedule'),
    ('snapmix:0.5+cutmix:0.5', {'cam_start_epoch': -1}, ValueError, r'cam_start_epoch must be an int >= 0, got -1'),
])
def test_refused_schedules(spec, kwargs, error, match):
    with pytest.raises(error, match=match):
        _schedule(spec, **kwargs)


# --- train.py's flags

def _parser():
    parser = argparse.ArgumentParser()
    for flag, kind, default in (('--num-classes', int, K), ('--epochs', int, 10), ('--batch-size', int, 8),
                                ('--smoothing', float, 0.1), ('--mixup', float, 0.0), ('--cutmix', float, 0.0),
                                ('--mixup-prob', float, 1.0), ('--mixup-switch-prob', float, 0.5),
                                ('--mixup-mode', str, 'batch')):
        parser.add_argument(flag, type=kind, default=default)
    parser.add_argument('--cutmix-minmax', type=float, nargs='+', default=None)
    parser.add_argument('--bce-loss', action='store_true')
    parser.add_argument('--bce-target-thresh', type=float, default=None)
    add_args(parser)
    return parser


def test_train_py_schedule_half_snapmix_half_cutmix():
    args = _parser().parse_args(['--mix-mode', 'snapmix', '--mix-mode-prob', '0.5', '--cutmix', '1.0'])
    mix = create_mix_fn(args, model=_model(), data_config={'input_size': (3, 32, 32)})
    assert isinstance(mix, Schedule) and mix.label_smoothing == 0.1
    assert mix.member_names() == [('snapmix', 0.5), ('timm Mixup', 0.5)]
    assert (mix.rest.cutmix_alpha, mix.rest.mixup_alpha) == (1.0, 0.0)
    yaml.safe_dump(vars(args))          # train.py dumps args: they stay YAML-safe


def test_train_py_takes_its_own_mixup_as_the_rest():
    from timm.data import Mixup
    args = _parser().parse_args(['--mix-mode', 'snapmix,gutout', '--mix-mode-prob', '0.3', '--mixup', '0.4'])
    own = Mixup(mixup_alpha=0.4, prob=0.9, num_classes=K, label_smoothing=0.1)
    mix = create_mix_fn(args, model=_model(), timm_mixup=own, data_config={'input_size': (3, 32, 32)})
    assert mix.member_names()[:2] == [('snapmix', 0.3), ('gutout', 0.3)]
    assert mix.member_names()[2][0] == 'timm Mixup' and abs(mix.member_names()[2][1] - 0.4) < 1e-9
    assert (mix.rest.mixup_alpha, mix.rest.prob) == (0.4, 0.9)


def test_train_py_single_mode_is_unchanged():
    args = _parser().parse_args(['--mix-mode', 'snapmix'])
    assert type(create_mix_fn(args, model=_model())) is SnapMix


@pytest.mark.parametrize('config', [{'mix_mode_prob': '0.4,0.4'}, {'mix_mode_prob': [0.4, 0.4]}])
def test_yaml_keys_string_or_list(config):
    parser = _parser()
    parser.set_defaults(mix_mode='snapmix,cutout', mix_cam_start_epoch=2, **config)    # a --config YAML
    args = parser.parse_args([])
    mix = create_mix_fn(args, model=_model(), data_config={'input_size': (3, 32, 32)})
    assert mix.member_names() == [('snapmix', 0.4), ('cutout', 0.4), ('none', pytest.approx(0.2))]
    assert mix.cam_start_epoch == 2


def test_listed_modes_without_probabilities_share_one():
    args = _parser().parse_args(['--mix-mode', 'snapmix,gutout'])
    assert create_mix_fn(args, model=_model()).member_names() == [('snapmix', 0.5), ('gutout', 0.5)]


def test_remainder_zero_with_mixup_is_a_warning(caplog):
    with caplog.at_level(logging.WARNING):
        _parser().parse_args(['--mix-mode', 'snapmix', '--mix-mode-prob', '1.0', '--cutmix', '1.0'])
    assert '--mix-mode-prob adds up to 1: --mixup/--cutmix will never run' in caplog.text


@pytest.mark.parametrize('argv, message', [
    (['--mix-mode', 'snapmix', '--mix-mode-prob', '-0.2'], "--mix-mode-prob: '-0.2' must be a probability in"),
    (['--mix-mode', 'snapmix', '--mix-mode-prob', 'half'], "--mix-mode-prob: 'half' is not a number"),
    (['--mix-mode', 'snapmix', '--mix-mode-prob', '0.2,0.3'], '--mix-mode-prob: 2 values for 1 mode'),
    (['--mix-mode', 'snapmix,gutout', '--mix-mode-prob', '0.6,0.6'], 'adds up to 1.2, more than 1'),
    (['--mix-mode', 'snapmix,snapmix'], '--mix-mode lists snapmix twice; list each mode once'),
    (['--mix-mode', 'snapmix', '--mix-cam-start-epoch', '20'], '--mix-cam-start-epoch 20 is beyond --epochs 10'),
    (['--mix-mode', 'snapmix', '--mix-mode-prob', '0.5', '--cutmix', '1', '--batch-size', '7'],
     "timm's Mixup/CutMix .* needs an even batch .*got batch size 7"),
    (['--mix-mode', 'snapmix', '--cutmix', '1'], 'without --mix-mode-prob takes every batch, so --mixup/--cutmix'),
    (['--mix-mode', 'cutmix'], "invalid choice cutmix.*timm's own CutMix/Mixup come from train.py's --cutmix/--mixup"),
    (['--mix-mode', 'snapmix,gutout', '--mix-mode-prob', '0.5', '--bce-loss'], 'snapmix with --bce-loss'),
])
def test_refused_at_start_up(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        _parser().parse_args(argv)
    assert e.value.code == 2
    import re
    assert re.search(message, capsys.readouterr().err), message


def test_unknown_config_keys_of_ours_are_named_with_the_closest(caplog):
    """A YAML --config key that no flag has is kept silently by train.py's set_defaults: warn (issue 15, item 9)."""
    parser = _parser()
    parser.set_defaults(mix_mode='snapmix', snapmix_betaa=5.0, mix_mode_probb='0.5', lr=0.1)
    with caplog.at_level(logging.WARNING):
        args = parser.parse_args([])
    assert args.snapmix_beta == 5.0
    assert "config key 'snapmix_betaa' is not an option of any mode and is ignored; did you mean 'snapmix_beta'?" \
        in caplog.text
    assert "'mix_mode_probb'" in caplog.text and "did you mean 'mix_mode_prob'?" in caplog.text
    assert "'lr'" not in caplog.text        # not ours: train.py's business


def test_more_class_folders_than_num_classes_stops_at_start_up(tmp_path, capsys):
    """A label >= --num-classes would stop a mode mid-epoch: counted at start-up for folder datasets (item 6)."""
    for c in range(6):
        (tmp_path / 'train' / f'class{c}').mkdir(parents=True)
    (tmp_path / 'train' / '.cache').mkdir()
    parser = _parser()
    parser.add_argument('--data-dir', default=None)
    parser.add_argument('--train-split', default='train')
    parser.add_argument('--dataset', default='')
    parser.add_argument('--class-map', default='')
    with pytest.raises(SystemExit):
        parser.parse_args(['--mix-mode', 'snapmix', '--data-dir', str(tmp_path)])
    err = capsys.readouterr().err
    assert f"--num-classes {K}, but {tmp_path / 'train'} has 6 classes: labels 4..5 are out of range" in err
    assert 'set --num-classes 6' in err
    assert parser.parse_args(['--mix-mode', 'snapmix', '--data-dir', str(tmp_path), '--num-classes', '6'])
    class_map = tmp_path / 'map.txt'
    class_map.write_text('class0\nclass1\nclass2\n')      # a class map picks the classes: 3 is fine
    assert parser.parse_args(['--mix-mode', 'snapmix', '--data-dir', str(tmp_path), '--class-map', str(class_map)])
    assert parser.parse_args(['--mix-mode', 'snapmix', '--data-dir', str(tmp_path), '--dataset', 'torch/cifar10'])


@pytest.mark.parametrize('spec, expected', [
    ('snapmix:0.5+cutmix:0.5', {'snapmix': 0.5, 'cutmix': 0.5}),
    ('snapmix:0.3+cutmix:0.3', {'snapmix': 0.3, 'cutmix': 0.3}),
    ('snapmix:0.2+cutmix:0.4+mixup:0.4', {'snapmix': 0.2, 'cutmix': 0.4, 'mixup': 0.4}),
    ('gutout+snapmix', {'gutout': 0.5, 'snapmix': 0.5}),
])
def test_a_schedule_written_for_the_commands_is_the_same_schedule_in_train_py(spec, expected):
    """demo --train-py writes a row 'a:p+cutmix:q' as train.py flags; parsed back, each member keeps its share
    (timm's Mixup, drawn for the rest, splits it between CutMix and Mixup by --mixup-switch-prob and skips it
    with 1 - --mixup-prob)."""
    from timm_camaug.args import schedule_train_flags
    args = _parser().parse_args(schedule_train_flags(spec))
    mix = create_mix_fn(args, model=_model(), data_config={'input_size': (3, 32, 32)})
    shares = dict(mix.member_names()) if isinstance(mix, Schedule) else {args.mix_mode: 1.0}
    rest = shares.pop('timm Mixup', 0.0)
    if rest:
        timm_mix = mix.rest
        cut = rest * timm_mix.prob * (timm_mix.switch_prob if timm_mix.mixup_alpha > 0 else 1.0)
        if timm_mix.cutmix_alpha > 0:
            shares['cutmix'] = cut
        if timm_mix.mixup_alpha > 0:
            shares['mixup'] = rest * timm_mix.prob - (cut if timm_mix.cutmix_alpha > 0 else 0.0)
    shares.pop('none', None)
    assert shares == {k: pytest.approx(v) for k, v in expected.items()}


def test_each_batch_is_checked_once(monkeypatch):
    """The schedule checks the batch (finite pixels, labels in range, the one-hot) once; the drawn member works on
    the checked batch without checking it again, in a call and in make_params / apply."""
    from timm_camaug.modes.base import MixMode
    checked = []
    real = MixMode._check_batch
    monkeypatch.setattr(MixMode, '_check_batch', lambda self, x, t: (checked.append(self.name), real(self, x, t))[1])
    mix = _schedule('snapmix:0.5+cutmix:0.5', seed=3)
    x, y = _batch()
    drawn = set()
    for _ in range(6):
        checked.clear()
        xm, t = mix(x, y)
        mix.finalize(t)
        drawn.add(mix.last_drawn)
        assert checked == ['schedule']
        checked.clear()
        params = mix.make_params(x, y)
        mix.finalize(mix.apply(x, y, params)[1])
        assert checked == ['schedule', 'schedule']
    assert drawn == {'snapmix', 'cutmix'}


@pytest.mark.parametrize('spec', ['cutmix:1.0+mixup:0.0', 'snapmix:1.0+cutmix:0.0'])
def test_soft_input_targets_are_mixed_as_the_member_alone_mixes_them(spec):
    """Soft targets from the caller (smoothed 0.2 by them; the modes smooth nothing) reach the drawn member as they
    are, as a single mode takes them: not rebuilt from their argmax with the mode's smoothing, so mixed and unmixed
    rows carry the caller's smoothing alike. Two members, the first always drawn (the second at probability 0),
    so the schedule is not built as the mode itself."""
    x, y = _batch()
    soft = smooth_one_hot(y, K, 0.2)
    mix = _schedule(spec, seed=1)
    assert isinstance(mix, Schedule)
    for target in (soft, y):
        params = mix.make_params(x, target)
        assert mix.drawn_name(params) == spec.split(':')[0]
        xm, t = mix.apply(x, target, params)
        mix.finalize(t)
        member = mix.drawn(params)
        alone_x, alone_t = member.apply(x, target, params.params)
        member.finalize(alone_t)
        assert torch.equal(xm, alone_x) and torch.equal(t, alone_t)
    if spec.startswith('cutmix'):       # weights summing to one: every class keeps the caller's floor
        assert float(t.min()) == 0.0
        params = mix.make_params(x, soft)
        t = mix.apply(x, soft, params)[1]
        mix.finalize(t)
        assert float(t.min()) >= 0.2 / K - 1e-6
        torch.testing.assert_close(t.sum(1), torch.ones(4))
