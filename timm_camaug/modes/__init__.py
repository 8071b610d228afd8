""" The mix modes, one file each, and the one registry from mode names to classes. """
import importlib
from typing import Dict, Tuple, Type

from .base import CamGuidedMode, MixMode, MixParams, Option

__all__ = ['MIX_MODES', 'MODE_PATHS', 'get_mode_class', 'MixMode', 'CamGuidedMode', 'MixParams', 'Option']

# mode name -> "module:Class"; imported on first use so that one mode's optional needs never slow the others
MODE_PATHS: Dict[str, str] = {
    'snapmix': 'timm_camaug.modes.snapmix:SnapMix',
    'saliencymix': 'timm_camaug.modes.saliencymix:SaliencyMix',
    'attentive': 'timm_camaug.modes.attentive:AttentiveCutMix',
    'gutout': 'timm_camaug.modes.gutout:Gutout',
    'cam-erase': 'timm_camaug.modes.cam_erase:CamErase',
}
MIX_MODES: Tuple[str, ...] = tuple(MODE_PATHS)


def get_mode_class(name: str) -> Type[MixMode]:
    """The class of a mode by its name (one of ``MIX_MODES``)."""
    if name not in MODE_PATHS:
        raise ValueError(f"unknown mix mode {name!r}; choose one of {', '.join(MIX_MODES)}")
    module, cls = MODE_PATHS[name].split(':')
    return getattr(importlib.import_module(module), cls)
