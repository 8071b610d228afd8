""" `timm-camaug prepare` as a careless or hostile user drives it: `--overwrite` replaces only a tree that is
exactly what prepare wrote (its manifest), the tree gets the permissions `mkdir` / `cp -r` give under the
user's umask, and bad input ends in one clear message with nothing of the user's changed. """
import errno
import json
import os
import re
import shutil
import stat
from pathlib import Path

import pytest

from test_prepare import _jpeg, leftovers, make_aircraft, make_cub, prepare, snapshot
from timm_camaug.datasets import prepare_dataset, tree
from timm_camaug.datasets.listing import PrepareError
from timm_camaug.datasets.manifest import MANIFEST_FILE, read_manifest

ROOT_USER = hasattr(os, 'geteuid') and os.geteuid() == 0  # permission bits do not stop root


@pytest.fixture(scope='module')
def cub_download(tmp_path_factory):
    """One miniature CUB download shared by the tests that only read it."""
    return make_cub(tmp_path_factory.mktemp('dl'))[0]


def _first_image(folder: Path) -> Path:
    return sorted(p for p in folder.rglob('*.jpg'))[0]


def _refused(dst: Path, *argv) -> None:
    """Run prepare with --overwrite: it must fail and leave ``dst`` exactly as it was."""
    before = snapshot(dst)
    assert prepare(*argv, '--overwrite') == 1
    assert snapshot(dst) == before and leftovers(dst) == []


# ---------------------------------------------------------------------------------------------------------
# --overwrite replaces only an unchanged tree (issue 15, item 1)

def _own_photo(path: Path, size=(40, 30)):
    _jpeg(path, (9, 99, 199), size=size)


def _replace_with_own_photo(dst, root):
    victim = _first_image(dst / 'train')
    victim.unlink()
    _own_photo(victim)  # same name, the user's own bytes


def _swap_one_for_own(dst, root):
    """One of prepare's images removed and the user's own added in the same folder: the count is unchanged."""
    victim = _first_image(dst / 'train')
    victim.unlink()
    _own_photo(victim.parent / 'zz_mine.jpg')


def _retarget_link(dst, root):
    link = _first_image(dst / 'val')
    mine = root.parent / 'mine.jpg'
    _own_photo(mine)
    link.unlink()
    link.symlink_to(mine)


def _link_becomes_file(dst, root):
    link = _first_image(dst / 'val')
    target = link.resolve()
    link.unlink()
    shutil.copyfile(target, link)


def _edit_class_map_same_size(dst, root):
    lines = (dst / 'class_map.txt').read_text().splitlines()
    lines[0], lines[1] = lines[0][:4] + lines[1][4:], lines[1][:4] + lines[0][4:]
    (dst / 'class_map.txt').write_text(''.join(f'{x}\n' for x in lines))


FOLDER = r'train/000_Black_footed_Albatross/\S+\.jpg'
VAL_FOLDER = r'val/000_Black_footed_Albatross/\S+\.jpg'
SIZE = r'[\d,]+ bytes'

