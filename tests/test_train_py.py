""" timm's real train.py, patched by `timm-camaug patch`, trains with every mode and every train.py feature.

Needs timm's train.py, which is not in the timm wheel: set TIMM_TRAIN_PY to a train.py file, or to the
timm git repository (a bare git directory or a checkout), from which the tests take train.py of
v1.0.20, v1.0.24, v1.0.28 and the default branch (`git show <ref>:train.py`). Without it these tests skip.

The runs (a 64 px generated ImageFolder, timm's tiny `test_resnet`, one short epoch each) execute in
one subprocess (tests/_train_py_runner.py) so that torch and timm are imported once; the runner wraps the
mix function to record, at every call, that the accumulated gradients, parameters, buffers and training
flags are exactly as before, and records the training loss class. From a git directory, each release's
`ema-accum-<release>` run is made as in a real checkout instead: the release's own `timm/` package
(`git archive <ref> timm`) beside its patched train.py, first on sys.path, one subprocess per release.
"""
import csv
import io
import json
import os
import re
import runpy
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
import yaml

import timm_camaug
from timm_camaug import cli
from timm_camaug.train_patch import patch_text, revert_text

ENV = 'TIMM_TRAIN_PY'
SKIP_REASON = f'set {ENV} to a timm train.py or the timm git directory to run'
RELEASES = ('v1.0.20', 'v1.0.24', 'v1.0.28', 'main')      # 'main': the repository's default branch (HEAD)
REPO = Path(__file__).resolve().parents[1]
RUNNER = Path(__file__).resolve().parent / '_train_py_runner.py'
CONFIGS = sorted((REPO / 'configs').glob('*.yaml'))
MODE_CLASSES = {m: timm_camaug.get_mode_class(m).__name__ for m in timm_camaug.MIX_MODES}
N_TRAIN, N_VAL, N_CLASSES, BATCH = 4, 2, 3, 4           # per class: 12 train images = 3 batches of 4
STEPS = N_TRAIN * N_CLASSES // BATCH


# --- where train.py comes from

def _git_dir(p: Path):
    if (p / '.git').exists():
        return p / '.git'
    if (p / 'HEAD').is_file() and (p / 'objects').is_dir():
        return p
    return None


def _ref(release):
    return 'HEAD' if release == 'main' else release


def source_git_dir():
    """The git directory TIMM_TRAIN_PY names (None for a train.py file or when unset)."""
    value = os.environ.get(ENV)
    return _git_dir(Path(value)) if value and Path(value).is_dir() else None


def make_checkout(git_dir: Path, release: str, train_py: Path, dest: Path) -> Path:
    """``dest`` laid out as a checkout of ``release``: ``train_py`` and the release's own ``timm/`` package."""
    res = subprocess.run(['git', f'--git-dir={git_dir}', 'archive', '--format=tar', _ref(release), 'timm'],
                         capture_output=True, check=True)
    dest.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(res.stdout)) as tar:
        if hasattr(tarfile, 'data_filter'):
            tar.extractall(dest, filter='data')
        else:   # Python < 3.11.4: git archive of a path yields plain files and folders
            tar.extractall(dest)
    shutil.copyfile(train_py, dest / 'train.py')
    return dest / 'train.py'


def train_py_sources(dest: Path):
    """{release: stock train.py} from TIMM_TRAIN_PY, or skip."""
    value = os.environ.get(ENV)
    if not value:
        pytest.skip(SKIP_REASON)
    p = Path(value)
    if p.is_file():
        return {'given': p}
    git_dir = _git_dir(p) if p.is_dir() else None
    if git_dir is None:
        pytest.fail(f'{ENV}={value} is neither a train.py file nor a git directory')
    out = {}
    for release in RELEASES:
        res = subprocess.run(['git', f'--git-dir={git_dir}', 'show', f'{_ref(release)}:train.py'],
                             capture_output=True)
        if res.returncode == 0:
            (dest / release).mkdir(parents=True, exist_ok=True)
            (dest / release / 'train.py').write_bytes(res.stdout)
            out[release] = dest / release / 'train.py'
    if not out:
        pytest.fail(f'{ENV}={value}: none of {", ".join(RELEASES)} has a train.py')
    return out


@pytest.fixture(scope='module')
def sources(tmp_path_factory):
    return train_py_sources(tmp_path_factory.mktemp('stock'))


