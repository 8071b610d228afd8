""" `timm-camaug bench`: every mode timed against a training step in one run, and its input errors. """
import pytest
import torch

from timm_camaug import MIX_MODES, cli
from timm_camaug.bench import bench_modes
from timm_camaug.factory import mode_options_from_strings


def test_bench_modes_reports_every_mode_against_the_step():
    res = bench_modes(MIX_MODES, model='test_resnet', img_size=32, batch_size=4, num_classes=5, repeats=1,
                      options={'attentive': {'extractor': 'test_resnet', 'extractor_size': 32, 'top_n': 1}})
    assert list(res) == ['train step', *MIX_MODES, 'timm Mixup (cutmix)']
    for name, r in res.items():
        assert r['seconds'] > 0 and r['ratio'] == pytest.approx(r['seconds'] / res['train step']['seconds'])


def test_bench_cli_prints_a_table(capsys):
    assert cli.main(['bench', '--mode', 'gutout,saliencymix', '--model', 'test_resnet', '--img-size', '32',
                     '--batch-size', '2', '--num-classes', '3', '--repeats', '1', '--amp', 'bfloat16',
                     '--channels-last', '--set', 'gutout:cam_scale=0.5', '--set', 'gutout:t=0.3']) == 0
    out = capsys.readouterr().out
    assert 'test_resnet, 32 px, batch 2, bfloat16, channels-last' in out
    rows = {line.split()[0] for line in out.splitlines()[3:] if line.strip()}
    assert {'train', 'gutout', 'saliencymix', 'timm'} <= rows


@pytest.mark.parametrize('argv,message', [
    (['--mode', 'mixupp'], "unknown mix mode mixupp; choose one of snapmix"),
    (['--mode', 'none'], r"'none' \(no mixing\) is not a row here; choose one of snapmix"),
    (['--mode', ','], "no mix mode in ','; choose one of snapmix"),
    (['--mode', 'snapmix:0.5+cutmix'], "give every member a probability, or none of them"),
    (['--mode', 'snapmix:0.7+cutmix:0.7'], "add up to 1.4, more than 1"),
    (['--batch-size', '0'], '--batch-size must be >= 1, got 0'),
    (['--set', 'beta=2'], "--set 'beta=2': expected MODE:KEY=VALUE"),
    (['--mode', 'snapmix', '--set', 'gutout:t=0.2'], "--set 'gutout:t=0.2': 'gutout' is not among the modes benchmarked \\(snapmix\\)"),
    (['--mode', 'snapmix:0.5+cutmix:0.5', '--set', 'cutmix:cutmix_alpha=-1'], "cutmix_alpha must be >= 0, got -1.0"),
    (['--mode', 'snapmix', '--set', 'snapmix:bogus=1'], 'snapmix has no such option; its options are prob, beta'),
    (['--mode', 'snapmix', '--set', 'snapmix:beta=nan'], 'snapmix: beta must be > 0, got nan'),
    (['--mode', 'snapmix', '--model', 'no_such_model'], 'no_such_model'),
])
def test_bench_cli_errors(argv, message):
    with pytest.raises(SystemExit, match=message):
        cli.main(['bench', '--model', 'test_resnet', '--img-size', '32', '--repeats', '1', *argv])


def test_bench_takes_schedules_and_timms_own_rows(capsys):
    assert cli.main(['bench', '--mode', 'cutmix,snapmix:0.5+cutmix:0.5', '--model', 'test_resnet', '--img-size',
                     '32', '--batch-size', '2', '--num-classes', '3', '--repeats', '1',
                     '--set', 'snapmix:beta=2', '--set', 'cutmix:cutmix_alpha=0.5']) == 0
    rows = {line.split()[0] for line in capsys.readouterr().out.splitlines()[3:] if line.strip()}
    assert {'cutmix', 'snapmix:0.5+cutmix:0.5'} <= rows


def test_mode_options_from_strings():
    assert mode_options_from_strings('cam-erase', ['t=0.3', 'cam-layer=layer3', 'location=bbox', 'prob=1']) == \
        {'t': 0.3, 'cam_layer': 'layer3', 'location': 'bbox', 'prob': 1.0}
    assert mode_options_from_strings('snapmix', ['cam_layer=none']) == {'cam_layer': None}
    with pytest.raises(ValueError, match=r"--set location=middle: choose one of region, weighted, bbox, anywhere"):
        mode_options_from_strings('cam-erase', ['location=middle'])
    with pytest.raises(ValueError, match=r"--set cam_scale=2: must be in \(0, 1\], got '2'"):
        mode_options_from_strings('gutout', ['cam_scale=2'])
    with pytest.raises(ValueError, match=r"--set prob=x: expected a number"):
        mode_options_from_strings('gutout', ['prob=x'])


def test_mode_options_from_strings_parses_booleans_as_the_flags_do(monkeypatch):
    """No mode has a boolean option yet; one added later must read 'false' as False, as its train.py flag does."""
    from timm_camaug.modes import get_mode_class
    from timm_camaug.modes.options import Option
    cls = get_mode_class('gutout')
    monkeypatch.setattr(cls, 'options', cls.options + (Option('flag', False, 'a boolean option', bool),))
    assert mode_options_from_strings('gutout', ['flag=false']) == {'flag': False}
    assert mode_options_from_strings('gutout', ['flag=on']) == {'flag': True}
    with pytest.raises(ValueError, match=r"--set flag=maybe: expected a boolean"):
        mode_options_from_strings('gutout', ['flag=maybe'])


def test_bench_says_which_rows_straddle_the_forward_schedules_too(capsys):
    """A row whose labels are completed after the training forward (TransMix, alone or in a schedule) is timed on
    its call and finalize only, and the output says so for exactly those rows."""
    assert cli.main(['bench', '--mode', 'saliencymix,transmix,transmix:0.5+cutmix:0.5', '--model', 'test_resnet',
                     '--img-size', '32', '--batch-size', '2', '--num-classes', '3', '--repeats', '1']) == 0
    out = capsys.readouterr().out
    assert ('transmix, transmix:0.5+cutmix:0.5: the call plus finalize() after the training forward (the forward '
            'itself is the step\'s own and is not counted)') in out
