""" The ``timm-camaug`` console script: every subcommand registered, the error each raises for a bad input, and
the list of mix modes that demo and bench share. """
import argparse

import pytest

from timm_camaug import MIX_MODES, cli
from timm_camaug.console import command_error, mode_rows


def test_every_subcommand_is_registered():
    sub = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert list(sub.choices) == list(cli.COMMANDS)


def test_command_error():
    error = command_error('bench', '--repeats must be >= 1, got 0')
    assert isinstance(error, SystemExit) and error.code == 'timm-camaug bench: --repeats must be >= 1, got 0'


@pytest.mark.parametrize('text, take_none, rows', [
    ('snapmix', True, ['snapmix']),
    (' cutmix , mixup ,', True, ['cutmix', 'mixup']),
    ('snapmix:0.5+cutmix:0.5,gutout', True, ['snapmix:0.5+cutmix:0.5', 'gutout']),
    ('all', False, list(MIX_MODES)),
    ('cutmix,all,snapmix', False, ['cutmix', *MIX_MODES]),       # repeats kept once, in first-seen order
    ('none,snapmix', True, ['none', 'snapmix']),
])
def test_mode_rows(text, take_none, rows):
    assert mode_rows(text, take_none=take_none) == rows


@pytest.mark.parametrize('text, take_none, match', [
    ('mixupp', True, r"^unknown mix mode mixupp; choose one of snapmix, .*cutmix, mixup \(timm's own\), a schedule "
                     r"such as a:0.5\+b:0.5, 'all', 'none', or a comma-separated list of these$"),
    ('snapmix:0.5+mixupp:0.5', True, r"^unknown mix mode mixupp; "),
    ('all:0.5+cutmix:0.5', True, r"^unknown mix mode all; "),
    ('none', False, r"^'none' \(no mixing\) is not a row here; choose one of .*, 'all', or a comma-separated"),
    (' , ', True, r"^no mix mode in ' , '; choose one of "),
    ('snapmix:0.5+cutmix', True, r"give every member a probability, or none of them"),
    ('snapmix:1.5', True, r"must be a probability in \[0, 1\]"),
])
def test_mode_rows_refusals(text, take_none, match):
    with pytest.raises(ValueError, match=match):
        mode_rows(text, take_none=take_none)
