""" `timm-camaug reproduce` through timm's real train.py, patched: the issue's target on this CPU.

Two small image folders stand in for two datasets (cub, cars); 3 modes x 2 seeds x 1 epoch of timm's tiny
test_resnet at 64 px, from the repository's own configs with --set overrides. The reproduction must finish in
under 10 minutes and a second call must run nothing again; an interrupted run restarts from its checkpoint with
train.py's --resume. Needs TIMM_TRAIN_PY (a train.py file or the timm git directory; its HEAD's train.py is
used); skips without it.
"""
import csv
import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml

from timm_camaug import cli, reproduce
from timm_camaug.train_py_runner import run_train_py_process, summary_rows

REPO = Path(__file__).resolve().parents[1]
QUICK = ['--set', 'epochs=1', '--set', 'model=test_resnet', '--set', 'img_size=64', '--set', 'pretrained=false',
         '--set', 'num_classes=3', '--set', 'batch_size=4', '--set', 'device=cpu', '--set', 'workers=0']
TARGET_SECONDS = 600

pytestmark = pytest.mark.slow


@pytest.fixture(scope='module')
def train_py(tmp_path_factory):
    value = os.environ.get('TIMM_TRAIN_PY')
    if not value:
        pytest.skip('set TIMM_TRAIN_PY to a timm train.py or the timm git directory to run')
    dest = tmp_path_factory.mktemp('timm') / 'train.py'
    p = Path(value)
    if p.is_file():
        dest.write_bytes(p.read_bytes())
    else:
        git_dir = p / '.git' if (p / '.git').exists() else p
        dest.write_bytes(subprocess.run(['git', f'--git-dir={git_dir}', 'show', 'HEAD:train.py'], capture_output=True,
                                        check=True).stdout)
    assert cli.main(['patch', str(dest)]) == 0
    return dest


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
    from PIL import Image
    root = tmp_path_factory.mktemp('data')
    g = torch.Generator().manual_seed(0)
    for dataset in ('cub', 'cars'):
        for split, n in (('train', 8), ('val', 4)):
            for c in range(3):
                d = root / dataset / split / f'class{c}'
                d.mkdir(parents=True)
                for i in range(n):
                    base = torch.tensor([60 * c + 40, 200 - 50 * c, 90], dtype=torch.float32).view(3, 1, 1)
                    img = (base + 60 * torch.rand(3, 64, 64, generator=g)).clamp(0, 255).to(torch.uint8)
                    Image.fromarray(img.permute(1, 2, 0).numpy()).save(d / f'{i}.png')
    return root


def _argv(train_py, data_root, output, *extra, datasets='cub,cars', modes='none,cutmix,snapmix', seeds='0,1'):
    return ['reproduce', '--train-py', str(train_py), '--datasets', datasets, '--modes', modes, '--seeds', seeds,
            '--data-root', str(data_root), '--configs', str(REPO / 'configs'), '--output', str(output), *QUICK, *extra]


class Processes:
    """The train.py processes the harness starts (optionally stopped after an epoch's checkpoint, as Ctrl-C)."""

    def __init__(self, monkeypatch, stop_after=None):
        self.commands = []
        self.stop_after = stop_after
        monkeypatch.setattr(reproduce, 'run_train_py_process', self)

    def __call__(self, cmd, cwd, on_epoch=None, log_file=None):
        self.commands.append(cmd)
        checkpoint = Path(log_file).parent / 'last.pth.tar'

        def watch(done):
            if done == self.stop_after:
                deadline = time.monotonic() + 120
                while not checkpoint.exists() and time.monotonic() < deadline:
                    time.sleep(0.02)
                raise KeyboardInterrupt
            on_epoch(done)
        return run_train_py_process(cmd, cwd, on_epoch=watch, log_file=log_file)


