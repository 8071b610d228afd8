""" A small training loop that uses the library as a user would: ``create_mix_fn``, the mixed forward,
``finalize``, timm's ``SoftTargetCrossEntropy``. The demo and the benchmarks train with it on the built-in
synthetic set; it downloads nothing and runs on a CPU.
"""
import math
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from .console import progress_bar

__all__ = ['RunResult', 'train_synthetic', 'BASELINE', 'DEFAULT_MODEL']

DEFAULT_MODEL = 'test_resnet'
BASELINE = 'none'


@dataclass
class RunResult:
    """One training run: its mix mode (``'none'``: baseline), validation top-1 (%) and wall time (s)."""
    mode: str
    top1: float
    seconds: float
    epochs: int
    history: List[float] = field(default_factory=list)     # validation top-1 after each epoch (own loop)
    source: str = 'demo loop'                               # 'demo loop' or the train.py that ran


def train_synthetic(
        model_name: str = DEFAULT_MODEL,
        mode: str = BASELINE,
        *,
        train: Tuple[Any, Any],
        val: Tuple[Any, Any],
        num_classes: int = 8,
        epochs: int = 10,
        batch_size: int = 64,
        lr: float = 2e-3,
        weight_decay: float = 0.05,
        seed: int = 0,
        device: str = 'cpu',
        model_kwargs: Optional[Dict[str, Any]] = None,
        mix_options: Optional[Dict[str, Any]] = None,
        progress: bool = True,
        return_model: bool = False,
):
    """Train ``model_name`` from scratch on uint8 images ``train = (images (N,3,H,W), labels)`` with one mix mode.

    AdamW, one epoch of linear warm-up then cosine decay per step, random horizontal flips; ``mode='none'``
    trains with cross-entropy, a mix mode with ``create_mix_fn(mode, model=model, ...)`` and
    ``SoftTargetCrossEntropy``. Returns a :class:`RunResult` (and the trained model if ``return_model``).
    """
    import timm
    import torch
    from timm.loss import SoftTargetCrossEntropy

    from . import create_mix_fn
    from .pixels import normalize

    dev = torch.device(device)
    x_train, y_train = train
    x_val, y_val = val
    n, size = x_train.shape[0], x_train.shape[-1]
    steps_per_epoch = n // batch_size
    if steps_per_epoch < 1:
        raise ValueError(f"--train-size {n} is smaller than --batch-size {batch_size}")
    torch.manual_seed(seed)
    model = timm.create_model(model_name, pretrained=False, num_classes=num_classes, **(model_kwargs or {})).to(dev)
    data_config = timm.data.resolve_data_config({'input_size': (3, size, size)}, model=model)
    mean, std = data_config['mean'], data_config['std']
    g = torch.Generator().manual_seed(seed)
    mix_fn = None
    if mode != BASELINE:
        mix_fn = create_mix_fn(mode, model=model, num_classes=num_classes, data_config=data_config, device=dev,
                               generator=torch.Generator().manual_seed(seed + 1), **(mix_options or {}))
        loss_fn = SoftTargetCrossEntropy()
    else:
        loss_fn = torch.nn.CrossEntropyLoss()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    total = epochs * steps_per_epoch
    warm = min(steps_per_epoch, total)

    def lr_at(step):
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)

    def evaluate():
        model.eval()
        correct = 0
        with torch.no_grad():
            for i in range(0, x_val.shape[0], 256):
                xb = normalize(x_val[i:i + 256].to(dev).float() / 255.0, mean, std)
                correct += int((model(xb).argmax(1).cpu() == y_val[i:i + 256]).sum())
        return 100.0 * correct / max(1, x_val.shape[0])

    bar = progress_bar(total, mode if mode != BASELINE else 'no mix', unit='step', enabled=progress)
    history: List[float] = []
    t0 = time.perf_counter()
    for epoch in range(epochs):
        if mix_fn is not None:
            mix_fn.set_epoch(epoch)
        model.train()
        order = torch.randperm(n, generator=g)
        flips = torch.rand(n, generator=g) < 0.5
        for step in range(steps_per_epoch):
            idx = order[step * batch_size:(step + 1) * batch_size]
            x = normalize(x_train[idx].to(dev).float() / 255.0, mean, std)
            x = torch.where(flips[idx].to(dev)[:, None, None, None], x.flip(3), x)
            target = y_train[idx].to(dev)
            if mix_fn is not None:
                x, target = mix_fn(x, target)
            output = model(x)
            if mix_fn is not None:
                target = mix_fn.finalize(target)     # modes that read the training forward complete it here
            loss = loss_fn(output, target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            bar.update(1)
            if step % 8 == 0:
                bar.set_postfix(epoch=epoch, loss=f'{loss.item():.3f}', refresh=False)
        history.append(evaluate())
        bar.set_postfix(epoch=epoch, loss=f'{loss.item():.3f}', val_top1=f'{history[-1]:.1f}')
    bar.close()
    result = RunResult(mode, history[-1] if history else float('nan'), time.perf_counter() - t0, epochs, history)
    return (result, model.eval()) if return_model else result


