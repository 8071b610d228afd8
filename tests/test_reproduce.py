""" `timm-camaug reproduce`: plan, runs, resume, results and refusals, with a stand-in train.py.

The stand-in (FAKE_TRAIN_PY below) behaves as timm's train.py does where the harness looks: its parser names
its options (read from its source), it takes ``--config`` and ``--resume``, logs ``Scheduled epochs: N``,
``Train: E [...`` and ``Test: [ n/n]`` lines, appends to ``<output>/<experiment>/summary.csv`` (a header at each
start, as a resumed train.py writes one) and saves ``last.pth.tar`` atomically after each epoch. Its top-1 is a
known function of the seed, the mode's lr and the epoch, so results can be checked exactly. The real train.py
runs in tests/test_reproduce_train_py.py.
"""
import json
import os
import statistics
import sys
import time
from pathlib import Path

import pytest
import yaml

from timm_camaug import cli, reproduce
from timm_camaug.train_py_runner import EpochProgress, run_train_py_process, summary_rows

FAKE_TRAIN_PY = r'''
import argparse, json, os, sys, time
import yaml
config_parser = argparse.ArgumentParser(add_help=False)
config_parser.add_argument('-c', '--config', default='', type=str)
parser = argparse.ArgumentParser()
parser.add_argument('--data-dir', default=None)
parser.add_argument('--train-split', default='train')
parser.add_argument('--val-split', default='validation')
parser.add_argument('--model', default='resnet50')
parser.add_argument('--pretrained', action='store_true', default=False)
parser.add_argument('--epochs', type=int, default=300)
parser.add_argument('--cooldown-epochs', type=int, default=0)
parser.add_argument('--lr', type=float, default=None)
parser.add_argument('--seed', type=int, default=42)
parser.add_argument('--output', default='')
parser.add_argument('--experiment', default='')
parser.add_argument('--resume', default='')
parser.add_argument('--checkpoint-hist', type=int, default=10)
parser.add_argument('--decay-milestones', type=int, nargs='+', default=[90, 180])
parser.add_argument('--mix-mode', default='none')
parser.add_argument('--epoch-sleep', type=float, default=0.0)


def main():
    if os.environ.get('RANK', '0') != '0':      # under torchrun: rank 0 logs and writes, as train.py's primary
        return
    args_config, remaining = config_parser.parse_known_args()
    if args_config.config:
        with open(args_config.config) as f:
            parser.set_defaults(**yaml.safe_load(f))
    args = parser.parse_args(remaining)
    out = os.path.join(args.output, args.experiment)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, 'fake-args.json'), 'w') as f:
        json.dump(dict(vars(args), world_size=int(os.environ.get('WORLD_SIZE', 1))), f)
    start = 0
    if args.resume:
        with open(args.resume) as f:
            start = json.load(f)['epoch'] + 1
    total = args.epochs + args.cooldown_epochs
    print(f'Scheduled epochs: {total}. LR stepped per epoch.', flush=True)
    summary = os.path.join(out, 'summary.csv')
    with open(summary, 'a') as f:
        f.write('epoch,train_loss,eval_loss,eval_top1,eval_top5\n')
    for epoch in range(start, total):
        time.sleep(args.epoch_sleep)
        print(f'Train: {epoch} [   0/2 (  0%)]  Loss: 1.0', flush=True)
        print(f'Train: {epoch} [   1/2 (100%)]  Loss: 0.9', flush=True)
        fail = os.environ.get('FAKE_FAIL', '')
        if fail and out.endswith(fail):
            raise RuntimeError(f'fake failure in epoch {epoch} of {fail}')
        print('Test: [   0/1]  Acc@1: 50.0', flush=True)
        print('Test: [   1/1]  Acc@1: 50.0', flush=True)
        top1 = 10.0 * args.seed + 100.0 * (args.lr or 0.0) + epoch
        with open(summary, 'a') as f:
            f.write(f'{epoch},1.0,1.0,{top1},{top1 + 1}\n')
        with open(os.path.join(out, 'tmp.pth.tar'), 'w') as f:
            json.dump({'epoch': epoch}, f)
        os.replace(os.path.join(out, 'tmp.pth.tar'), os.path.join(out, 'last.pth.tar'))
    print('*** Best metric: done', flush=True)


if __name__ == '__main__':
    main()
'''

