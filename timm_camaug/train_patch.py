""" ``timm-camaug patch``: give a timm checkout's stock ``train.py`` the ``--mix-mode`` flag.

The edit is made by anchor text, not by line numbers or release: the anchor lines are the same from timm
v1.0.20 to the current main branch while the lines around them are not, so one release's unified diff
(``patches/``) does not apply to the others. Seven parts, each marked with a trailing ``# timm-camaug``
comment so that ``--check`` and ``--revert`` find them exactly:

1. before ``def _parse_args():`` (module level): import the plugin and ``add_args(parser)``, so that YAML
   ``--config`` values reach the new flags through ``parser.set_defaults`` like every other flag;
2. ``elif mixup_active:`` (loss setup) also fires for a mix mode: ``SoftTargetCrossEntropy`` (or BCE);
3. before ``# setup checkpoint saver and eval metric tracking``: build the mix function on the final model,
   bound to the wrapped train loss of part 6 (and taking train.py's own ``Mixup``, if any, as the rest of a
   schedule);
4. ``if mixup_fn is not None: input, target = mixup_fn(input, target)`` moves out of the
   ``if not args.prefetcher:`` block (a stock run with the prefetcher has ``mixup_fn`` None: unchanged);
5. before each ``train_one_epoch(`` call: ``mixup_fn.set_epoch(epoch)`` when the mix function has one;
6. after ``train_loss_fn = train_loss_fn.to(device=device)``: the train loss is wrapped, before a task or
   distillation wrapper takes it, so that it completes targets that a mode finishes from the training
   forward and adds the auxiliary losses a model declares; it is the stock loss object itself otherwise;
7. ``if args.prefetcher:`` of the block that builds ``FastCollateMixup``: with a mix mode the loader does not
   mix (the batch would arrive mixed and be mixed again); train.py builds its ``Mixup`` instead.

The file is rewritten whole (temporary file + rename) only after the edited text compiles and reverts
to the original byte for byte; nothing is written when any anchor is missing. A file that cannot be read or
written (permissions, a read-only or full disk) is a PatchError naming the file and the reason, and leaves
the file as it was. A UTF-8 byte-order mark at the start (Python runs such a file) is kept as it is. A train.py
older than v1.0.20 (by its checkout's ``timm/version.py``, or by its text) is patched with a warning.

The plugin's earlier release had parts 1 to 5, its part 3 calling ``create_train_mix_fn(args, model,
data_config, amp_autocast, device)``. Its lines are still recognised: ``--revert`` removes them (the original,
byte for byte), and ``patch`` upgrades such a file (its original, patched by this release).
"""
import argparse
import difflib
import os
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

__all__ = [
    'MARKER', 'PARTS', 'PatchError', 'PartStatus', 'inspect_text', 'patch_text', 'revert_text', 'resolve_train_py',
    'patched_by_earlier_release',
    'patch_file', 'revert_file', 'unified_diff', 'checkout_version', 'version_warning', 'backup_path',
    'BACKUP_SUFFIXES', 'OLDEST_RELEASE', 'register', 'run',
]

MARKER = '# timm-camaug'
_SUFFIX = '  ' + MARKER
_INDENT = '    '


class PatchError(ValueError):
    """train.py cannot be patched (or reverted) as asked; the message says why."""


# --- lines that keep their own end-of-line bytes, so that a revert is byte-exact

@dataclass
class _Line:
    text: str       # without the line ending
    eol: str        # '\n', '\r\n' or '' (last line without newline)
    number: int = 0     # 1-based line number in the text as read (0: a line the patch inserted)

    @property
    def indent(self) -> str:
        return self.text[:len(self.text) - len(self.text.lstrip())]

    @property
    def stripped(self) -> str:
        return self.text.strip()

    @property
    def blank(self) -> bool:
        return not self.text.strip()


def _split(text: str) -> List[_Line]:
    lines = []
    for number, piece in enumerate(re.findall(r'[^\n]*\n|[^\n]+$', text), 1):
        eol = '\r\n' if piece.endswith('\r\n') else '\n' if piece.endswith('\n') else ''
        lines.append(_Line(piece[:len(piece) - len(eol)], eol, number))
    return lines


def _retext(line: _Line, text: str) -> _Line:
    """``line`` with new text (its line ending and its number kept)."""
    return _Line(text, line.eol, line.number)


def _join(lines: Sequence[_Line]) -> str:
    return ''.join(line.text + line.eol for line in lines)


