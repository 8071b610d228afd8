""" The mix modes, one file each, and the one registry from mode names to classes.

Built-in modes are listed below by module path and imported on first use. A third-party package adds a
mode with :func:`register_mode`, or without any code run by the user through the entry-point group
``timm_camaug.modes`` (``name = "package.module:ModeClass"``), which is read when this package is
imported: the mode then has its train.py flags as soon as a patched train.py imports the plugin.
"""
import importlib
import logging
from typing import Dict, Tuple, Type, Union

from .base import MixMode, MixParams, MixRegions
from .options import Option, OptionError

__all__ = ['MIX_MODES', 'ENTRY_POINT_GROUP', 'register_mode', 'get_mode_class', 'mix_modes',
           'MixMode', 'MixParams', 'MixRegions', 'Option', 'OptionError']

_logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = 'timm_camaug.modes'

# mode name -> its class, or "module:Class" until first use (one mode's imports never slow the others)
_REGISTRY: Dict[str, Union[str, Type[MixMode]]] = {
    'snapmix': 'timm_camaug.modes.snapmix:SnapMix',
    'saliencymix': 'timm_camaug.modes.saliencymix:SaliencyMix',
    'attentive': 'timm_camaug.modes.attentive:AttentiveCutMix',
    'gutout': 'timm_camaug.modes.gutout:Gutout',
    'cam-erase': 'timm_camaug.modes.cam_erase:CamErase',
    'transmix': 'timm_camaug.modes.transmix:TransMix',
}
_BUILT_IN = frozenset(_REGISTRY)
_RESERVED = ('none', 'cutmix', 'mixup')   # no mixing, and timm's own Mixup in a schedule


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not name or not all(c.isalnum() or c == '-' for c in name) \
            or not name[0].isalpha() or name != name.lower():
        raise ValueError(f"mode name {name!r}: use lower-case letters, digits and '-', starting with a letter "
                         "(it becomes the train.py flags --<name>-<option>)")
    if name in _RESERVED:
        raise ValueError(f"mode name {name!r} is reserved ({', '.join(_RESERVED)}: no mixing and timm's own Mixup)")


def register_mode(cls: Type[MixMode], *, replace: bool = False) -> Type[MixMode]:
    """Make ``cls`` (a :class:`MixMode` subclass whose ``name`` is set) a mode: a ``--mix-mode`` choice with its
    own train.py flags, buildable by ``create_mix_fn(cls.name, ...)``. Usable as a class decorator."""
    if not (isinstance(cls, type) and issubclass(cls, MixMode)):
        raise TypeError(f"register_mode takes a MixMode subclass, got {cls!r}")
    _check_name(cls.name)
    known = _REGISTRY.get(cls.name)
    if known is not None and known is not cls and not replace:
        if cls.name in _BUILT_IN:
            raise ValueError(f"mode {cls.name!r} is built in; choose another name for {cls.__name__}")
        raise ValueError(f"mode {cls.name!r} is registered already (by {_describe(known)}); pass replace=True")
    _REGISTRY[cls.name] = cls
    return cls


def _describe(entry: Union[str, Type[MixMode]]) -> str:
    return entry if isinstance(entry, str) else f'{entry.__module__}:{entry.__qualname__}'


def mix_modes() -> Tuple[str, ...]:
    """The names of every registered mode, built-in ones first."""
    return tuple(_REGISTRY)


def get_mode_class(name: str) -> Type[MixMode]:
    """The class of a mode by its name (one of ``MIX_MODES``)."""
    entry = _REGISTRY.get(name) if isinstance(name, str) else None
    if entry is None:
        raise ValueError(f"unknown mix mode {name!r}; choose one of {', '.join(_REGISTRY)}")
    if isinstance(entry, str):
        module, qualname = entry.split(':')
        try:
            cls = getattr(importlib.import_module(module), qualname)
        except (ImportError, AttributeError) as e:
            raise ImportError(f"mix mode {name!r}: cannot import {entry} ({type(e).__name__}: {e})") from e
        if not (isinstance(cls, type) and issubclass(cls, MixMode)) or cls.name != name:
            raise TypeError(f"mix mode {name!r}: {entry} is not a MixMode subclass named {name!r}")
        _REGISTRY[name] = entry = cls
    return entry


def _load_entry_points() -> None:
    try:
        from importlib.metadata import entry_points
        eps = entry_points()
        found = eps.select(group=ENTRY_POINT_GROUP) if hasattr(eps, 'select') else eps.get(ENTRY_POINT_GROUP, ())
    except Exception as e:  # a broken environment must not stop the built-in modes
        _logger.warning("timm-camaug: could not read the %s entry points: %s", ENTRY_POINT_GROUP, e)
        return
    for ep in found:
        try:
            _check_name(ep.name)
        except ValueError as e:
            _logger.warning("timm-camaug: entry point %s = %s ignored: %s", ep.name, ep.value, e)
            continue
        if ep.name in _REGISTRY:
            if _REGISTRY[ep.name] != ep.value:
                _logger.warning("timm-camaug: entry point %s = %s ignored: the name is taken by %s",
                                ep.name, ep.value, _describe(_REGISTRY[ep.name]))
            continue
        _REGISTRY[ep.name] = ep.value     # imported on first use, checked then


_load_entry_points()


def __getattr__(name: str):
    if name == 'MIX_MODES':     # computed on each access: modes registered later are listed too
        return mix_modes()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