@pytest.fixture(scope='module')
def patched(sources, tmp_path_factory):
    root = tmp_path_factory.mktemp('patched')
    out = {}
    for release, src in sources.items():
        (root / release).mkdir()
        dst = root / release / 'train.py'
        shutil.copyfile(src, dst)
        assert cli.main(['patch', str(dst)]) == 0
        out[release] = dst
    return out


def feature_release(sources):
    return 'main' if 'main' in sources else sorted(sources)[-1]


def has_flag(script: Path, flag: str) -> bool:
    return f"'{flag}'" in script.read_text()


# --- the patch on the real releases

def test_patch_each_release_is_small_idempotent_and_reverts_exactly(sources):
    for release, src in sources.items():
        text = src.read_text()
        patched_text = patch_text(text, release)
        changed = [ln for ln in _diff(text, patched_text) if ln[:1] in '+-']
        assert len(changed) == 15 <= 30, release
        assert patch_text(patched_text, release) == patched_text
        assert revert_text(patched_text, release).encode() == src.read_bytes()


def test_patches_dir_diff_matches_the_command_on_v1_0_28(sources, tmp_path):
    if 'v1.0.28' not in sources:
        pytest.skip(f'{ENV} does not provide v1.0.28')
    from timm_camaug.train_patch import unified_diff
    text = sources['v1.0.28'].read_text()
    diff_file = REPO / 'patches' / 'train-v1.0.28.diff'
    shipped = diff_file.read_text()
    assert shipped[shipped.index('--- a/train.py\n'):] == unified_diff(text, patch_text(text))
    if shutil.which('git'):       # and it applies by hand, header comment included
        shutil.copyfile(sources['v1.0.28'], tmp_path / 'train.py')
        subprocess.run(['git', 'apply', str(diff_file)], cwd=tmp_path, check=True)
        assert (tmp_path / 'train.py').read_text() == patch_text(text)


def _diff(a, b):
    import difflib
    return [ln for ln in difflib.unified_diff(a.splitlines(), b.splitlines(), lineterm='')
            if not ln.startswith(('+++', '---'))]


# --- the parser: configs and start-up errors (in this process)

@pytest.fixture(scope='module')
def train_modules(patched):
    """Each patched train.py imported as a module (its parser and _parse_args), not run."""
    return {release: runpy.run_path(str(p), run_name=f'timm_train_{release}') for release, p in patched.items()}


def _parse(module, monkeypatch, argv):
    """train.py's own _parse_args on argv; a --config file's set_defaults is undone afterwards."""
    parser = module['parser']
    saved = dict(parser._defaults), [(a, a.default) for a in parser._actions]
    monkeypatch.setattr(sys, 'argv', ['train.py'] + list(argv))
    try:
        return module['_parse_args']()[0]
    finally:
        parser._defaults.clear()
        parser._defaults.update(saved[0])
        for action, default in saved[1]:
            action.default = default


@pytest.mark.parametrize('config', CONFIGS, ids=[c.stem for c in CONFIGS])
def test_config_parses_with_every_release(config, train_modules, monkeypatch):
    cfg = yaml.safe_load(config.read_text())
    for release, module in train_modules.items():
        dests = {a.dest for a in module['parser']._actions}
        unknown = sorted(set(cfg) - dests)
        assert not unknown, f'{config.name}: keys {unknown} are not options of {release} train.py'
        args = _parse(module, monkeypatch, ['--config', str(config)])
        for key, value in cfg.items():
            assert getattr(args, key) == value, (config.name, release, key)
        assert timm_camaug.is_active(args) == (cfg['mix_mode'] != 'none')


INCOMPATIBLE = [
    (['--mixup', '0.2'], "without --mix-mode-prob takes every batch, so --mixup/--cutmix would never run"),
    (['--cutmix', '1.0'], "without --mix-mode-prob takes every batch, so --mixup/--cutmix would never run"),
    (['--cutmix-minmax', '0.2', '0.8'], "without --mix-mode-prob takes every batch, so --mixup/--cutmix would never run"),
    (['--mix-mode-prob', '0.5', '--cutmix', '1.0', '--batch-size', '5'], "needs an even batch"),
    (['--mix-mode-prob', '0.7,0.7'], "--mix-mode-prob: 2 values for 1 mode"),
    (['--mix-cam-start-epoch', '500'], "is beyond --epochs"),
    (['--naflex-loader'], 'the NaFlex loader yields patch sequences'),
    (['--aug-splits', '2'], 'cannot be combined with AugMix splits'),
    (['--aug-splits', '3', '--jsd-loss'], 'cannot be combined with AugMix splits'),
    (['--torchscript'], 'needs forward hooks on the model'),
    (['--sync-bn'], 'SyncBatchNorm'),
]


