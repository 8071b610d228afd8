""" timm models of the methods' papers, registered with timm's ``register_model`` when ``timm_camaug`` is
imported: ``timm.create_model('resnet50_baseline_plus', ...)`` and train.py's ``--model`` find them. """
from .baseline_plus import BASELINE_PLUS_BASES, ResNetBaselinePlus, baseline_plus_resnet, create_baseline_plus

__all__ = ['ResNetBaselinePlus', 'baseline_plus_resnet', 'create_baseline_plus', 'BASELINE_PLUS_BASES']
