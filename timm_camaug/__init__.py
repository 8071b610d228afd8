""" timm-camaug: CAM- and saliency-guided mixing augmentations for timm's train.py.

``--mix-mode snapmix|saliencymix|attentive|gutout|cam-erase`` in a patched train.py, or in your own loop::

    mix_fn = timm_camaug.create_mix_fn('snapmix', model=model, num_classes=200)
    x, soft_target = mix_fn(x, target)
"""
from .args import add_args, check_train_args, is_active
from .cam import CAM_METHODS, class_activation_maps
from .factory import create_mix_fn
from .modes import MIX_MODES, get_mode_class

__version__ = '0.1.0'

__all__ = [
    'MIX_MODES', 'CAM_METHODS', 'create_mix_fn', 'add_args', 'is_active', 'check_train_args',
    'class_activation_maps', 'get_mode_class', '__version__',
]
