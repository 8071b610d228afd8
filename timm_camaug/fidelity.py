""" Label fidelity: how well a mix's label weights match what of each source's discriminative part is visible.

CAM-guided mixing (SnapMix and kin) claims less label noise than area-proportional labels (CutMix): the
weight a mixed image gives each source label should follow how much of that source's discriminative
evidence the image still shows. Given a mask of the discriminative part of every image (the synthetic set
of :mod:`timm_camaug.synthetic` has one; CUB's part annotations could give one), this module computes, from
a mode's params alone (boxes, masks, perm; never from its label weights), the visible fraction of each
source's part, and compares it with the weights the mode's soft target actually carries.

Visible fractions, from the regions each mode reports of its params (:class:`~timm_camaug.modes.MixRegions`):
    mixing modes: with T the pixels of sample i pasted over and S the pixels of x[perm[i]] it shows,
        A = x[i] keeps ``|M_i minus T| / |M_i|`` and B = x[perm[i]] shows ``|M_perm[i] in S| / |M_perm[i]|``
        (same-place pastes have S = T; a resized paste, SnapMix's, is assumed to keep what S holds visible).
    erasing modes: one source, weight 1; it keeps ``|M_i minus erased| / |M_i|``.

A second measure, for rules whose two weights sum to one (CutMix's area, TransMix, its extension) and for the
others normalised the same way (SnapMix's): the error of A's *share* of the label, ``w_a / (w_a + w_b)``,
against A's share of the visible discriminative parts, ``v_a / (v_a + v_b)`` (:func:`share_errors`). The first
measure asks a label to carry the absolute visible fractions, which weights that must sum to one cannot do
when both parts are partly hidden or both fully visible; the share asks only for their balance.
"""
from dataclasses import dataclass
from typing import Optional, Tuple

import torch

__all__ = [
    'FidelityErrors', 'kept_fraction', 'shown_fraction', 'visible_fractions', 'erase_visible_fraction',
    'source_map_regions', 'label_weights', 'fidelity_errors', 'ShareErrors', 'share_errors',
]


@dataclass
class FidelityErrors:
    """Per-sample absolute errors |weight - visible fraction| of the samples that count."""
    err_a: torch.Tensor         # (M,) of the image that receives the paste (or is erased)
    err_b: torch.Tensor         # (M,) of the pasted image (empty for erasing modes)
    visible_a: torch.Tensor     # (M,) visible part fractions
    visible_b: torch.Tensor

    @property
    def mae(self) -> float:
        """Mean absolute error over every (sample, source) pair."""
        both = torch.cat([self.err_a, self.err_b])
        return float(both.mean()) if both.numel() else float('nan')


def _part_sizes(masks: torch.Tensor) -> torch.Tensor:
    sizes = masks.flatten(1).sum(1)
    if bool((sizes == 0).any()):
        raise ValueError(f"{int((sizes == 0).sum())} part mask(s) are empty: a visible fraction needs a part")
    return sizes.double()