@pytest.mark.parametrize('extra,message', INCOMPATIBLE, ids=[' '.join(e) for e, _ in INCOMPATIBLE])
def test_incompatible_flags_stop_at_start_up(extra, message, sources, train_modules, monkeypatch, capsys):
    module = train_modules[feature_release(sources)]
    with pytest.raises(SystemExit) as e:
        _parse(module, monkeypatch, ['--mix-mode', 'snapmix', *extra])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert 'error:' in err and message in err


@pytest.mark.parametrize('config,argv', [
    ({'mixup': 0.3}, ['--mix-mode', 'snapmix']),            # the mode on the command line, mixup from the file
    ({'mix_mode': 'snapmix', 'mixup': 0.3}, []),             # both from the file
    ({'mix_mode': 'gutout'}, ['--mixup', '0.3']),            # the mode from the file, mixup on the command line
], ids=['mixup-in-config', 'both-in-config', 'mode-in-config'])
def test_incompatible_config_file_stops_at_start_up(config, argv, sources, train_modules, monkeypatch, capsys,
                                                    tmp_path):
    """A --config YAML reaches the check like flags do (its values become the parser's defaults)."""
    module = train_modules[feature_release(sources)]
    cfg = tmp_path / 'bad.yaml'
    cfg.write_text(yaml.safe_dump(config))
    with pytest.raises(SystemExit) as e:
        _parse(module, monkeypatch, ['--config', str(cfg), *argv])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert 'error:' in err and "without --mix-mode-prob takes every batch, so --mixup/--cutmix would never run" in err
    # the same file without mixup parses
    cfg.write_text(yaml.safe_dump({k: v for k, v in config.items() if k != 'mixup'}))
    mode = config.get('mix_mode', 'snapmix')
    assert _parse(module, monkeypatch, ['--config', str(cfg), *[a for a in argv if a not in ('--mixup', '0.3')]]) \
        .mix_mode == mode


def test_compatible_and_stock_flags_parse(sources, train_modules, monkeypatch):
    module = train_modules[feature_release(sources)]
    # stock flags without a mode are untouched, including the ones a mode refuses
    assert _parse(module, monkeypatch, ['--mixup', '0.2', '--sync-bn']).mix_mode == 'none'
    args = _parse(module, monkeypatch, ['--mix-mode', 'snapmix', '--snapmix-cam-bn', 'eval', '--sync-bn'])
    assert args.sync_bn and args.snapmix_cam_bn == 'eval'
    with pytest.raises(SystemExit):
        _parse(module, monkeypatch, ['--mix-mode', 'mixup'])


# --- training runs (one subprocess for all of them)

def _make_dataset(root: Path):
    from PIL import Image
    g = torch.Generator().manual_seed(0)
    for split, n in (('train', N_TRAIN), ('val', N_VAL)):
        for c in range(N_CLASSES):
            d = root / split / f'class{c}'
            d.mkdir(parents=True)
            for i in range(n):
                base = torch.tensor([60 * c + 40, 200 - 50 * c, 90], dtype=torch.float32).view(3, 1, 1)
                img = (base + 60 * torch.rand(3, 64, 64, generator=g)).clamp(0, 255).to(torch.uint8)
                Image.fromarray(img.permute(1, 2, 0).numpy()).save(d / f'{i}.png')


def _common(data, out, run_id):
    return ['--data-dir', str(data), '--val-split', 'val', '--model', 'test_resnet', '--num-classes', str(N_CLASSES),
            '--img-size', '64', '--batch-size', str(BATCH), '--epochs', '1', '--workers', '0', '--device', 'cpu',
            '--seed', '1', '--log-interval', '1', '--lr', '0.01', '--warmup-epochs', '0', '--checkpoint-hist', '1',
            '--output', str(out), '--experiment', run_id]