CONFIG = {'train_split': 'train', 'val_split': 'val', 'model': 'resnet50', 'pretrained': True, 'epochs': 200,
          'lr': 0.01, 'mix_mode': 'none'}
MODE_LR = {'none': 0.01, 'cutmix': 0.02, 'snapmix': 0.05}       # the fake's top-1 tells the modes apart
QUICK = ['--set', 'epochs=2', '--set', 'pretrained=false']


@pytest.fixture
def world(tmp_path, monkeypatch):
    """A stand-in train.py (accepted as patched), configs for cub/cars x none/cutmix/snapmix, prepared folders."""
    fake = tmp_path / 'train.py'
    fake.write_text(FAKE_TRAIN_PY)
    monkeypatch.setattr(reproduce, 'check_patched_train_py', lambda p: Path(p))
    configs, data = tmp_path / 'configs', tmp_path / 'data'
    configs.mkdir()
    for ds in ('cub', 'cars'):
        for mode, lr in MODE_LR.items():
            cfg = dict(CONFIG, lr=lr, mix_mode='none' if mode == 'cutmix' else mode)
            (configs / f"{ds}_{reproduce.config_row(mode)}.yaml").write_text(f'# {ds} {mode}\n' + yaml.safe_dump(cfg))
        for split in ('train', 'val'):
            (data / ds / split / 'class0').mkdir(parents=True)
    monkeypatch.delenv('FAKE_FAIL', raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def argv(world, *extra, datasets='cub,cars', modes='none,cutmix,snapmix', seeds='0,1', output='out'):
    return ['reproduce', '--train-py', str(world / 'train.py'), '--datasets', datasets, '--modes', modes,
            '--seeds', seeds, '--data-root', str(world / 'data'), '--configs', str(world / 'configs'),
            '--output', str(world / output), *QUICK, *extra]


def fake_top1(seed, mode, epoch):
    return 10.0 * seed + 100.0 * MODE_LR[mode] + epoch


class Counter:
    """Counts train.py processes the harness starts (and can stop one, as Ctrl-C would)."""

    def __init__(self, monkeypatch, interrupt_after_checkpoint=None):
        self.commands = []
        self.interrupt = interrupt_after_checkpoint
        monkeypatch.setattr(reproduce, 'run_train_py_process', self)

    def __call__(self, cmd, cwd, on_epoch=None, log_file=None):
        self.commands.append(cmd)
        if self.interrupt is None:
            return run_train_py_process(cmd, cwd, on_epoch=on_epoch, log_file=log_file)
        run_dir = Path(log_file).parent

        def stop(done):
            if done == self.interrupt:      # once the epoch's checkpoint is saved, as if Ctrl-C came then
                checkpoint = run_dir / 'last.pth.tar'
                deadline = time.monotonic() + 60
                while not (checkpoint.exists() and json.loads(checkpoint.read_text())['epoch'] >= done - 1):
                    assert time.monotonic() < deadline, 'no checkpoint'
                    time.sleep(0.01)
                raise KeyboardInterrupt
            on_epoch(done)
        return run_train_py_process(cmd, cwd, on_epoch=stop, log_file=log_file)


def results(world, output='out'):
    return json.loads((world / output / 'results.json').read_text())


ROW_FIELDS = {'dataset', 'mode', 'seeds', 'top1_mean', 'top1_std', 'top1_best_mean', 'epoch_seconds', 'paper_top1',
              'failed'}


def test_runs_every_dataset_mode_and_seed_and_writes_the_table(world, monkeypatch, capsys):
    counter = Counter(monkeypatch)
    assert cli.main(argv(world)) == 0
    assert len(counter.commands) == 12
    out = world / 'out'
    res = results(world)
    rows = {(r['dataset'], r['mode']): r for r in res['rows']}
    assert list(rows) == [(d, m) for d in ('cub', 'cars') for m in ('none', 'cutmix', 'snapmix')]
    for (dataset, mode), row in rows.items():
        assert ROW_FIELDS <= set(row)
        assert row['seeds'] == [0, 1] and row['failed'] == [] and row['pending'] == []
        finals = [fake_top1(s, mode, 1) for s in (0, 1)]
        assert row['top1_mean'] == pytest.approx(statistics.mean(finals), abs=1e-4)
        assert row['top1_std'] == pytest.approx(statistics.stdev(finals), abs=1e-4)
        assert row['top1_best_mean'] == pytest.approx(statistics.mean(finals), abs=1e-4)   # the fake only improves
        assert row['epochs'] == [2] and row['epoch_seconds'] >= 0
        paper = reproduce.PAPER_TOP1.get(reproduce.config_row(mode), {}).get(dataset)
        assert row['paper_top1'] == paper
        assert row['gap'] == (pytest.approx(row['top1_mean'] - paper, abs=1e-3) if paper is not None else None)
        assert (row['paper_note'] is None) == (paper is not None)
    assert rows['cub', 'none']['paper_top1'] == 85.49 and rows['cars', 'snapmix']['paper_top1'] == 94.30
    assert rows['cub', 'cutmix']['paper_top1'] is None and 'CutMix' in rows['cub', 'cutmix']['paper_note']
    md = (out / 'results.md').read_text()
    assert '| cub | none | 2/2 | 7.00 ± 7.07 | 7.00 | 2 |' in md and '| 85.49 | -78.49 |' in md
    assert 'n/a¹' in md and "¹ Not shown: the paper's CutMix row" in md and '`epochs=2`, `pretrained=false`' in md
    assert len(res['runs']) == 12 and {r['state'] for r in res['runs']} == {'done'}
    # one progress line per run and state change; the last line per run says done
    lines = capsys.readouterr().out.splitlines()
    assert sum('queued' in ln for ln in lines) == 12 and sum(' done: top-1 ' in ln for ln in lines) == 12
    assert sum('running epoch 2 of 2' in ln for ln in lines) == 12


def test_each_run_keeps_its_command_config_log_and_summary(world, monkeypatch):
    Counter(monkeypatch)
    assert cli.main(argv(world, '--set', 'decay_milestones=[3, 5]', datasets='cub', modes='snapmix',
                         seeds='1')) == 0
    run = world / 'out' / 'runs' / 'cub' / 'snapmix' / 'seed1'
    cfg = yaml.safe_load((run / 'config.yaml').read_text())
    # the file's keys, --set parsed as YAML, then the harness's own keys
    assert cfg['pretrained'] is False and cfg['epochs'] == 2 and cfg['decay_milestones'] == [3, 5]
    assert cfg['lr'] == 0.05 and cfg['mix_mode'] == 'snapmix' and cfg['model'] == 'resnet50'
    assert cfg['seed'] == 1 and cfg['experiment'] == 'seed1' and cfg['checkpoint_hist'] == 1
    assert Path(cfg['output']) == run.parent and Path(cfg['data_dir']) == world / 'data' / 'cub'
    seen = json.loads((run / 'fake-args.json').read_text())      # what train.py parsed from it
    assert seen['pretrained'] is False and seen['epochs'] == 2 and seen['decay_milestones'] == [3, 5]
    command = (run / 'command.txt').read_text().splitlines()
    assert command[0] == f'cd {world}' and command[1].endswith(f"train.py --config {run / 'config.yaml'}")
    log = (run / 'train.log').read_text()
    assert 'attempt 1' in log and 'Scheduled epochs: 2' in log and 'Test: [   1/1]' in log
    assert [r['epoch'] for r in summary_rows(str(run / 'summary.csv'))] == ['0', '1']
    record = json.loads((run / 'run.json').read_text())
    assert record['state'] == 'done' and record['attempts'] == 1 and record['returncode'] == 0
    assert len(record['epoch_seconds']) == 2 and record['scheduled_epochs'] == 2


def test_a_failed_seed_is_reported_and_the_others_go_on(world, monkeypatch, capsys):
    Counter(monkeypatch)
    monkeypatch.setenv('FAKE_FAIL', os.path.join('snapmix', 'seed1'))
    assert cli.main(argv(world, datasets='cub')) == 1
    res = results(world)
    rows = {r['mode']: r for r in res['rows']}
    assert rows['none']['seeds'] == [0, 1] and rows['cutmix']['seeds'] == [0, 1]
    snap = rows['snapmix']
    assert snap['seeds'] == [0] and snap['top1_std'] is None
    assert snap['top1_mean'] == pytest.approx(fake_top1(0, 'snapmix', 1))
    (failed,) = snap['failed']
    assert failed['seed'] == 1 and failed['returncode'] == 1
    assert 'RuntimeError: fake failure in epoch 0 of snapmix/seed1' in failed['log_tail']
    assert failed['log'] == os.path.join('runs', 'cub', 'snapmix', 'seed1', 'train.log')
    md = (world / 'out' / 'results.md').read_text()
    assert '| cub | snapmix | 1/2 (1 failed) |' in md and '### cub / snapmix / seed 1: exit code 1' in md
    assert 'fake failure in epoch 0' in md
    assert 'failed (exit code 1): runs/cub/snapmix/seed1/train.log' in capsys.readouterr().out
    # the same command again retries the failed run only (it failed before its first checkpoint: from scratch)
    monkeypatch.delenv('FAKE_FAIL')
    counter = Counter(monkeypatch)
    assert cli.main(argv(world, datasets='cub')) == 0
    (cmd,) = counter.commands
    assert '--resume' not in cmd and cmd[-1].endswith(os.path.join('snapmix', 'seed1', 'config.yaml'))
    assert results(world)['rows'][2]['seeds'] == [0, 1]
    log = (world / 'out' / 'runs' / 'cub' / 'snapmix' / 'seed1' / 'train.log').read_text()
    assert 'attempt 1' in log and 'attempt 2' in log and 'fake failure' in log      # the first attempt's log kept


def test_resume_runs_nothing_finished_again(world, monkeypatch):
    Counter(monkeypatch)
    assert cli.main(argv(world, datasets='cub')) == 0
    first = results(world)
    logs = {p: p.read_text() for p in (world / 'out').rglob('train.log')}
    counter = Counter(monkeypatch)
    assert cli.main(argv(world, datasets='cub')) == 0
    assert counter.commands == []
    assert results(world)['rows'] == first['rows']
    assert {p: p.read_text() for p in (world / 'out').rglob('train.log')} == logs
    # a run folder that went missing is the only one run again
    import shutil
    shutil.rmtree(world / 'out' / 'runs' / 'cub' / 'cutmix' / 'seed0')
    counter = Counter(monkeypatch)
    assert cli.main(argv(world, datasets='cub')) == 0
    assert len(counter.commands) == 1 and 'cutmix' in counter.commands[0][-1]


def test_an_interrupted_run_restarts_from_its_last_checkpoint(world, monkeypatch, capsys):
    slow = ('--set', 'epochs=3', '--set', 'epoch_sleep=1.0')    # the stop lands in the pause before epoch 2
    Counter(monkeypatch, interrupt_after_checkpoint=1)
    assert cli.main(argv(world, *slow, datasets='cub', modes='none', seeds='0')) == 130  # Ctrl-C
    run = world / 'out' / 'runs' / 'cub' / 'none' / 'seed0'
    record = json.loads((run / 'run.json').read_text())
    assert record['state'] == 'interrupted' and record['attempts'] == 1
    assert [r['epoch'] for r in summary_rows(str(run / 'summary.csv'))] == ['0']
    assert results(world)['runs'][0]['state'] == 'interrupted'
    assert not (world / 'out' / reproduce.LOCK_FILE).exists()
    assert 'interrupted after 1 of 3 epochs' in capsys.readouterr().out
    counter = Counter(monkeypatch)
    assert cli.main(argv(world, *slow, datasets='cub', modes='none', seeds='0')) == 0
    (cmd,) = counter.commands
    assert cmd[-2:] == ['--resume', str(run / 'last.pth.tar')]
    assert [r['epoch'] for r in summary_rows(str(run / 'summary.csv'))] == ['0', '1', '2']
    assert (run / 'summary.csv').read_text().count('epoch,') == 2          # train.py's header at each start
    record = json.loads((run / 'run.json').read_text())
    # the epochs timed are those of finished processes (here the second one's: epochs 2 and 3)
    assert record['state'] == 'done' and record['attempts'] == 2 and len(record['epoch_seconds']) == 2
    (row,) = results(world)['rows']
    assert row['top1_mean'] == pytest.approx(fake_top1(0, 'none', 2)) and row['epochs'] == [3]
    assert 'resuming from' in (run / 'train.log').read_text()


def test_torchrun_when_nproc_is_above_one(tmp_path):
    cfg, script = tmp_path / 'config.yaml', tmp_path / 'train.py'
    assert reproduce.run_command(script, cfg) == [sys.executable, str(script), '--config', str(cfg)]
    assert reproduce.run_command(script, cfg, nproc=4, resume=tmp_path / 'last.pth.tar') == [
        sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=4', str(script),
        '--config', str(cfg), '--resume', str(tmp_path / 'last.pth.tar')]


def test_nproc_runs_train_py_under_torchrun(world, monkeypatch):
    counter = Counter(monkeypatch)
    assert cli.main(argv(world, '--nproc', '2', datasets='cub', modes='none', seeds='0')) == 0
    (cmd,) = counter.commands
    assert cmd[1:5] == ['-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2']
    run = world / 'out' / 'runs' / 'cub' / 'none' / 'seed0'
    assert json.loads((run / 'fake-args.json').read_text())['world_size'] == 2
    assert json.loads((world / 'out' / reproduce.STATE_FILE).read_text())['nproc'] == 2
    assert results(world)['rows'][0]['seeds'] == [0]


def test_set_values_are_parsed_as_yaml():
    assert reproduce.parse_sets(['pretrained=false', 'epochs=2', 'lr=1e-3', 'model=test_resnet', 'x=[1, 2]',
                                 'y={a: 1}', 'z=', 'w=null', 'v=0.5', 's="1e-3"']) == {
        'pretrained': False, 'epochs': 2, 'lr': 1e-3, 'model': 'test_resnet', 'x': [1, 2], 'y': {'a': 1},
        'z': None, 'w': None, 'v': 0.5, 's': '1e-3'}


def test_summary_rows_of_a_resumed_run(tmp_path):
    summary = tmp_path / 'summary.csv'
    summary.write_text('epoch,train_loss,eval_top1\n0,1.0,10\n1,0.9,11\n'
                       'epoch,train_loss,eval_top1\n1,0.8,12\n2,0.7,13\n3,0.6,\n')
    rows = summary_rows(str(summary))
    assert [(r['epoch'], r['eval_top1']) for r in rows] == [('0', '10'), ('1', '12'), ('2', '13')]
    assert summary_rows(str(tmp_path / 'missing.csv')) == []


def test_epoch_progress_knows_where_a_resumed_run_started():
    p = EpochProgress()
    assert p.feed('Train: 5 [   0/10 (  0%)]') == 5 and p.first == 5
    assert p.feed('Test: [  3/3]') == 6 and p.first == 5


def test_train_py_options_are_read_from_its_source(world):
    known = reproduce.train_py_options(world / 'train.py')
    assert {'data_dir', 'epochs', 'decay_milestones', 'checkpoint_hist', 'config', 'resume'} <= known
    assert 'mix_mode' in known and 'snapmix_beta' in known                  # the plugin's options too
    (world / 'notpython.py').write_text('def (:\n')
    assert reproduce.train_py_options(world / 'notpython.py') is None


# --- refused input: each a clear message, before anything is run or written

def _unpatched(world, monkeypatch):
    monkeypatch.undo()
    monkeypatch.chdir(world)
    (world / 'stock.py').write_text('import argparse\nparser = argparse.ArgumentParser()\n')
    return ['--train-py', str(world / 'stock.py')]


def _no_folder(world, monkeypatch):
    import shutil
    shutil.rmtree(world / 'data' / 'cars')
    return []


def _no_val(world, monkeypatch):
    import shutil
    shutil.rmtree(world / 'data' / 'cub' / 'val')
    return []


def _empty_train(world, monkeypatch):
    (world / 'data' / 'cub' / 'train' / 'class0').rmdir()
    return []


def _other_reproduction(world, monkeypatch):
    Counter(monkeypatch)
    assert cli.main(argv(world, datasets='cub', modes='none', seeds='0')) == 0
    return []


def _other_set(world, monkeypatch):
    Counter(monkeypatch)
    assert cli.main(argv(world, '--set', 'lr=0.5')) == 0
    return []


def _other_train_py(world, monkeypatch):
    Counter(monkeypatch)
    assert cli.main(argv(world)) == 0
    (world / 'train.py').write_text(FAKE_TRAIN_PY + '\n# edited\n')
    return []


def _not_a_reproduction(world, monkeypatch):
    (world / 'out').mkdir()
    (world / 'out' / 'notes.txt').write_text('mine')
    return []


def _busy(world, monkeypatch):
    Counter(monkeypatch)
    assert cli.main(argv(world)) == 0
    (world / 'out' / reproduce.LOCK_FILE).write_text(str(os.getppid()))      # a live process holds it
    return []


def _bad_config_key(world, monkeypatch):
    (world / 'configs' / 'cub_cutmix.yaml').write_text(yaml.safe_dump(dict(CONFIG, cutmixx=1.0)))
    return []


def _no_config(world, monkeypatch):
    return ['--modes', 'none,saliencymix']


def _set_args(*items):
    return lambda world, monkeypatch: [a for item in items for a in ('--set', item)]


REFUSED = [
    ('unpatched', _unpatched, 'stock.py is not patched for --mix-mode; run `timm-camaug patch'),
    ('missing-config', _no_config, r"no config for dataset cub, mode saliencymix: .*configs/cub_saliencymix.yaml does "
                                   r"not exist \(and 1 more\); modes with a config for cub: none, cutmix, snapmix"),
    ('dataset-missing', _no_folder, r"no folder .*data/cars for dataset cars; prepare it with `timm-camaug prepare "
                                    r"cars <the official download> .*data/cars`"),
    ('dataset-no-val', _no_val, r"data/cub is not a prepared dataset: no folder .*data/cub/val \(val_split"),
    ('dataset-empty-train', _empty_train, r"not a prepared dataset: no class folders in .*data/cub/train"),
    ('other-reproduction', _other_reproduction,
     r"holds a different reproduction \(--datasets: cub there, cub,cars here; --modes: none there, "
     r"none,cutmix,snapmix here; --seeds: 0 there, 0,1 here\); nothing was changed"),
    ('other-set', _other_set, r"different reproduction \(--set lr: 0.5 there, \(not set\) here\)"),
    ('other-train-py', _other_train_py, r"different reproduction \(train.py: .*train.py \(sha256 [0-9a-f]{12}\) there"),
    ('not-a-reproduction', _not_a_reproduction, r"is not empty and holds no reproduction.json .* nothing was changed"),
    ('busy', _busy, r"reproduce process \d+ is working in it"),
    ('unknown-set-key', _set_args('epoch=2'), r"--set: train.py \(.*\) has no option epoch \(did you mean epochs\?\)"),
    ('harness-key', _set_args('seed=3'), r"--set seed: set by the harness for every run; use --seeds"),
    ('dashes', _set_args('mix-mode=snapmix'), r"keys are train.py's argument names .* --set mix_mode=snapmix"),
    ('no-value', _set_args('epochs'), r"--set 'epochs': expected key=value"),
    ('bad-yaml', _set_args('lr=[1, 2'), r"--set 'lr=\[1, 2': the value is not YAML"),
    ('bad-config-key', _bad_config_key, r"cub_cutmix.yaml: train.py \(.*\) has no option cutmixx \(did you mean "
                                        r"cutmix\?\)|cub_cutmix.yaml: train.py \(.*\) has no option cutmixx"),
    ('nproc', lambda w, m: ['--nproc', '0'], r"--nproc must be >= 1"),
]


@pytest.mark.parametrize('make,message', [(m, msg) for _, m, msg in REFUSED], ids=[i for i, _, _ in REFUSED])
def test_refused(world, monkeypatch, make, message):
    extra = make(world, monkeypatch)
    counter = Counter(monkeypatch)
    before = sorted((str(p), p.stat().st_mtime_ns) for p in world.rglob('*'))
    args = argv(world)
    for flag in ('--train-py', '--modes'):          # a case may replace one of the defaults
        if flag in extra:
            i = args.index(flag)
            del args[i:i + 2]
    with pytest.raises(SystemExit, match=message) as e:
        cli.main(args + extra)
    assert str(e.value).startswith('timm-camaug reproduce: ')
    assert counter.commands == []
    assert sorted((str(p), p.stat().st_mtime_ns) for p in world.rglob('*')) == before       # nothing written
