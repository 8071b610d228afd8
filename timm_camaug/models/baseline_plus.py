""" SnapMix's "Baseline+": a timm ResNet with a detached mid-level branch

Paper: SnapMix: Semantically Proportional Mixing for Augmenting Fine-grained Data, Huang et al., AAAI 2021
(https://arxiv.org/abs/2012.04846). Reference code: https://github.com/Shaoli-Huang/SnapMix
(``networks/resnet_ft.py``, ``--midlevel``; its loss in ``trainer/comm_train.py``, its test score in
``trainer/comm_test.py``).

The output of ``layer3`` (1024 channels in ResNet-50/101, 256 in ResNet-18/34), detached, feeds a 1x1
convolution with bias, a ReLU, a global max pool and a linear classifier (PyTorch's default initialisation,
no BatchNorm). Its loss, with the same targets as the main head's, is added to the main loss; the backbone
is trained by the main head only. At test time the two heads' logits are summed.

In timm terms: training forwards return the main head's logits and keep the branch's for
``pop_auxiliary_outputs()``, which the train loss of a patched train.py adds
(:class:`timm_camaug.loss.MixedTargetLoss`, patch part 6); evaluation forwards return the sum.
``forward_features``, ``forward_head``, ``get_classifier`` are the ResNet's own (the main head), so CAMs,
SnapMix's semantic percent maps included, come from the main head as in the reference code.
"""
from typing import Any, Dict, List, Optional

import torch
from torch import nn
from timm.models import ResNet, model_entrypoint, register_model
from timm.models import is_model as _is_model

__all__ = ['ResNetBaselinePlus', 'baseline_plus_resnet', 'create_baseline_plus', 'BASELINE_PLUS_BASES']

# the ResNets of the SnapMix paper and README, plus timm's tiny test model (quick runs, tests)
BASELINE_PLUS_BASES = ('resnet18', 'resnet34', 'resnet50', 'resnet101', 'resnet152', 'test_resnet')
MID_LAYER = 'layer3'