def _marked(text: str) -> bool:
    return text.endswith(_SUFFIX)


def _unmark(text: str) -> str:
    return text[:-len(_SUFFIX)] if _marked(text) else text


def _new(indent: str, code: str, eol: str) -> _Line:
    return _Line(indent + code + _SUFFIX, eol or '\n')


# --- the parts

@dataclass(frozen=True)
class _Part:
    number: int
    title: str
    anchor: str                                                    # the anchor as messages show it
    find: Callable[[List[_Line]], List[int]]                       # stock anchor locations
    find_applied: Callable[[List[_Line]], List[int]]               # applied locations
    apply: Callable[[List[_Line], int], None]                      # edits lines in place at one location
    revert: Callable[[List[_Line], int], None]
    many: bool = False                                             # the anchor may occur more than once
    find_earlier: Optional[Callable[[List[_Line]], List[int]]] = None   # applied as the earlier release did it


# part 1: import + add_args before `def _parse_args():`
_P1_LINES = ('import timm_camaug.train_glue', 'timm_camaug.add_args(parser)')


def _p1_find(lines):
    return [i for i, ln in enumerate(lines) if ln.text.rstrip() == 'def _parse_args():']


def _p1_find_applied(lines):
    return [i for i in range(len(lines) - 1)
            if lines[i].text == _P1_LINES[0] + _SUFFIX and lines[i + 1].text == _P1_LINES[1] + _SUFFIX]


def _p1_apply(lines, i):
    j = i
    while j > 0 and lines[j - 1].blank:
        j -= 1      # keep the blank lines above `def` below the inserted statements
    eol = lines[j - 1].eol if j > 0 else lines[i].eol
    lines[j:j] = [_new('', code, eol) for code in _P1_LINES]


def _p1_revert(lines, i):
    del lines[i:i + 2]


# part 2: the soft-target loss for a mix mode
_P2_RE = re.compile(r'^(\s*elif mixup_active)(:.*)$')
_P2_INSERT = ' or timm_camaug.is_active(args)'
_P2_APPLIED_RE = re.compile(r'^(\s*elif mixup_active)' + re.escape(_P2_INSERT) + r'(:.*)' + re.escape(_SUFFIX) + '$')


def _p2_find(lines):
    return [i for i, ln in enumerate(lines) if not _marked(ln.text) and _P2_RE.match(ln.text)]


def _p2_find_applied(lines):
    return [i for i, ln in enumerate(lines) if _P2_APPLIED_RE.match(ln.text)]


def _p2_apply(lines, i):
    m = _P2_RE.match(lines[i].text)
    lines[i] = _retext(lines[i], m.group(1) + _P2_INSERT + m.group(2) + _SUFFIX)


def _p2_revert(lines, i):
    m = _P2_APPLIED_RE.match(lines[i].text)
    lines[i] = _retext(lines[i], m.group(1) + m.group(2))


# part 3: the mix function, once the model is final
_P3_ANCHOR = '# setup checkpoint saver and eval metric tracking'
_P3_LINES = ('if timm_camaug.is_active(args):',
             _INDENT + 'mixup_fn = timm_camaug.train_glue.create_train_mix_fn('
                       'args, model, data_config, amp_autocast, device, train_loss_fn, mixup_fn)')


# the call as the earlier release of the plugin wrote it (five parts: 1 to 5, without the train loss and
# train.py's Mixup); still recognised, so that such a file reverts to its original and can be patched again
_P3_EARLIER_CALL = (_INDENT + 'mixup_fn = timm_camaug.train_glue.create_train_mix_fn('
                              'args, model, data_config, amp_autocast, device)')


def _p3_find(lines):
    return [i for i, ln in enumerate(lines) if ln.stripped == _P3_ANCHOR]


def _p3_applied(lines, calls):
    return [i for i in range(len(lines) - 1)
            if lines[i].stripped == _P3_LINES[0] + _SUFFIX
            and any(lines[i + 1].text == lines[i].indent + call + _SUFFIX for call in calls)]


def _p3_find_applied(lines):
    return _p3_applied(lines, (_P3_LINES[1], _P3_EARLIER_CALL))


def _p3_find_earlier(lines):
    return _p3_applied(lines, (_P3_EARLIER_CALL,))


def _p3_apply(lines, i):
    lines[i:i] = [_new(lines[i].indent, code, lines[i].eol) for code in _P3_LINES]


