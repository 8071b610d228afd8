""" `timm-camaug patch` on a train.py that the plugin's earlier release patched: ``--revert`` gives timm's
original back byte for byte, and ``patch`` upgrades it (the earlier release had parts 1 to 5 only, and its
part 3 built the mix function without train.py's train loss and Mixup).

The earlier release's text is made here from a stock text: this release's patch, with part 6's line taken
out, part 7's line put back and part 3's call as the earlier release wrote it; ``EARLIER_LINES`` (the
earlier release's own marked lines, from its patches/train-v1.0.28.diff) checks that this is its text.
"""
import os
import subprocess
from pathlib import Path

import pytest

from test_train_patch import FIXTURE, run_cli, write
from timm_camaug.train_patch import (
    MARKER, PatchError, inspect_text, patch_text, patched_by_earlier_release, revert_text)

SUFFIX = '  ' + MARKER
# the lines the earlier release added or changed, in file order, without their indentation and mark
EARLIER_LINES = [
    'import timm_camaug.train_glue',
    'timm_camaug.add_args(parser)',
    'elif mixup_active or timm_camaug.is_active(args):',
    'if timm_camaug.is_active(args):',
    'mixup_fn = timm_camaug.train_glue.create_train_mix_fn(args, model, data_config, amp_autocast, device)',
    "if hasattr(mixup_fn, 'set_epoch'):",
    'mixup_fn.set_epoch(epoch)',
    'if mixup_fn is not None:',
    'input, target = mixup_fn(input, target)',
]
NEW_CALL = 'amp_autocast, device, train_loss_fn, mixup_fn)' + SUFFIX
OLD_CALL = 'amp_autocast, device)' + SUFFIX
P6_CALL = 'timm_camaug.train_glue.wrap_train_loss('
P7_LINE = 'if args.prefetcher and not timm_camaug.is_active(args):' + SUFFIX


def earlier_release_patch(text: str) -> str:
    """What the earlier release (parts 1 to 5, the five-argument part 3) made of a stock train.py's text."""
    lines = []
    for line in patch_text(text).splitlines(keepends=True):
        body = line.rstrip('\r\n')
        eol = line[len(body):]
        if P6_CALL in body:
            continue
        if body.endswith(P7_LINE):
            body = body[:-len(P7_LINE)] + 'if args.prefetcher:'
        elif body.endswith(NEW_CALL):
            body = body[:-len(NEW_CALL)] + OLD_CALL
        lines.append(body + eol)
    earlier = ''.join(lines)
    assert [ln.strip()[:-len(SUFFIX)].strip() for ln in earlier.splitlines() if ln.endswith(SUFFIX)] == EARLIER_LINES
    return earlier


def _cli(capsys, *argv):
    rc = run_cli(*argv)
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def test_earlier_release_is_recognised():
    earlier = earlier_release_patch(FIXTURE)
    compile(earlier, 'earlier', 'exec')
    states = inspect_text(earlier)
    assert [s.state for s in states] == ['applied'] * 5 + ['stock'] * 2
    assert [s.earlier for s in states] == [False, False, True, False, False, False, False]
    assert "applied as timm-camaug's earlier release wrote it" in states[2].describe()
    assert patched_by_earlier_release(earlier)
    assert not patched_by_earlier_release(FIXTURE) and not patched_by_earlier_release(patch_text(FIXTURE))


@pytest.mark.parametrize('newline', ['\n', '\r\n'], ids=['lf', 'crlf'])
@pytest.mark.parametrize('bom', ['', '\ufeff'], ids=['', 'bom'])
def test_earlier_release_reverts_to_the_original_and_upgrades(newline, bom):
    stock = bom + FIXTURE.replace('\n', newline)
    earlier = earlier_release_patch(stock)
    assert revert_text(earlier) == stock
    assert patch_text(earlier) == patch_text(stock)
    assert [s.state for s in inspect_text(patch_text(earlier))] == ['applied'] * 7


def test_cli_revert_of_an_earlier_release_then_patch(tmp_path, capsys):
    """What train.py's start-up tells TransMix users to do: --revert, then patch."""
    p = write(tmp_path, earlier_release_patch(FIXTURE))
    rc, out, err = _cli(capsys, '--revert', p)
    assert (rc, out, err) == (0, f"reverted {p}\n", '')
    assert p.read_bytes() == FIXTURE.encode('utf-8')
    assert _cli(capsys, p)[0] == 0
    assert p.read_text() == patch_text(FIXTURE)


def test_cli_patch_upgrades_an_earlier_release(tmp_path, capsys):
    earlier = earlier_release_patch(FIXTURE)
    p = write(tmp_path, earlier)
    rc, out, err = _cli(capsys, '--check', p)
    assert rc == 1 and err == ''
    assert out.endswith(f"{p}: patched by timm-camaug's earlier release; `timm-camaug patch {p}` would upgrade it "
                        f"(`timm-camaug patch --revert {p}` restores timm's original)\n")
    assert p.read_text() == earlier
    rc, out, err = _cli(capsys, '--backup', p)
    assert rc == 0 and err == ''
    assert out == (f"upgraded {p}: the patch of timm-camaug's earlier release replaced by this release's (the file "
                   f"as it was is in train.py.orig; `timm-camaug patch --revert {p}` restores timm's original)\n")
    assert p.read_text() == patch_text(FIXTURE)
    assert (tmp_path / 'train.py.orig').read_text() == earlier
    assert _cli(capsys, '--check', p)[0] == 0
    assert _cli(capsys, '--revert', p)[0] == 0 and p.read_bytes() == FIXTURE.encode('utf-8')


def test_earlier_release_edited_by_hand_is_refused_with_the_line():
    lines = earlier_release_patch(FIXTURE).splitlines(keepends=True)
    lines.insert(1, f'print("mine"){SUFFIX}\n')
    text = ''.join(lines)
    for action in (patch_text, revert_text):
        with pytest.raises(PatchError, match=r"line\(s\) 2 carry the '# timm-camaug' mark but are not one of the "
                                             r"patch's lines \(edited by hand\?\)"):
            action(text)


# --- timm's real train.py v1.0.28 (TIMM_TRAIN_PY: that train.py file, or the timm git directory)

def _train_py_v1_0_28() -> str:
    value = os.environ.get('TIMM_TRAIN_PY')
    if not value:
        pytest.skip('set TIMM_TRAIN_PY to a timm train.py or the timm git directory to run')
    p = Path(value)
    if p.is_file():
        return p.read_bytes().decode('utf-8')
    git_dir = p if (p / 'HEAD').is_file() else p / '.git'
    res = subprocess.run(['git', '--git-dir', str(git_dir), 'show', 'v1.0.28:train.py'], capture_output=True)
    if res.returncode:
        pytest.fail(f'TIMM_TRAIN_PY={value}: no v1.0.28:train.py there ({res.stderr.decode().strip()})')
    return res.stdout.decode('utf-8')


def test_real_train_py_patched_by_the_earlier_release(tmp_path, capsys):
    stock = _train_py_v1_0_28()
    earlier = earlier_release_patch(stock)
    assert [s.state for s in inspect_text(earlier)] == ['applied'] * 5 + ['stock'] * 2
    p = write(tmp_path, earlier)
    assert _cli(capsys, '--revert', p)[0] == 0
    assert p.read_bytes() == stock.encode('utf-8')
    p.write_bytes(earlier.encode('utf-8'))
    rc, out, err = _cli(capsys, p)
    assert rc == 0 and out.startswith(f'upgraded {p}')
    assert p.read_text() == patch_text(stock)