def kept_fraction(masks: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """(N,) share of each part mask outside ``region`` (both (N, H, W) bool)."""
    return (masks & ~region).flatten(1).sum(1).double() / _part_sizes(masks)


def shown_fraction(masks: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """(N,) share of each part mask inside ``region`` (both (N, H, W) bool)."""
    return (masks & region).flatten(1).sum(1).double() / _part_sizes(masks)


def visible_fractions(mode, params, masks: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor]:
    """Visible part fractions of one call of ``mode`` with ``params``, from the regions the mode reports
    (:meth:`~timm_camaug.modes.base.MixMode.regions`): (vis_a, vis_b, active), CPU float64 (N,) fractions and
    the (N,) bool samples the call changed. ``masks``: (N, H, W) bool part masks of the unmixed batch.

    A mixing mode keeps ``|M_i minus target| / |M_i|`` of image ``i`` and shows ``|M_perm[i] in source| /
    |M_perm[i]|`` of its partner (a resized paste is assumed to keep what its source region holds visible);
    an erasing mode keeps the first and has no ``vis_b`` (None).
    """
    masks = masks.cpu().bool()
    regions = mode.regions(params, masks.shape[-2:])
    vis_a = kept_fraction(masks, regions.target)
    if regions.perm is None:
        return vis_a, None, regions.active.cpu().bool()
    return vis_a, shown_fraction(masks[regions.perm], regions.source), regions.active.cpu().bool()


def erase_visible_fraction(erased: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """(N,) share of each part left after erasing the (N, H, W) bool ``erased`` pixels."""
    return kept_fraction(masks.cpu().bool(), erased.cpu().bool())


def source_map_regions(source: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """From a per-pixel provenance map (N, H, W) of sample indices, the partner of each sample and the
    region it pasted: (perm (N,), region (N, H, W) bool). For black-box same-place mixes (timm's Mixup):
    feed it a channel holding each sample's index and read that channel back. A sample with no pasted
    pixel is its own partner."""
    source = source.round().long().cpu()
    n = source.shape[0]
    own = torch.arange(n)[:, None, None]
    region = source != own
    other = torch.where(region, source, torch.full_like(source, -1)).flatten(1).amax(1)
    perm = torch.where(other >= 0, other, torch.arange(n))
    if bool(((source != own) & (source != perm[:, None, None])).any()):
        raise ValueError("a mixed image holds pixels of more than two samples; one partner per sample expected")
    return perm, region


def label_weights(soft: torch.Tensor, labels: torch.Tensor, perm: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(w_a, w_b): the weight of each sample's own label and of its partner's label in the soft target
    (meaningful where the two labels differ and no label smoothing was applied)."""
    soft, labels, perm = soft.detach().cpu().double(), labels.cpu().long(), perm.cpu().long()
    idx = torch.arange(soft.shape[0])
    return soft[idx, labels], soft[idx, labels[perm]]


def fidelity_errors(w_a: torch.Tensor, vis_a: torch.Tensor, w_b: Optional[torch.Tensor] = None,
                    vis_b: Optional[torch.Tensor] = None, keep: Optional[torch.Tensor] = None) -> FidelityErrors:
    """Absolute errors of the label weights against the visible fractions, over the samples in ``keep``."""
    keep = torch.ones(w_a.shape[0], dtype=torch.bool) if keep is None else keep.cpu().bool()
    w_a, vis_a = w_a.cpu().double()[keep], vis_a.cpu().double()[keep]
    if w_b is None:
        empty = torch.zeros(0, dtype=torch.float64)
        return FidelityErrors((w_a - vis_a).abs(), empty, vis_a, empty)
    w_b, vis_b = w_b.cpu().double()[keep], vis_b.cpu().double()[keep]
    return FidelityErrors((w_a - vis_a).abs(), (w_b - vis_b).abs(), vis_a, vis_b)


@dataclass
class ShareErrors:
    """Per-sample |A's share of the label - A's share of the visible parts| of the samples that count."""
    err: torch.Tensor           # (M,)
    label_share: torch.Tensor   # (M,) w_a / (w_a + w_b)
    visible_share: torch.Tensor  # (M,) v_a / (v_a + v_b)
    skipped: int = 0            # samples in ``keep`` left out: no part visible at all, or both weights 0

    @property
    def mae(self) -> float:
        return float(self.err.mean()) if self.err.numel() else float('nan')


def share_errors(w_a: torch.Tensor, w_b: torch.Tensor, vis_a: torch.Tensor, vis_b: torch.Tensor,
                 keep: Optional[torch.Tensor] = None) -> ShareErrors:
    """The second measure: ``|w_a / (w_a + w_b) - v_a / (v_a + v_b)|`` over the samples in ``keep`` whose two
    parts are not both hidden (``v_a + v_b > 0``) and whose weights are not both 0."""
    w_a, w_b, vis_a, vis_b = (t.cpu().double() for t in (w_a, w_b, vis_a, vis_b))
    keep = torch.ones(w_a.shape[0], dtype=torch.bool) if keep is None else keep.cpu().bool()
    defined = keep & (vis_a + vis_b > 0) & (w_a + w_b > 0)
    label = w_a[defined] / (w_a[defined] + w_b[defined])
    visible = vis_a[defined] / (vis_a[defined] + vis_b[defined])
    return ShareErrors((label - visible).abs(), label, visible, int(keep.sum() - defined.sum()))