def _p3_revert(lines, i):
    del lines[i:i + 2]


# part 4: the mix call moves out of the `if not args.prefetcher:` block
_P4_HEAD = 'if not args.prefetcher:'
_P4_LINES = ('if mixup_fn is not None:', 'input, target = mixup_fn(input, target)')


def _block_head(lines, i) -> Optional[int]:
    """Index of the statement whose block holds line ``i`` (nearest line above with a smaller indent)."""
    width = len(lines[i].indent)
    for j in range(i - 1, -1, -1):
        if not lines[j].blank and len(lines[j].indent) < width:
            return j
    return None


def _next_code(lines, i) -> Optional[int]:
    for j in range(i + 1, len(lines)):
        if not lines[j].blank:
            return j
    return None


def _p4_candidates(lines, marked: bool):
    suffix = _SUFFIX if marked else ''
    out = []
    for i in range(len(lines) - 1):
        a, b = lines[i], lines[i + 1]
        if a.text.endswith(suffix) and b.text.endswith(suffix) \
                and _unmark(a.text).strip() == _P4_LINES[0] and _unmark(b.text).strip() == _P4_LINES[1] \
                and len(b.indent) > len(a.indent) and _marked(a.text) == marked and _marked(b.text) == marked:
            out.append(i)
    return out


def _p4_find(lines):
    found = []
    for i in _p4_candidates(lines, marked=False):
        head = _block_head(lines, i)
        if head is None or lines[head].stripped != _P4_HEAD:
            continue
        after = _next_code(lines, i + 1)
        if after is not None and len(lines[after].indent) > len(lines[head].indent):
            raise PatchError(
                f"anchor 4 ({_P4_LINES[0]} {_P4_LINES[1]}) at line {i + 1} is not the last statement of its "
                f"'{_P4_HEAD}' block (line {head + 1}): moving it out would change the lines after it")
        found.append(i)
    return found


def _p4_find_applied(lines):
    found = []
    for i in _p4_candidates(lines, marked=True):
        # the moved lines sit right after the prefetcher block, at the block statement's own indent
        j = i - 1
        while j >= 0 and (lines[j].blank or len(lines[j].indent) > len(lines[i].indent)):
            j -= 1
        if j >= 0 and lines[j].stripped == _P4_HEAD and lines[j].indent == lines[i].indent:
            found.append(i)
    return found


def _p4_apply(lines, i):
    head = _block_head(lines, i)
    base = lines[head].indent
    inner = lines[i + 1].indent[len(lines[i].indent):]
    lines[i] = _retext(lines[i], base + _P4_LINES[0] + _SUFFIX)
    lines[i + 1] = _retext(lines[i + 1], base + inner + _P4_LINES[1] + _SUFFIX)


def _p4_revert(lines, i):
    j = i - 1
    while lines[j].blank or len(lines[j].indent) > len(lines[i].indent):
        j -= 1
    body = lines[_next_code(lines, j)].indent     # the prefetcher block's own indent
    inner = lines[i + 1].indent[len(lines[i].indent):]
    lines[i] = _retext(lines[i], body + _P4_LINES[0])
    lines[i + 1] = _retext(lines[i + 1], body + inner + _P4_LINES[1])


# part 5: set_epoch before each train_one_epoch call
_P5_RE = re.compile(r'^\s*(?:[\w.]+\s*=\s*)?train_one_epoch\(')
_P5_LINES = ("if hasattr(mixup_fn, 'set_epoch'):", _INDENT + 'mixup_fn.set_epoch(epoch)')


def _p5_is_applied_at(lines, i):
    """Whether the two lines above the call at ``i`` are the inserted ones."""
    return i >= 2 and lines[i - 2].text == lines[i].indent + _P5_LINES[0] + _SUFFIX \
        and lines[i - 1].text == lines[i].indent + _P5_LINES[1] + _SUFFIX


def _p5_calls(lines):
    return [i for i, ln in enumerate(lines) if _P5_RE.match(ln.text) and not ln.stripped.startswith('def ')]


def _p5_find(lines):
    return [i for i in _p5_calls(lines) if not _p5_is_applied_at(lines, i)]


def _p5_find_applied(lines):
    return [i - 2 for i in _p5_calls(lines) if _p5_is_applied_at(lines, i)]


def _p5_apply(lines, i):
    lines[i:i] = [_new(lines[i].indent, code, lines[i].eol) for code in _P5_LINES]


