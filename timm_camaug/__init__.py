""" timm-camaug: CAM- and saliency-guided mixing augmentations for timm's train.py.

``--mix-mode <mode>`` in a patched train.py (``timm_camaug.MIX_MODES`` lists the modes), or in your own loop::

    mix_fn = timm_camaug.create_mix_fn(mode, model=model, num_classes=200)   # mode: one of MIX_MODES
    x, soft_target = mix_fn(x, target)
    output = model(x)
    loss = loss_fn(output, mix_fn.finalize(soft_target))

Importing the package registers its timm models (SnapMix's Baseline+, ``resnet50_baseline_plus`` ...) with
timm, so ``timm.create_model`` and train.py's ``--model`` find them; this imports timm.
"""
import importlib
from typing import TYPE_CHECKING

__version__ = '0.1.0'

# public name -> submodule, imported on first use (timm itself is imported below, for the model registry)
_LAZY = {
    'MIX_MODES': 'modes', 'get_mode_class': 'modes', 'register_mode': 'modes', 'MixMode': 'modes',
    'CAM_METHODS': 'cam', 'class_activation_maps': 'cam',
    'create_mix_fn': 'factory',
    'add_args': 'args', 'is_active': 'args', 'check_train_args': 'args',
}

__all__ = list(_LAZY) + ['__version__']

if TYPE_CHECKING:  # pragma: no cover
    from .args import add_args, check_train_args, is_active
    from .cam import CAM_METHODS, class_activation_maps
    from .factory import create_mix_fn
    from .modes import MIX_MODES, MixMode, get_mode_class, register_mode


# timm's registry must know the models before anyone calls timm.create_model (a patched train.py imports
# this package before it builds its model): imported here, not lazily
from . import models as _models  # noqa: E402,F401


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f'.{_LAZY[name]}', __name__), name)
        if name != 'MIX_MODES':     # not kept: modes registered later must be listed too
            globals()[name] = value
        return value
    raise AttributeError(f"module 'timm_camaug' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
