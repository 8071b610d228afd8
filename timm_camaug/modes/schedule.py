""" Schedules: one member drawn per batch, among CAM modes and timm's own Mixup / CutMix.

``snapmix:0.5+cutmix:0.5`` (demo, bench, preview, the Python API) or, in train.py,
``--mix-mode snapmix --mix-mode-prob 0.5 --cutmix 1.0``: each batch is mixed by one member, drawn with the
given probabilities; the probability the listed modes leave goes to timm's ``Mixup`` (as train.py's
``--mixup``/``--cutmix`` flags configure it), or to no mixing when it is not configured. Only the drawn member
works on the batch (no CAM forward on a CutMix batch). The draw comes from the schedule's generator, so
``make_params`` / ``apply`` replay a schedule exactly.

``cam_start_epoch``: until that epoch, a member guided by the model under training (its class attribute
``guided_by_model``) is replaced by the rest of the schedule (timm's Mixup; in a schedule written with
``cutmix``/``mixup`` members, those, by their probabilities; no mixing when there is none), since a model needs
some training before its maps are worth following. A member's own warm-up (CAM-erase's plain random erasing before ``warmup_epochs``)
counts from epoch 0 as before, so it only shows after ``cam_start_epoch`` when it is longer.
"""
import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from .base import MixMode, MixParams, MixRegions
from .options import is_finite_number
from .timm_mixup import TIMM_PRESETS, TimmMixup

__all__ = ['Schedule', 'ScheduleParams', 'parse_schedule', 'parse_probabilities', 'is_timm_member', 'NO_MIX',
           'ScheduleError', 'schedule_members']

NO_MIX = 'none'


class ScheduleError(ValueError):
    """A schedule that cannot be built; the message names the part of the spec and the fix."""


def is_timm_member(name: str) -> bool:
    """Whether ``name`` is one of the words for timm's own Mixup in a schedule (``cutmix``, ``mixup``)."""
    return name in TIMM_PRESETS


