""" The mix modes, one file each, and the one registry from mode names to classes.

Built-in modes are listed below by module path and imported on first use. A third-party package adds a
mode with :func:`register_mode`, or without any code run by the user through the entry-point group
``timm_camaug.modes`` (``name = "package.module:ModeClass"``), which is read when this package is
imported: the mode then has its train.py flags as soon as a patched train.py imports the plugin.

An entry-point mode is imported the first time the modes are listed (``MIX_MODES``, :func:`mix_modes`) or it is
asked for by name. One that fails to load (its module does not import, or its class is refused) is left out with
one warning naming the entry point, its distribution and the error, so the other modes and a train.py run with
``--mix-mode none`` still start; :func:`get_mode_class` on its name raises a ValueError saying why.
"""
import importlib
import logging
from typing import Any, Dict, Tuple, Type, Union

from .base import MixMode, MixParams, MixRegions
from .options import Option, OptionError

__all__ = ['MIX_MODES', 'ENTRY_POINT_GROUP', 'register_mode', 'get_mode_class', 'mix_modes', 'failed_modes',
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
_RESERVED = {
    'none': 'no mixing',
    'cutmix': "timm's own CutMix in a schedule",
    'mixup': "timm's own Mixup in a schedule",
    'mix': 'its flags would clash with --mix-mode, --mix-mode-prob and --mix-cam-start-epoch',
}
# entry-point modes registered but not imported yet: name -> the entry point (importlib.metadata.EntryPoint)
_PENDING_ENTRY_POINTS: Dict[str, Any] = {}
# entry-point modes that failed to load: name -> why (the error get_mode_class raises for the name)
_FAILED: Dict[str, str] = {}


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not name or not all(c.isalnum() or c == '-' for c in name) \
            or not name[0].isalpha() or name != name.lower():
        raise ValueError(f"mode name {name!r}: use lower-case letters, digits and '-', starting with a letter "
                         "(it becomes the train.py flags --<name>-<option>)")
    reserved = 'mix' if name.startswith('mix-') else name
    if reserved in _RESERVED:
        raise ValueError(f"mode name {name!r} is reserved ({_RESERVED[reserved]})")


def register_mode(cls: Type[MixMode], *, replace: bool = False) -> Type[MixMode]:
    """Make ``cls`` (a :class:`MixMode` subclass whose ``name`` is set) a mode: a ``--mix-mode`` choice with its
    own train.py flags, buildable by ``create_mix_fn(cls.name, ...)``. Usable as a class decorator."""
    if not (isinstance(cls, type) and issubclass(cls, MixMode)):
        raise TypeError(f"register_mode takes a MixMode subclass, got {cls!r}")
    _check_name(cls.name)
    known = _REGISTRY.get(cls.name)
    # the class named by its own entry point (a plugin that also registers itself) is no clash
    same = known is cls or (isinstance(known, str) and cls.name not in _BUILT_IN and known == _describe(cls))
    if known is not None and not same and not replace:
        if cls.name in _BUILT_IN:
            raise ValueError(f"mode {cls.name!r} is built in; choose another name for {cls.__name__}")
        raise ValueError(f"mode {cls.name!r} is registered already (by {_describe(known)}); pass replace=True")
    _REGISTRY[cls.name] = cls
    _PENDING_ENTRY_POINTS.pop(cls.name, None)
    _FAILED.pop(cls.name, None)
    return cls


def _describe(entry: Union[str, Type[MixMode]]) -> str:
    return entry if isinstance(entry, str) else f'{entry.__module__}:{entry.__qualname__}'


def mix_modes() -> Tuple[str, ...]:
    """The names of every registered mode, built-in ones first (entry-point modes that failed to load are left
    out: see :func:`failed_modes`)."""
    for name in list(_PENDING_ENTRY_POINTS):
        _load_entry_point(name)
    return tuple(_REGISTRY)


def failed_modes() -> Dict[str, str]:
    """The entry-point modes that failed to load: name -> the error that selecting it by name gives."""
    mix_modes()
    return dict(_FAILED)


def get_mode_class(name: str) -> Type[MixMode]:
    """The class of a mode by its name (one of ``MIX_MODES``)."""
    if isinstance(name, str) and name in _PENDING_ENTRY_POINTS:
        _load_entry_point(name)
    if isinstance(name, str) and name in _FAILED:
        raise ValueError(_FAILED[name])
    entry = _REGISTRY.get(name) if isinstance(name, str) else None
    if entry is None:
        raise ValueError(f"unknown mix mode {name!r}; choose one of {', '.join(_REGISTRY)}")
    if isinstance(entry, str):      # a built-in mode: a failure here is timm-camaug's own, not skipped
        module, qualname = entry.split(':')
        try:
            cls = getattr(importlib.import_module(module), qualname)
        except (ImportError, AttributeError) as e:
            raise ImportError(f"mix mode {name!r}: cannot import {entry} ({type(e).__name__}: {e})") from e
        _check_class(name, entry, cls)
        _REGISTRY[name] = entry = cls
    return entry


def _check_class(name: str, entry: str, cls: Any) -> None:
    if not (isinstance(cls, type) and issubclass(cls, MixMode)) or cls.name != name:
        raise TypeError(f"mix mode {name!r}: {entry} is not a MixMode subclass named {name!r}")


def _distribution(ep) -> str:
    dist = getattr(ep, 'dist', None)     # Python 3.10+
    return f'distribution {dist.name} {dist.version}' if dist is not None else 'an unknown distribution'


def _load_entry_point(name: str) -> None:
    """Import the entry-point mode ``name``; on any failure, drop it with one warning and record why."""
    ep = _PENDING_ENTRY_POINTS.pop(name, None)
    if ep is None or _REGISTRY.get(name) != ep.value:     # loaded already, or replaced by register_mode
        return
    try:
        cls = ep.load()     # an exception of any kind from the plugin's import, its class checks included
        _check_class(name, ep.value, cls)
    except Exception as e:
        where = f"entry point {ep.name} = {ep.value} ({_distribution(ep)})"
        error = f"{type(e).__name__}: {e}"
        _REGISTRY.pop(name, None)
        _FAILED[name] = f"mode {name!r} from {where} failed to load: {error}"
        _logger.warning("timm-camaug: %s failed to load and is skipped: %s", where, error)
        return
    _REGISTRY[name] = cls


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
            if _describe(_REGISTRY[ep.name]) != ep.value:
                _logger.warning("timm-camaug: entry point %s = %s ignored: the name is taken by %s",
                                ep.name, ep.value, _describe(_REGISTRY[ep.name]))
            continue
        _REGISTRY[ep.name] = ep.value     # imported on first use (or when the modes are listed), checked then
        _PENDING_ENTRY_POINTS[ep.name] = ep


_load_entry_points()


def __getattr__(name: str):
    if name == 'MIX_MODES':     # computed on each access: modes registered later are listed too
        return mix_modes()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
