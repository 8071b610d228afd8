""" train.py's start-up checks of the schedule flags: ``--mix-cam-start-epoch`` against the epochs train.py runs
(``--epochs`` + ``--cooldown-epochs``, counted from 0), and ``--mix-mode-prob`` / ``--mix-cam-start-epoch`` given
without a mix mode, which nothing would read. """
import re

import pytest
import torch

from test_schedule import _batch, _model, _parser
from timm_camaug import create_mix_fn


def _train_parser():
    """test_schedule's train.py flags and train.py's own epoch-count flags (their defaults as train.py has them)."""
    parser = _parser()
    parser.add_argument('--cooldown-epochs', type=int, default=0)
    parser.add_argument('--warmup-epochs', type=int, default=5)
    parser.add_argument('--warmup-prefix', action='store_true', default=False)
    parser.add_argument('--lr-cycle-limit', type=int, default=1)
    parser.add_argument('--sched', default='cosine')
    return parser


def _refusal(argv=(), **config):
    """The one-line refusal of ``argv`` (and of YAML ``--config`` keys ``config``), as parser.error prints it."""
    parser = _train_parser()
    parser.set_defaults(**config)
    with pytest.raises(SystemExit) as e:
        parser.parse_args(list(argv))
    assert e.value.code == 2
    return e


START_BEYOND = ("--mix-cam-start-epoch {start} is beyond {counted}: train.py's epochs are 0 to {last}, so the guided "
                "modes would never run; lower it to {last} or less")
WITHOUT_MODE = ("{flag} {value} is given without a mix mode (--mix-mode none, the default): it sets the mix modes' "
                "schedule and would be ignored; add --mix-mode MODE (e.g. --mix-mode snapmix), or drop {flag} "
                "(config key {key})")
REFUSED = [
    (['--mix-mode', 'snapmix', '--mix-cam-start-epoch', '10'], {},
     START_BEYOND.format(start=10, counted='--epochs 10', last=9)),
    (['--mix-mode', 'snapmix', '--mix-cam-start-epoch', '11'], {},
     START_BEYOND.format(start=11, counted='--epochs 10', last=9)),
    (['--mix-mode', 'snapmix', '--mix-cam-start-epoch', '12', '--cooldown-epochs', '2'], {},
     START_BEYOND.format(start=12, counted='--epochs 10 + --cooldown-epochs 2', last=11)),
    (['--mix-mode', 'snapmix', '--mix-cam-start-epoch', '15', '--cooldown-epochs', '2', '--warmup-epochs', '3',
      '--warmup-prefix'], {},
     START_BEYOND.format(start=15, counted='--epochs 10 + --cooldown-epochs 2 + --warmup-epochs 3 (--warmup-prefix)',
                         last=14)),
    (['--mix-mode-prob', '0.5'], {}, WITHOUT_MODE.format(flag='--mix-mode-prob', value='0.5', key='mix_mode_prob')),
    (['--mix-mode', 'none', '--mix-mode-prob', '0.3,0.3'], {},
     WITHOUT_MODE.format(flag='--mix-mode-prob', value='0.3,0.3', key='mix_mode_prob')),
    (['--mix-cam-start-epoch', '3'], {},
     WITHOUT_MODE.format(flag='--mix-cam-start-epoch', value='3', key='mix_cam_start_epoch')),
    ([], {'mix_mode': 'none', 'mix_mode_prob': [0.4, 0.4]},
     WITHOUT_MODE.format(flag='--mix-mode-prob', value='0.4,0.4', key='mix_mode_prob')),
]


@pytest.mark.parametrize('argv, config, message', REFUSED,
                         ids=[' '.join(a) or repr(c) for a, c, _ in REFUSED])
def test_refused(argv, config, message, capsys):
    _refusal(argv, **config)
    err = capsys.readouterr().err
    assert re.search(re.escape(message), err), err


def test_both_schedule_flags_without_a_mode_are_named_each():
    from timm_camaug.args import check_train_args
    args = _train_parser().parse_known_args([])[0]
    args.mix_mode_prob, args.mix_cam_start_epoch = '0.5', 2
    assert check_train_args(args) == [
        WITHOUT_MODE.format(flag='--mix-mode-prob', value='0.5', key='mix_mode_prob'),
        WITHOUT_MODE.format(flag='--mix-cam-start-epoch', value='2', key='mix_cam_start_epoch')]