def _p5_revert(lines, i):
    del lines[i:i + 2]


# part 6: the train loss, wrapped right after train.py builds it (before a task or distillation wrapper takes it)
_P6_RE = re.compile(r'^\s*train_loss_fn = train_loss_fn\.to\(device=device\)\s*$')
_P6_LINE = 'train_loss_fn = timm_camaug.train_glue.wrap_train_loss(train_loss_fn, args, model)'


def _p6_find(lines):
    return [i for i, ln in enumerate(lines) if _P6_RE.match(ln.text)
            and not (i + 1 < len(lines) and lines[i + 1].text == ln.indent + _P6_LINE + _SUFFIX)]


def _p6_find_applied(lines):
    return [i + 1 for i, ln in enumerate(lines[:-1]) if _P6_RE.match(ln.text)
            and lines[i + 1].text == ln.indent + _P6_LINE + _SUFFIX]


def _p6_apply(lines, i):
    lines[i + 1:i + 1] = [_new(lines[i].indent, _P6_LINE, lines[i].eol)]


def _p6_revert(lines, i):
    del lines[i]


# part 7: with a mix mode, the loader does not mix (FastCollateMixup); train.py builds its Mixup instead,
# which the mix function takes as the rest of a schedule
_P7_HEAD = 'if args.prefetcher:'
_P7_NEW = 'if args.prefetcher and not timm_camaug.is_active(args):'
_P7_BODY = 'collate_fn = FastCollateMixup('


def _p7_blocks(lines, head_text):
    """Indices of ``head_text`` lines whose block holds the FastCollateMixup collate."""
    out = []
    for i, ln in enumerate(lines):
        if ln.stripped != head_text:
            continue
        for j in range(i + 1, len(lines)):
            if lines[j].blank:
                continue
            if len(lines[j].indent) <= len(ln.indent):
                break
            if lines[j].stripped.startswith(_P7_BODY):
                out.append(i)
                break
    return out


def _p7_find(lines):
    return _p7_blocks(lines, _P7_HEAD)


def _p7_find_applied(lines):
    return _p7_blocks(lines, _P7_NEW + _SUFFIX)


def _p7_apply(lines, i):
    lines[i] = _retext(lines[i], lines[i].indent + _P7_NEW + _SUFFIX)


def _p7_revert(lines, i):
    lines[i] = _retext(lines[i], lines[i].indent + _P7_HEAD)


PARTS: Tuple[_Part, ...] = (
    _Part(1, 'import timm_camaug and add its flags to the parser', 'def _parse_args():',
          _p1_find, _p1_find_applied, _p1_apply, _p1_revert),
    _Part(2, 'soft-target loss when a mix mode is active', 'elif mixup_active:',
          _p2_find, _p2_find_applied, _p2_apply, _p2_revert),
    _Part(3, 'build the mix function on the final model', _P3_ANCHOR,
          _p3_find, _p3_find_applied, _p3_apply, _p3_revert, find_earlier=_p3_find_earlier),
    _Part(4, 'apply the mix function with and without the prefetcher',
          f'{_P4_LINES[0]} / {_P4_LINES[1]} (last lines of an `{_P4_HEAD}` block)',
          _p4_find, _p4_find_applied, _p4_apply, _p4_revert),
    _Part(5, 'mixup_fn.set_epoch(epoch) before each epoch', 'train_one_epoch( (a call)',
          _p5_find, _p5_find_applied, _p5_apply, _p5_revert, many=True),
    _Part(6, 'wrap the train loss (targets completed after the forward, auxiliary losses)',
          'train_loss_fn = train_loss_fn.to(device=device)', _p6_find, _p6_find_applied, _p6_apply, _p6_revert),
    _Part(7, 'the loader does not mix when a mix mode is on',
          f'{_P7_HEAD} (the block that builds FastCollateMixup)', _p7_find, _p7_find_applied, _p7_apply, _p7_revert),
)


@dataclass
class PartStatus:
    """Where one part stands in a file: 'stock' (anchor found, not applied), 'applied', 'missing', 'ambiguous'."""
    part: int
    title: str
    anchor: str
    state: str
    lines: List[int]        # 1-based line numbers of the anchor (stock) or of the inserted/changed lines
    earlier: bool = False   # applied as the plugin's earlier release applied it (`timm-camaug patch` upgrades it)

    def describe(self) -> str:
        where = f" (line {', '.join(map(str, self.lines))})" if self.lines else ''
        what = {'stock': 'not applied', 'applied': 'applied', 'missing': 'ANCHOR MISSING',
                'ambiguous': 'ANCHOR AMBIGUOUS'}[self.state]
        if self.earlier:
            what += " as timm-camaug's earlier release wrote it"
        return f"part {self.part} ({self.title}): {what}{where}; anchor: {self.anchor}"