@pytest.fixture(scope='module')
def world(sources, patched, tmp_path_factory):
    """Runs every planned train.py invocation; returns (results by run id, output dir, feature release)."""
    import timm
    root = tmp_path_factory.mktemp('runs')
    data, out, work = root / 'data', root / 'out', root / 'work'
    _make_dataset(data)
    torch.save(timm.create_model('resnet18').state_dict(), root / 'resnet18.pth')
    torch.save(timm.create_model('test_resnet').state_dict(), root / 'test_resnet.pth')
    feature = feature_release(sources)
    fp = str(patched[feature])
    runs = []
    own_timm_plans = []         # one plan (subprocess) per release run with its own timm/

    def add(run_id, script, extra, to=None):
        argv = _common(data, out, run_id) + list(extra)
        (runs if to is None else to).append(dict(id=run_id, script=str(script), argv=argv, cwd=str(work)))

    git_dir = source_git_dir()
    for release in sources:
        add(f'stock-{release}', sources[release], [])
        # no flag, and on the feature release an explicit --mix-mode none (what a baseline config sets)
        add(f'stock-patched-{release}', patched[release], ['--mix-mode', 'none'] if release == feature else [])
        ema_accum = ['--mix-mode', 'snapmix', '--model-ema', '--grad-accum-steps', '2']
        if git_dir is None:
            add(f'ema-accum-{release}', patched[release], ema_accum)
            continue
        # as in a checkout: `python train.py` imports the release's timm/ beside it. Up to v1.0.28 and on main
        # timm's loader asks for persistent workers whatever --workers is, which torch refuses with 0 workers.
        script = make_checkout(git_dir, release, patched[release], root / 'checkouts' / release)
        plan = dict(runs=[], result=str(root / f'results-{release}.json'), sys_path=[str(script.parent)])
        add(f'ema-accum-{release}', script, ema_accum + ['--workers', '1'], to=plan['runs'])
        own_timm_plans.append(plan)
    mixup = ['--no-prefetcher', '--mixup', '0.4', '--smoothing', '0.1']
    add('stock-mixup', sources[feature], mixup)
    add('stock-mixup-patched', fp, mixup)
    extractor = ['--attentive-extractor', 'resnet18', '--attentive-extractor-checkpoint', str(root / 'resnet18.pth')]
    per_mode = {
        'snapmix': ['--amp', '--amp-dtype', 'bfloat16', '--channels-last', '--drop-path', '0.1', '--smoothing', '0'],
        'saliencymix': ['--no-prefetcher', '--grad-accum-steps', '2', '--smoothing', '0.1'],
        'attentive': extractor + ['--bce-loss', '--reprob', '0.25'],
        'gutout': ['--no-prefetcher', '--reprob', '0.5', '--torchcompile', 'eager'],
        'cam-erase': ['--epochs', '2', '--mixup-off-epoch', '1', '--reprob', '0.5', '--cam-erase-warmup-epochs', '0'],
    }
    for mode in timm_camaug.MIX_MODES:
        add(f'mode-{mode}', fp, ['--mix-mode', mode] + per_mode.get(mode, []))
    # TransMix: labels completed from the training forward by the patched loss (CutMix batches only: alpha 0)
    vit = ['--mix-mode', 'transmix', '--model', 'test_vit', '--model-kwargs', 'patch_size=8',
           '--transmix-mixup-alpha', '0']
    add('transmix-vit', fp, vit + ['--amp', '--amp-dtype', 'bfloat16', '--grad-accum-steps', '2', '--smoothing', '0.1',
                                   '--drop-path', '0.1'])
    add('transmix-cnn', fp, ['--mix-mode', 'transmix', '--transmix-mixup-alpha', '0', '--channels-last',
                             '--no-prefetcher', '--amp', '--amp-dtype', 'bfloat16'])
    add('transmix-compile', fp, vit + ['--torchcompile', 'eager', '--epochs', '2'])
    add('resume', fp, ['--mix-mode', 'cam-erase', '--epochs', '3', '--cam-erase-warmup-epochs', '0',
                       '--resume', str(out / 'mode-cam-erase' / 'last.pth.tar')])
    if has_flag(patched[feature], '--train-img-sizes'):
        add('img-sizes', fp, ['--mix-mode', 'snapmix', '--train-img-sizes', '48', '64', '--seed', '3'])
    # schedules: half SnapMix, half timm's CutMix, with the prefetcher on (the loader must not mix); a CAM
    # warm-up of one epoch with timm's Mixup as the rest; a schedule recipe from configs/
    add('schedule-cutmix', fp, ['--mix-mode', 'snapmix', '--mix-mode-prob', '0.5', '--cutmix', '1.0',
                                '--smoothing', '0.1', '--seed', '5'])
    add('schedule-cam-start', fp, ['--mix-mode', 'snapmix,gutout', '--mix-mode-prob', '0.3', '--mixup', '0.4',
                                   '--epochs', '2', '--mix-cam-start-epoch', '1', '--no-prefetcher'])
    # a ViT built for 224 px trained at 64 px without --model-kwargs img_size=64: one message, exit 2
    add('vit-wrong-size', fp, ['--mix-mode', 'gutout', '--model', 'vit_tiny_patch16_224'])
    cfg_runs = ['cub_snapmix', 'cub_snapmix-cutmix']
    for name in cfg_runs:
        add(f'config-{name}', fp, ['--config', str(REPO / 'configs' / f'{name}.yaml'),
                                   '--pretrained-path', str(root / 'test_resnet.pth')])

    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get('PYTHONPATH')])))
    plans = [('main', dict(runs=runs, result=str(root / 'results.json')))] + \
        [(Path(p['result']).stem, dict(p, threads=1)) for p in own_timm_plans]
    for name, plan in plans:
        (root / f'plan-{name}.json').write_text(json.dumps(plan, indent=1))

    procs, rcs = [], {}

    def start(name):
        with open(root / f'runner-{name}.err', 'w') as err:
            procs.append(subprocess.Popen([sys.executable, str(RUNNER), str(root / f'plan-{name}.json')], env=env,
                                          stdout=err, stderr=subprocess.STDOUT))
        return procs[-1]

    # two lanes on a 2-core machine: the main plan, and beside it the one-run plans one after the other
    try:
        main_proc = start('main')
        for name, _ in plans[1:]:
            rcs[name] = start(name).wait(timeout=600)
        rcs['main'] = main_proc.wait(timeout=900)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    results = {}
    for name, plan in plans:
        got = json.loads(Path(plan['result']).read_text()) if Path(plan['result']).exists() else {}
        assert rcs[name] == 0 and len(got) == len(plan['runs']), (
            f"runner failed on {name} (rc {rcs[name]}):\n{(root / f'runner-{name}.err').read_text()[-3000:]}")
        results.update(got)
    return results, out, feature


