""" `timm-camaug patch`: the anchor editing of train.py, on a small train.py-shaped fixture (runs everywhere).

The fixture holds the anchor lines the patch looks for and just enough code around them to compile; it is
not timm's train.py (tests/test_train_py.py patches the real releases when TIMM_TRAIN_PY is set).
"""
import difflib
import errno
import os
import re
import runpy
import tempfile
from pathlib import Path

import pytest

from timm_camaug import cli
from timm_camaug.train_patch import (
    MARKER, PARTS, PatchError, inspect_text, patch_file, patch_text, revert_text, unified_diff)

REPO = Path(__file__).resolve().parents[1]

FIXTURE = '''\
""" A train.py-shaped fixture for timm-camaug's patch tests: the anchor lines, not timm's code. """
import argparse

parser = argparse.ArgumentParser()
parser.add_argument('--mixup', type=float, default=0.)
parser.add_argument('--no-prefetcher', action='store_false', dest='prefetcher')


def _parse_args():
    return parser.parse_args([]), ''


def main():
    args, args_text = _parse_args()
    model = data_config = amp_autocast = device = None
    mixup_fn = None
    mixup_active = args.mixup > 0
    collate_fn = None
    if mixup_active:
        if args.prefetcher:
            assert not getattr(args, 'aug_splits', 0)  # collate conflict
            collate_fn = FastCollateMixup(args.mixup)
        else:
            mixup_fn = Mixup(args.mixup)
    if getattr(args, 'jsd_loss', False):
        train_loss_fn = 'jsd'
    elif mixup_active:
        # smoothing is handled with mixup target transform
        train_loss_fn = 'soft'
    else:
        train_loss_fn = 'ce'
    train_loss_fn = train_loss_fn.to(device=device)

    # setup checkpoint saver and eval metric tracking
    for epoch in range(2):
        train_metrics = train_one_epoch(
            epoch,
            args,
            mixup_fn=mixup_fn,
        )


def train_one_epoch(epoch, args, mixup_fn=None, device='cpu'):
    update_sample_count = 0
    for input, target in []:
        if not args.prefetcher:
            input, target = input.to(device=device), target.to(device=device)
            if mixup_fn is not None:
                input, target = mixup_fn(input, target)
        if getattr(args, 'channels_last', False):
            input = input.contiguous()
        global_batch_size = input.shape[0]
        update_sample_count += global_batch_size


def validate(args, loader=()):
    for input, target in loader:
        if not args.prefetcher:
            input = input.to('cpu')


if __name__ == '__main__':
    main()
'''

# each anchor, and the text that stands in for it in a fixture that lacks it
ANCHOR_REMOVALS = {
    1: ('def _parse_args():', 'def parse_arguments():'),
    2: ('    elif mixup_active:\n', '    elif mixup_active > 0:\n'),
    3: ('    # setup checkpoint saver and eval metric tracking\n', ''),
    4: ('            if mixup_fn is not None:\n                input, target = mixup_fn(input, target)\n', ''),
    5: ('        train_metrics = train_one_epoch(', '        train_metrics = run_epoch('),
    6: ('    train_loss_fn = train_loss_fn.to(device=device)\n', ''),
    7: ('            collate_fn = FastCollateMixup(args.mixup)\n', '            collate_fn = None\n'),
}


def changed_lines(before: str, after: str) -> int:
    return sum(1 for ln in difflib.unified_diff(before.splitlines(), after.splitlines(), lineterm='')
               if ln[:1] in '+-' and not ln.startswith(('+++', '---')))


def write(tmp_path, text, name='train.py', newline='') -> Path:
    p = tmp_path / name
    p.write_bytes(text.encode('utf-8') if not newline else text.replace('\n', newline).encode('utf-8'))
    return p


def run_cli(*argv):
    return cli.main(['patch', *map(str, argv)])


# --- the edit itself

def test_fixture_is_recognised_and_compiles():
    compile(FIXTURE, 'fixture', 'exec')
    assert [s.state for s in inspect_text(FIXTURE)] == ['stock'] * len(PARTS) and len(PARTS) == 7