def _status(lines: List[_Line]) -> List[PartStatus]:
    out = []
    for part in PARTS:
        stock, applied = part.find(lines), part.find_applied(lines)
        if applied and stock and part.many:
            state, where = 'stock', stock       # some calls patched, some not: a partial state
        elif applied:
            state, where = 'applied', applied
        elif not stock:
            state, where = 'missing', []
        elif len(stock) > 1 and not part.many:
            state, where = 'ambiguous', stock
        else:
            state, where = 'stock', stock
        earlier = state == 'applied' and part.find_earlier is not None and bool(part.find_earlier(lines))
        out.append(PartStatus(part.number, part.title, part.anchor, state, [i + 1 for i in where], earlier))
    return out


_BOM = '\ufeff'


def _without_bom(text: str) -> Tuple[str, str]:
    """(byte-order mark or '', the rest): Python runs a UTF-8 file that starts with a BOM, but ``compile`` of
    the decoded text does not take it, so the patch works on the rest and puts the mark back."""
    return (_BOM, text[1:]) if text.startswith(_BOM) else ('', text)


def inspect_text(text: str) -> List[PartStatus]:
    """The state of each part in the text of a train.py."""
    return _status(_split(_without_bom(text)[1]))


def _earlier_release(lines: List[_Line]) -> bool:
    return any(part.find_earlier(lines) for part in PARTS if part.find_earlier is not None)


def patched_by_earlier_release(text: str) -> bool:
    """Whether the text carries the patch of timm-camaug's earlier release (parts 1 to 5, part 3 building the
    mix function without train.py's train loss and Mixup): ``revert_text`` gives its original back, and
    ``patch_text`` upgrades it (the original, patched by this release)."""
    return _earlier_release(_split(_without_bom(text)[1]))


def _check_recognised(statuses: List[PartStatus], name: str) -> None:
    if all(s.state == 'missing' for s in statuses):
        raise PatchError(f"{name} does not look like timm's train.py: none of the anchor lines was found "
                         f"(expected e.g. 'def _parse_args():', 'elif mixup_active:', '{_P3_ANCHOR}')")
    bad = [s for s in statuses if s.state in ('missing', 'ambiguous')]
    if bad:
        reasons = []
        for s in bad:
            if s.state == 'missing':
                reasons.append(f"anchor {s.part} not found: {s.anchor!r} ({s.title})")
            else:
                reasons.append(f"anchor {s.part} ({s.anchor!r}) found {len(s.lines)} times, at lines "
                               f"{', '.join(map(str, s.lines))}; expected once")
        raise PatchError(f"{name}: " + '; '.join(reasons) + ". The file was not changed. A train.py edited by "
                         "hand or from an unsupported timm release needs the change made by hand: see patches/ in the "
                         "timm-camaug source repository for the change as a unified diff.")


def _compile(text: str, name: str, what: str) -> None:
    try:
        compile(text, name, 'exec', dont_inherit=True)
    except SyntaxError as e:
        raise PatchError(f"{name}: the {what} text does not compile ({e.msg}, line {e.lineno}); "
                         "the file was not changed") from None


def _revert_lines(lines: List[_Line], name: str) -> List[_Line]:
    lines = list(lines)
    for part in reversed(PARTS):
        for i in sorted(part.find_applied(lines), reverse=True):
            part.revert(lines, i)
    left = [ln.number for ln in lines if MARKER in ln.text]     # numbered as in the file, not after the removals
    if left:
        raise PatchError(f"{name}: line(s) {', '.join(map(str, left))} carry the {MARKER!r} mark but are not one of "
                         "the patch's lines (edited by hand?); remove them by hand. The file was not changed.")
    return lines


def patch_text(text: str, name: str = 'train.py') -> str:
    """The patched text of a stock train.py; PatchError when an anchor is missing or the file is partly patched.
    A text patched by the plugin's earlier release is upgraded: its original, patched by this release."""
    bom, text = _without_bom(text)
    return bom + _patch_text(text, name)