def _ok(world, run_id):
    results, out, _ = world
    r = results[run_id]
    if not r['ok']:
        log = Path(r['log']).read_text()[-4000:] if Path(r['log']).exists() else ''
        pytest.fail(f"{run_id} failed: {r.get('error', '')[-3000:]}\n--- log tail ---\n{log}")
    return r


def _summary(world, run_id):
    with open(world[1] / run_id / 'summary.csv') as f:
        return list(csv.DictReader(f))


def _check_mode_run(r, mode, epochs=1, loss='SoftTargetCrossEntropy'):
    assert r['train_losses'] == [loss]
    (created,) = r['created']
    assert created['mode'] == MODE_CLASSES[mode]
    assert created['module'] == 'ResNet' and created['holds_training_module']
    calls = r['calls']
    assert len(calls) == STEPS * epochs
    for c in calls:
        assert c['grads_intact'] and c['params_intact'] and c['buffers_intact'] and c['flags_intact'], c
        assert c['target_shape'] == [BATCH, N_CLASSES] and c['out_shape'] == c['shape'] and c['target_finite']
    return calls


def test_stock_run_of_the_patched_train_py_is_unchanged(world, sources):
    for release in sources:
        stock, patched_run = _ok(world, f'stock-{release}'), _ok(world, f'stock-patched-{release}')
        assert _summary(world, f'stock-{release}') == _summary(world, f'stock-patched-{release}'), release
        assert stock['train_losses'] == patched_run['train_losses'] == ['LabelSmoothingCrossEntropy']
        assert 'created' not in patched_run and 'calls' not in patched_run


def test_stock_mixup_without_prefetcher_is_unchanged(world):
    """timm's own Mixup runs in the moved lines (part 4) and has no set_epoch (part 5)."""
    stock, patched_run = _ok(world, 'stock-mixup'), _ok(world, 'stock-mixup-patched')
    assert _summary(world, 'stock-mixup') == _summary(world, 'stock-mixup-patched')
    assert stock['train_losses'] == patched_run['train_losses'] == ['SoftTargetCrossEntropy']


