""" `timm-camaug patch`: what it refuses and warns about, as the command line shows it (rc, message), and the
cases that were wrong before (issue 15, item 12): line numbers of stray marks, a UTF-8 byte-order mark, a
train.py older than v1.0.20 outside a checkout, and ``--backup`` in both directions. """
import os
import subprocess

import pytest

from test_train_patch import FIXTURE, run_cli, write
from timm_camaug.train_patch import MARKER, PatchError, inspect_text, patch_text, revert_text

OLD_FIXTURE = FIXTURE.replace('        update_sample_count += global_batch_size\n', '')
BOM = '\ufeff'


def _cli(capsys, *argv):
    rc = run_cli(*argv)
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def test_stray_mark_is_named_by_its_line_in_the_file(tmp_path, capsys):
    """The marked line is named by its number in the file as it is, not after the patch's lines are removed."""
    lines = patch_text(FIXTURE).splitlines(keepends=True)
    last_patch_line = max(i for i, ln in enumerate(lines) if MARKER in ln)
    lines.insert(last_patch_line + 3, f'    print("mine")  {MARKER}\n')     # below every patch line
    text = ''.join(lines)
    stray = last_patch_line + 4
    assert MARKER in text.splitlines()[stray - 1]
    with pytest.raises(PatchError, match=rf"line\(s\) {stray} carry the '# timm-camaug' mark but are not one of the "
                                         r"patch's lines"):
        revert_text(text)
    p = write(tmp_path, text)
    rc, out, err = _cli(capsys, '--revert', p)
    assert rc == 2 and f'line(s) {stray} carry' in err and p.read_text() == text


def test_utf8_byte_order_mark_is_kept(tmp_path, capsys):
    """Python runs a train.py that starts with a BOM; the patch does too, and keeps the mark."""
    text = BOM + FIXTURE
    assert [s.state for s in inspect_text(text)] == ['stock'] * 7
    patched = patch_text(text)
    assert patched.startswith(BOM) and patched[1:] == patch_text(FIXTURE)
    assert revert_text(patched) == text
    p = write(tmp_path, text)
    rc, out, err = _cli(capsys, p)
    assert rc == 0 and out.startswith(f'patched {p}') and err == ''
    assert p.read_bytes().startswith(b'\xef\xbb\xbf')
    assert _cli(capsys, '--check', p)[0] == 0
    assert _cli(capsys, '--revert', p)[0] == 0
    assert p.read_bytes() == text.encode('utf-8')


OLD_WARNING = (r"warning: {p} looks like the train.py of a timm release older than v1.0.20 (it lacks "
               r"'update_sample_count += global_batch_size', which every train.py from v1.0.20 on has); the patch is "
               r"tested on the train.py of timm v1.0.20 to the current main branch only: use the train.py of the timm "
               r"release you run")


@pytest.mark.parametrize('action', [(), ('--check',), ('--diff',)], ids=['patch', 'check', 'diff'])
def test_bare_train_py_older_than_v1_0_20_warns(tmp_path, capsys, action):
    p = write(tmp_path, OLD_FIXTURE)
    rc, out, err = _cli(capsys, *action, p)
    assert rc == (1 if action == ('--check',) else 0)
    assert err.startswith(OLD_WARNING.format(p=p))
    (tmp_path / 'new').mkdir()
    assert _cli(capsys, *action, write(tmp_path / 'new', FIXTURE))[2] == ''    # v1.0.20 or later: no warning


def test_checkout_older_than_v1_0_20_warns_even_with_the_same_timm_installed(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr('timm_camaug.train_patch._installed_timm', lambda: '1.0.19')
    (tmp_path / 'timm').mkdir()
    (tmp_path / 'timm' / 'version.py').write_text("__version__ = '1.0.19'\n")
    p = write(tmp_path, OLD_FIXTURE)
    rc, out, err = _cli(capsys, tmp_path)
    assert rc == 0 and err == (f"warning: {p} belongs to timm 1.0.19, older than v1.0.20: the patch is tested on the "
                               "train.py of timm v1.0.20 to the current main branch only; use a newer checkout (git "
                               "checkout v1.0.20 or later)\n")


def test_revert_backup_keeps_the_patched_file(tmp_path, capsys):
    """--backup keeps the file as it was before the command in both directions: train.py.orig when patching,
    train.py.patched when reverting; an existing backup is never overwritten."""
    p = write(tmp_path, FIXTURE)
    assert _cli(capsys, '--backup', p)[0] == 0
    patched = p.read_text()
    rc, out, err = _cli(capsys, '--revert', '--backup', p)
    assert rc == 0 and out == f"reverted {p} (the patched file is in train.py.patched)\n"
    assert p.read_text() == FIXTURE
    assert (tmp_path / 'train.py.patched').read_text() == patched
    assert (tmp_path / 'train.py.orig').read_text() == FIXTURE
    assert _cli(capsys, p)[0] == 0
    rc, out, err = _cli(capsys, '--revert', '--backup', p)
    assert rc == 2 and err == (f"timm-camaug patch: error: {tmp_path / 'train.py.patched'} exists already; move it "
                               "away or run without --backup. Nothing was changed.\n")
    assert p.read_text() == patched
    rc, out, err = _cli(capsys, '--revert', '--backup', tmp_path)          # a checkout directory too
    assert rc == 2 and 'train.py.patched exists already' in err
    os.remove(tmp_path / 'train.py.patched')
    assert _cli(capsys, '--revert', '--backup', tmp_path)[0] == 0
    assert sorted(os.listdir(tmp_path)) == ['train.py', 'train.py.orig', 'train.py.patched']
    rc, out, err = _cli(capsys, '--revert', '--backup', p)         # nothing to revert: no backup written
    assert rc == 0 and out == f"{p} is not patched; nothing to revert\n"


@pytest.mark.parametrize('action', ['--check', '--diff'])
def test_backup_with_an_action_that_writes_nothing_is_refused(tmp_path, capsys, action):
    p = write(tmp_path, FIXTURE)
    rc, out, err = _cli(capsys, action, '--backup', p)
    assert rc == 2 and err == (f"timm-camaug patch: error: --backup keeps a copy of a file this command changes; "
                               f"{action} changes nothing\n")
    assert os.listdir(tmp_path) == ['train.py']


@pytest.mark.skipif(not os.environ.get('TIMM_TRAIN_PY'), reason='set TIMM_TRAIN_PY to a timm git repository')
@pytest.mark.parametrize('tag', ['v1.0.19', 'v1.0.20', 'main'])
def test_real_releases_older_than_v1_0_20_warn(tmp_path, capsys, tag):
    repo = os.environ['TIMM_TRAIN_PY']
    if os.path.isfile(repo):
        pytest.skip('TIMM_TRAIN_PY names one train.py; the releases need the git repository')
    git_dir = repo if os.path.isfile(os.path.join(repo, 'HEAD')) else os.path.join(repo, '.git')
    text = subprocess.run(['git', '--git-dir', git_dir, 'show', f'{tag}:train.py'],
                          capture_output=True, text=True, check=True).stdout
    p = write(tmp_path, text)
    rc, out, err = _cli(capsys, '--check', p)
    assert rc == 1
    assert (OLD_WARNING.format(p=p) in err) == (tag == 'v1.0.19')
