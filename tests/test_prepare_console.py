""" The console helpers prepare shares with the other commands (timm_camaug.console): the progress bar with
and without tqdm, byte sizes and printable paths. """
import io
import os
import sys

import pytest

from timm_camaug.console import format_bytes, printable, progress_bar


@pytest.mark.parametrize('n, text', [(0, '0 bytes'), (999, '999 bytes'), (1000, '1.0 kB'), (12_345_678, '12.3 MB'),
                                     (1_234_567_890, '1.2 GB')])
def test_format_bytes(n, text):
    assert format_bytes(n) == text


def test_plain_progress_without_tqdm(monkeypatch):
    monkeypatch.setitem(sys.modules, 'tqdm', None)  # import tqdm -> ImportError, even with tqdm.auto cached
    out = io.StringIO()
    bar = progress_bar(20, 'train', unit='step', file=out)
    for i in range(20):
        bar.update()
        bar.set_postfix(epoch=i // 10, loss='0.5', refresh=False)
    bar.close()
    lines = out.getvalue().splitlines()
    assert lines[0] == 'train: 20 steps'
    assert lines[1] == 'train: 10% (2/20), epoch=0, loss=0.5'
    assert lines[-1] == 'train: 100% (20/20), epoch=1, loss=0.5' and len(lines) == 11


@pytest.mark.parametrize('tqdm_installed', [True, False])
def test_disabled_progress_prints_nothing(monkeypatch, capsys, tqdm_installed):
    if not tqdm_installed:
        monkeypatch.setitem(sys.modules, 'tqdm', None)
    bar = progress_bar(3, 'quiet', enabled=False)
    bar.update(3)
    bar.set_postfix(loss=1)
    bar.close()
    assert capsys.readouterr() == ('', '')


def test_printable_escapes_bytes_that_are_not_utf8():
    name = os.fsdecode(b'/data/caf\xc3\xa9/\xff')
    assert printable(name) == '/data/café/\\xff'
    printable(name).encode('utf-8')  # a strict UTF-8 stream accepts it
