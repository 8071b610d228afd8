"""The batch checks on an accelerator: queued on the device (no host-device sync), with their message where torch
takes one. A 'meta' tensor stands in for an accelerator's here (not the CPU, no data)."""
import pytest
import torch

from timm_camaug.devices import assert_finite, assert_in_range
from timm_camaug.targets import assert_unmixed


@pytest.fixture
def queued(monkeypatch):
    """The checks handed to torch._assert_async: (condition, message or None)."""
    calls = []
    monkeypatch.setattr(torch, '_assert_async', lambda ok, *message: calls.append((ok, *message, None)[:2]))
    return calls


@pytest.mark.parametrize('check, message', [
    (lambda: assert_finite(torch.empty(2, 3, 4, 4, device='meta'), 'snapmix: x'),
     'snapmix: x holds NaN or infinite values'),
    (lambda: assert_in_range(torch.empty(4, dtype=torch.long, device='meta'), 5),
     'a label is out of range for num_classes=5'),
    (lambda: assert_unmixed(torch.empty(4, 5, device='meta')), 'soft targets spread over several classes: '),
])
def test_accelerator_checks_are_queued_with_their_message(check, message, queued):
    check()
    assert len(queued) == 1
    ok, text = queued[0]
    assert ok.device.type == 'meta' and ok.dtype == torch.bool and ok.ndim == 0
    assert text.startswith(message)


def test_torch_without_the_message_overload_still_gets_the_check(monkeypatch):
    calls = []

    def old_assert_async(ok, *message):
        if message:
            raise TypeError('_assert_async() takes 1 positional argument but 2 were given')
        calls.append(ok)
    monkeypatch.setattr(torch, '_assert_async', old_assert_async)
    assert_finite(torch.empty(2, 3, device='meta'))
    assert len(calls) == 1 and calls[0].device.type == 'meta'


def test_cpu_checks_raise_at_once_and_queue_nothing(queued):
    x = torch.zeros(3, 3, 4, 4)
    x[1, 0, 2, 2] = float('nan')
    with pytest.raises(ValueError, match=r'^x holds NaN or infinite values \(first in sample 1\)'):
        assert_finite(x)
    assert_finite(torch.zeros(3, 3, 4, 4))
    assert queued == []
