""" Guards that leave a model under training exactly as it was after an auxiliary forward.

A CAM forward inside a training step must not change what the step itself sees: the modules'
``training`` flags, BatchNorm running statistics, and the hooks registered on any module.
"""
from contextlib import contextmanager
from typing import Iterator, List, Tuple

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ['BN_MODES', 'cam_forward_mode', 'unwrap_model']

BN_MODES = ('eval', 'batch')


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module inside DistributedDataParallel / DataParallel / torch.compile / ModelEma wrappers."""
    from timm.utils import unwrap_model as _timm_unwrap
    return _timm_unwrap(model)


@contextmanager
def cam_forward_mode(model: nn.Module, bn: str = 'eval') -> Iterator[nn.Module]:
    """Run the body with dropout and DropPath off and restore every module's state afterwards.

    Args:
        model: the (unwrapped) model.
        bn: ``'eval'`` normalises with the running statistics; ``'batch'`` normalises with the batch's
            own statistics as a training forward does, without updating the running statistics.
    """
    if bn not in BN_MODES:
        raise ValueError(f"bn must be one of {BN_MODES}, got {bn!r}")
    flags: List[Tuple[nn.Module, bool]] = [(m, m.training) for m in model.modules()]
    saved_stats: List[Tuple[nn.Module, List[torch.Tensor]]] = []
    try:
        model.eval()
        if bn == 'batch':
            for m in model.modules():
                if isinstance(m, _BatchNorm):
                    m.train()
                    if m.track_running_stats:
                        bufs = [b for b in (m.running_mean, m.running_var, m.num_batches_tracked) if b is not None]
                        saved_stats.append((m, [b.clone() for b in bufs]))
        yield model
    finally:
        with torch.no_grad():
            for m, copies in saved_stats:
                bufs = [b for b in (m.running_mean, m.running_var, m.num_batches_tracked) if b is not None]
                for b, c in zip(bufs, copies):
                    b.copy_(c)
        for m, flag in flags:
            m.training = flag