def test_reproduce_two_datasets_three_modes_two_seeds_then_resume(train_py, data_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    output = tmp_path / 'out'
    procs = Processes(monkeypatch)
    t0 = time.perf_counter()
    assert cli.main(_argv(train_py, data_root, output)) == 0
    seconds = time.perf_counter() - t0
    print(f'\n12 train.py runs through reproduce: {seconds:.0f} s')
    assert len(procs.commands) == 12
    assert seconds < TARGET_SECONDS, f'{seconds:.0f} s: over the target of {TARGET_SECONDS} s'
    res = json.loads((output / 'results.json').read_text())
    assert [(r['dataset'], r['mode']) for r in res['rows']] == [(d, m) for d in ('cub', 'cars')
                                                                 for m in ('none', 'cutmix', 'snapmix')]
    for row in res['rows']:
        assert row['seeds'] == [0, 1] and row['failed'] == [] and row['epochs'] == [1], row
        finals = []
        for seed in (0, 1):
            run = output / 'runs' / row['dataset'] / row['mode'] / f'seed{seed}'
            with open(run / 'summary.csv') as f:
                (last,) = list(csv.DictReader(f))
            finals.append(float(last['eval_top1']))
            # what train.py itself parsed: the config's recipe, the overrides and the harness's keys
            args = yaml.safe_load((run / 'args.yaml').read_text())
            assert args['model'] == 'test_resnet' and args['pretrained'] is False and args['seed'] == seed
            assert args['opt'] == 'sgd' and args['layer_decay'] == 0.1 and args['checkpoint_hist'] == 1
            assert Path(args['data_dir']) == data_root / row['dataset']
            assert args['mix_mode'] == ('snapmix' if row['mode'] == 'snapmix' else 'none')
            assert (args['cutmix'], args['mixup_prob']) == ((3.0, 1.0) if row['mode'] == 'cutmix' else (0.0, 1.0))
            assert (run / 'command.txt').is_file() and (run / 'config.yaml').is_file()
            assert 'Scheduled epochs: 1' in (run / 'train.log').read_text()
        assert row['top1_mean'] == pytest.approx(sum(finals) / 2, abs=1e-3)
        assert row['epoch_seconds'] > 0
        paper = reproduce.PAPER_TOP1.get(reproduce.config_row(row['mode']), {}).get(row['dataset'])
        assert row['paper_top1'] == paper
    assert 'overrides (`--set`)' in (output / 'results.md').read_text()
    # the same command again: nothing runs, the table is the same
    procs = Processes(monkeypatch)
    t0 = time.perf_counter()
    assert cli.main(_argv(train_py, data_root, output)) == 0
    assert procs.commands == [] and time.perf_counter() - t0 < 60
    assert json.loads((output / 'results.json').read_text())['rows'] == res['rows']


def test_interrupted_run_resumes_with_train_pys_resume(train_py, data_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    output = tmp_path / 'out'
    argv = _argv(train_py, data_root, output, '--set', 'epochs=2', datasets='cub', modes='snapmix', seeds='0')
    Processes(monkeypatch, stop_after=1)             # Ctrl-C once epoch 1 of 2 is checkpointed
    assert cli.main(argv) == 130
    run = output / 'runs' / 'cub' / 'snapmix' / 'seed0'
    assert json.loads((run / 'run.json').read_text())['state'] == 'interrupted'
    assert [r['epoch'] for r in summary_rows(str(run / 'summary.csv'))] == ['0']
    procs = Processes(monkeypatch)
    assert cli.main(argv) == 0
    (cmd,) = procs.commands
    assert cmd[-2:] == ['--resume', str(run / 'last.pth.tar')]
    assert [r['epoch'] for r in summary_rows(str(run / 'summary.csv'))] == ['0', '1']
    second = (run / 'train.log').read_text().split('attempt 2')[1]
    assert 'Train: 1 [' in second and 'Train: 0 [' not in second        # epoch 0 was not trained again
    (row,) = json.loads((output / 'results.json').read_text())['rows']
    assert row['seeds'] == [0] and row['epochs'] == [2]
