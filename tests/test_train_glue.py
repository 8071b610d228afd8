""" What a patched train.py calls (timm_camaug.train_glue), and the configs/ files, without timm's train.py. """
import argparse
import re
from functools import partial
from pathlib import Path

import pytest
import timm
import torch
import yaml
from torch import nn

from conftest import assert_same_state, fill_grads, state_snapshot
from helpers import finalize_without_trace
from timm.loss import SoftTargetCrossEntropy
from timm_camaug import MIX_MODES, add_args, check_train_args, create_mix_fn, get_mode_class
from timm_camaug.factory import option_dest
from timm_camaug.train_glue import create_train_mix_fn, training_module, wrap_train_loss
from timm_camaug.capture import NoFeatureMap
from timm_camaug.extractor import CheckpointError, HubUnreachableError
from timm_camaug.modes.options import OptionError

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / 'configs').glob('*.yaml'))
DATASETS = {'cub': 200, 'cars': 196, 'aircraft': 100}
# configs/<dataset>_<row>.yaml: rows of the results table beside the modes (the modes' own rows are named after
# them; the test plugin's mode has none)
OTHER_ROWS = ('baseline', 'cutmix', 'mixup', 'baseline-plus', 'baseline-plus-snapmix', 'snapmix-cutmix',
              'vit_baseline')
CONFIG_ROWS = OTHER_ROWS + tuple(m for m in MIX_MODES if get_mode_class(m).__module__.startswith('timm_camaug.'))
K = 3


@pytest.fixture(scope='module')
def resnet18_checkpoint(tmp_path_factory):
    """A random timm resnet18 saved to a file: the attentive extractor without a download."""
    path = tmp_path_factory.mktemp('extractor') / 'resnet18.pth'
    torch.save(timm.create_model('resnet18').state_dict(), path)
    return str(path)


def train_args(mode, checkpoint, *extra):
    """train.py-like args: add_args' flags parsed from a command line, plus what train.py itself sets."""
    parser = argparse.ArgumentParser()
    add_args(parser)
    argv = ['--mix-mode', mode, *extra]
    if mode == 'attentive':
        argv += ['--attentive-extractor', 'resnet18', '--attentive-extractor-checkpoint', checkpoint,
                 '--attentive-extractor-size', '64', '--attentive-top-n', '2']
    args = parser.parse_args(argv)
    args.num_classes, args.smoothing, args.epochs, args.rank = K, 0.1, 4, 0
    return args


def small_model():
    torch.manual_seed(0)
    return timm.create_model('test_resnet', num_classes=K).train()


def batch(n=4, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g), torch.randint(0, K, (n,), generator=g)


# --- the plain model inside train.py's wrappers

class _DDPLike(nn.Module):
    """DistributedDataParallel's shape (a .module attribute) without a process group."""

    def __init__(self, module):
        super().__init__()
        self.module = module


def test_training_module_unwraps_every_train_py_wrapper():
    from timm.task.distillation import FeatureDistillationTrainableModule
    model = small_model()
    assert training_module(model) is model
    assert training_module(_DDPLike(model)) is model
    assert training_module(torch.compile(model, backend='eager')) is model
    assert training_module(torch.compile(_DDPLike(model), backend='eager')) is model     # v1.0.20: compile(DDP(m))
    assert training_module(_DDPLike(torch.compile(model, backend='eager'))) is model     # main: DDP(compile(m))
    assert training_module(nn.DataParallel(model)) is model
    assert training_module(FeatureDistillationTrainableModule(model, nn.Linear(4, 4))) is model
    assert training_module(_DDPLike(FeatureDistillationTrainableModule(model))) is model


@pytest.mark.parametrize('mode', MIX_MODES)
def test_create_train_mix_fn_builds_the_mode_on_the_plain_model(mode, resnet18_checkpoint):
    model = small_model()
    wrapped = torch.compile(_DDPLike(model), backend='eager')
    args = train_args(mode, resnet18_checkpoint)
    loss_fn = wrap_train_loss(SoftTargetCrossEntropy(), args, wrapped)        # patch part 6, as train.py calls it
    mix_fn = create_train_mix_fn(args, wrapped, data_config={'input_size': (3, 64, 64)}, device='cpu',
                                 loss_fn=loss_fn)
    assert loss_fn.mix_fn is mix_fn
    assert type(mix_fn) is get_mode_class(mode)
    assert mix_fn.num_classes == K and mix_fn.label_smoothing == 0.1
    if mix_fn.uses_model:
        assert mix_fn.model is model
    if mode == 'cam-erase':
        assert mix_fn.warmup_epochs == 2       # half of args.epochs when the flag is not given