def test_patch_applies_every_part_at_its_anchor():
    patched = patch_text(FIXTURE)
    assert [s.state for s in inspect_text(patched)] == ['applied'] * 7
    compile(patched, 'patched', 'exec')
    lines = patched.splitlines()
    marked = [ln for ln in lines if ln.endswith('  ' + MARKER)]
    assert len(marked) == 11
    # 1. module level, above the blank lines before `def _parse_args():`
    i = lines.index('def _parse_args():')
    assert lines[i - 4:i] == ['import timm_camaug.train_glue  # timm-camaug',
                              'timm_camaug.add_args(parser)  # timm-camaug', '', '']
    assert lines[i - 5].startswith("parser.add_argument('--no-prefetcher'")
    # 2. the loss branch
    assert '    elif mixup_active or timm_camaug.is_active(args):  # timm-camaug' in lines
    # 3. just above the checkpoint-saver comment, at its indent
    j = lines.index('    # setup checkpoint saver and eval metric tracking')
    assert lines[j - 2] == '    if timm_camaug.is_active(args):  # timm-camaug'
    assert lines[j - 1] == ('        mixup_fn = timm_camaug.train_glue.create_train_mix_fn('
                            'args, model, data_config, amp_autocast, device, train_loss_fn, mixup_fn)  # timm-camaug')
    # 4. the mix call sits after the prefetcher block, at the block statement's indent
    k = lines.index('        if not args.prefetcher:')
    assert lines[k + 1:k + 4] == [
        '            input, target = input.to(device=device), target.to(device=device)',
        '        if mixup_fn is not None:  # timm-camaug',
        '            input, target = mixup_fn(input, target)  # timm-camaug']
    # 5. set_epoch right before the call, not before the definition
    m = lines.index('        train_metrics = train_one_epoch(')
    assert lines[m - 2:m] == ["        if hasattr(mixup_fn, 'set_epoch'):  # timm-camaug",
                              '            mixup_fn.set_epoch(epoch)  # timm-camaug']
    definition = lines.index("def train_one_epoch(epoch, args, mixup_fn=None, device='cpu'):")
    assert MARKER not in lines[definition - 1]
    # the validation loop's prefetcher block is untouched
    assert "            input = input.to('cpu')" in lines
    # 6. the train loss wrapped right where train.py builds it
    n = lines.index('    train_loss_fn = train_loss_fn.to(device=device)')
    assert lines[n + 1] == '    train_loss_fn = timm_camaug.train_glue.wrap_train_loss(train_loss_fn, args, model)  # timm-camaug'
    # 7. the loader's collate mixes only without a mix mode; the other prefetcher tests are untouched
    c = lines.index('            collate_fn = FastCollateMixup(args.mixup)')
    assert lines[c - 2] == '        if args.prefetcher and not timm_camaug.is_active(args):  # timm-camaug'
    assert sum(1 for ln in lines if 'args.prefetcher' in ln and MARKER in ln) == 1


def test_patch_is_small():
    assert changed_lines(FIXTURE, patch_text(FIXTURE)) == 15 <= 30


def test_patch_is_idempotent_and_reverts_byte_for_byte():
    patched = patch_text(FIXTURE)
    assert patch_text(patched) == patched
    assert revert_text(patched) == FIXTURE
    assert revert_text(FIXTURE) == FIXTURE


def test_crlf_line_endings_are_kept(tmp_path):
    text = FIXTURE.replace('\n', '\r\n')
    patched = patch_text(text)
    assert patched.count('\r\n') == patched.count('\n')          # no bare '\n' introduced
    assert revert_text(patched) == text


def test_file_without_final_newline():
    text = FIXTURE.rstrip('\n')
    assert revert_text(patch_text(text)) == text


def test_several_train_one_epoch_calls_each_get_set_epoch():
    text = FIXTURE.replace('    # setup checkpoint saver and eval metric tracking\n',
                           '    # setup checkpoint saver and eval metric tracking\n'
                           '    for epoch in range(1):\n        train_one_epoch(epoch, args)\n')
    patched = patch_text(text)
    assert patched.count('mixup_fn.set_epoch(epoch)  # timm-camaug') == 2
    assert revert_text(patched) == text


# --- errors: named anchors, no half edits