@pytest.mark.parametrize('argv', [
    [],
    ['--mix-mode', 'none'],
    ['--mix-mode', 'none', '--mix-cam-start-epoch', '0'],
    ['--mix-mode', 'snapmix', '--mix-cam-start-epoch', '9'],
    ['--mix-mode', 'snapmix', '--epochs', '0'],       # start 0 holds nothing back, whatever the epochs
    ['--mix-mode', 'snapmix', '--mix-cam-start-epoch', '11', '--cooldown-epochs', '2'],
    ['--mix-mode', 'snapmix', '--mix-cam-start-epoch', '14', '--cooldown-epochs', '2', '--warmup-epochs', '3',
     '--warmup-prefix'],
    ['--mix-mode', 'snapmix', '--mix-cam-start-epoch', '15', '--lr-cycle-limit', '2'],   # cycles lengthen the run
], ids=lambda a: ' '.join(a) or 'stock')
def test_accepted(argv):
    _train_parser().parse_args(argv)


@pytest.mark.parametrize('sched', ['cosine', 'step'])
@pytest.mark.parametrize('epochs, cooldown, warmup_prefix', [(4, 0, False), (4, 2, False), (4, 1, True)])
def test_the_bound_is_never_below_the_epochs_timm_runs(sched, epochs, cooldown, warmup_prefix):
    """train.py runs ``range(start_epoch, num_epochs)`` with ``num_epochs`` from timm's create_scheduler_v2: a
    start epoch the check refuses is never one of them (for a cosine schedule, exactly the ones past them)."""
    from timm.scheduler import create_scheduler_v2
    from timm_camaug.args import check_train_args
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    _, num_epochs = create_scheduler_v2(optimizer, sched=sched, num_epochs=epochs, warmup_epochs=2,
                                        cooldown_epochs=cooldown, warmup_prefix=warmup_prefix, decay_epochs=2)
    argv = ['--mix-mode', 'snapmix', '--epochs', str(epochs), '--cooldown-epochs', str(cooldown),
            '--warmup-epochs', '2'] + (['--warmup-prefix'] if warmup_prefix else [])
    for start in range(num_epochs + 3):
        args = _train_parser().parse_known_args(argv + ['--mix-cam-start-epoch', str(start)])[0]
        refused = any('--mix-cam-start-epoch' in p for p in check_train_args(args))
        if refused:
            assert start >= num_epochs, (start, num_epochs)
        if sched == 'cosine':
            assert refused == (start >= num_epochs), (start, num_epochs)


def test_the_last_start_epoch_accepted_runs_the_guided_mode_in_the_last_epoch():
    """--epochs 3 --cooldown-epochs 1: train.py's epochs are 0 to 3; start 3 is accepted and SnapMix draws in 3."""
    args = _train_parser().parse_args(['--mix-mode', 'snapmix', '--mix-mode-prob', '0.5', '--cutmix', '1.0',
                                       '--epochs', '3', '--cooldown-epochs', '1', '--mix-cam-start-epoch', '3'])
    mix = create_mix_fn(args, model=_model(), data_config={'input_size': (3, 32, 32)},
                        generator=torch.Generator().manual_seed(0))
    x, y = _batch()
    for epoch, expected in ((2, {'timm Mixup'}), (3, {'snapmix', 'timm Mixup'})):
        mix.set_epoch(epoch)
        assert {mix.drawn_name(mix.make_params(x, y)) for _ in range(16)} == expected, epoch


def test_a_configs_mode_switched_off_on_the_command_line_keeps_its_schedule_keys_unused():
    """A --config file with a schedule, run with --mix-mode none (the comparison without mixing): accepted."""
    parser = _train_parser()
    parser.set_defaults(mix_mode='snapmix', mix_mode_prob='0.5', mix_cam_start_epoch=2, cutmix=1.0)
    args = parser.parse_args(['--mix-mode', 'none'])
    assert (args.mix_mode, args.mix_mode_prob, args.mix_cam_start_epoch) == ('none', '0.5', 2)
