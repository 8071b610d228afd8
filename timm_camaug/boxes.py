""" Box and mask primitives shared by the modes: random draws, boxes to masks, batched resize-and-paste.

Boxes are (N, 4) int64 tensors ``[y0, y1, x0, x1]`` (half-open rows and columns, as timm's ``rand_bbox``
returns ``yl, yh, xl, xh``). Every random draw takes a ``torch.Generator`` (None: torch's default one).
"""
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .devices import to_device

__all__ = [
    'sample_beta', 'cut_size', 'rand_bbox', 'centred_bbox', 'box_area', 'box_masks', 'region_sum',
    'paste_resized', 'cell_masks', 'cell_boxes', 'sample_from_weights',
]


def sample_beta(alpha: float, size: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """``size`` draws of Beta(alpha, alpha), float64 on the CPU, from ``generator``."""
    conc = torch.full((size, 2), float(alpha), dtype=torch.float64)
    return torch._sample_dirichlet(conc, generator=generator)[:, 0]


def cut_size(hw: Sequence[int], lam: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Side lengths ``int(side * sqrt(1 - lam))`` of a box covering about ``1 - lam`` of the image."""
    ratio = torch.sqrt(1.0 - lam.double().clamp(0.0, 1.0))
    return (hw[0] * ratio).floor().long(), (hw[1] * ratio).floor().long()


def centred_bbox(hw: Sequence[int], lam: torch.Tensor, cy: torch.Tensor, cx: torch.Tensor) -> torch.Tensor:
    """Boxes of ``cut_size`` centred on (cy, cx), clipped to the image (timm's ``rand_bbox`` rule)."""
    h, w = int(hw[0]), int(hw[1])
    cut_h, cut_w = cut_size(hw, lam)
    cy, cx = cy.long(), cx.long()
    y0 = (cy - cut_h // 2).clamp(0, h)
    y1 = (cy + cut_h // 2).clamp(0, h)
    x0 = (cx - cut_w // 2).clamp(0, w)
    x1 = (cx + cut_w // 2).clamp(0, w)
    return torch.stack([y0, y1, x0, x1], dim=1)


def rand_bbox(hw: Sequence[int], lam: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """timm's ``rand_bbox`` for each ``lam``: uniform centre (rows drawn first, then columns), clipped box."""
    n = lam.shape[0]
    cy = torch.randint(0, int(hw[0]), (n,), generator=generator)
    cx = torch.randint(0, int(hw[1]), (n,), generator=generator)
    return centred_bbox(hw, lam, cy, cx)


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    return (boxes[:, 1] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 2])


def box_masks(boxes: torch.Tensor, hw: Sequence[int], device: Optional[torch.device] = None) -> torch.Tensor:
    """(N, H, W) bool masks of the boxes, by broadcast comparison."""
    boxes = to_device(boxes, device)
    rows = torch.arange(int(hw[0]), device=boxes.device)[None, :, None]
    cols = torch.arange(int(hw[1]), device=boxes.device)[None, None, :]
    b = boxes[:, :, None, None]
    return (rows >= b[:, 0]) & (rows < b[:, 1]) & (cols >= b[:, 2]) & (cols < b[:, 3])


def region_sum(maps: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Sum of each (H, W) map inside its box."""
    mask = box_masks(boxes, maps.shape[-2:], maps.device)
    return (maps * mask).sum(dim=(-2, -1))


def cell_masks(selected: torch.Tensor, hw: Sequence[int]) -> torch.Tensor:
    """(N, g_h, g_w) bool grid cells -> (N, H, W) pixel masks.

    Pixel row r belongs to cell row ``floor(r * g_h / H)`` (likewise columns): cell i spans rows
    ``i*H/g_h .. (i+1)*H/g_h`` rounded up, so the image size need not be a multiple of the grid.
    """
    n, gh, gw = selected.shape
    h, w = int(hw[0]), int(hw[1])
    row_cell = (torch.arange(h, device=selected.device) * gh) // h
    col_cell = (torch.arange(w, device=selected.device) * gw) // w
    return selected[:, row_cell][:, :, col_cell]


def cell_boxes(selected: torch.Tensor, hw: Sequence[int]) -> torch.Tensor:
    """(N, g_h, g_w) bool grid cells -> (N, k, 4) pixel boxes ``[y0, y1, x0, x1]`` of the selected cells (the
    pixels :func:`cell_masks` gives them), k the most cells any sample selects, padded with empty boxes."""
    n, gh, gw = selected.shape
    h, w = int(hw[0]), int(hw[1])
    dev = selected.device
    ys = -(-torch.arange(gh + 1, device=dev) * h // gh)     # ceil(i * H / g_h): first row of cell row i
    xs = -(-torch.arange(gw + 1, device=dev) * w // gw)
    cy, cx = torch.meshgrid(torch.arange(gh, device=dev), torch.arange(gw, device=dev), indexing='ij')
    every = torch.stack([ys[cy], ys[cy + 1], xs[cx], xs[cx + 1]], -1).reshape(gh * gw, 4)
    flat = selected.reshape(n, gh * gw)
    k = int(flat.sum(1).max()) if n else 0
    order = torch.sort(flat.to(torch.uint8), dim=1, descending=True, stable=True).indices[:, :k]
    boxes = every[order]
    keep = flat.gather(1, order)
    return torch.where(keep[..., None], boxes, torch.zeros_like(boxes))


def paste_resized(dst: torch.Tensor, src: torch.Tensor, src_boxes: torch.Tensor, dst_boxes: torch.Tensor,
                  active: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Resize each ``src`` box to its ``dst`` box (bilinear, ``align_corners=True``) and paste it into ``dst``.

    One ``grid_sample`` for the whole batch replaces per-sample ``F.interpolate`` calls, with the same
    sampling positions: output row r of a box of height ``oh`` reads source row
    ``sy0 + (r - ty0) * (sh - 1) / (oh - 1)``. Samples where ``active`` is False, or either box is empty,
    are left as they are. Returns a new tensor; ``dst`` and ``src`` are not modified.
    """
    n, _, h, w = dst.shape
    dev = dst.device
    sb = to_device(src_boxes, dev).double()
    db = to_device(dst_boxes, dev).double()
    ok = to_device((box_area(src_boxes) > 0) & (box_area(dst_boxes) > 0), dev)
    if active is not None:
        ok = ok & to_device(active, dev)

    def _axis(size, s0, s1, d0, d1):
        out = d1 - d0
        scale = torch.where(out > 1, (s1 - s0 - 1) / (out - 1).clamp_min(1), torch.zeros_like(out))
        pos = torch.arange(size, device=dev, dtype=torch.float64)[None]
        coord = s0[:, None] + (pos - d0[:, None]) * scale[:, None]
        return (2 * coord / max(size - 1, 1) - 1).float()       # grid_sample's normalised coordinates

    gy = _axis(h, sb[:, 0], sb[:, 1], db[:, 0], db[:, 1])       # (N, H)
    gx = _axis(w, sb[:, 2], sb[:, 3], db[:, 2], db[:, 3])       # (N, W)
    grid = torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), dim=-1)
    with torch.autocast(dev.type, enabled=False):
        sampled = F.grid_sample(src.float(), grid, mode='bilinear', padding_mode='border', align_corners=True)
    mask = box_masks(dst_boxes, (h, w), dev) & ok[:, None, None]
    return torch.where(mask[:, None], sampled.to(dst.dtype), dst)


def sample_from_weights(weights: torch.Tensor, u: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """A pixel (cy, cx) per sample, drawn with probability proportional to ``weights`` (N, H, W).

    ``u`` holds uniform draws in [0, 1): row 0 (or the whole tensor, if 1-D) is used, by inverse CDF,
    so the draw is replayable from ``u``. All-zero weights give pixel (0, 0). Returns int64 tensors on the
    weights' device.
    """
    n, h, w = weights.shape
    u0 = to_device(u[0] if u.ndim == 2 else u, weights.device).double()
    cdf = weights.flatten(1).double().cumsum(1)
    idx = torch.searchsorted(cdf, (u0 * cdf[:, -1])[:, None], right=True)[:, 0].clamp(max=h * w - 1)
    idx = torch.where(cdf[:, -1] > 0, idx, torch.zeros_like(idx))
    return idx // w, idx % w