@pytest.mark.parametrize('part', sorted(ANCHOR_REMOVALS))
def test_missing_anchor_is_named_and_nothing_is_written(tmp_path, part, capsys):
    old, new = ANCHOR_REMOVALS[part]
    assert old in FIXTURE
    text = FIXTURE.replace(old, new)
    with pytest.raises(PatchError, match=rf"anchor {part} not found: .*{re.escape(PARTS[part - 1].anchor[:12])}"):
        patch_text(text)
    p = write(tmp_path, text)
    before = p.read_bytes()
    assert run_cli(p) == 2
    err = capsys.readouterr().err
    assert f'anchor {part} not found' in err and 'The file was not changed' in err
    assert 'see patches/ in the timm-camaug source repository' in err
    assert p.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ['train.py']       # no temporary or backup file left behind


def test_two_missing_anchors_are_both_named():
    text = FIXTURE.replace(*ANCHOR_REMOVALS[2]).replace(*ANCHOR_REMOVALS[3])
    with pytest.raises(PatchError, match=r"anchor 2 not found.*; anchor 3 not found"):
        patch_text(text)


def test_not_a_train_py(tmp_path, capsys):
    p = write(tmp_path, 'import os\n\nprint(os.getcwd())\n', name='setup.py')
    assert run_cli(p) == 2
    assert "does not look like timm's train.py: none of the anchor lines was found" in capsys.readouterr().err
    assert p.read_text() == 'import os\n\nprint(os.getcwd())\n'


def test_binary_file_is_refused(tmp_path, capsys):
    p = tmp_path / 'train.py'
    p.write_bytes(b'\x89PNG\r\n\x1a\n\xff\xfe')
    assert run_cli(p) == 2
    assert 'is not UTF-8 text' in capsys.readouterr().err


def test_ambiguous_anchor():
    text = FIXTURE.replace("    else:\n        train_loss_fn = 'ce'",
                           "    elif mixup_active:\n        pass\n    else:\n        train_loss_fn = 'ce'")
    with pytest.raises(PatchError,
                       match=r"anchor 2 \('elif mixup_active:'\) found 2 times, at lines \d+, \d+; expected once"):
        patch_text(text)


def test_mix_call_that_is_not_last_in_the_prefetcher_block_is_refused():
    text = FIXTURE.replace('                input, target = mixup_fn(input, target)\n',
                           '                input, target = mixup_fn(input, target)\n'
                           '            input = input.float()\n')
    with pytest.raises(PatchError,
                       match=r"anchor 4 .* is not the last statement of its 'if not args.prefetcher:' block"):
        patch_text(text)


def test_original_that_does_not_compile_is_refused():
    text = FIXTURE.replace('    mixup_fn = None\n', '    mixup_fn = (None\n')
    with pytest.raises(PatchError, match=r'the original text does not compile'):
        patch_text(text)


def test_partly_patched_file_is_refused_until_reverted():
    patched = patch_text(FIXTURE)
    partial = patched.replace('    elif mixup_active or timm_camaug.is_active(args):  # timm-camaug',
                              '    elif mixup_active:')
    with pytest.raises(PatchError, match=r'is partly patched \(part\(s\) 1, 3, 4, 5, 6, 7 applied, the others not\); '
                                         r'run `timm-camaug patch --revert` first'):
        patch_text(partial)
    assert revert_text(partial) == FIXTURE


def test_hand_edited_marked_line_blocks_the_revert():
    patched = patch_text(FIXTURE)
    edited = patched.replace('mixup_fn.set_epoch(epoch)  # timm-camaug', 'mixup_fn.set_epoch(epoch + 1)  # timm-camaug')
    with pytest.raises(PatchError, match=r"line\(s\) \d+, \d+ carry the '# timm-camaug' mark but are not one of the "
                                         r"patch's lines"):
        revert_text(edited)


def test_failed_write_leaves_the_original(tmp_path, monkeypatch):
    p = write(tmp_path, FIXTURE)

    def broken_replace(src, dst):
        raise OSError(errno.ENOSPC, 'No space left on device')

    monkeypatch.setattr(os, 'replace', broken_replace)
    with pytest.raises(PatchError, match=rf'cannot write {re.escape(str(p))}: No space left on device; '
                                         r'the file was not changed') as e:
        patch_file(p)
    assert isinstance(e.value.__cause__, OSError)
    assert p.read_text() == FIXTURE
    assert os.listdir(tmp_path) == ['train.py']