def test_every_release_trains_with_a_mode_ema_and_accumulation(world, sources):
    git_dir = source_git_dir()
    for release in sources:
        r = _ok(world, f'ema-accum-{release}')
        if git_dir is not None:     # it ran with the release's own timm/, beside its train.py in checkouts/
            own = subprocess.run(['git', f'--git-dir={git_dir}', 'show', f'{_ref(release)}:timm/version.py'],
                                 capture_output=True, text=True, check=True).stdout
            assert re.search(rf"""__version__\s*=\s*['"]{re.escape(r['timm']['version'])}['"]""", own), \
                (release, r['timm'])
            assert Path(r['timm']['dir']).parts[-2:] == ('checkouts', release), (release, r['timm'])
        calls = _check_mode_run(r, 'snapmix')
        # with --grad-accum-steps 2 the second micro-batch's mix runs on top of the first's gradients
        assert any(c['grads_present'] for c in calls) and all(c['grads_intact'] for c in calls)
        assert r['set_epoch'] == [0]
        assert float(_summary(world, f'ema-accum-{release}')[0]['train_loss']) > 0


@pytest.mark.parametrize('mode', timm_camaug.MIX_MODES)
def test_mode_from_flags(world, mode):
    r = _ok(world, f'mode-{mode}')
    epochs = 2 if mode == 'cam-erase' else 1
    calls = _check_mode_run(r, mode, epochs=epochs, loss='BinaryCrossEntropy' if mode == 'attentive' else
                            'SoftTargetCrossEntropy')
    assert r['set_epoch'] == list(range(epochs))
    assert any(c['changed'] for c in calls if c['enabled'])
    rows = _summary(world, f'mode-{mode}')
    assert len(rows) == epochs and all(float(row['train_loss']) > 0 for row in rows)


def test_amp_bf16_channels_last_drop_path(world):
    r = _ok(world, 'mode-snapmix')
    (created,) = r['created']
    # --amp --amp-dtype bfloat16: the mode runs its CAM forward under train.py's own amp_autocast,
    # functools.partial(torch.autocast, device_type='cpu', dtype=torch.bfloat16)
    assert created['autocast_is_train_py_s'], created
    assert created['autocast'] == {'func': 'autocast', 'is_torch_autocast': True, 'device_type': 'cpu',
                                   'dtype': 'torch.bfloat16'}, created
    assert created['channels_last'], 'the model the mode holds is not channels-last (--channels-last)'
    assert created['drop_path'], 'no DropPath with drop_prob > 0 in the model the mode holds (--drop-path 0.1)'
    calls = r['calls']
    assert all(c['dtype'] == 'torch.float32' for c in calls)        # autocast is inside the step, input stays fp32
    assert min(c['target_min'] for c in calls) == 0.0                # --smoothing 0
    # the probes tell the difference: a run without those flags has none of them
    _, _, feature = world
    (plain,) = _ok(world, f'ema-accum-{feature}')['created']
    assert not plain['autocast']['is_torch_autocast'] and not plain['channels_last'] and not plain['drop_path'], plain


def test_schedule_with_timms_cutmix_and_the_prefetcher(world):
    """--mix-mode snapmix --mix-mode-prob 0.5 --cutmix 1.0: the loader does not mix (integer labels reach the
    schedule), both members are drawn, one soft-target loss throughout."""
    r = _ok(world, 'schedule-cutmix')
    assert r['train_losses'] == ['SoftTargetCrossEntropy']
    (created,) = r['created']
    assert created['mode'] == 'Schedule'
    calls = r['calls']
    assert all(c['target_in_ndim'] == 1 for c in calls), 'the loader mixed the batch (FastCollateMixup)'
    assert {c['drawn'] for c in calls} <= {'snapmix', 'timm Mixup'}
    assert all(c['target_shape'] == [BATCH, N_CLASSES] and c['target_finite'] for c in calls)
    assert all(c['grads_intact'] and c['params_intact'] and c['buffers_intact'] for c in calls)