# (what the user did, dataset and flags, the change, the first difference the refusal names)
CHANGED_TREES = [
    ('own photo added (aircraft crops)', ('aircraft',),
     lambda dst, root: _own_photo(dst / 'train' / '000_707-320' / 'mine.jpg'),
     rf'train/000_707-320/mine\.jpg was added \(a file of {SIZE}\)'),
    ('own photo replaces a copy', ('cub', '--copy'), _replace_with_own_photo,
     rf'{FOLDER} has changed: it has {SIZE}, prepare wrote [\d,]+'),
    ('one copy swapped for own photo', ('cub', '--copy'), _swap_one_for_own,
     rf'{FOLDER} was removed \(prepare wrote a file of {SIZE} there\)'),
    ('one crop swapped for own photo', ('aircraft',), _swap_one_for_own,
     rf'train/000_707-320/\d+\.jpg was removed \(prepare wrote a file of {SIZE} there\)'),
    ('one link removed', ('cub',), lambda dst, root: _first_image(dst / 'val').unlink(),
     rf'{VAL_FOLDER} was removed \(prepare wrote a link to /\S+\.jpg there\)'),
    ('link re-pointed to own photo', ('cub',), _retarget_link,
     rf'{VAL_FOLDER} has changed: it links to \S+mine\.jpg, prepare linked it to /\S+'),
    ('link replaced by a copy', ('cub',), _link_becomes_file,
     rf'{VAL_FOLDER} is now a file of {SIZE}; prepare wrote a link to /\S+'),
    ('folder added', ('cub',), lambda dst, root: (dst / 'val' / 'extra').mkdir(), r'val/extra was added \(a folder\)'),
    ('notes file added', ('cub',), lambda dst, root: (dst / 'notes.txt').write_text('mine'),
     r'notes\.txt was added \(a file of 4 bytes\)'),
    ('classes.json removed', ('cub',), lambda dst, root: (dst / 'classes.json').unlink(),
     rf'classes\.json was removed \(prepare wrote a file of {SIZE} there\)'),
    ('class_map.txt edited (same size)', ('cub',), _edit_class_map_same_size,
     r'class_map\.txt has changed: same size, other content'),
    ('manifest damaged', ('cub',), lambda dst, root: (dst / MANIFEST_FILE).write_text('{"written_by": "timm'),
     r'its manifest\.json cannot be read \(JSONDecodeError\)'),
    ("manifest not prepare's", ('cub',), lambda dst, root: (dst / MANIFEST_FILE).write_text('{"entries": []}'),
     r'its manifest\.json was not written by timm-camaug prepare'),
]


@pytest.mark.parametrize('what, args, change, difference', CHANGED_TREES, ids=[c[0] for c in CHANGED_TREES])
def test_overwrite_refuses_a_tree_with_anything_added_removed_or_changed(tmp_path, capsys, what, args, change,
                                                                         difference):
    dataset, *flags = args
    if dataset == 'cub':
        root = make_cub(tmp_path / 'dl')[0]
    else:
        root = make_aircraft(tmp_path / 'dl', per_class=2)[0].parent
    dst = tmp_path / 'data' / dataset
    assert prepare(dataset, root, dst, *flags) == 0
    change(dst, root)
    capsys.readouterr()
    _refused(dst, dataset, root, dst, *flags)
    err = capsys.readouterr().err
    assert re.search(
        rf'error: DST {re.escape(str(dst))} is not exactly the tree timm-camaug prepare wrote \({difference}\); '
        rf'--overwrite replaces only an unchanged tree, so nothing in it is touched\.\n'
        rf'Move what you want to keep out of it and remove the rest yourself \(rm -r {re.escape(str(dst))}\)', err), err
    # without --overwrite the same refusal: not a suggestion to pass the flag that would be refused
    assert prepare(dataset, root, dst, *flags) == 1
    assert 'is not exactly the tree' in capsys.readouterr().err


def test_overwrite_replaces_an_unchanged_tree_and_what_it_lists_only(tmp_path, cub_download, capsys):
    dst = tmp_path / 'cub'
    assert prepare('cub', cub_download, dst, '--copy') == 0
    manifest = read_manifest(dst)
    files = {str(p.relative_to(dst)) for p in dst.rglob('*') if p.name != MANIFEST_FILE}
    assert set(manifest) == files  # every folder, file and link prepare wrote, nothing else
    jpg = next(k for k in manifest if k.endswith('.jpg'))
    assert manifest[jpg].size == (dst / jpg).stat().st_size and manifest[jpg].kind == 'file'
    assert manifest['class_map.txt'].sha256 and manifest['train'].kind == 'dir'
    assert json.loads((dst / MANIFEST_FILE).read_text())['written_by'] == 'timm-camaug prepare'
    assert prepare('cub', cub_download, dst, '--overwrite') == 0
    assert all(p.is_symlink() for p in dst.rglob('*.jpg'))  # the new tree (links) replaced the copies
    assert sorted(p.name for p in dst.iterdir()) == ['class_map.txt', 'classes.json', MANIFEST_FILE, 'train', 'val']
    assert leftovers(dst) == [] and all(p.is_file() for p in (cub_download / 'images').rglob('*.jpg'))