def _fail_with(exc):
    def broken(*a, **kw):
        raise exc
    return broken


@pytest.mark.parametrize('where', ['mkstemp', 'fsync', 'replace'])
@pytest.mark.parametrize('action', ['patch', 'revert'])
def test_cli_unwritable_file_is_a_clear_error(tmp_path, monkeypatch, capsys, where, action):
    """No permission / disk full at any step of the atomic write: rc 2, one line, the file as it was."""
    text = FIXTURE if action == 'patch' else patch_text(FIXTURE)
    p = write(tmp_path, text)
    exc = {'mkstemp': PermissionError(errno.EACCES, 'Permission denied', str(tmp_path)),
           'fsync': OSError(errno.ENOSPC, 'No space left on device'),
           'replace': PermissionError(errno.EACCES, 'Permission denied')}[where]
    if where == 'mkstemp':
        monkeypatch.setattr(tempfile, 'mkstemp', _fail_with(exc))
    else:
        monkeypatch.setattr(os, where, _fail_with(exc))
    assert run_cli(*(['--revert'] if action == 'revert' else []), p) == 2
    captured = capsys.readouterr()
    assert captured.err == f'timm-camaug patch: error: cannot write {p}: {exc.strerror}; the file was not changed\n'
    assert captured.out == ''
    assert p.read_bytes() == text.encode()
    assert os.listdir(tmp_path) == ['train.py']       # no temporary file left behind


def test_cli_unwritable_file_with_backup_leaves_no_backup(tmp_path, monkeypatch, capsys):
    p = write(tmp_path, FIXTURE)
    monkeypatch.setattr(tempfile, 'mkstemp', _fail_with(PermissionError(errno.EACCES, 'Permission denied')))
    assert run_cli('--backup', p) == 2
    assert 'cannot write' in capsys.readouterr().err
    assert os.listdir(tmp_path) == ['train.py']       # the next --backup is not blocked by a stale .orig
    monkeypatch.undo()
    assert run_cli('--backup', p) == 0
    assert (tmp_path / 'train.py.orig').read_bytes() == FIXTURE.encode()


@pytest.mark.parametrize('option', [None, '--check', '--diff', '--revert'])
def test_cli_unreadable_file_is_a_clear_error(tmp_path, monkeypatch, capsys, option):
    p = write(tmp_path, FIXTURE)
    monkeypatch.setattr(Path, 'read_bytes', _fail_with(PermissionError(errno.EACCES, 'Permission denied', str(p))))
    assert run_cli(*([option] if option else []), p) == 2
    captured = capsys.readouterr()
    assert captured.err == f'timm-camaug patch: error: cannot read {p}: Permission denied; the file was not changed\n'
    monkeypatch.undo()
    assert p.read_bytes() == FIXTURE.encode()


# --- the command

def test_cli_patch_check_idempotent_revert(tmp_path, capsys):
    p = write(tmp_path, FIXTURE)
    os.chmod(p, 0o640)
    assert run_cli('--check', p) == 1
    out = capsys.readouterr().out
    assert out.count(': not applied') == 7 and 'would apply all 7 parts' in out

    assert run_cli(p) == 0
    out = capsys.readouterr().out
    assert out.startswith(f'patched {p}') and f'timm-camaug patch --revert {p}' in out
    patched = p.read_text()
    assert patched == patch_text(FIXTURE)
    assert (os.stat(p).st_mode & 0o777) == 0o640

    assert run_cli(p) == 0
    assert 'is already patched; nothing to do' in capsys.readouterr().out
    assert p.read_text() == patched

    assert run_cli('--check', p) == 0
    out = capsys.readouterr().out
    assert out.count(': applied') == 7 and out.rstrip().endswith(': patched')

    assert run_cli('--revert', p) == 0
    assert f'reverted {p}' in capsys.readouterr().out
    assert p.read_bytes() == FIXTURE.encode()
    assert run_cli('--revert', p) == 0
    assert 'is not patched; nothing to revert' in capsys.readouterr().out
    assert os.listdir(tmp_path) == ['train.py']