def test_schedule_cam_start_epoch(world):
    """Until --mix-cam-start-epoch, the CAM modes give way to timm's Mixup (the rest of the schedule)."""
    calls = _ok(world, 'schedule-cam-start')['calls']
    first = {c['drawn'] for c in calls if c['epoch'] == 0}
    assert first == {'timm Mixup'}, first
    assert all(c['drawn'] in ('snapmix', 'gutout', 'timm Mixup') for c in calls if c['epoch'] == 1)
    assert all(c['target_in_ndim'] == 1 for c in calls)


def test_smoothing_is_baked_into_the_targets(world):
    calls = _ok(world, 'mode-saliencymix')['calls']
    # K = 3: with two labels mixed the third class keeps exactly the smoothing's off value s/K
    assert min(c['target_min'] for c in calls) == pytest.approx(0.1 / N_CLASSES, rel=1e-5)
    assert any(c['grads_present'] for c in calls)                    # --grad-accum-steps 2


def test_mixup_off_epoch_switches_the_mode_off(world):
    calls = _ok(world, 'mode-cam-erase')['calls']
    assert all(c['enabled'] for c in calls if c['epoch'] == 0)
    late = [c for c in calls if c['epoch'] == 1]
    assert len(late) == STEPS and all(not c['enabled'] and not c['changed'] for c in late)


def test_torchcompile_model_is_unwrapped_without_recompiles(world):
    r = _ok(world, 'mode-gutout')
    (created,) = r['created']
    _, _, feature = world
    if feature == 'main':
        # main compiles the task's trainable module: train.py passes the OptimizedModule wrapper, the
        # mode holds the plain ResNet inside it (v1.0.24 compiled the task instead and passed the ResNet)
        assert created['given'] == 'OptimizedModule', created
        assert created['given_is_wrapper'] and created['given_holds_module'], created
    else:                   # a train.py file of an unknown release: what it passes must be consistent
        assert created['given_is_wrapper'] == (created['given'] != 'ResNet'), created
        assert not created['given_is_wrapper'] or created['given_holds_module'], created
    assert created['module'] == 'ResNet' and created['holds_training_module']
    graphs = [c['dynamo_graphs'] for c in r['calls']]
    # the first mix runs before the first compiled forward; after it the CAM hooks cause no recompilation
    assert graphs[-1] >= 1 and len(set(graphs[1:])) == 1, graphs


def test_resume_from_checkpoint(world):
    r = _ok(world, 'resume')
    assert r['set_epoch'] == [2]
    _check_mode_run(r, 'cam-erase')
    assert [row['epoch'] for row in _summary(world, 'resume')] == ['2']


def test_train_img_sizes(world):
    results, _, feature = world
    if 'img-sizes' not in results:
        pytest.skip(f'train.py of {feature} has no --train-img-sizes')
    calls = _check_mode_run(_ok(world, 'img-sizes'), 'snapmix')
    sizes = {tuple(c['shape'][-2:]) for c in calls}
    assert sizes <= {(48, 48), (64, 64)} and len(sizes) == 2, sizes


def test_config_file_run(world):
    r = _ok(world, 'config-cub_snapmix')
    _check_mode_run(r, 'snapmix')
    log = Path(r['log']).read_text()
    assert re.search(r'Created SGD \(sgd\) optimizer: lr: 0\.01, momentum: 0\.9.*nesterov: True', log)


def test_start_up_problem_is_one_message_with_exit_code_2(world):
    """Issue 15, items 3 and 5: what the plugin finds while building the mix function ends train.py like its
    own argument errors (the message, the fix, exit 2), not as a traceback."""
    results, _, _ = world
    r = results['vit-wrong-size']
    assert not r['ok'] and r['error'] == 'SystemExit(2)'
    log = Path(r['log']).read_text()
    assert 'train.py: error: timm-camaug: gutout: VisionTransformer cannot take 64x64 inputs' in log
    assert '--model-kwargs img_size=<size>' in log and 'Traceback' not in log


def test_schedule_config_file_run(world):
    """configs/cub_snapmix-cutmix.yaml: mix_mode_prob as a YAML string, cutmix from timm's own key."""
    r = _ok(world, 'config-cub_snapmix-cutmix')
    (created,) = r['created']
    assert created['mode'] == 'Schedule' and r['train_losses'] == ['SoftTargetCrossEntropy']
    assert all(c['target_in_ndim'] == 1 for c in r['calls'])


# --- TransMix: targets completed after the forward, inside the real train.py

