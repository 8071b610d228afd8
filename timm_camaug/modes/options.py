""" A mode's keyword options: one declaration that is also train.py's flag, its YAML key, its help and its parser.

Every option ``o`` of mode ``m`` becomes the flag ``--<m>-<o>`` (dest ``<m>_<o>``, the YAML key of train.py's
``--config`` files), typed and checked by :meth:`Option.flag_type`; the same parser reads ``KEY=VALUE``
strings (``--set`` of ``preview``/``bench``/``demo``) with :meth:`Option.parse`. The default is the
default of the mode's ``__init__`` keyword of the same name: :class:`~timm_camaug.modes.base.MixMode`
checks that the two agree when a mode class is defined.
"""
import argparse
import math
import numbers
from dataclasses import dataclass
from typing import Any, Callable, Optional, Tuple

__all__ = ['Option', 'OptionError', 'option_dest', 'parse_bool', 'is_finite_number', 'require',
           'fraction', 'optional_str', 'NONE_WORDS']

_TRUE, _FALSE = ('1', 'true', 'yes', 'on'), ('0', 'false', 'no', 'off')
NONE_WORDS = ('', 'none', 'null')


def parse_bool(value: str) -> bool:
    """A boolean flag's value: 1/true/yes/on or 0/false/no/off (any case); anything else is an error."""
    v = str(value).strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean ({'/'.join(_TRUE)} or {'/'.join(_FALSE)}), got {value!r}")


def fraction(s: str) -> float:
    """A number in (0, 1] (argparse prefixes the message with the flag)."""
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {s!r}") from None
    if not 0.0 < v <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {s!r}")
    return v


def optional_str(s: str) -> Optional[str]:
    """A string, or None for '', 'none' and 'null'."""
    return None if s.lower() in NONE_WORDS else s


def option_dest(mode: str, option: str) -> str:
    """The ``args`` attribute (and YAML key) of a mode's option, e.g. ('cam-erase', 't') -> 'cam_erase_t'."""
    return f"{mode.replace('-', '_')}_{option}"


def is_finite_number(v: Any) -> bool:
    """A real, finite number (not a bool, NaN or infinity)."""
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


class OptionError(ValueError):
    """A bad value of one option of a mode; ``option`` is its name (train.py's flag is ``--<mode>-<option>``)."""

    def __init__(self, option: str, message: str):
        super().__init__(message)
        self.option = option


def require(ok: bool, option: str, message: str) -> None:
    """Raise :class:`OptionError` for ``option`` unless ``ok``."""
    if not ok:
        raise OptionError(option, message)


@dataclass(frozen=True)
class Option:
    """One keyword option of a mode, and its train.py flag ``--<mode>-<name>``."""
    name: str
    default: Any
    help: str
    type: Optional[Callable[[str], Any]] = None   # parser of the flag's text; None: the default's type
    choices: Optional[Tuple[Any, ...]] = None

    def flag_type(self) -> Callable[[str], Any]:
        """The argparse ``type`` of the flag (booleans parse 1/true/yes/on and 0/false/no/off)."""
        if self.type is bool or (self.type is None and isinstance(self.default, bool)):
            return parse_bool
        if self.type is not None:
            return self.type
        if self.default is None:
            raise TypeError(f"option {self.name!r} has no default to take its type from: give Option(type=...)")
        return type(self.default)

    def flag(self, mode: str) -> str:
        return f"--{mode}-{self.name.replace('_', '-')}"

    def parse(self, text: str) -> Any:
        """The value of ``text`` as the flag would parse it ('none'/'null' give None where None is the
        default); ValueError naming what is wrong."""
        if text.strip().lower() in NONE_WORDS[1:] and self.default is None:
            return None
        try:
            value = self.flag_type()(text)
        except (TypeError, ValueError, argparse.ArgumentTypeError) as e:
            raise ValueError(f"{self.name}={text}: {e}") from None
        if self.choices is not None and value not in self.choices:
            raise ValueError(f"{self.name}={text}: choose one of {', '.join(map(str, self.choices))}")
        return value