def _number(text: str, what: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise ScheduleError(f"{what}: {text!r} is not a number") from None
    if not math.isfinite(value) or value < 0 or value > 1:
        raise ScheduleError(f"{what}: {text!r} must be a probability in [0, 1]")
    return value


def parse_schedule(text: str) -> List[Tuple[str, Optional[float]]]:
    """``'snapmix:0.5+cutmix:0.5'`` -> ``[('snapmix', 0.5), ('cutmix', 0.5)]``; ``'snapmix'`` ->
    ``[('snapmix', None)]`` (probabilities not given: shared equally by the members)."""
    if not isinstance(text, str) or not text.strip():
        raise ScheduleError(f"empty schedule {text!r}: write MODE or MODE:P+MODE:P (e.g. snapmix:0.5+cutmix:0.5)")
    members = []
    for part in text.split('+'):
        name, sep, prob = part.strip().partition(':')
        name = name.strip()
        if not name:
            raise ScheduleError(f"schedule {text!r}: an empty member (write MODE:P+MODE:P)")
        members.append((name, _number(prob.strip(), f"schedule {text!r}, {name}") if sep else None))
    given = [p for _, p in members if p is not None]
    if given and len(given) != len(members):
        raise ScheduleError(f"schedule {text!r}: give every member a probability, or none of them")
    return members


def schedule_members(text: str) -> List[str]:
    """The member names of a schedule (or of a single mode), each a registered mode or timm's ``cutmix`` /
    ``mixup``; ScheduleError naming any other."""
    from . import failed_modes, mix_modes
    names = [name for name, _ in parse_schedule(text)]
    bad = [n for n in names if n not in mix_modes() and not is_timm_member(n)]
    failed = failed_modes()
    if any(n in failed for n in bad):     # a plugin's mode that did not load: say why
        raise ScheduleError('; '.join(failed[n] for n in bad if n in failed))
    if bad:
        raise ScheduleError(f"unknown mix mode {', '.join(bad)}; choose one of {', '.join(mix_modes())}, or "
                            f"{', '.join(TIMM_PRESETS)} (timm's own), joined by + in a schedule (a:0.5+b:0.5)")
    return names


def parse_probabilities(value: Any, n_modes: int, flag: str = '--mix-mode-prob') -> Optional[List[float]]:
    """``--mix-mode-prob`` as a comma-separated string or a YAML list: one value (each mode gets it) or one per
    mode; None when not given."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    items = value.split(',') if isinstance(value, str) else list(value) if isinstance(value, (list, tuple)) \
        else [value]
    probs = []
    for item in items:
        if isinstance(item, bool) or not (is_finite_number(item) or isinstance(item, str)):
            raise ScheduleError(f"{flag}: {item!r} is not a number")
        probs.append(_number(str(item).strip(), flag))
    if len(probs) == 1 and n_modes > 1:
        probs = probs * n_modes
    if len(probs) != n_modes:
        raise ScheduleError(f"{flag}: {len(probs)} values for {n_modes} mode(s); give one value, or one per mode")
    return probs


@dataclass
class ScheduleParams(MixParams):
    """Which member mixed the batch (-1: no mixing) and that member's own params."""
    member: int
    params: Optional[MixParams]


class Schedule(MixMode):
    """One member per batch, drawn with the given probabilities; the rest to ``rest`` (or no mixing).

    Args:
        members: the modes (built) and their probabilities per batch; they sum to at most 1.
        rest: the mode that gets the probability the members leave (timm's Mixup), or None (no mixing).
        cam_start_epoch: until this epoch, members guided by the model under training give way to ``rest``.
        (and the options of :class:`~timm_camaug.modes.base.MixMode`: ``num_classes``, ``label_smoothing`` and
        ``generator`` must be those of the members, which the factory ensures)

    Examples:
        >>> import timm, torch
        >>> from timm_camaug import create_mix_fn
        >>> model = timm.create_model('test_resnet', num_classes=5)
        >>> mix_fn = create_mix_fn('snapmix:0.5+cutmix:0.5', model=model, num_classes=5,
        ...                        generator=torch.Generator().manual_seed(0), data_config={'input_size': (3, 64, 64)})
        >>> [name for name, _ in mix_fn.member_names()]
        ['snapmix', 'cutmix']
        >>> x, y = torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 2, 3])
        >>> params = mix_fn.make_params(x, y)         # one member drawn for the batch, its params inside
        >>> torch.equal(mix_fn.apply(x, y, params)[0], mix_fn.apply(x, y, params)[0])
        True
    """
    name = 'schedule'
    prob_per = 'batch'

    def __init__(self, *, members: Sequence[Tuple[str, float, MixMode]] = (), rest: Optional[MixMode] = None,
                 rest_name: str = NO_MIX, cam_start_epoch: int = 0, **kwargs):
        super().__init__(**kwargs)
        if not members:
            raise ScheduleError("a schedule needs at least one member")
        names = [n for n, _, _ in members]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ScheduleError(f"{', '.join(twice)} listed twice in the schedule; list each mode once")
        total = sum(p for _, p, _ in members)
        if total > 1 + 1e-9:
            raise ScheduleError(f"the probabilities of {', '.join(names)} add up to {total:g}, more than 1")
        if isinstance(cam_start_epoch, bool) or not isinstance(cam_start_epoch, int) or cam_start_epoch < 0:
            raise ScheduleError(f"cam_start_epoch must be an int >= 0, got {cam_start_epoch!r}")
        self.members = [(n, float(p), m) for n, p, m in members]
        self.rest, self.rest_name = rest, rest_name if rest is not None else NO_MIX
        self.cam_start_epoch = cam_start_epoch
        self.last_drawn: Optional[str] = None      # the member the last call drew (for logs and tests)
        self._cumulative = torch.tensor([p for _, p, _ in self.members], dtype=torch.float64).cumsum(0)
        every = [m for _, _, m in self._all()]
        for m in every:
            if m.num_classes != self.num_classes or m.label_smoothing != self.label_smoothing:
                raise ScheduleError(f"{m.name}: a member's num_classes/label_smoothing differ from the schedule's")
        # what callers ask of a mode: true of the schedule when true of any member
        for attr in ('mixes_pairs', 'uses_model', 'guided_by_model', 'needs_hooks', 'reads_training_forward'):
            setattr(self, attr, any(getattr(m, attr) for m in every))

    def _all(self) -> List[Tuple[str, float, MixMode]]:
        rest = [(self.rest_name, max(0.0, 1.0 - float(self._cumulative[-1])), self.rest)] if self.rest else []
        return self.members + rest

    def member_names(self) -> List[Tuple[str, float]]:
        """(name, probability per batch) of every member, the rest (timm's Mixup or 'none') last."""
        out = [(n, p) for n, p, _ in self.members]
        left = 1.0 - float(self._cumulative[-1])
        if left > 1e-9:
            out.append((self.rest_name, left))
        return out

    def __repr__(self) -> str:
        parts = [f'{n}:{p:g}={m!r}' for n, p, m in self.members]
        rest = f'{self.rest_name}={self.rest!r}' if self.rest is not None else NO_MIX
        return (f"Schedule({' + '.join(parts)}, rest={rest}"
                + (f', cam_start_epoch={self.cam_start_epoch}' if self.cam_start_epoch else '') + ')')

    # --- state every member shares

    @property
    def mixup_enabled(self) -> bool:
        return self._enabled

    @mixup_enabled.setter
    def mixup_enabled(self, value: bool) -> None:
        self._enabled = bool(value)
        for _, _, m in self._all() if hasattr(self, 'members') else ():
            m.mixup_enabled = self._enabled

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        for _, _, m in self._all():
            m.set_epoch(epoch)

    # --- the draw

    def _member(self, index: int) -> Optional[MixMode]:
        if index < 0:
            return None
        return self.members[index][2] if index < len(self.members) else self.rest

    def _draw(self) -> int:
        """Index of the member that mixes this batch (len(members): the rest; -1: no mixing)."""
        if len(self.members) == 1 and self.members[0][1] >= 1.0:
            index = 0           # a single member at probability 1 draws nothing extra
        else:
            u = float(torch.rand((), generator=self.generator, dtype=torch.float64))
            index = int((self._cumulative <= u).sum())
        if index < len(self.members) and self.members[index][2].guided_by_model \
                and self.epoch < self.cam_start_epoch:
            index = self._rest_instead()    # the model is not ready to guide yet
        if index >= len(self.members) and self.rest is None:
            return -1
        return index

    def _rest_instead(self) -> int:
        """What a member guided by the model gives way to before ``cam_start_epoch``: timm's Mixup, i.e. the rest
        of the schedule (train.py), or its timm members drawn by their probabilities (a schedule written
        'snapmix:0.5+cutmix:0.5'); no mixing when there is neither."""
        if self.rest is not None:
            return len(self.members)
        timm = [i for i, (_, p, m) in enumerate(self.members)
                if isinstance(m, TimmMixup) and not m.guided_by_model and p > 0]
        if not timm:
            return len(self.members)
        weights = torch.tensor([self.members[i][1] for i in timm], dtype=torch.float64)
        u = float(torch.rand((), generator=self.generator, dtype=torch.float64)) * float(weights.sum())
        return timm[min(int((weights.cumsum(0) <= u).sum()), len(timm) - 1)]

    # The batch and its targets are checked once, by the schedule's own call (``num_classes`` and
    # ``label_smoothing`` are the members', checked at construction): the drawn member gets the checked batch,
    # the soft targets and the labels, through its unchecked steps ``_make_params`` / ``_apply``.

    def _make_params(self, x: torch.Tensor, labels: torch.Tensor) -> ScheduleParams:
        index = self._draw()
        member = self._member(index)
        params = member._make_params(x, labels) if member is not None else None
        out = ScheduleParams(torch.zeros(x.shape[0], dtype=torch.bool) if params is None else params.active,
                             index, params)
        self.last_drawn = self.drawn_name(out)
        return out

    def _apply(self, x: torch.Tensor, soft: torch.Tensor, labels: torch.Tensor,
               params: ScheduleParams) -> Tuple[torch.Tensor, torch.Tensor]:
        member = self._member(params.member)
        if member is None:
            return x, soft
        # the caller's soft targets, as the member alone would take them (not rebuilt from their argmax), and the
        # member's own pending batch for its finalize
        member._drop_pending()
        return member._apply_and_wait(x, soft, labels, params.params)

    def _begin_pending(self, params: ScheduleParams, soft: torch.Tensor, labels: torch.Tensor) -> Any:
        return self._member(params.member) or True

    def _finalize(self, target: torch.Tensor, pending: Any) -> torch.Tensor:
        return pending.finalize(target) if isinstance(pending, MixMode) else target

    def _release(self, pending: Any) -> None:
        if isinstance(pending, MixMode):
            pending._drop_pending()

    # --- what preview and the fidelity measure ask: the drawn member's answers

    def drawn(self, params: ScheduleParams) -> Optional[MixMode]:
        """The member that mixed the batch of ``params`` (None: no mixing)."""
        return self._member(params.member)

    def describing(self, params: ScheduleParams) -> Optional[MixMode]:
        return self.drawn(params)

    def drawn_name(self, params: ScheduleParams) -> str:
        if params.member < 0:
            return NO_MIX
        return self.members[params.member][0] if params.member < len(self.members) else self.rest_name

    def image_guidance(self, params: ScheduleParams) -> Optional[torch.Tensor]:
        member = self.drawn(params)
        return member.image_guidance(params.params) if member is not None else None

    def guidance_levels(self, params: ScheduleParams) -> Optional[torch.Tensor]:
        member = self.drawn(params)
        return member.guidance_levels(params.params) if member is not None else None

    def regions(self, params: ScheduleParams, hw: Sequence[int]) -> MixRegions:
        member = self.drawn(params)
        if member is None:
            n = params.active.shape[0]
            return MixRegions(torch.zeros(n, dtype=torch.bool), torch.zeros((n,) + tuple(hw), dtype=torch.bool))
        return member.regions(params.params, hw)

    def row_notes(self, params: ScheduleParams, labels: torch.Tensor) -> List[str]:
        member = self.drawn(params)
        name = self.drawn_name(params)
        notes = member.row_notes(params.params, labels) if member is not None else [''] * params.active.shape[0]
        return [f'({name} drawn)' + (f'\n{note}' if note else '') for note in notes]