@pytest.mark.parametrize('mode', MIX_MODES)
@pytest.mark.parametrize('amp', [False, True], ids=['fp32', 'bf16-channels-last'])
def test_accumulated_gradients_and_model_state_are_untouched(mode, amp, resnet18_checkpoint):
    """train.py zeroes .grad only after an optimiser step: the mix between micro-batches must not touch it."""
    model = small_model()
    autocast = partial(torch.autocast, device_type='cpu', dtype=torch.bfloat16) if amp else None
    if amp:
        model = model.to(memory_format=torch.channels_last)
    extra = ('--cam-erase-warmup-epochs', '0') if mode == 'cam-erase' else ()
    args = train_args(mode, resnet18_checkpoint, *extra)
    mix_fn = create_train_mix_fn(args, model, data_config={'input_size': (3, 64, 64)}, amp_autocast=autocast,
                                 device='cpu', loss_fn=wrap_train_loss(SoftTargetCrossEntropy(), args, model))
    x, y = batch()
    model(x).sum().backward()           # a first micro-batch's gradients
    fill_grads(model)                   # ... made distinctive
    before = state_snapshot(model)
    for seed in range(3):
        x, y = batch(seed=seed)
        if amp:
            x = x.contiguous(memory_format=torch.channels_last)
        xm, target = mix_fn(x, y)
        target = finalize_without_trace(mix_fn, model, xm, target)
        assert xm.shape == x.shape and target.shape == (4, K) and torch.isfinite(target).all()
    assert_same_state(before, state_snapshot(model))


def test_create_train_mix_fn_errors():
    args = argparse.Namespace(mix_mode='none')
    with pytest.raises(ValueError, match=r"--mix-mode is 'none'; train.py only calls this when a mode is set"):
        create_train_mix_fn(args, small_model())
    args = train_args('snapmix', '')
    args.mixup = 0.2
    with pytest.raises(ValueError, match=r"--mix-mode snapmix without --mix-mode-prob takes every batch, so "
                                         r"--mixup/--cutmix would never run; give the modes' share"):
        create_train_mix_fn(args, small_model(), exit_on_error=False)


@pytest.mark.parametrize('extra, message', [
    (('--snapmix-cam-layer', 'layer9'), r"snapmix: cam_layer='layer9': no module named 'layer9' in ResNet; close "
                                        r"names: layer4.*\(train.py: --snapmix-cam-layer NAME\)"),
    (('--snapmix-cam-layer', 'fc'), r"snapmix: cam_layer='fc': ResNet has no spatial feature map at target layer "
                                    r"'fc'.*\(train.py: --snapmix-cam-layer NAME\)"),
])
def test_start_up_problems_end_like_train_pys_argument_errors(extra, message, capsys, monkeypatch):
    """A problem found while building the mix function: one line on stderr naming the flag, exit 2, no
    traceback (issue 15, item 3)."""
    monkeypatch.setattr('sys.argv', ['train.py'])
    args = train_args('snapmix', '', *extra)
    with pytest.raises(SystemExit) as e:
        create_train_mix_fn(args, small_model(), data_config={'input_size': (3, 64, 64)})
    assert e.value.code == 2 and e.value.__cause__ is None
    err = capsys.readouterr().err
    assert err.startswith('train.py: error: timm-camaug: ') and len(err.strip().splitlines()) == 1
    assert re.search(message, err), err



def _option_error(option, message, mode):
    e = OptionError(option, message)
    e.mode = mode       # as create_mix_fn sets it: the flag is --<mode>-<option>
    return e


def _raise(error):
    def build(*args, **kwargs):
        raise error
    return build