def test_tree_from_a_version_without_manifest_is_refused_with_how_to_remove_it(tmp_path, cub_download, capsys):
    dst = tmp_path / 'cub'
    assert prepare('cub', cub_download, dst) == 0
    (dst / MANIFEST_FILE).unlink()  # what an earlier version wrote: the same tree without the manifest
    capsys.readouterr()
    _refused(dst, 'cub', cub_download, dst)
    assert f'error: DST {dst} was written by timm-camaug prepare without a manifest.json (an earlier version), so ' \
           f'whether you added or changed anything in it cannot be checked; nothing in it is touched.\n' \
           f'Remove it yourself (rm -r {dst}: links are removed, never the images they point to) and run again' \
           in capsys.readouterr().err


def test_a_file_added_while_the_old_tree_is_removed_is_kept(tmp_path, cub_download, capsys, monkeypatch):
    dst = tmp_path / 'cub'
    assert prepare('cub', cub_download, dst) == 0
    real = tree.remove_listed
    late = {}

    def user_writes_late(old, entries):
        folder = old / 'train' / '000_Black_footed_Albatross'
        late['path'] = folder / 'late.jpg'
        late['path'].write_text('mine')
        return real(old, entries)

    monkeypatch.setattr(tree, 'remove_listed', user_writes_late)
    assert prepare('cub', cub_download, dst, '--overwrite') == 0
    assert late['path'].read_text() == 'mine'  # nothing prepare did not write is deleted
    old = late['path'].parents[2]
    assert sorted(str(p.relative_to(old)) for p in old.rglob('*')) == [
        'train', 'train/000_Black_footed_Albatross', 'train/000_Black_footed_Albatross/late.jpg']
    assert f'warning: the new tree is in place, but {old} (the old tree) still holds ' \
           f'train/000_Black_footed_Albatross/late.jpg: it changed while it was replaced' in capsys.readouterr().err
    # the next --overwrite names it (it is inside DST), and does not count it as the user's tree
    assert prepare('cub', cub_download, dst, '--overwrite') == 0
    assert f'warning: an earlier tree that --overwrite did not remove completely (check it, then delete it): {old}' in \
        capsys.readouterr().err
    assert late['path'].read_text() == 'mine'


def test_prepare_error_is_what_the_python_api_raises_for_a_changed_tree(tmp_path, cub_download):
    dst = tmp_path / 'cub'
    assert prepare('cub', cub_download, dst) == 0
    (dst / 'train' / 'mine.txt').write_text('x')
    with pytest.raises(PrepareError, match=re.escape('(train/mine.txt was added (a file of 1 byte))')):
        prepare_dataset('cub', cub_download, dst, overwrite=True, progress=False)
    assert (dst / 'train' / 'mine.txt').read_text() == 'x'


# ---------------------------------------------------------------------------------------------------------
# permissions (issue 15, item 2) and the user's own DST folder

@pytest.mark.parametrize('umask', [0o022, 0o027, 0o002])
def test_tree_has_the_permissions_mkdir_and_cp_give_under_the_umask(tmp_path, umask):
    root = make_cub(tmp_path / 'dl')[0]
    data, _ = make_aircraft(tmp_path / 'dl', per_class=1)
    for p in (root / 'images').rglob('*.jpg'):
        p.chmod(0o664)
    previous = os.umask(umask)
    try:
        assert prepare('cub', root, tmp_path / 'data' / 'cub', '--copy') == 0
        assert prepare('aircraft', data.parent, tmp_path / 'data' / 'aircraft') == 0
    finally:
        os.umask(previous)
    mode = lambda p: stat.S_IMODE(p.lstat().st_mode)  # noqa: E731
    for dst in (tmp_path / 'data' / 'cub', tmp_path / 'data' / 'aircraft'):
        for p in [dst.parent, dst, *dst.rglob('*')]:
            if p.is_dir():
                expected = 0o777 & ~umask
            elif p.suffix == '.jpg' and dst.name == 'cub':
                expected = 0o664 & ~umask  # a copy: the source's bits less the umask, as cp -r
            else:
                expected = 0o666 & ~umask  # written by prepare: class files, manifest, cropped images
            assert mode(p) == expected, (p, oct(mode(p)), oct(expected))


