""" `timm-camaug bench`: inputs it cannot run with end in one line that says what to change (issue 15, item 13
and its siblings), and the inputs that used to fail but can run do. """
import pytest

from timm_camaug import cli

BASE = ['bench', '--model', 'test_resnet', '--repeats', '1', '--num-classes', '3']


@pytest.mark.parametrize('argv,message', [
    (['--mode', 'gutout', '--img-size', '1', '-b', '1'],
     r"^timm-camaug bench: Expected more than 1 value per channel when training, got input size .*: test_resnet's "
     r"BatchNorm takes the batch's statistics in a training step, and a batch of 1 at 1 px leaves one value per "
     r"channel in a feature map; use --batch-size 2 or more, or a larger --img-size$"),
    (['--mode', 'snapmix:0.5+cutmix:0.5', '--img-size', '32', '-b', '3'],
     r"timm's Mixup pairs sample i with sample N-1-i and needs an even batch, got 3 images"),
    (['--mode', 'gutout', '--model', 'resnet5o'],
     r"^timm-camaug bench: --model resnet5o: not a timm model; close names: .*resnet50"),
    (['--mode', 'gutout', '--device', 'no-such-device'],
     r"^timm-camaug bench: --device no-such-device is not usable here: "),
    (['--mode', 'attentive', '--img-size', '32', '-b', '2', '--set', 'attentive:extractor=test_resnet',
      '--set', 'attentive:extractor_checkpoint=/no/such/w.pth'],
     r"^timm-camaug bench: '/no/such/w.pth' does not exist \(nor does its folder '/no/such'\)"),
])
def test_bench_refusals(argv, message):
    with pytest.raises(SystemExit, match=message):
        cli.main(BASE + argv)


def test_odd_batch_runs_without_timms_mixup_row(capsys):
    """timm's Mixup asserts an even batch: with -b 3 the modes are timed and the reference row is left out."""
    assert cli.main(BASE + ['--mode', 'saliencymix', '--img-size', '32', '-b', '3']) == 0
    out = capsys.readouterr().out
    assert "timm's Mixup (cutmix) is not timed: it needs an even batch, not 3" in out
    table = out.split('/ train step', 1)[1].strip().splitlines()
    assert [line.split()[0] for line in table] == ['train', 'saliencymix']


def test_vit_at_another_size_is_built_for_it(capsys):
    """A ViT at a size other than its own is built for that size (as train.py's --model-kwargs img_size=...)."""
    assert cli.main(BASE + ['--model', 'test_vit', '--mode', 'gutout', '--img-size', '64', '-b', '2']) == 0
    assert 'test_vit, 64 px, batch 2' in capsys.readouterr().out