@pytest.mark.parametrize('error, message', [
    (ValueError('snapmix: the model has no convolution'), 'snapmix: the model has no convolution'),
    (_option_error('cam_layer', "snapmix: cam_layer='x': no module named 'x'", 'snapmix'),
     r"argument --snapmix-cam-layer: snapmix: cam_layer='x': no module named 'x'"),
    (CheckpointError("'w.pth' is empty (0 bytes)"), r"'w.pth' is empty \(0 bytes\)"),
    (NoFeatureMap('ViT has no spatial feature map'), 'ViT has no spatial feature map'),
    (FileNotFoundError("'w.pth' does not exist"), "'w.pth' does not exist"),
    (HubUnreachableError("the pretrained weights of timm model 'resnet50' are not in the local cache"),
     "the pretrained weights of timm model 'resnet50' are not in the local cache"),
], ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else '')
def test_start_up_errors_of_the_users_making_end_in_one_line(error, message, capsys, monkeypatch):
    """The plugin's errors for flags, options, files and weights: train.py's own argument-error form."""
    monkeypatch.setattr('sys.argv', ['train.py'])
    monkeypatch.setattr('timm_camaug.train_glue.create_mix_fn', _raise(error))
    with pytest.raises(SystemExit) as e:
        create_train_mix_fn(train_args('snapmix', ''), small_model())
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert re.fullmatch(r'train.py: error: timm-camaug: ' + message + r'\n', err), err


@pytest.mark.parametrize('error, match', [
    (torch.cuda.OutOfMemoryError('CUDA out of memory. Tried to allocate 2.00 GiB'), 'CUDA out of memory'),
    (RuntimeError('mat1 and mat2 shapes cannot be multiplied (4x512 and 256x3)'), 'shapes cannot be multiplied'),
    (RuntimeError('Expected all tensors to be on the same device, but found at least two devices'), 'same device'),
    (TypeError("unsupported operand type(s) for +: 'NoneType' and 'int'"), 'unsupported operand'),
    (AttributeError("'NoneType' object has no attribute 'shape'"), "no attribute 'shape'"),
    (KeyError('input_size'), 'input_size'),
], ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else '')
def test_other_start_up_errors_keep_their_traceback(error, match, capsys, monkeypatch):
    """A bug or an exhausted device is not an argument error: it propagates as it was raised."""
    monkeypatch.setattr('sys.argv', ['train.py'])
    monkeypatch.setattr('timm_camaug.train_glue.create_mix_fn', _raise(error))
    with pytest.raises(type(error), match=match) as e:
        create_train_mix_fn(train_args('snapmix', ''), small_model())
    assert e.value is error and e.value.__traceback__ is not None
    assert capsys.readouterr().err == ''


# --- start-up checks added for train.py

def test_sync_bn_is_refused_with_a_batch_statistics_cam():
    args = argparse.Namespace(mix_mode='snapmix', sync_bn=True, snapmix_cam_bn='batch')
    (problem,) = check_train_args(args)
    assert problem == ("--mix-mode snapmix with --snapmix-cam-bn batch runs SyncBatchNorm (--sync-bn) in its CAM "
                       "forward, a collective that hangs when the ranks' random draws differ; "
                       "add --snapmix-cam-bn eval")
    assert check_train_args(argparse.Namespace(mix_mode='snapmix', sync_bn=True, snapmix_cam_bn='eval')) == []
    assert check_train_args(argparse.Namespace(mix_mode='saliencymix', sync_bn=True)) == []
    assert check_train_args(argparse.Namespace(mix_mode='none', sync_bn=True, mixup=0.5)) == []


def _loss_parser():
    """train.py's loss flags, then add_args (whose parse_args runs check_train_args)."""
    parser = argparse.ArgumentParser()
    parser.add_argument('--bce-loss', action='store_true', default=False)
    parser.add_argument('--bce-target-thresh', type=float, default=None)
    add_args(parser)
    return parser


BCE_PROBLEM = ("--mix-mode snapmix with --bce-loss: SnapMix's soft targets can exceed 1 (when both images of a pair "
               "have the same label, each weight becomes w_a + w_b, as the authors do, so one class can get up to 4), "
               "which is not a valid binary cross-entropy target; add --bce-target-thresh (e.g. 0.2) to binarise the "
               "targets, or drop --bce-loss (SoftTargetCrossEntropy)")


def test_snapmix_with_bce_loss_needs_a_target_threshold(capsys):
    args = _loss_parser().parse_known_args(['--mix-mode', 'snapmix', '--bce-loss'])[0]
    assert check_train_args(args) == [BCE_PROBLEM]
    with pytest.raises(SystemExit):
        _loss_parser().parse_args(['--mix-mode', 'snapmix', '--bce-loss'])
    assert BCE_PROBLEM in capsys.readouterr().err
    # timm binarises the targets with a threshold; the other modes' targets stay in [0, 1]
    assert _loss_parser().parse_args(['--mix-mode', 'snapmix', '--bce-loss', '--bce-target-thresh', '0.2']).bce_loss
    for mode in ('saliencymix', 'gutout', 'cam-erase'):
        assert _loss_parser().parse_args(['--mix-mode', mode, '--bce-loss']).bce_loss