def _check_transmix_run(r, module, epochs=1):
    assert r['train_losses'] == ['SoftTargetCrossEntropy']
    (created,) = r['created']
    assert created['mode'] == 'TransMix' and created['module'] == module and created['holds_training_module']
    calls, done = r['calls'], r['finalized']
    assert len(calls) == len(done) == STEPS * epochs
    for c in calls:
        assert c['grads_intact'] and c['params_intact'] and c['buffers_intact'] and c['flags_intact'], c
    for f in done:      # every batch is CutMix (mixup alpha 0): each one's labels read from its own forward
        assert f['read_forward'] and f['finite'] and f['sums_to_one'] and not f['requires_grad'], f
        assert f['training'] and f['grad_enabled'], f   # the training step's own forward, not a validation one
    assert any(f['changed'] for f in done), 'the completed labels never differed from the area labels'
    return created, calls, done


def test_transmix_vit_amp_accumulation_prefetcher(world):
    """test_vit (class token): the class token's attention in the training forward, under bf16 autocast, with
    --grad-accum-steps 2 and the prefetcher (the default); the hook exists only while a batch is pending."""
    created, calls, done = _check_transmix_run(_ok(world, 'transmix-vit'), 'VisionTransformer')
    assert created['hooks_at_creation'] == 0 and created['drop_path']
    assert all(f['hooks_after'] == 0 and f['autocast'] for f in done)
    assert any(c['grads_present'] for c in calls)       # a mix on top of the first micro-batch's gradients
    assert min(c['target_min'] for c in calls) == pytest.approx(0.1 / N_CLASSES, rel=1e-5)


def test_transmix_cnn_extension_channels_last_no_prefetcher(world):
    """test_resnet (no class token): the extension's class maps of the captured final feature map."""
    created, _, done = _check_transmix_run(_ok(world, 'transmix-cnn'), 'ResNet')
    assert created['channels_last'] and created['autocast']['dtype'] == 'torch.bfloat16'
    assert all(f['hooks_after'] == 0 and f['autocast'] for f in done)


def test_transmix_under_torchcompile(world):
    """--torchcompile: the hook is registered at start-up (a compiled forward ignores later ones) and only armed
    while a batch is pending; after the first steps no step adds a graph (validation in between included)."""
    r = _ok(world, 'transmix-compile')
    created, _, done = _check_transmix_run(r, 'VisionTransformer', epochs=2)
    assert created['hooks_at_creation'] == 1 and all(f['hooks_after'] == 1 for f in done)
    graphs = [f['dynamo_graphs'] for f in done]
    # one graph for the armed training forward, reused by every step; validation (eval) adds its own in between
    assert graphs[0] >= 1 and len(set(graphs[:STEPS])) == 1 and len(set(graphs[STEPS:])) == 1, graphs
    assert graphs[-1] - graphs[0] <= 2, graphs


# --- --torchcompile with a real backend: opt-in (a cold inductor compile takes minutes on 2 CPU cores)

def test_torchcompile_inductor(patched, sources, tmp_path):
    if os.environ.get('TIMM_CAMAUG_TEST_INDUCTOR') != '1':
        pytest.skip('opt-in because of compile time: a cold inductor compile takes about two minutes on a 2-core '
                    'CPU; set TIMM_CAMAUG_TEST_INDUCTOR=1 to run it (test_torchcompile_model_is_unwrapped_without_'
                    'recompiles covers --torchcompile eager)')
    if not (shutil.which('g++') or shutil.which('c++')):
        pytest.skip('no C++ compiler: torch inductor cannot compile on this machine')
    data, out = tmp_path / 'data', tmp_path / 'out'
    _make_dataset(data)
    plan = dict(runs=[dict(id='inductor', script=str(patched[feature_release(sources)]), cwd=str(tmp_path),
                           argv=_common(data, out, 'inductor') + ['--mix-mode', 'snapmix', '--torchcompile'])],
                result=str(tmp_path / 'results.json'))
    (tmp_path / 'plan.json').write_text(json.dumps(plan))
    subprocess.run([sys.executable, str(RUNNER), str(tmp_path / 'plan.json')], check=True, timeout=1200)
    r = json.loads((tmp_path / 'results.json').read_text())['inductor']
    assert r['ok'], r.get('error')
    _check_mode_run(r, 'snapmix')
