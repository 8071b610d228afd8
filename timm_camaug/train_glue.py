""" What a patched train.py calls (``timm-camaug patch``): the mix function of ``--mix-mode`` on the model.

train.py's ``model`` differs between timm releases at the point where the patch builds the mix function:
the plain model, a DistributedDataParallel and/or ``torch.compile`` wrapper of it (v1.0.20, and
``task.get_trainable_module()`` from v1.0.28 on), or a feature-distillation module holding the student.
CAM-guided modes must forward the plain model: a DDP forward without its backward breaks the reducer, and
a compiled wrapper would trace the CAM hooks.
"""
import argparse
import logging
import os
import sys
from typing import Any, Callable, Dict, Optional, Union

import torch
from torch import nn

from .args import check_train_args, is_active
from .extractor import HubUnreachableError
from .factory import create_mix_fn
from .loss import MixedTargetLoss, has_auxiliary_outputs
from .model_state import unwrap_model
from .modes import MixMode
from .modes.options import Option, OptionError

__all__ = ['training_module', 'wrap_train_loss', 'create_train_mix_fn', 'STARTUP_ERRORS']

_logger = logging.getLogger(__name__)

# What building the mix function raises for a problem of the user's making, in words that say what to change:
# a flag or option value the mode cannot use (ValueError, and the plugin's own ValueErrors: OptionError,
# CheckpointError, TargetLayerError, NoFeatureMap, ScheduleError, ...), a weights file that does not exist, pretrained
# weights that are neither cached nor reachable. train.py ends on these as on its own argument errors; anything
# else (a RuntimeError such as CUDA running out of memory, a TypeError or AttributeError of a bug) keeps its
# traceback.
STARTUP_ERRORS = (ValueError, FileNotFoundError, HubUnreachableError)


def training_module(model: nn.Module) -> nn.Module:
    """The plain classifier inside train.py's ``model`` (DDP, DataParallel, torch.compile, ModelEma and
    timm.task's feature-distillation wrappers removed)."""
    module = unwrap_model(model)
    student = getattr(module, 'student', None)   # timm.task FeatureDistillationTrainableModule(student, projection)
    if isinstance(student, nn.Module):
        module = unwrap_model(student)
    return module


def wrap_train_loss(loss_fn: nn.Module, args: argparse.Namespace, model: nn.Module) -> nn.Module:
    """train.py's train loss as the training step must compute it (patch part 6).

    With a mix mode, a :class:`~timm_camaug.loss.MixedTargetLoss` that :func:`create_train_mix_fn` binds to the
    mix function (targets completed after the forward); with a model that trains auxiliary heads (Baseline+),
    one that adds their losses. Otherwise ``loss_fn`` itself: the stock loss, untouched.
    """
    module = training_module(model)
    if not is_active(args) and not has_auxiliary_outputs(module):
        return loss_fn
    wrapped = MixedTargetLoss(loss_fn, module if has_auxiliary_outputs(module) else None)
    if getattr(args, 'rank', 0) == 0:
        _logger.info(f'timm-camaug: train loss {wrapped!r}')
    return wrapped


def create_train_mix_fn(
        args: argparse.Namespace,
        model: nn.Module,
        data_config: Optional[Dict[str, Any]] = None,
        amp_autocast: Optional[Callable[[], Any]] = None,
        device: Optional[Union[str, torch.device]] = None,
        loss_fn: Optional[nn.Module] = None,
        timm_mixup: Optional[Any] = None,
        exit_on_error: bool = True,
) -> MixMode:
    """train.py's ``mixup_fn`` for ``--mix-mode``: the mode built from ``args`` on the plain model.

    Args:
        args: train.py's parsed arguments (``--mix-mode`` and the ``--<mode>-*`` flags, ``--num-classes``,
            ``--smoothing``, ``--epochs``).
        model: train.py's ``model`` as it is after DDP/compile wrapping (unwrapped here).
        data_config: train.py's resolved data config (mean/std of the normalised batch).
        amp_autocast: train.py's ``amp_autocast`` (CAM and extractor forwards run under it).
        device: train.py's device.
        loss_fn: train.py's train loss as part 6 of the patch wrapped it; bound to the mix function so that
            targets a mode completes after the forward reach the loss.
        timm_mixup: train.py's own ``Mixup`` (built from ``--mixup``/``--cutmix`` when the loader does not mix),
            or None.
        exit_on_error: a problem found while building (a bad layer name, an unreadable checkpoint, a model the
            mode cannot use: one of :data:`STARTUP_ERRORS`) ends the program as train.py's own argument errors
            do: one line on stderr naming the flag, exit code 2, no traceback. False: raise it. Other errors
            propagate with their traceback either way.
    """
    if not is_active(args):
        raise ValueError("create_train_mix_fn: --mix-mode is 'none'; train.py only calls this when a mode is set")
    try:
        problems = check_train_args(args)
        if problems:   # normally caught at parse time by add_args; kept for train.py copies that parse differently
            raise ValueError('; '.join(problems))
        mix_fn = create_mix_fn(args, model=training_module(model), data_config=data_config,
                               amp_autocast=amp_autocast, device=device, timm_mixup=timm_mixup)
        if isinstance(loss_fn, MixedTargetLoss):
            loss_fn.bind(mix_fn)
        elif mix_fn.reads_training_forward:
            raise ValueError(f"--mix-mode {args.mix_mode} completes its targets from the training forward, but "
                             "train.py's loss is not wrapped: a train.py patched by the earlier release; upgrade it with "
                             "`timm-camaug patch train.py`")
    except STARTUP_ERRORS as e:
        if not exit_on_error:
            raise
        _exit_like_argparse(e)
    if getattr(args, 'rank', 0) == 0:
        _logger.info(f'timm-camaug: --mix-mode {args.mix_mode}: {mix_fn!r}')
    return mix_fn


def startup_message(e: BaseException) -> str:
    """One line for a problem found while building the mix function, as train.py's own argument errors read:
    the flag when an option's value is the problem, else the message."""
    if isinstance(e, OptionError) and getattr(e, 'mode', None):
        flag = Option(e.option, None, '').flag(e.mode)
        if flag not in str(e):      # messages that name their flag already are printed as they are
            return f"argument {flag}: {e}"
    return str(e)


def _exit_like_argparse(e: BaseException) -> None:
    """Print ``train.py: error: <message>`` on stderr and exit with argparse's code 2, without a traceback."""
    prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else 'train.py'
    print(f"{prog}: error: timm-camaug: {startup_message(e)}", file=sys.stderr, flush=True)
    raise SystemExit(2) from None