def _patch_text(text: str, name: str) -> str:
    lines = _split(text)
    if _earlier_release(lines):
        # the earlier release's parts come off as they do for --revert (the original, byte for byte; a stray mark
        # is refused there), then this release's parts go on
        return _patch_text(_join(_revert_lines(lines, name)), name)
    statuses = _status(lines)
    _check_recognised(statuses, name)
    applied = [s.part for s in statuses if s.state == 'applied']
    if len(applied) == len(PARTS):
        return text
    if applied:
        raise PatchError(f"{name} is partly patched (part(s) {', '.join(map(str, applied))} applied, the others not); "
                         "run `timm-camaug patch --revert` first. The file was not changed.")
    _compile(text, name, 'original')
    for part in reversed(PARTS):   # bottom-up, so that earlier line numbers stay valid
        for i in sorted(part.find(lines), reverse=True):
            part.apply(lines, i)
    patched = _join(lines)
    _compile(patched, name, 'patched')
    if any(s.state != 'applied' for s in inspect_text(patched)) or revert_text(patched, name) != text:
        raise PatchError(f"{name}: the patched text would not revert to the original exactly "
                         "(unusual indentation around an anchor?); the file was not changed")
    return patched


def revert_text(text: str, name: str = 'train.py') -> str:
    """The text without any of the patch's lines (the original, byte for byte, for an unedited patched file)."""
    bom, text = _without_bom(text)
    reverted = _join(_revert_lines(_split(text), name))
    if reverted != text:
        _compile(reverted, name, 'reverted')
    return bom + reverted


def unified_diff(before: str, after: str, name: str = 'train.py') -> str:
    """A ``git apply``/``patch -p1`` compatible unified diff."""
    return ''.join(difflib.unified_diff(before.splitlines(keepends=True), after.splitlines(keepends=True),
                                        f'a/{name}', f'b/{name}'))


# --- files

def resolve_train_py(path) -> Path:
    """PATH may be a train.py file or the timm checkout that holds one."""
    p = Path(path)
    if p.is_dir():
        p = p / 'train.py'
        if not p.is_file():
            raise PatchError(f"{path} is a directory without a train.py (give a timm checkout or a train.py file)")
    elif not p.exists():
        raise PatchError(f"{path} does not exist")
    return p


def _reason(e: OSError) -> str:
    return e.strerror or str(e) or type(e).__name__


def _read(p: Path) -> str:
    try:
        data = p.read_bytes()
    except OSError as e:
        raise PatchError(f"cannot read {p}: {_reason(e)}; the file was not changed") from e
    try:
        return data.decode('utf-8')
    except UnicodeDecodeError as e:
        raise PatchError(f"{p} is not UTF-8 text ({e.reason} at byte {e.start}): not timm's train.py") from None


def _write_atomic(p: Path, text: str) -> None:
    """Replace ``p``'s content by ``text`` (temporary file beside it + rename), or leave it as it was.

    An OSError (no permission, read-only or full disk) becomes a PatchError naming ``p``."""
    target = Path(os.path.realpath(p))
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f'.{target.name}.', suffix='.tmp', dir=target.parent)
        with os.fdopen(fd, 'wb') as f:
            f.write(text.encode('utf-8'))
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, target.stat().st_mode & 0o7777)
        os.replace(tmp, target)
    except BaseException as e:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise PatchError(f"cannot write {p}: {_reason(e)}; the file was not changed") from e
        raise


def checkout_version(p: Path) -> Optional[str]:
    """The timm version of the checkout a train.py sits in (from ``timm/version.py`` beside it), else None."""
    vfile = p.parent / 'timm' / 'version.py'
    if not vfile.is_file():
        return None
    try:
        text = vfile.read_text(encoding='utf-8', errors='replace')
    except OSError:
        return None
    m = re.search(r"""__version__\s*=\s*['"]([^'"]+)['"]""", text)
    return m.group(1) if m else None


def _installed_timm() -> Optional[str]:
    try:
        from importlib.metadata import version
        return version('timm')
    except Exception:
        return None


OLDEST_RELEASE = (1, 0, 20)      # the oldest timm release whose train.py the patch is tested on
# a line every train.py from v1.0.20 to main has and older ones do not (samples per update counted globally)
_SINCE_OLDEST = re.compile(r'^\s*update_sample_count\s*\+=\s*global_batch_size\b', re.M)


