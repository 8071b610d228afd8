""" Moving a mode's random draws (made on the CPU) to the batch's device without stalling the step, and checks
of a batch that cost no host-device synchronisation on an accelerator (queued device-side assertions). """
from typing import Optional, Tuple, Union

import torch

__all__ = ['to_device', 'assert_in_range', 'assert_finite', 'assert_on_device', 'DeviceCount']


def to_device(t: torch.Tensor, device: Union[str, torch.device, None]) -> torch.Tensor:
    """``t`` on ``device``; a copy from the host to an accelerator is made asynchronously.

    A plain host-to-GPU ``.to()`` of pageable memory waits for the GPU to finish everything queued before it
    (the CAM forward, say); ``non_blocking=True`` stages the few bytes of a draw and returns at once. The
    draws are never written again after the copy, so the asynchronous copy is safe.
    """
    if device is None:
        return t
    device = torch.device(device)
    # asynchronous only host-to-device: a device-to-host copy would return before the data is there
    return t.to(device, non_blocking=t.device.type == 'cpu' and device.type != 'cpu')


def assert_in_range(labels: torch.Tensor, num_classes: int, what: str = 'label') -> None:
    """Raise a ValueError naming the first label outside ``[0, num_classes)``.

    On the CPU the check is immediate. On an accelerator reading the answer back would stall every step, so
    the check is queued on the device instead (``torch._assert_async``): a bad label stops the run at the
    next synchronisation, as a device-side assertion (whose text, on CUDA, may be the generic one).
    Labels that arrive on the CPU are checked there, before they are moved.
    """
    bad = (labels < 0) | (labels >= num_classes)
    if labels.device.type == 'cpu':
        if bool(bad.any()):
            raise ValueError(f"{what} {int(labels[bad][0])} is out of range for num_classes={num_classes}")
        return
    assert_on_device(~bad.any(), f"a {what} is out of range for num_classes={num_classes}")


def assert_on_device(ok: torch.Tensor, message: str) -> None:
    """Queue the check that the boolean scalar ``ok`` (on an accelerator) is true: nothing waits for the answer,
    and a false one ends the run at the next synchronisation with a device-side assertion."""
    try:
        torch._assert_async(ok, message)
    except TypeError:   # torch before the message overload
        torch._assert_async(ok)


_PIXELS_WHY = ("; a mix mode refuses them, as one bad pixel changes every sample's label weights through the "
               "batch's statistics: check the data pipeline (a corrupt image, a division by a zero std)")


def assert_finite(x: torch.Tensor, what: str = 'x', why: str = _PIXELS_WHY) -> None:
    """Raise a ValueError when ``x`` holds a NaN or an infinity, naming the first sample that does (``why``
    ends the message).

    One bad pixel is not a local problem for a mix mode: through the batch statistics of a CAM forward
    (``cam_bn='batch'``) it changes every sample's map and so every label weight. On the CPU the check is
    immediate. On an accelerator it is queued (``torch._assert_async``), as :func:`assert_in_range` queues the
    label check: nothing waits for the answer, and a non-finite batch ends the run at the next synchronisation
    with a device-side assertion (on CUDA ``RuntimeError: CUDA error: device-side assert triggered``, whose
    text may not carry this message; rerun with ``CUDA_LAUNCH_BLOCKING=1`` to see where).
    """
    finite = torch.isfinite(x).all()
    if x.device.type == 'cpu':
        if not bool(finite):
            first = int((~torch.isfinite(x)).flatten(1).any(1).nonzero()[0, 0])
            raise ValueError(f"{what} holds NaN or infinite values (first in sample {first}){why}")
        return
    assert_on_device(finite, f"{what} holds NaN or infinite values")


class DeviceCount:
    """A running count kept on the device of what it counts, so that adding to it costs no host-device sync.

    ``add`` queues a 0-d count on its device; ``take`` reads the total back and starts afresh. Reading is a sync
    on an accelerator, so callers take it rarely there (once per epoch) and after every call on the CPU
    (:attr:`on_host`), where it costs nothing. ``reported``: the caller's flag that the count has been acted on.
    """

    def __init__(self):
        self._count: Optional[torch.Tensor] = None     # 0-d int64 on the device of what is counted
        self.seen = 0
        self.reported = False

    @property
    def on_host(self) -> bool:
        return self._count is None or self._count.device.type == 'cpu'

    def add(self, count: torch.Tensor, seen: int) -> None:
        """Add ``count`` (0-d, on its device) hits out of ``seen`` items."""
        count = count.long()
        if self._count is not None and self._count.device == count.device:
            count = count + self._count
        elif self._count is not None:      # the batches moved to another device: count afresh there
            self.seen = 0
        self._count = count
        self.seen += int(seen)

    def take(self) -> Tuple[int, int]:
        """(hits, items) since the last take."""
        count, seen = self._count, self.seen
        self._count, self.seen = None, 0
        return (0 if count is None else int(count)), seen
