""" timm's own Mixup / CutMix as a mode: its draws, replayable, and its targets.

Papers: mixup: Beyond Empirical Risk Minimization, Zhang et al., ICLR 2018 (https://arxiv.org/abs/1710.09412);
CutMix: Regularization Strategy to Train Strong Classifiers with Localizable Features, Yun et al., ICCV 2019
(https://arxiv.org/abs/1905.04899). Code: timm's ``timm/data/mixup.py`` (``Mixup``), reused here.

This is the member a schedule gives the probability its CAM modes leave (``--mixup``, ``--cutmix`` and the
other train.py flags of timm's Mixup), the base of TransMix, and what ``cutmix`` / ``mixup`` name in the
``demo``, ``bench`` and ``preview`` commands. It is not a ``--mix-mode`` of its own: in train.py, timm's flags
configure it.

timm's ``Mixup`` draws its parameters from numpy's global random state inside its call, so a call cannot be
replayed. Here :meth:`make_params` draws a seed from the mode's ``torch.Generator`` and, under a numpy state
seeded with it (the caller's global numpy state is saved and restored around it), calls timm's own
``_params_per_batch`` / ``_params_per_elem`` and ``cutmix_bbox_and_lam`` in the order timm's call would:
the same draws timm's ``Mixup`` makes for that numpy state (tested against it). :meth:`apply` then pastes or
blends the flipped batch (timm's partner of sample ``i`` is ``N - 1 - i``) from those params, batched
(also in timm's per-element modes, which timm loops over in Python), and builds the targets with timm's
``mixup_target``.
"""
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..boxes import box_masks
from ..devices import to_device
from ..targets import mix_soft_targets
from .base import MixMode, MixParams, MixRegions
from .options import Option, is_finite_number, parse_bool, require

__all__ = ['TimmMixup', 'TimmMixupParams', 'TIMM_PRESETS', 'MIXUP_MODES', 'numpy_seeded']

MIXUP_MODES = ('batch', 'pair', 'elem')
# what the words 'cutmix' and 'mixup' mean where a schedule names timm's own Mixup (demo, bench, preview):
# CutMix with its paper's Beta(1, 1), and Mixup at timm's DeiT recipe's alpha 0.8
TIMM_PRESETS: Dict[str, Dict[str, Any]] = {
    'cutmix': {'mixup_alpha': 0.0, 'cutmix_alpha': 1.0},
    'mixup': {'mixup_alpha': 0.8, 'cutmix_alpha': 0.0},
}


@contextmanager
def numpy_seeded(seed: int) -> Iterator[None]:
    """numpy's global random state seeded with ``seed`` inside the block, the caller's state outside it."""
    saved = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(saved)


@dataclass
class TimmMixupParams(MixParams):
    """timm Mixup's draws for one batch: per sample its label weight, CutMix box or blend (CPU tensors)."""
    perm: torch.Tensor          # (N,) int64 partner of sample i: N - 1 - i (timm flips the batch)
    lam: torch.Tensor           # (N,) float64 weight of x[i]'s own label (CutMix: after timm's border correction)
    use_cutmix: torch.Tensor    # (N,) bool: a box pasted (True) or a blend (False) where active
    boxes: torch.Tensor         # (N, 4) int64 [y0, y1, x0, x1] of the CutMix box (zeros for blends)
    seed: int                   # the numpy seed under which timm's Mixup makes exactly these draws