def _release(version: str) -> Optional[Tuple[int, int, int]]:
    m = re.match(r'(\d+)\.(\d+)\.(\d+)', version or '')
    return tuple(int(g) for g in m.groups()) if m else None


def version_warning(p: Path, text: Optional[str] = None) -> Optional[str]:
    """Warnings (never a refusal) when the checkout's timm release differs from the installed one, and when
    train.py is older than the oldest release the patch is tested on: by the checkout's ``timm/version.py``,
    or for a train.py outside a checkout by its ``text`` (a line every train.py from v1.0.20 on has)."""
    ours, installed = checkout_version(p), _installed_timm()
    warnings = []
    if ours and installed and ours != installed:
        warnings.append(
            f"warning: {p} belongs to timm {ours} but timm {installed} is installed; the patch matched by "
            "anchor text, not by release. Run as a script (python train.py, torchrun train.py), train.py (and "
            f"timm-camaug inside it) imports the timm/ package beside it, i.e. timm {ours}, from whatever "
            "directory it is started, because Python puts the script's directory first on sys.path; the "
            "installed timm is not used.")
    oldest = 'v' + '.'.join(map(str, OLDEST_RELEASE))
    tested = f"the patch is tested on the train.py of timm {oldest} to the current main branch only"
    if ours and _release(ours) is not None and _release(ours) < OLDEST_RELEASE:
        warnings.append(f"warning: {p} belongs to timm {ours}, older than {oldest}: {tested}; use a newer checkout "
                        f"(git checkout {oldest} or later)")
    elif not ours and text is not None and not _SINCE_OLDEST.search(_without_bom(text)[1]):
        source = ''
        if installed and _release(installed) and re.fullmatch(r'\d+\.\d+\.\d+', installed):
            source = (f" (timm {installed} is installed: https://github.com/huggingface/pytorch-image-models/blob/"
                      f"v{installed}/train.py)")
        warnings.append(
            f"warning: {p} looks like the train.py of a timm release older than {oldest} (it lacks "
            f"'update_sample_count += global_batch_size', which every train.py from {oldest} on has); {tested}: "
            f"use the train.py of the timm release you run{source}")
    return '\n'.join(warnings) or None


BACKUP_SUFFIXES = {'patch': '.orig', 'revert': '.patched'}   # --backup: the file as it was before the command


def backup_path(p: Path, action: str) -> Path:
    """Where ``--backup`` keeps the file as it was before ``action`` ('patch': train.py.orig, the original;
    'revert': train.py.patched, the patched file)."""
    return p.with_name(p.name + BACKUP_SUFFIXES[action])


def _replace(p: Path, old: str, new: str, backup: Optional[Path]) -> None:
    """Write ``new`` over ``p`` (whose content is ``old``), keeping ``old`` at ``backup`` first when given."""
    if backup is not None:
        if backup.exists():
            raise PatchError(f"{backup} exists already; move it away or run without --backup. Nothing was changed.")
        try:
            _write_new(backup, old)
        except OSError as e:
            raise PatchError(f"cannot write the backup {backup}: {_reason(e)}; {p} was not changed") from e
    try:
        _write_atomic(p, new)
    except BaseException:
        if backup is not None:     # train.py is unchanged: a backup left behind would block the next --backup
            backup.unlink()
        raise


def patch_file(path, backup: bool = False) -> Tuple[Path, bool]:
    """Patch a train.py (or a checkout's) in place; returns (file, changed). ``backup`` keeps the original as
    train.py.orig (only when the file changes)."""
    p = resolve_train_py(path)
    text = _read(p)
    patched = patch_text(text, str(p))
    if patched == text:
        return p, False
    _replace(p, text, patched, backup_path(p, 'patch') if backup else None)
    return p, True


def _write_new(p: Path, text: str) -> None:
    """Create ``p`` (it must not exist) holding ``text``; removed again when the write fails."""
    with open(p, 'xb') as f:
        try:
            f.write(text.encode('utf-8'))
            f.flush()
        except BaseException:
            f.close()
            p.unlink()
            raise


def revert_file(path, backup: bool = False) -> Tuple[Path, bool]:
    """Remove the patch from a train.py in place; returns (file, changed). ``backup`` keeps the patched file as
    train.py.patched (only when the file changes)."""
    p = resolve_train_py(path)
    text = _read(p)
    reverted = revert_text(text, str(p))
    if reverted == text:
        return p, False
    _replace(p, text, reverted, backup_path(p, 'revert') if backup else None)
    return p, True