class ResNetBaselinePlus(ResNet):
    """A timm :class:`~timm.models.ResNet` with SnapMix's mid-level branch on ``layer3`` ("Baseline+").

    Built like a ResNet (same arguments, plus ``mid_detach``), or from a built one with
    :func:`baseline_plus_resnet`. Registered with timm as ``<resnet>_baseline_plus`` (``resnet18`` ...
    ``resnet152``, ``test_resnet``) and ``baseline_plus`` (any timm ResNet: ``base_model='resnet50d'``).

    Args:
        mid_detach: feed the branch a detached ``layer3`` output, so that its loss trains the branch only
            (the reference code: always, as its ``set_detach(False)`` epoch is never reached).
        (and the arguments of :class:`~timm.models.ResNet`)

    Training forward (``model.train()`` with gradients enabled): returns the main head's (N, K) logits and
    keeps the branch's for :meth:`pop_auxiliary_outputs` (the next training forward replaces them). Any
    other forward (evaluation, or no gradients, as CAM forwards run) returns ``main + branch`` logits and
    leaves the kept ones as they are. With ``num_classes=0`` (a feature extractor) the branch has no
    classifier and the forward is the ResNet's.

    Examples:
        >>> import timm, torch
        >>> import timm_camaug     # registers the Baseline+ models with timm
        >>> model = timm.create_model('test_resnet_baseline_plus', num_classes=5)
        >>> x = torch.randn(2, 3, 64, 64)
        >>> logits = model.train()(x)              # main head
        >>> [tuple(t.shape) for t in model.pop_auxiliary_outputs()]   # branch, for the train loss
        [(2, 5)]
        >>> model.pop_auxiliary_outputs()          # popped once
        []
        >>> _ = model.eval()                        # evaluation: the two heads' logits summed
        >>> feats, (mid,) = model.forward_intermediates(x, indices=[3])
        >>> torch.allclose(model(x), model.forward_head(feats) + model.forward_mid(mid))
        True
    """

    def __init__(self, *args: Any, mid_detach: bool = True, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._add_mid_branch(mid_detach)

    def _add_mid_branch(self, mid_detach: bool) -> None:
        # added after ResNet.init_weights, so the branch keeps PyTorch's default initialisation (the reference)
        chs = self.mid_channels
        param = next(self.parameters(), None)
        dd = {} if param is None else {'device': param.device, 'dtype': param.dtype}
        self.mid_detach = bool(mid_detach)
        self.mid_conv = nn.Conv2d(chs, chs, kernel_size=1, stride=1, bias=True, **dd)
        self.mid_act = nn.ReLU()
        self.mid_pool = nn.AdaptiveMaxPool2d(1)
        self.mid_fc = nn.Linear(chs, self.num_classes, **dd) if self.num_classes > 0 else nn.Identity()
        self._auxiliary: List[torch.Tensor] = []

    @property
    def mid_channels(self) -> int:
        """Channels of the ``layer3`` output the branch reads."""
        for info in self.feature_info:
            if info.get('module') == MID_LAYER:
                return int(info['num_chs'])
        raise ValueError(f"{type(self).__name__}: no '{MID_LAYER}' in feature_info")

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """New main classifier (ResNet's) and a new branch classifier for ``num_classes``."""
        super().reset_classifier(num_classes, global_pool)
        param = self.mid_conv.weight
        self.mid_fc = nn.Linear(self.mid_channels, num_classes, device=param.device, dtype=param.dtype) \
            if num_classes > 0 else nn.Identity()
        self.mid_fc.train(self.training)
        self._auxiliary = []

    def forward_mid(self, mid: torch.Tensor) -> torch.Tensor:
        """(N, K) logits of the branch from the (N, C3, h, w) ``layer3`` output."""
        if self.mid_detach:
            mid = mid.detach()
        return self.mid_fc(self.mid_pool(self.mid_act(self.mid_conv(mid))).flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.num_classes <= 0:
            return super().forward(x)
        x, (mid,) = self.forward_intermediates(x, indices=[3])
        logits = self.forward_head(x)
        mid_logits = self.forward_mid(mid)
        if self.training and torch.is_grad_enabled():
            self._auxiliary = [mid_logits]
            return logits
        return logits + mid_logits

    @torch.jit.ignore
    def pop_auxiliary_outputs(self) -> List[torch.Tensor]:
        """The branch's logits of the last training forward, once (then forgotten); [] when there are none."""
        out, self._auxiliary = self._auxiliary, []
        return out

    def __getstate__(self) -> Dict[str, Any]:
        # copies (ModelEma's deepcopy, pickling) never carry a pending training graph
        state = dict(self.__dict__)
        state['_auxiliary'] = []
        return state


def baseline_plus_resnet(model: ResNet, mid_detach: bool = True) -> ResNetBaselinePlus:
    """The timm ResNet ``model`` turned into Baseline+ in place (its class becomes :class:`ResNetBaselinePlus`
    and the branch is added, with PyTorch's default initialisation); its weights and pretrained_cfg are kept."""
    if type(model) is not ResNet:
        raise TypeError(f"Baseline+ needs a timm ResNet (timm.models.ResNet, e.g. resnet50, resnet50d, "
                        f"seresnext50_32x4d), got {type(model).__name__}")
    model.__class__ = ResNetBaselinePlus
    model._add_mid_branch(mid_detach)
    return model


def create_baseline_plus(base_model: str, pretrained: bool = False, mid_detach: bool = True,
                         **kwargs: Any) -> ResNetBaselinePlus:
    """Baseline+ on the timm ResNet ``base_model`` (a timm name, with a pretrained tag if wanted, e.g.
    ``'resnet50.tv_in1k'``), built by timm's own entry point: ``pretrained`` loads the ResNet's timm weights
    (``pretrained_cfg_overlay=dict(file=...)`` a local file), ``kwargs`` are the ResNet's."""
    name, _, tag = base_model.partition('.')
    if not _is_model(name):
        raise ValueError(f"Baseline+: unknown timm model {base_model!r}")
    if tag and not kwargs.get('pretrained_cfg'):
        kwargs['pretrained_cfg'] = tag
    return baseline_plus_resnet(model_entrypoint(name)(pretrained=pretrained, **kwargs), mid_detach)


# --- timm registry: `timm.create_model('resnet50_baseline_plus.tv_in1k', pretrained=True, num_classes=200)`
# (the tag picks the base ResNet's weights), `--model resnet50_baseline_plus.tv_in1k` in a patched train.py.

@register_model
def resnet18_baseline_plus(pretrained: bool = False, **kwargs: Any) -> ResNetBaselinePlus:
    """ResNet-18 + SnapMix's mid-level branch (Baseline+); pretrained weights are timm's resnet18's."""
    return create_baseline_plus('resnet18', pretrained, **kwargs)


@register_model
def resnet34_baseline_plus(pretrained: bool = False, **kwargs: Any) -> ResNetBaselinePlus:
    """ResNet-34 + SnapMix's mid-level branch (Baseline+); pretrained weights are timm's resnet34's."""
    return create_baseline_plus('resnet34', pretrained, **kwargs)


@register_model
def resnet50_baseline_plus(pretrained: bool = False, **kwargs: Any) -> ResNetBaselinePlus:
    """ResNet-50 + SnapMix's mid-level branch (Baseline+); pretrained weights are timm's resnet50's."""
    return create_baseline_plus('resnet50', pretrained, **kwargs)


@register_model
def resnet101_baseline_plus(pretrained: bool = False, **kwargs: Any) -> ResNetBaselinePlus:
    """ResNet-101 + SnapMix's mid-level branch (Baseline+); pretrained weights are timm's resnet101's."""
    return create_baseline_plus('resnet101', pretrained, **kwargs)


@register_model
def resnet152_baseline_plus(pretrained: bool = False, **kwargs: Any) -> ResNetBaselinePlus:
    """ResNet-152 + SnapMix's mid-level branch (Baseline+); pretrained weights are timm's resnet152's."""
    return create_baseline_plus('resnet152', pretrained, **kwargs)


@register_model
def test_resnet_baseline_plus(pretrained: bool = False, **kwargs: Any) -> ResNetBaselinePlus:
    """timm's tiny test_resnet + the mid-level branch: for quick runs and tests."""
    return create_baseline_plus('test_resnet', pretrained, **kwargs)


@register_model
def baseline_plus(pretrained: bool = False, base_model: str = 'resnet50', **kwargs: Any) -> ResNetBaselinePlus:
    """Baseline+ on any timm ResNet: ``base_model`` names it (train.py: ``--model baseline_plus --model-kwargs
    base_model=resnet50d.ra2_in1k``)."""
    return create_baseline_plus(base_model, pretrained, **kwargs)
