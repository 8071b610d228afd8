""" Guards that leave a model under training exactly as it was after an auxiliary forward.

A CAM forward inside a training step must not change what the step itself sees: the modules'
``training`` flags, BatchNorm running statistics, gradient-checkpointing switches, and the hooks
registered on any module.
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


def _stock_bn_forwards() -> tuple:
    """BatchNorm forwards that, in train mode with ``track_running_stats=False``, normalise with the batch's
    statistics and neither read nor update the running ones (torch's, and timm's copies of torch's)."""
    forwards = [_BatchNorm.forward, nn.SyncBatchNorm.forward]
    try:
        from timm.layers.norm_act import BatchNormAct2d, SyncBatchNormAct
        forwards += [BatchNormAct2d.forward, SyncBatchNormAct.forward]
    except ImportError:  # an older timm without them
        pass
    return tuple(forwards)


_STOCK_BN_FORWARDS = _stock_bn_forwards()


@contextmanager
def cam_forward_mode(model: nn.Module, bn: str = 'eval') -> Iterator[nn.Module]:
    """Run the body with dropout, DropPath and timm's gradient checkpointing off; restore every module's state.

    Gradient checkpointing (timm's ``set_grad_checkpointing``, a ``grad_checkpointing`` flag on the model or
    its stages) is switched off because a checkpointed stage runs its blocks directly, so a forward hook on
    the stage never fires; the flags are restored afterwards.

    Args:
        model: the (unwrapped) model.
        bn: ``'eval'`` normalises with the running statistics; ``'batch'`` normalises with the batch's
            own statistics as a training forward does, without updating the running statistics.
    """
    if bn not in BN_MODES:
        raise ValueError(f"bn must be one of {BN_MODES}, got {bn!r}")
    modules = list(model.modules())
    flags: List[Tuple[nn.Module, bool]] = [(m, m.training) for m in modules]
    checkpointed = [m for m in modules if vars(m).get('grad_checkpointing') is True]
    untracked: List[nn.Module] = []
    saved_stats: List[Tuple[nn.Module, List[torch.Tensor]]] = []
    try:
        model.eval()
        for m in checkpointed:
            m.grad_checkpointing = False
        if bn == 'batch':
            for m in modules:
                if isinstance(m, _BatchNorm):
                    # the flag alone: .train() would also switch on children such as the DropBlock inside
                    # timm's BatchNormAct2d, and CAM forwards run with every dropout off
                    m.training = True
                    if not m.track_running_stats:
                        continue
                    if type(m).forward in _STOCK_BN_FORWARDS:
                        # batch statistics without touching the buffers, and no copy of them per call
                        m.track_running_stats = False
                        untracked.append(m)
                    else:  # a BatchNorm with its own forward: save and restore its buffers
                        bufs = [b for b in (m.running_mean, m.running_var, m.num_batches_tracked) if b is not None]
                        saved_stats.append((m, [b.clone() for b in bufs]))
        yield model
    finally:
        with torch.no_grad():
            for m, copies in saved_stats:
                bufs = [b for b in (m.running_mean, m.running_var, m.num_batches_tracked) if b is not None]
                for b, c in zip(bufs, copies):
                    b.copy_(c)
        for m in untracked:
            m.track_running_stats = True
        for m in checkpointed:
            m.grad_checkpointing = True
        for m, flag in flags:
            m.training = flag
