""" What the console commands share: their error for a bad input, their list of mix modes, a progress bar
(tqdm when installed, else a plain line per 10 %), byte sizes and file names for messages, and the name of the
class-map file that train.py's ``--class-map`` reads. """
import os
import sys
from typing import List, Optional, Protocol, TextIO

__all__ = ['CLASS_MAP_FILE', 'ProgressBar', 'progress_bar', 'format_bytes', 'printable', 'command_error',
           'mode_rows']

CLASS_MAP_FILE = 'class_map.txt'  # one class folder per line, in class-index order (train.py --class-map)


class ProgressBar(Protocol):
    """What callers use of a bar: ``update(n)`` after each unit of work, ``set_postfix(name=value, ...)`` for
    figures shown after the count (tqdm's), ``close()`` at the end."""

    def update(self, n: int = 1) -> object: ...

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **kwargs) -> None: ...

    def close(self) -> None: ...


class _PlainProgress:
    """A bar without tqdm: the total once, then a line at every 10 % done (with the latest postfix)."""

    def __init__(self, total: int, desc: str, unit: str, file: TextIO):
        self.total, self.desc, self.file = total, desc, file
        self.n, self._next_report, self._postfix = 0, 0.1, ''
        print(f'{desc}: {total} {unit}s', file=file, flush=True)

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.total and self.n / self.total >= self._next_report:
            print(f'{self.desc}: {100 * self.n // self.total}% ({self.n}/{self.total}){self._postfix}', file=self.file,
                  flush=True)
            while self._next_report <= self.n / self.total:
                self._next_report += 0.1

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **kwargs) -> None:
        items = {**(ordered_dict or {}), **kwargs}
        self._postfix = ''.join(f', {k}={v}' for k, v in items.items())

    def close(self) -> None:
        pass


class _NoProgress:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **kwargs) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(total: int, desc: str, *, unit: str = 'item', enabled: bool = True,
                 file: Optional[TextIO] = None) -> ProgressBar:
    """A progress bar over ``total`` units named ``unit`` (singular), on stderr unless ``file`` is given: tqdm's
    when tqdm is installed (it comes with timm through huggingface_hub), else plain lines; with ``enabled``
    False, one that prints nothing. Always an object with ``update``, ``set_postfix`` and ``close``.

    Examples:
        >>> import io
        >>> out = io.StringIO()
        >>> bar = progress_bar(4, 'demo', unit='step', file=out)
        >>> for _ in range(4):
        ...     bar.update()
        >>> bar.close()
        >>> '4/4' in out.getvalue()
        True
    """
    if not enabled:
        return _NoProgress()
    file = sys.stderr if file is None else file
    try:
        from tqdm import auto  # through the package: it can be unavailable while tqdm.auto is still cached
    except ImportError:
        return _PlainProgress(total, desc, unit, file)
    return auto.tqdm(total=total, desc=desc, unit=unit, file=file, leave=True, dynamic_ncols=True)


def format_bytes(n: int) -> str:
    """A byte count for a message: ``'812 bytes'``, ``'3.4 kB'``, ``'12.3 MB'``, ``'1.2 GB'`` (powers of 1000)."""
    for unit, scale in (('GB', 1e9), ('MB', 1e6), ('kB', 1e3)):
        if n >= scale:
            return f'{n / scale:.1f} {unit}'
    return f'{n} bytes'


def printable(path: str) -> str:
    """``path`` as valid UTF-8 text for the terminal or a JSON file: bytes of a file name that are not UTF-8
    (Python keeps them as surrogates, which a strict UTF-8 stream refuses) are shown as ``\\xNN``."""
    return os.fsencode(path).decode('utf-8', 'backslashreplace')


def command_error(command: str, msg: str) -> SystemExit:
    """The exception a console command raises for an input it cannot use: ``raise command_error('bench', msg)``
    prints ``timm-camaug bench: <msg>`` on stderr and exits with status 1."""
    return SystemExit(f"timm-camaug {command}: {msg}")


def mode_rows(text: str, *, take_none: bool = True) -> List[str]:
    """The rows of a command's comma-separated list of mix modes (demo's ``--mix-mode``, bench's ``--mode``):
    registered modes, timm's own ``cutmix`` / ``mixup``, schedules written with ``+`` (``snapmix:0.5+cutmix:0.5``),
    ``all`` (every registered mode) and, with ``take_none``, ``none`` (no mixing). Repeated rows are kept once.
    Raises ValueError naming the word that is not one of these (an entry-point mode that failed to load: why).

    Examples:
        >>> mode_rows('cutmix, snapmix:0.5+mixup:0.5, cutmix')
        ['cutmix', 'snapmix:0.5+mixup:0.5']
        >>> from timm_camaug.modes import mix_modes
        >>> mode_rows('all') == list(mix_modes())
        True
    """
    from .modes import failed_modes, mix_modes
    from .modes.schedule import NO_MIX, is_timm_member, parse_schedule
    from .modes.timm_mixup import TIMM_PRESETS
    known = mix_modes()
    choices = (f"choose one of {', '.join(known)}, {', '.join(TIMM_PRESETS)} (timm's own), a schedule such as "
               f"a:0.5+b:0.5, 'all'{f', {NO_MIX!r}' if take_none else ''}, or a comma-separated list of these")
    rows: List[str] = []
    for row in (r.strip() for r in str(text).split(',')):
        if not row:
            continue
        if row == 'all':
            rows += known
        elif row == NO_MIX:
            if not take_none:
                raise ValueError(f"{NO_MIX!r} (no mixing) is not a row here; {choices}")
            rows.append(row)
        else:
            names = [name for name, _ in parse_schedule(row)]      # ScheduleError (a ValueError) for its syntax
            bad = [n for n in names if n not in known and not is_timm_member(n)]
            if bad:
                failed = failed_modes()
                raise ValueError(next((failed[n] for n in bad if n in failed),
                                      f"unknown mix mode {', '.join(bad)}; {choices}"))
            rows.append(row)
    if not rows:
        raise ValueError(f"no mix mode in {text!r}; {choices}")
    return list(dict.fromkeys(rows))