def test_an_existing_empty_destination_is_kept_itself(tmp_path, cub_download, monkeypatch):
    """DST made by the user (its mode, owner, a mount point, a shell's working directory) is filled, not
    replaced by another folder; so is a DST whose earlier tree is replaced."""
    dst = tmp_path / 'cub'
    dst.mkdir()
    dst.chmod(0o2750)
    inode = dst.stat().st_ino
    monkeypatch.chdir(dst)
    assert prepare('cub', cub_download, '.') == 0
    assert sorted(os.listdir('.')) == ['class_map.txt', 'classes.json', MANIFEST_FILE, 'train', 'val']
    assert dst.stat().st_ino == inode and stat.S_IMODE(dst.stat().st_mode) == 0o2750
    assert prepare('cub', cub_download, '.', '--overwrite', '--link', 'relative') == 0
    assert dst.stat().st_ino == inode and stat.S_IMODE(dst.stat().st_mode) == 0o2750
    assert all(not os.path.isabs(os.readlink(p)) for p in Path('.').rglob('*.jpg'))
    assert sorted(os.listdir('.')) == ['class_map.txt', 'classes.json', MANIFEST_FILE, 'train', 'val']
    assert leftovers(dst) == []


def test_failure_while_moving_into_an_existing_destination_restores_it(tmp_path, cub_download, capsys,
                                                                       monkeypatch):
    dst = tmp_path / 'cub'
    assert prepare('cub', cub_download, dst, '--link', 'relative') == 0
    old = snapshot(dst)
    real_rename, calls = os.rename, []

    def rename(a, b):
        calls.append(a)
        if '.timm-camaug-tmp-' in str(a) and len([c for c in calls if '.timm-camaug-tmp-' in str(c)]) == 2:
            raise OSError(errno.EIO, 'Input/output error', str(a))
        return real_rename(a, b)

    monkeypatch.setattr(os, 'rename', rename)
    assert prepare('cub', cub_download, dst, '--overwrite') == 1
    assert 'Input/output error' in capsys.readouterr().err
    assert snapshot(dst) == old and leftovers(dst) == []


def test_leftovers_inside_an_empty_destination_are_reported_not_counted(tmp_path, cub_download, capsys):
    dst = tmp_path / 'cub'
    stale = dst / '.timm-camaug-tmp-deadbeef'
    (stale / 'train').mkdir(parents=True)
    assert prepare('cub', cub_download, dst) == 0
    assert f'warning: leftovers of an interrupted run (safe to delete): {stale}' in capsys.readouterr().err
    assert (stale / 'train').is_dir() and (dst / 'train').is_dir()


def test_unwritable_parent_as_any_user(tmp_path, cub_download, capsys, monkeypatch):
    real_mkdir = os.mkdir

    def denied(path, *a, **kw):
        if '.tmp-' in str(path) or '.timm-camaug-' in str(path):
            raise PermissionError(errno.EACCES, 'Permission denied', str(path))
        return real_mkdir(path, *a, **kw)

    monkeypatch.setattr(os, 'mkdir', denied)
    assert prepare('cub', cub_download, tmp_path / 'cub') == 1
    assert f'error: cannot create a folder in {tmp_path}: Permission denied' in capsys.readouterr().err
    (tmp_path / 'empty').mkdir()
    assert prepare('cub', cub_download, tmp_path / 'empty') == 1
    assert f'error: cannot create a folder in {tmp_path / "empty"}: Permission denied' in capsys.readouterr().err
    assert not (tmp_path / 'cub').exists() and os.listdir(tmp_path / 'empty') == []