@pytest.mark.parametrize('argv,message', [
    (['--mix-mode', 'snapmix', '--snapmix-beta', 'nan'], '--snapmix-beta: snapmix: beta must be > 0, got nan'),
    (['--mix-mode', 'snapmix', '--snapmix-prob', '1.5'], r'--snapmix-prob: snapmix: prob must be a number in \[0, 1\], got 1.5'),
    (['--mix-mode', 'saliencymix', '--saliencymix-beta', '-1'], '--saliencymix-beta: saliencymix: beta must be > 0'),
    (['--mix-mode', 'gutout', '--gutout-t-std', '-0.1'], '--gutout-t-std: gutout: t_std must be >= 0, got -0.1'),
    (['--mix-mode', 'gutout', '--gutout-fill', 'nan'], '--gutout-fill: gutout: fill must be a finite number, got nan'),
    (['--mix-mode', 'cam-erase', '--cam-erase-area-min', '0.5', '--cam-erase-area-max', '0.1'],
     '--cam-erase-area-min: cam-erase: need 0 < area_min <= area_max <= 1, got 0.5, 0.1'),
    (['--mix-mode', 'cam-erase', '--cam-erase-aspect-max', 'inf'],
     '--cam-erase-aspect-max: cam-erase: need 0 < aspect_min <= aspect_max, got 0.3, inf'),
    (['--mix-mode', 'cam-erase', '--cam-erase-gamma', '-1'], '--cam-erase-gamma: cam-erase: gamma must be >= 0, got -1.0'),
    (['--mix-mode', 'attentive', '--attentive-top-n', '0'], '--attentive-top-n: attentive: top_n must be an int >= 1, got 0'),
])
def test_bad_option_values_are_refused_at_parse_time(argv, message, capsys):
    """The selected mode's options are checked as its constructor checks them, before anything is built."""
    parser = argparse.ArgumentParser()
    add_args(parser, validate=False)
    (problem,) = check_train_args(parser.parse_args(argv))
    assert re.fullmatch(message + '.*', problem)
    parser = argparse.ArgumentParser()
    add_args(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(argv)
    assert re.search(message, capsys.readouterr().err)


def test_only_the_selected_modes_options_are_checked():
    parser = argparse.ArgumentParser()
    add_args(parser)
    assert parser.parse_args(['--mix-mode', 'gutout', '--snapmix-beta', '-1']).snapmix_beta == -1


def test_boolean_flag_values(capsys):
    """A boolean option's flag takes 1/true/yes/on or 0/false/no/off; any other word is an error, not False."""
    from timm_camaug.modes.options import Option, parse_bool
    flag_type = Option('flag', False, 'a boolean option', bool).flag_type()
    assert flag_type is parse_bool and Option('flag', True, 'a boolean option').flag_type() is parse_bool
    for value in ('1', 'true', 'True', 'YES', 'on'):
        assert parse_bool(value) is True
    for value in ('0', 'false', 'False', 'no', 'OFF'):
        assert parse_bool(value) is False
    parser = argparse.ArgumentParser()
    parser.add_argument('--x-flag', type=flag_type, default=False)
    assert parser.parse_args(['--x-flag', 'yes']).x_flag is True
    for value in ('maybe', '', '2', 'nope'):
        with pytest.raises(argparse.ArgumentTypeError, match=f"expected a boolean .*, got {value!r}"):
            parse_bool(value)
        with pytest.raises(SystemExit):
            parser.parse_args(['--x-flag', value])
        assert f"argument --x-flag: expected a boolean (1/true/yes/on or 0/false/no/off), got {value!r}" \
            in capsys.readouterr().err


@pytest.mark.parametrize('value,why', [('2', "must be in (0, 1], got '2'"), ('nan', "must be in (0, 1], got 'nan'"),
                                       ('half', "expected a number in (0, 1], got 'half'")])
def test_cam_scale_flag_error_names_the_flag(value, why, capsys):
    parser = argparse.ArgumentParser()
    add_args(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(['--mix-mode', 'snapmix', '--snapmix-cam-scale', value])
    assert f"argument --snapmix-cam-scale: {why}" in capsys.readouterr().err


# --- configs/: YAML for train.py --config

def test_one_config_per_dataset_and_row():
    assert sorted(c.name for c in CONFIGS) == sorted(f'{d}_{m}.yaml' for d in DATASETS for m in CONFIG_ROWS)


def _camaug_dests():
    parser = argparse.ArgumentParser()
    add_args(parser)
    return {a.dest: a for a in parser._actions if a.dest != 'help'}


@pytest.mark.parametrize('config', CONFIGS, ids=[c.stem for c in CONFIGS])
def test_config_keys_and_values(config, resnet18_checkpoint):
    """Every timm-camaug key is one of add_args' options and its value is accepted; the mode matches the name."""
    text = config.read_text()
    cfg = yaml.safe_load(text)
    dataset, row = config.stem.split('_', 1)
    assert text.startswith('# timm-camaug: ') and '# How each part is expressed here, and what differs:' in text
    assert cfg['data_dir'] == f'data/{dataset}' and cfg['num_classes'] == DATASETS[dataset]
    modes = [m for m in str(cfg['mix_mode']).split(',') if m != 'none']
    if row in MIX_MODES:
        assert modes == [row]
    dests = _camaug_dests()
    prefixes = ('mix_',) + tuple(option_dest(m, '') for m in MIX_MODES)
    ours = {k: v for k, v in cfg.items() if k.startswith(prefixes)}
    assert set(ours) <= set(dests), f'unknown timm-camaug keys: {sorted(set(ours) - set(dests))}'
    for key, value in ours.items():
        if dests[key].choices is not None:
            assert value in dests[key].choices, key
    mode_keys = {k for k in ours if not k.startswith('mix_')}
    assert all(k.startswith(tuple(option_dest(m, '') for m in modes)) for k in mode_keys), 'options of another mode'
    args = argparse.Namespace(**{**{d: a.default for d, a in dests.items()}, **cfg})
    assert check_train_args(args) == []
    if not modes:
        return
    attentive = {'extractor': 'resnet18', 'extractor_checkpoint': resnet18_checkpoint}
    extra = {m: attentive for m in modes if get_mode_class(m).auxiliary_network}
    arch = cfg['model'].split('.')[0]
    # a transformer recipe gets its own architecture (random weights, at 64 px); a CNN one a small stand-in
    model = (timm.create_model(arch, num_classes=cfg['num_classes'], img_size=64) if 'vit' in arch or 'deit' in arch
             else timm.create_model('test_resnet', num_classes=cfg['num_classes']))
    mix_fn = create_mix_fn(args, model=model, data_config={'input_size': (3, 64, 64)},
                           **(extra.get(modes[0], {}) if len(modes) == 1 and 'mix_mode_prob' not in cfg
                              else {'options': extra}))
    built = {modes[0]: mix_fn} if len(modes) == 1 and not hasattr(mix_fn, 'members') else \
        {name: m for name, _, m in mix_fn.members}
    for key in mode_keys:
        mode_name = next(m for m in modes if key.startswith(option_dest(m, '')))
        option = key[len(option_dest(mode_name, '')):]
        if option in attentive or (option == 'prob' and hasattr(mix_fn, 'members')):
            continue
        derived = get_mode_class(mode_name).train_defaults(args, {option: None}) if cfg[key] is None else {}
        assert getattr(built[mode_name], option) == derived.get(option, cfg[key]), key


def _config(dataset, mode='snapmix'):
    return yaml.safe_load((REPO / 'configs' / f'{dataset}_{mode}.yaml').read_text())


@pytest.mark.parametrize('dataset', sorted(DATASETS))
def test_config_recipe_optimizer_and_schedule(dataset):
    """lr 0.001 backbone / 0.01 classifier, weight decay on every parameter, the authors' lr steps."""
    from timm.optim import create_optimizer_v2, optimizer_kwargs
    from timm.scheduler import create_scheduler_v2
    cfg = _config(dataset)
    model = timm.create_model('resnet50', num_classes=cfg['num_classes'])
    opt = create_optimizer_v2(model, **optimizer_kwargs(argparse.Namespace(**cfg)), **cfg['opt_kwargs'])
    assert type(opt) is torch.optim.SGD and opt.defaults['nesterov'] and opt.defaults['momentum'] == 0.9
    sched, epochs = create_scheduler_v2(
        opt, sched=cfg['sched'], num_epochs=cfg['epochs'], decay_milestones=cfg['decay_milestones'],
        decay_rate=cfg['decay_rate'], warmup_epochs=cfg['warmup_epochs'], cooldown_epochs=cfg['cooldown_epochs'])
    assert epochs == 200
    # the scheduler applies each group's layer-decay lr_scale
    names = {id(p): n for n, p in model.named_parameters()}
    lr_of = {names[id(p)]: g['lr'] for g in opt.param_groups for p in g['params']}
    wd_of = {names[id(p)]: g['weight_decay'] for g in opt.param_groups for p in g['params']}
    assert set(lr_of) == set(names.values())
    assert {n: lr for n, lr in lr_of.items() if n.startswith('fc.')} == {'fc.weight': 0.01, 'fc.bias': 0.01}
    backbone = [lr for n, lr in lr_of.items() if not n.startswith('fc.')]
    assert len(backbone) == len(lr_of) - 2 and backbone == pytest.approx([0.001] * len(backbone), rel=1e-9)
    assert set(wd_of.values()) == {1e-4}
    # torch's MultiStepLR([80, 150, 180]) stepped after each epoch, as the authors' loop does
    reference = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.01)
    torch_sched = torch.optim.lr_scheduler.MultiStepLR(reference, milestones=[80, 150, 180], gamma=0.1)
    fc_group = next(i for i, g in enumerate(opt.param_groups) if any(names[id(p)] == 'fc.weight' for p in g['params']))
    for epoch in range(200):
        sched.step(epoch)       # train.py: the lr of epoch e is set by step(e) (step(e + 1) after epoch e)
        assert opt.param_groups[fc_group]['lr'] == pytest.approx(reference.param_groups[0]['lr'], rel=1e-9), epoch
        reference.step()
        torch_sched.step()


@pytest.mark.parametrize('dataset', sorted(DATASETS))
def test_config_recipe_transforms(dataset):
    """CUB: short side 512 (or 448) then a random 448 crop; Cars/Aircraft: a fixed-area window of 76.6 %."""
    from PIL import Image
    from timm.data import create_transform
    cfg = _config(dataset)
    train = create_transform(cfg['img_size'], is_training=True, train_crop_mode=cfg['train_crop_mode'],
                             scale=cfg['scale'], ratio=cfg['ratio'], hflip=cfg['hflip'],
                             color_jitter=cfg['color_jitter'],
                             interpolation=cfg['train_interpolation'])
    first = train.transforms[0]
    img = Image.new('RGB', (900, 600))
    torch.manual_seed(0)
    assert all(tuple(train(img).shape) == (3, 448, 448) for _ in range(3))
    if dataset == 'cub':
        sides = {min(first.get_params(img, (448, 448), 0., first.random_scale_prob, first.random_scale_range,
                                      first.random_scale_area, first.random_aspect_prob,
                                      first.random_aspect_range)) for _ in range(64)}
        assert sides == {448, 512}
    else:
        for _ in range(64):
            _, _, h, w = first.get_params(img, first.scale, first.ratio)
            assert h * w / (600 * 900) == pytest.approx(0.765625, abs=0.005) and 4 / 3 - 0.01 <= w / h <= 16 / 9 + 0.01
    evaluation = create_transform(cfg['img_size'], is_training=False, crop_pct=cfg['crop_pct'],
                                  interpolation=cfg['interpolation'])
    assert evaluation.transforms[0].size == 512 and tuple(evaluation.transforms[1].size) == (448, 448)


def test_a_mode_reading_the_forward_needs_the_wrapped_loss(capsys, monkeypatch):
    """TransMix completes its labels from the training forward through the loss that patch part 6 wraps; a train.py
    whose loss is not wrapped (patched by the earlier release) is told how to upgrade, instead of training on
    area labels without a word."""
    monkeypatch.setattr('sys.argv', ['train.py'])
    with pytest.raises(SystemExit) as e:
        create_train_mix_fn(train_args('transmix', ''), small_model(), loss_fn=torch.nn.CrossEntropyLoss())
    assert e.value.code == 2
    assert re.fullmatch(r"train.py: error: timm-camaug: --mix-mode transmix completes its targets from the training "
                        r"forward, but train.py's loss is not wrapped: a train.py patched by the earlier release; "
                        r"upgrade it with `timm-camaug patch train.py`\n", capsys.readouterr().err)