class TimmMixup(MixMode):
    """timm's Mixup / CutMix (``timm.data.Mixup``), replayable.

    Args:
        mixup_alpha: Beta(alpha, alpha) of Mixup's blend; 0 turns Mixup off.
        cutmix_alpha: Beta(alpha, alpha) of CutMix's box; 0 turns CutMix off.
        switch_prob: probability of CutMix instead of Mixup when both are on.
        mixup_mode: timm's ``mode``: one draw per ``'batch'``, per ``'pair'`` of samples, or per ``'elem'``.
        correct_lam: CutMix's label weight from the clipped box's area (timm's default).
        cutmix_minmax: (min, max) box-side ratio instead of ``cutmix_alpha`` (Python only; as timm's).
        mixup: an existing ``timm.data.Mixup`` whose settings are taken instead (train.py's own).
        prob: timm's ``prob``: probability of mixing per batch (``'batch'``) or sample.
        (and the options of :class:`~timm_camaug.modes.base.MixMode`)

    timm's ``Mixup`` needs an even batch (its partner of sample ``i`` is ``N - 1 - i``): odd batches are refused.

    Examples:
        >>> import torch
        >>> from timm_camaug.modes.timm_mixup import TimmMixup
        >>> cutmix = TimmMixup(num_classes=5, mixup_alpha=0.0, cutmix_alpha=1.0,
        ...                    generator=torch.Generator().manual_seed(0))
        >>> x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
        >>> params = cutmix.make_params(x, y)
        >>> params.perm.tolist()                       # timm's partners: the flipped batch
        [3, 2, 1, 0]
        >>> x_mixed, target = cutmix.apply(x, y, params)
        >>> torch.allclose(target[0, 0], params.lam[0].float())    # the box's clipped area sets the weight
        True
    """
    name = 'timm-mixup'
    default_prob = 1.0
    prob_per = 'batch'
    guidance_name = 'none'
    options = (
        Option('mixup_alpha', 1.0, "Mixup's Beta(alpha, alpha); 0 turns Mixup off"),
        Option('cutmix_alpha', 0.0, "CutMix's Beta(alpha, alpha); 0 turns CutMix off"),
        Option('switch_prob', 0.5, 'probability of CutMix instead of Mixup when both are on'),
        Option('mixup_mode', 'batch', "one draw per 'batch', 'pair' or 'elem' (timm's mode)", str, MIXUP_MODES),
        Option('correct_lam', True, "CutMix's label weight from the box's area after clipping", parse_bool),
    )
    python_options = ('cutmix_minmax', 'mixup')

    def __init__(self, *, mixup_alpha: float = 1.0, cutmix_alpha: float = 0.0, switch_prob: float = 0.5,
                 mixup_mode: str = 'batch', correct_lam: bool = True,
                 cutmix_minmax: Optional[Sequence[float]] = None, mixup: Optional[Any] = None, **kwargs):
        from timm.data import Mixup
        if mixup is not None:
            if not isinstance(mixup, Mixup):
                raise TypeError(f"{self.name}: mixup must be a timm.data.Mixup, got {type(mixup).__name__}")
            mixup_alpha, cutmix_alpha, switch_prob = mixup.mixup_alpha, mixup.cutmix_alpha, mixup.switch_prob
            mixup_mode, correct_lam, cutmix_minmax = mixup.mode, mixup.correct_lam, mixup.cutmix_minmax
            kwargs.setdefault('prob', mixup.mix_prob)
            kwargs.setdefault('label_smoothing', mixup.label_smoothing)
            kwargs.setdefault('num_classes', mixup.num_classes)
            if getattr(mixup, 'multi_label', False):
                raise ValueError(f"{self.name}: timm's multi-label Mixup is not supported")
        self._validate(TimmMixup, mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha, switch_prob=switch_prob,
                       mixup_mode=mixup_mode, correct_lam=correct_lam)
        if cutmix_minmax is not None:
            if len(cutmix_minmax) != 2 or not all(is_finite_number(v) for v in cutmix_minmax) \
                    or not 0 < cutmix_minmax[0] <= cutmix_minmax[1] <= 1:
                raise ValueError(f"{self.name}: cutmix_minmax must be (min, max) with 0 < min <= max <= 1, "
                                 f"got {cutmix_minmax!r}")
        elif mixup_alpha <= 0 and cutmix_alpha <= 0:
            raise ValueError(f"{self.name}: mixup_alpha, cutmix_alpha or cutmix_minmax must turn something on")
        super().__init__(**kwargs)
        self.mixup_alpha, self.cutmix_alpha, self.switch_prob = float(mixup_alpha), float(cutmix_alpha), \
            float(switch_prob)
        self.mixup_mode, self.correct_lam = mixup_mode, bool(correct_lam)
        self.cutmix_minmax = None if cutmix_minmax is None else tuple(float(v) for v in cutmix_minmax)
        # timm's own object makes the draws (its mixup_enabled follows ours at each call)
        self.mixup = Mixup(mixup_alpha=self.mixup_alpha, cutmix_alpha=self.cutmix_alpha,
                           cutmix_minmax=self.cutmix_minmax, prob=self.prob, switch_prob=self.switch_prob,
                           mode=self.mixup_mode, correct_lam=self.correct_lam, label_smoothing=self.label_smoothing,
                           num_classes=self.num_classes)

    @classmethod
    def _check_options(cls, o: Dict[str, Any]) -> None:
        for key in ('mixup_alpha', 'cutmix_alpha'):
            require(is_finite_number(o[key]) and o[key] >= 0, key, f"{cls.name}: {key} must be >= 0, got {o[key]!r}")
        require(is_finite_number(o['switch_prob']) and 0 <= o['switch_prob'] <= 1, 'switch_prob',
                f"{cls.name}: switch_prob must be in [0, 1], got {o['switch_prob']!r}")
        require(o['mixup_mode'] in MIXUP_MODES, 'mixup_mode',
                f"{cls.name}: mixup_mode must be one of {', '.join(MIXUP_MODES)}, got {o['mixup_mode']!r}")

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(prob={self.prob}, mixup_alpha={self.mixup_alpha}, "
                f"cutmix_alpha={self.cutmix_alpha}, switch_prob={self.switch_prob}, mixup_mode={self.mixup_mode!r}, "
                f"cutmix_minmax={self.cutmix_minmax})")

    def _check_even(self, n: int) -> None:
        if n % 2:
            raise ValueError(f"{self.name}: timm's Mixup pairs sample i with sample N-1-i and needs an even batch, "
                             f"got {n} images (train.py: an even --batch-size; its loader drops the last batch)")

    def _draw(self, n: int, hw: Tuple[int, int]) -> Tuple[np.ndarray, np.ndarray, List[Tuple[int, ...]]]:
        """timm's draws, in the order its call makes them: (lam, use_cutmix, boxes) per sample."""
        m = self.mixup
        shape = (n, 1) + tuple(hw)
        boxes = [(0, 0, 0, 0)] * n
        if self.mixup_mode == 'batch':
            lam, cut = m._params_per_batch()
            if lam != 1. and cut:
                from timm.data.mixup import cutmix_bbox_and_lam
                box, lam = cutmix_bbox_and_lam(shape, lam, ratio_minmax=m.cutmix_minmax, correct_lam=m.correct_lam)
                boxes = [tuple(int(v) for v in box)] * n
            return np.full(n, lam, dtype=np.float64), np.full(n, bool(cut)), boxes
        from timm.data.mixup import cutmix_bbox_and_lam
        k = n if self.mixup_mode == 'elem' else n // 2
        lam, cut = m._params_per_elem(k)
        lam = lam.astype(np.float64)
        for i in range(k):      # timm's own order of draws: one box per element that is cut
            if lam[i] != 1. and cut[i]:
                box, lam[i] = cutmix_bbox_and_lam(shape[1:], lam[i], ratio_minmax=m.cutmix_minmax,
                                                  correct_lam=m.correct_lam)
                boxes[i] = tuple(int(v) for v in box)
        if self.mixup_mode == 'pair':   # sample N-1-i takes sample i's draw
            lam, cut = np.concatenate([lam, lam[::-1]]), np.concatenate([cut, cut[::-1]])
            boxes = boxes[:k] + boxes[:k][::-1]
        return lam, cut, boxes

    def _make_params(self, x: torch.Tensor, labels: torch.Tensor) -> TimmMixupParams:
        n, hw = x.shape[0], tuple(x.shape[-2:])
        self._check_even(n)
        seed = int(torch.randint(0, 2 ** 31 - 1, (), generator=self.generator))
        self.mixup.mixup_enabled = self.mixup_enabled
        with numpy_seeded(seed):
            lam, cut, boxes = self._draw(n, hw)
        lam_t = torch.from_numpy(lam.astype(np.float64))
        cut_t = torch.from_numpy(cut.astype(bool))
        boxes_t = torch.tensor(boxes, dtype=torch.long).reshape(n, 4)
        active = lam_t != 1.0
        return TimmMixupParams(active, torch.arange(n - 1, -1, -1), lam_t, cut_t & active,
                               torch.where((cut_t & active)[:, None], boxes_t, torch.zeros_like(boxes_t)), seed)

    def _apply(self, x: torch.Tensor, soft: torch.Tensor, labels: torch.Tensor,
               params: TimmMixupParams) -> Tuple[torch.Tensor, torch.Tensor]:
        self._check_even(x.shape[0])
        if not bool(params.active.any()):
            return x, soft
        dev = x.device
        perm, lam, cut, active = (to_device(t, dev) for t in (params.perm, params.lam, params.use_cutmix,
                                                              params.active))
        partner = x[perm]
        mask = box_masks(params.boxes, x.shape[-2:], dev) & cut[:, None, None]
        blend = active & ~cut
        w = lam.to(x.dtype)[:, None, None, None]
        mixed = torch.where(blend[:, None, None, None], x * w + partner * (1 - w), x)
        mixed = torch.where(mask[:, None], partner, mixed)
        return mixed, mix_soft_targets(soft, perm, lam, 1.0 - lam)

    def regions(self, params: TimmMixupParams, hw: Sequence[int]) -> MixRegions:
        """CutMix's box at the same place in ``x[i]`` and ``x[perm[i]]``; blends have no region (``blend``)."""
        active, cut = params.active.cpu(), params.use_cutmix.cpu()
        region = box_masks(params.boxes.cpu(), hw) & cut[:, None, None]
        blend = torch.where(active & ~cut, 1.0 - params.lam.cpu(), torch.zeros_like(params.lam.cpu()))
        return MixRegions(active, region, params.perm.cpu(), region, params.boxes.cpu()[:, None],
                          params.boxes.cpu()[:, None], blend=blend)