# ---------------------------------------------------------------------------------------------------------
# hostile input: one table, each a clear message (or a clean run) and nothing of the user's changed

def _loop(path: Path) -> Path:
    path.symlink_to(path)
    return path


def _dst_is_a_file(tmp, src):
    (tmp / 'f.txt').write_text('x')
    return src, tmp / 'f.txt'


def _dst_is_a_link(tmp, src):
    (tmp / 'ln').symlink_to(tmp)
    return src, tmp / 'ln'


def _dst_parent_is_a_file(tmp, src):
    (tmp / 'f.txt').write_text('x')
    return src, tmp / 'f.txt' / 'cub'


def _image_is_a_looping_link(tmp, src):
    image = _first_image(src / 'images')
    image.unlink()
    _loop(image)
    return src, tmp / 'cub'


def _annotation_file_not_text(tmp, src):
    (src / 'classes.txt').write_bytes(b'\xff\xfe\x00x')
    return src, tmp / 'cub'


def _annotation_file_is_a_folder(tmp, src):
    (src / 'images.txt').unlink()
    (src / 'images.txt').mkdir()
    return src, tmp / 'cub'


def _annotation_file_unreadable(tmp, src):
    (src / 'classes.txt').unlink()
    (src / 'classes.txt').symlink_to('/proc/self/mem')  # a regular file whose first read fails (EIO), even for root
    return src, tmp / 'cub'


BAD_INPUT = [
    # (name, set-up(tmp, src) -> (SRC, DST), extra args, return code, message)
    ('DST is a file', _dst_is_a_file, [], 1, r'DST \S+/f\.txt exists and is not a directory'),
    ('DST is a link', _dst_is_a_link, [], 1, r'DST \S+/ln is a symbolic link; give the real directory instead'),
    ('DST holds SRC', lambda tmp, src: (src, src.parent), ['--overwrite'], 1,
     r'DST \S+/dl contains the dataset being read \(\S+\); choose another DST'),
    ("DST's parent is a file", _dst_parent_is_a_file, [], 1, r'the parent of DST, \S+/f\.txt, is not a directory'),
    ("DST's parent is a looping link", lambda tmp, src: (src, _loop(tmp / 'loop') / 'cub'), [], 1,
     r'the parent of DST, \S+/loop, is a broken or looping symbolic link'),
    ('DST is an empty string', lambda tmp, src: (src, ''), [], 1, r'DST is empty; give the folder to write'),
    ('SRC is an empty string', lambda tmp, src: ('', tmp / 'cub'), [], 1,
     r'SRC is empty; give the folder of the download'),
    ('SRC missing', lambda tmp, src: (tmp / 'nowhere', tmp / 'cub'), [], 1, r'SRC \S+/nowhere is not a directory'),
    ('SRC is a looping link', lambda tmp, src: (_loop(tmp / 'srcloop'), tmp / 'cub'), [], 1,
     r'SRC \S+/srcloop is not a directory'),
    ('an image is a looping link', _image_is_a_looping_link, [], 1,
     r'1 image\(s\) listed in images\.txt are missing \(or not files\)'),
    ('annotation file is not text', _annotation_file_not_text, [], 1,
     r'\S+/classes\.txt is not a text file \(byte 0 is not UTF-8\); is it damaged\? extract it again'),
    ('annotation file is a folder', _annotation_file_is_a_folder, [], 1, r'CUB image list images\.txt not found'),
    pytest.param('annotation file unreadable', _annotation_file_unreadable, [], 1,
                 r'\S+/classes\.txt cannot be read \(Input/output error\)',
                 marks=pytest.mark.skipif(not os.path.exists('/proc/self/mem'), reason='needs Linux /proc')),
    ('--workers 0', lambda tmp, src: (src, tmp / 'cub'), ['--workers', '0'], 2,
     r"--workers: expected a whole number >= 1, got '0'"),
    ('--workers -3', lambda tmp, src: (src, tmp / 'cub'), ['--workers', '-3'], 2,
     r"--workers: expected a whole number >= 1, got '-3'"),
]