def test_cli_check_reports_a_missing_anchor(tmp_path, capsys):
    p = write(tmp_path, FIXTURE.replace(*ANCHOR_REMOVALS[3]))
    assert run_cli('--check', p) == 2
    captured = capsys.readouterr()
    assert 'part 3 (build the mix function on the final model): ANCHOR MISSING' in captured.out
    assert 'cannot apply' in captured.err and 'anchor 3 not found' in captured.err


def test_cli_accepts_a_checkout_directory_and_warns_on_another_timm_release(tmp_path, capsys):
    p = write(tmp_path, FIXTURE)
    (tmp_path / 'timm').mkdir()
    (tmp_path / 'timm' / 'version.py').write_text("__version__ = '0.0.1'\n")
    assert run_cli(tmp_path) == 0
    captured = capsys.readouterr()
    assert 'warning:' in captured.err and 'belongs to timm 0.0.1' in captured.err
    # python puts the script's directory first on sys.path: train.py imports the timm/ beside it
    assert 'imports the timm/ package beside it, i.e. timm 0.0.1' in captured.err and 'sys.path' in captured.err
    assert inspect_text(p.read_text())[0].state == 'applied'


def test_cli_directory_without_train_py(tmp_path, capsys):
    assert run_cli(tmp_path) == 2
    assert 'is a directory without a train.py' in capsys.readouterr().err


def test_cli_backup(tmp_path, capsys):
    p = write(tmp_path, FIXTURE)
    assert run_cli('--backup', p) == 0
    assert 'the original is in train.py.orig' in capsys.readouterr().out
    assert (tmp_path / 'train.py.orig').read_bytes() == FIXTURE.encode()
    assert run_cli('--revert', p) == 0
    assert run_cli('--backup', p) == 2          # the earlier backup is never overwritten
    assert 'train.py.orig exists already' in capsys.readouterr().err
    assert p.read_bytes() == FIXTURE.encode()


def test_cli_diff_changes_nothing(tmp_path, capsys):
    p = write(tmp_path, FIXTURE)
    assert run_cli('--diff', p) == 0
    out = capsys.readouterr().out
    assert out.startswith('--- a/train.py\n+++ b/train.py\n')
    assert out == unified_diff(FIXTURE, patch_text(FIXTURE))
    assert p.read_text() == FIXTURE


def test_cli_diff_of_a_patched_file_says_so(tmp_path, capsys):
    p = write(tmp_path, patch_text(FIXTURE))
    assert run_cli('--diff', p) == 0
    captured = capsys.readouterr()
    assert captured.out == ''                          # stdout stays an (empty) diff
    assert captured.err == f'{p} is already patched; no diff to show\n'
    assert p.read_text() == patch_text(FIXTURE)


def test_cli_follows_a_symlink(tmp_path):
    real = write(tmp_path, FIXTURE, name='real_train.py')
    link = tmp_path / 'train.py'
    link.symlink_to(real)
    assert run_cli(link) == 0
    assert link.is_symlink() and inspect_text(real.read_text())[1].state == 'applied'


def test_patched_fixture_runs_with_the_plugin_flags(tmp_path):
    """The inserted module-level lines import the plugin and give the parser --mix-mode."""
    p = write(tmp_path, patch_text(FIXTURE))
    ns = runpy.run_path(str(p), run_name='fixture')
    dests = {a.dest for a in ns['parser']._actions}
    assert {'mix_mode', 'snapmix_beta', 'cam_erase_t'} <= dests
    args, _ = ns['_parse_args']()
    assert args.mix_mode == 'none'


# --- the hand-applicable diff under patches/

def test_patches_dir_diff_is_the_commands_output_format():
    diffs = sorted((REPO / 'patches').glob('train-v*.diff'))
    assert [d.name for d in diffs] == ['train-v1.0.28.diff']
    text = diffs[0].read_text()
    header, body = text.split('--- a/train.py\n', 1)
    assert 'timm-camaug patch' in header and 'v1.0.28' in header
    assert all(ln.startswith('#') or not ln.strip() for ln in header.splitlines())
    plus = [ln for ln in body.splitlines() if ln.startswith('+') and not ln.startswith('+++')]
    minus = [ln for ln in body.splitlines() if ln.startswith('-') and not ln.startswith('---')]
    assert len(plus) + len(minus) <= 30
    assert all(ln.endswith('  ' + MARKER) for ln in plus)
    assert len(plus) == 11 and len(minus) == 4