# --- the console command

def register(subparsers) -> None:
    p = subparsers.add_parser(
        'patch', help="add --mix-mode to a timm checkout's train.py (by anchor text; --check, --revert)",
        description="Edit timm's stock train.py (a file, or a checkout directory holding one) so that it accepts "
                    "--mix-mode and the per-mode flags, from the command line or a --config YAML file. The "
                    f"changed places are marked '{MARKER}'. Works by anchor text (timm v1.0.20 to main); "
                    "idempotent; the file is rewritten atomically or not at all.")
    p.add_argument('path', metavar='PATH', help='train.py, or the timm checkout directory that holds it')
    act = p.add_mutually_exclusive_group()
    act.add_argument('--check', action='store_true',
                     help='report each part and change nothing; exit 0 when patched, 1 when the patch would '
                          'apply, 2 when it cannot')
    act.add_argument('--revert', action='store_true', help='remove the patch (restores the original byte for byte)')
    act.add_argument('--diff', action='store_true',
                     help='print the unified diff the patch makes (a/train.py, b/train.py) and change nothing')
    p.add_argument('--backup', action='store_true',
                   help='keep a copy of the file as it was before the change: train.py.orig when patching, '
                        'train.py.patched with --revert (never overwritten; not with --check or --diff)')
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    out, err = sys.stdout, sys.stderr
    try:
        if args.backup and (args.check or args.diff):
            raise PatchError(f"--backup keeps a copy of a file this command changes; --{'check' if args.check else 'diff'} "
                             "changes nothing")
        p = resolve_train_py(args.path)
        if not args.revert:
            try:
                text = _read(p)
            except PatchError:
                text = None           # the action below reports it
            warning = version_warning(p, text)
            if warning:
                print(warning, file=err)
        if args.check:
            return _run_check(p, out, err)
        if args.diff:
            text = _read(p)
            diff = unified_diff(text, patch_text(text, str(p)), p.name)
            if diff:
                out.write(diff)
            else:     # on stderr: stdout stays an (empty) diff
                print(f"{p} is already patched; no diff to show", file=err)
            return 0
        if args.revert:
            p, changed = revert_file(p, backup=args.backup)
            kept = f" (the patched file is in {backup_path(p, 'revert').name})" if changed and args.backup else ''
            print(f"reverted {p}{kept}" if changed else f"{p} is not patched; nothing to revert", file=out)
            return 0
        earlier = text is not None and patched_by_earlier_release(text)
        p, changed = patch_file(p, backup=args.backup)
        if changed and earlier:
            print(f"upgraded {p}: the patch of timm-camaug's earlier release replaced by this release's "
                  f"({'the file as it was is in ' + backup_path(p, 'patch').name + '; ' if args.backup else ''}"
                  f"`timm-camaug patch --revert {args.path}` restores timm's original)", file=out)
        elif changed:
            print(f"patched {p}: train.py now takes --mix-mode "
                  f"({'the original is in ' + backup_path(p, 'patch').name + '; ' if args.backup else ''}"
                  f"undo with `timm-camaug patch --revert {args.path}`)", file=out)
        else:
            print(f"{p} is already patched; nothing to do", file=out)
        return 0
    except PatchError as e:
        print(f"timm-camaug patch: error: {e}", file=err)
        return 2
    except OSError as e:      # reading and writing train.py are PatchErrors already; anything else that fails
        print(f"timm-camaug patch: error: {e}; the file was not changed", file=err)
        return 2


def _run_check(p: Path, out, err) -> int:
    try:
        text = _read(p)
    except PatchError as e:
        print(f"timm-camaug patch: error: {e}", file=err)
        return 2
    try:
        for s in inspect_text(text):
            print(s.describe(), file=out)
        patched = patch_text(text, str(p))
    except PatchError as e:
        print(f"timm-camaug patch: cannot apply: {e}", file=err)
        return 2
    if patched == text:
        print(f"{p}: patched", file=out)
        return 0
    if patched_by_earlier_release(text):
        print(f"{p}: patched by timm-camaug's earlier release; `timm-camaug patch {p}` would upgrade it "
              f"(`timm-camaug patch --revert {p}` restores timm's original)", file=out)
        return 1
    print(f"{p}: not patched; `timm-camaug patch {p}` would apply all {len(PARTS)} parts", file=out)
    return 1