@pytest.mark.parametrize('name, setup, extra, rc, message', BAD_INPUT,
                         ids=[b.values[0] if hasattr(b, 'values') else b[0] for b in BAD_INPUT])
def test_bad_input_is_one_clear_message(tmp_path, capsys, monkeypatch, name, setup, extra, rc, message):
    root = make_cub(tmp_path / 'dl')[0]
    (tmp_path / 'cwd').mkdir()
    monkeypatch.chdir(tmp_path / 'cwd')  # an empty working directory: what an empty DST must not become
    src, dst = setup(tmp_path, root)
    before = snapshot(tmp_path)
    if rc == 2:  # argparse
        with pytest.raises(SystemExit) as e:
            prepare('cub', src, dst, *extra)
        assert e.value.code == 2
    else:
        assert prepare('cub', src, dst, *extra) == rc
    err = capsys.readouterr().err
    assert re.search(message, err), err
    assert 'Traceback' not in err and err.startswith('usage: ' if rc == 2 else 'error: ')
    assert snapshot(tmp_path) == before  # nothing created, nothing changed


def test_bad_workers_from_python(tmp_path, cub_download):
    for workers in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match=re.escape(f'workers must be a whole number >= 1, got {workers!r}')):
            prepare_dataset('cub', cub_download, tmp_path / 'cub', workers=workers)
    assert not (tmp_path / 'cub').exists()


def test_annotation_file_with_a_byte_order_mark_is_read(tmp_path, capsys):
    root = make_cub(tmp_path / 'dl')[0]
    for name in ('classes.txt', 'images.txt'):
        (root / name).write_bytes(b'\xef\xbb\xbf' + (root / name).read_bytes())  # saved by a Windows editor
    assert prepare('cub', root, tmp_path / 'cub') == 0
    assert len(list((tmp_path / 'cub').rglob('*.jpg'))) == 12


def test_paths_that_are_not_utf8_or_not_ascii(tmp_path, capsys):
    parent = Path(os.fsdecode(bytes(tmp_path) + b'/dl-\xff'))  # a folder name no UTF-8 decoder accepts
    root = make_cub(parent)[0]
    dst = tmp_path / 'données' / 'cub – 鳥'
    assert prepare('cub', root, dst) == 0
    out = capsys.readouterr().out
    assert '/dl-\\xff/CUB_200_2011 -> ' in out  # shown, not a UnicodeEncodeError on a UTF-8 terminal
    assert f"train with: python train.py --data-dir '{dst}' --num-classes 3" in out  # quoted: it has spaces
    meta = json.loads((dst / 'classes.json').read_text(encoding='utf-8'))
    assert meta['source'].endswith('/dl-\\xff/CUB_200_2011')
    assert all(p.resolve().is_file() for p in dst.rglob('*.jpg'))
    assert prepare('cub', root, dst, '--overwrite') == 0  # the manifest keeps such names exactly


@pytest.mark.skipif(ROOT_USER, reason='permission bits do not stop root')
def test_unwritable_parent_and_unreadable_annotation_file(tmp_path, capsys):
    root = make_cub(tmp_path / 'dl')[0]
    locked = tmp_path / 'locked'
    locked.mkdir()
    locked.chmod(0o555)
    (root / 'classes.txt').chmod(0)
    try:
        assert prepare('cub', root, locked / 'cub') == 1
        assert f'error: {root / "classes.txt"} cannot be read (Permission denied)' in capsys.readouterr().err
        (root / 'classes.txt').chmod(0o644)
        assert prepare('cub', root, locked / 'cub') == 1
        assert f'error: cannot create a folder in {locked}: Permission denied' in capsys.readouterr().err
    finally:
        locked.chmod(0o755)
        (root / 'classes.txt').chmod(0o644)
