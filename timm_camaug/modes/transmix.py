""" TransMix: label weights from the class token's attention in the training forward on the mixed image.

Paper: TransMix: Attend to Mix for Vision Transformers, Chen et al., CVPR 2022 (https://arxiv.org/abs/2111.09833).
Reference code: https://github.com/Beckschen/TransMix (``transmix.py``: ``Mixup_transmix``; ``train.py``).

The images are mixed exactly as timm's ``Mixup`` mixes them (CutMix boxes or Mixup blends, partners by
flipping the batch; this class is :class:`~timm_camaug.modes.timm_mixup.TimmMixup` with the reference's DeiT
defaults). The label weights of a CutMix batch are completed *after* the training forward on it, from that
same forward: ``target = mix_fn.finalize(target)`` (in train.py the patched loss does it). The pasted image
``B = x[perm[i]]`` gets

    lam = (1 - ratio) * area + ratio * attention,     target = (1 - lam) * y_A + lam * y_B

with ``area`` the box's share of the image and ``attention`` the share of the class token's attention (last
block, softmax, averaged over heads, patch columns only) that falls on patches inside the box (a patch is
inside when its top-left pixel is, the reference's nearest-neighbour mask resize). The reference fixes
``ratio`` at 0.5 (the mean of both); Mixup batches and unmixed batches keep timm's targets.

No patched model: the attention row is recomputed from what a forward pre-hook on the last attention module
captures (:mod:`timm_camaug.attention`). Models without a class token, or whose classifier does not read it
(Swin, ConvNeXt, ResNet, ViTs with ``global_pool='avg'``), get the pasted label's share from the same
forward's final feature map instead (our extension, off the reference's path, :mod:`timm_camaug.capture`):
the mixed image's class activation maps of its two labels, ``E_a`` = the positive part of A's map outside the
box, ``E_b`` = the positive part of B's map inside it, share ``E_b / (E_a + E_b)`` (the area where both are 0),
blended with the area by ``cam_ratio``. Every difference from the reference is listed in ``docs/transmix.md``.
"""
import argparse
import logging
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..attention import (ClassAttention, NoClassAttention, class_value_contributions, find_class_attention,
                         patch_attention)
from ..capture import ForwardCapture, NoFeatureMap, class_maps, find_feature_site
from ..cam import _token_grid
from ..devices import DeviceCount, to_device
from ..targets import mix_soft_targets
from ..model_state import cam_forward_mode, unwrap_model
from .base import MixParams
from .cam_guided import input_size_error, probe_input_size
from .options import Option, is_finite_number, parse_bool, require
from .timm_mixup import TimmMixup, TimmMixupParams

__all__ = ['TransMix', 'TransMixParams', 'LABEL_MAPS', 'transmix_pasted_weight', 'cam_pasted_share',
           'patch_box_mask', 'cell_box_cover']

_logger = logging.getLogger(__name__)

LABEL_MAPS = ('auto', 'attention', 'value', 'cam')
ATTENTION, VALUE, CAM = 'attention', 'value', 'cam'


@dataclass
class TransMixParams(TimmMixupParams):
    """timm Mixup's draws for one batch (see :class:`TimmMixupParams`), plus what ``finalize`` found after the
    training forward on the mixed batch (None until then; on the input's device)."""
    area: Optional[torch.Tensor] = None         # (N,) float32 share of the image the pasted box covers
    evidence: Optional[torch.Tensor] = None     # (N,) float32 share of the model's map (attention, or the
    #                                             extension's class maps) on the pasted image's side
    pasted_weight: Optional[torch.Tensor] = None  # (N,) float32 label weight of x[perm[i]] in the target


# --- the label rules (batched, on the map's device)

def patch_box_mask(boxes: torch.Tensor, hw: Sequence[int], grid: Sequence[int]) -> torch.Tensor:
    """(N, gh * gw) float mask of the patches whose top-left pixel lies in each (N, 4) ``[y0, y1, x0, x1]`` box:
    the reference's ``nn.Upsample(size=grid)`` (nearest) of the box's (H, W) mask, without building it."""
    h, w = int(hw[0]), int(hw[1])
    gh, gw = int(grid[0]), int(grid[1])
    # the rows and columns nearest-neighbour resizing picks, computed by the same kernel as the reference
    rows = F.interpolate(torch.arange(h, dtype=torch.float32).view(1, 1, h, 1), size=(gh, 1), mode='nearest').view(gh)
    cols = F.interpolate(torch.arange(w, dtype=torch.float32).view(1, 1, 1, w), size=(1, gw), mode='nearest').view(gw)
    b = boxes.cpu().float()
    in_rows = (rows[None] >= b[:, 0:1]) & (rows[None] < b[:, 1:2])
    in_cols = (cols[None] >= b[:, 2:3]) & (cols[None] < b[:, 3:4])
    return (in_rows[:, :, None] & in_cols[:, None, :]).flatten(1).float()


def cell_box_cover(boxes: torch.Tensor, hw: Sequence[int], grid: Sequence[int]) -> torch.Tensor:
    """(N, gh, gw) share of each feature-map cell's pixels inside each box (a cell spans H/gh x W/gw pixels)."""
    h, w = int(hw[0]), int(hw[1])
    gh, gw = int(grid[0]), int(grid[1])
    b = boxes.cpu().double()

    def overlap(lo, hi, size, cells):
        edges = torch.arange(cells + 1, dtype=torch.float64) * size / cells
        top = torch.minimum(edges[None, 1:], hi[:, None])
        bottom = torch.maximum(edges[None, :-1], lo[:, None])
        return (top - bottom).clamp_min(0) / (size / cells)
    return (overlap(b[:, 0], b[:, 1], h, gh)[:, :, None] * overlap(b[:, 2], b[:, 3], w, gw)[:, None, :]).float()


def transmix_pasted_weight(attn: torch.Tensor, mask: torch.Tensor, area: torch.Tensor,
                           ratio: float = 0.5) -> Tuple[torch.Tensor, torch.Tensor]:
    """(pasted image's label weight, its attention share): the reference's ``transmix_label``.

    ``attn`` (N, P) class-token attention to the patches, ``mask`` (N, P) patches inside the box, ``area`` (N,)
    the box's share of the image. ``w1, w2`` = attention outside / inside; share = ``w2 / (w1 + w2)`` (the area
    when the attention is all zero); weight = ``(1 - ratio) * area + ratio * share`` (the reference: 0.5).
    """
    a = attn.float()
    w1 = ((1 - mask) * a).sum(1)
    w2 = (mask * a).sum(1)
    total = w1 + w2
    share = torch.where(total > 0, w2 / torch.where(total > 0, total, torch.ones_like(total)), area)
    return (1.0 - ratio) * area + ratio * share, share


def cam_pasted_share(map_a: torch.Tensor, map_b: torch.Tensor, cover: torch.Tensor,
                     area: torch.Tensor) -> torch.Tensor:
    """The extension's share of the pasted image B: ``E_b / (E_a + E_b)`` with ``E_a`` the positive part of A's
    class map outside the box and ``E_b`` the positive part of B's map inside it (``cover``: (N, h, w) share of
    each cell inside the box); the box's ``area`` share where both are 0."""
    return _cam_share(map_a, map_b, cover, area)[0]


def _cam_share(map_a, map_b, cover, area) -> Tuple[torch.Tensor, torch.Tensor]:
    """(:func:`cam_pasted_share`, (N,) bool: rows that fell back to the area, both evidences 0 or not finite)."""
    e_a = (map_a.float().clamp_min(0) * (1 - cover)).flatten(1).sum(1)
    e_b = (map_b.float().clamp_min(0) * cover).flatten(1).sum(1)
    total = e_a + e_b
    found = total > 0
    return torch.where(found, e_b / torch.where(found, total, torch.ones_like(total)), area), ~found


@dataclass
class _Pending:
    """A mixed batch waiting for its training forward."""
    params: TransMixParams
    soft: torch.Tensor                          # (N, K) the unmixed (smoothed) targets
    labels: torch.Tensor                        # (N,) int64
    hw: Tuple[int, int]
    capture: Optional[ForwardCapture]           # None: nothing to complete (Mixup or unmixed batch)


class TransMix(TimmMixup):
    """TransMix (Chen et al., CVPR 2022) on a stock timm model, and its extension to models without a class token.

    Args:
        model: the model under training (wrappers removed); its training forward on the mixed batch must run
            between the call and :meth:`finalize`.
        mixup_alpha, cutmix_alpha, switch_prob, mixup_mode, correct_lam: timm's ``Mixup`` settings, with the
            reference's DeiT defaults (0.8, 1.0, 0.5, ``'batch'``, True). The reference allows ``'batch'`` only;
            ``'pair'`` and ``'elem'`` work here too (a box per pair or sample, each completed from its own row).
        ratio: weight of the attention share in the pasted image's label weight (0: CutMix's area; 1: the
            attention alone, the paper's equation; 0.5: the reference's hard-coded mean).
        label_map: where the share comes from: ``'attention'`` (the class token's attention, the reference),
            ``'cam'`` (the extension: class activation maps of the final feature map), ``'value'`` (the
            extension for class-token models: what each patch adds, through its attention weight and value, to
            the class token's output, read by each label's classifier row; the best ViT map of the
            label-fidelity benchmark), or ``'auto'``: attention when the classifier reads a class token, else
            class maps.
        cam_ratio: weight of the extension's share (``'cam'`` or ``'value'``; the area gets the rest).
        check_model: run one forward of two blank images at construction (at the data config's input size,
            else the model's own), so that a model the mode cannot read fails at start-up.
        keep_hook: register the capture hook once, now, and only arm it while a batch is pending (for a model
            that ``torch.compile`` compiles after this mode is built: it ignores hooks added later; train.py's
            ``--torchcompile`` sets it). Otherwise the hook exists only while a CutMix batch is pending.
        (and the options of :class:`~timm_camaug.modes.timm_mixup.TimmMixup` / :class:`MixMode`)

    Examples:
        >>> import timm, torch
        >>> from timm_camaug import create_mix_fn
        >>> model = timm.create_model('test_vit', num_classes=5, img_size=32, patch_size=8)
        >>> mix_fn = create_mix_fn('transmix', model=model, num_classes=5, mixup_alpha=0.0,
        ...                        generator=torch.Generator().manual_seed(0))
        >>> x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
        >>> x_mixed, target = mix_fn(x, y)        # CutMix's box and area labels ...
        >>> output = model(x_mixed)               # ... the training forward on the mixed batch ...
        >>> target = mix_fn.finalize(target)      # ... completes them from its class-token attention
        >>> target.shape, bool(torch.allclose(target.sum(1), torch.ones(4)))
        (torch.Size([4, 5]), True)
    """
    name = 'transmix'
    default_prob = 1.0
    prob_per = 'batch'
    uses_model = True
    guided_by_model = True
    needs_hooks = True
    reads_training_forward = True
    weights_sum_to_one = True
    guidance_name = 'none'
    options = (
        Option('mixup_alpha', 0.8, "Mixup's Beta(alpha, alpha); 0 turns Mixup off (reference DeiT: 0.8)"),
        Option('cutmix_alpha', 1.0, "CutMix's Beta(alpha, alpha); 0 turns CutMix off (reference DeiT: 1.0)"),
        Option('switch_prob', 0.5, 'probability of CutMix instead of Mixup when both are on'),
        Option('mixup_mode', 'batch', "one draw per 'batch' (the reference), 'pair' or 'elem'", str,
               ('batch', 'pair', 'elem')),
        Option('correct_lam', True, "timm's CutMix weight from the clipped box's area (the attention labels always "
                                    "use the clipped area)", parse_bool),
        Option('ratio', 0.5, "weight of the attention share in the pasted image's label (0: area only; 1: "
                             "attention only; reference 0.5)"),
        Option('label_map', 'auto', "'attention' (class token, reference), 'value' (class token's value-weighted "
                                    "attention per label, extension), 'cam' (final feature map, extension) or "
                                    "'auto'", str, LABEL_MAPS),
        Option('cam_ratio', 1.0, "weight of the extension's share ('cam', 'value'; the area gets the rest)"),
    )
    python_options = ('cutmix_minmax', 'mixup', 'check_model', 'keep_hook')

    def __init__(self, *, model: Optional[nn.Module] = None, mixup_alpha: float = 0.8, cutmix_alpha: float = 1.0,
                 switch_prob: float = 0.5, mixup_mode: str = 'batch', correct_lam: bool = True, ratio: float = 0.5,
                 label_map: str = 'auto', cam_ratio: float = 1.0, check_model: bool = True,
                 keep_hook: bool = False, **kwargs):
        self._validate(TransMix, ratio=ratio, label_map=label_map, cam_ratio=cam_ratio)
        super().__init__(mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha, switch_prob=switch_prob,
                         mixup_mode=mixup_mode, correct_lam=correct_lam, **kwargs)
        self.ratio, self.label_map, self.cam_ratio = float(ratio), label_map, float(cam_ratio)
        self.keep_hook = bool(keep_hook)
        self.model = _check_model_arg(model)
        model_classes = getattr(self.model, 'num_classes', None)
        if isinstance(model_classes, int) and 0 < model_classes < self.num_classes:
            raise ValueError(f"transmix: the model has {model_classes} classes, fewer than num_classes="
                             f"{self.num_classes}")
        self._stash: Optional[Tuple[torch.Tensor, Tuple[int, int]]] = None
        self._finalized = False
        self._fallback = _AreaFallbacks()
        self.reader, self._attention, found = self._choose_reader(label_map)
        # the feature map's site (class maps), or what reads the class token's output ('value')
        self._site, self._readout = (None, found) if self.reader == VALUE else (found, None)
        module = self._attention.module if self._attention is not None else self._site.module
        kind = 'pre' if self._attention is not None else self._site.kind
        self._capture = ForwardCapture(module, kind, persistent=self.keep_hook)
        if check_model:
            self._check_model()

    @classmethod
    def _check_options(cls, o: Dict[str, Any]) -> None:
        for key in ('ratio', 'cam_ratio'):
            require(is_finite_number(o[key]) and 0.0 <= o[key] <= 1.0, key,
                    f"transmix: {key} must be a number in [0, 1], got {o[key]!r}")
        require(o['label_map'] in LABEL_MAPS, 'label_map',
                f"transmix: label_map must be one of {', '.join(LABEL_MAPS)}, got {o['label_map']!r}")

    @classmethod
    def train_defaults(cls, args: argparse.Namespace, options: Dict[str, Any]) -> Dict[str, Any]:
        # torch.compile ignores hooks added after its first compiled call: register ours once, at start-up
        return {'keep_hook': True} if getattr(args, 'torchcompile', None) else {}

    @classmethod
    def train_args_problems(cls, args: argparse.Namespace, options: Dict[str, Any]) -> List[str]:
        # the base class refuses --torchcompile for modes that read the training forward; this one keeps its
        # hook registered from start-up under --torchcompile (train_defaults), which a compiled forward runs
        plain = argparse.Namespace(**{**vars(args), 'torchcompile': None})
        return super().train_args_problems(plain, options)

    def __repr__(self) -> str:
        share = f'ratio={self.ratio}' if self.reader == ATTENTION else f'cam_ratio={self.cam_ratio}'
        return (f"TransMix(prob={self.prob}, mixup_alpha={self.mixup_alpha}, cutmix_alpha={self.cutmix_alpha}, "
                f"switch_prob={self.switch_prob}, mixup_mode={self.mixup_mode!r}, label_map={self.reader!r}, "
                f"{share}, reads={self._where()!r})")

    def _where(self) -> str:
        if self._attention is not None:
            what = 'value-weighted class-token attention' if self.reader == VALUE else 'class-token attention'
            return f'{self._attention.name} ({what}, {self._attention.family})'
        return f"{self._site.name} ({'input' if self._site.kind == 'pre' else 'output'}: final feature map)"

    # --- which part of the forward is read

    def _choose_reader(self, label_map: str) -> Tuple[str, Optional[ClassAttention], Any]:
        kind = type(self.model).__name__
        attention, no_attention = None, ''
        if label_map in ('auto', ATTENTION, VALUE):
            try:
                attention = find_class_attention(self.model)
            except NoClassAttention as e:
                no_attention = str(e)
            pool = getattr(self.model, 'global_pool', 'token')
            if attention is not None and label_map == 'auto' and pool != 'token':
                no_attention = f"{kind}'s classifier reads global_pool={pool!r}, not the class token"
                attention = None
            if attention is not None:
                if float(getattr(getattr(self.model, 'patch_drop', None), 'prob', 0.0) or 0.0) > 0:
                    raise ValueError(f"transmix: {kind} drops patch tokens in training (patch_drop_rate > 0), so its "
                                     "attention no longer lines up with the box: build it with patch_drop_rate=0")
                if label_map == VALUE:
                    return VALUE, attention, self._value_readout(attention)
                return ATTENTION, attention, None
            if label_map in (ATTENTION, VALUE):
                raise ValueError(f"transmix: label_map={label_map!r}: {no_attention}; use label_map='cam' (class "
                                 "maps of the final feature map) or 'auto'")
        try:
            if getattr(self.model, 'num_classes', 1) == 0:
                raise NoFeatureMap(f"{kind} has no classifier (num_classes=0)")
            if getattr(self.model, 'cls_token', None) is not None and getattr(self.model, 'global_pool', None) == 'token':
                raise NoFeatureMap(f"{kind}'s classifier reads its class token (global_pool='token'), so the class "
                                   "maps of its patch tokens are zero")
            site = find_feature_site(self.model, self._probe_batch())
        except NoFeatureMap as e:
            if label_map == CAM:
                raise ValueError(f"transmix: label_map='cam': {e}") from None
            raise ValueError(f"transmix: {kind} has no class-token attention to read ({no_attention}) and no final "
                             f"feature map and classifier to form class maps with ({e})") from None
        except AssertionError as e:         # timm's patch embeddings assert their input size
            raise self._size_error(e) from None
        if label_map == 'auto':
            _logger.info("transmix: %s; label weights from the class maps of its final feature map (extension)",
                         no_attention)
        return CAM, None, site

    def _value_readout(self, attention: ClassAttention) -> Dict[str, Any]:
        """What reads the class token's output in a token-pooled classifier: the block's LayerScale, the final
        norm's weight and the classifier (used at each finalize with the parameters of that step)."""
        kind = type(self.model).__name__
        clf = self.model.get_classifier() if hasattr(self.model, 'get_classifier') else None
        if not isinstance(clf, nn.Linear) or getattr(self.model, 'global_pool', 'token') != 'token' \
                or not isinstance(getattr(self.model, 'fc_norm', None) or nn.Identity(), nn.Identity):
            raise ValueError(f"transmix: label_map='value' needs a linear classifier of the class token (global_pool="
                             f"'token', no fc_norm); {kind} has none: use label_map='attention'")
        modules = dict(self.model.named_modules())
        block = modules.get(attention.name.rsplit('.', 1)[0]) if '.' in attention.name else None
        scale = getattr(getattr(block, 'ls1', None), 'gamma', None)
        if scale is None and isinstance(getattr(block, 'gamma_1', None), torch.Tensor):
            scale = block.gamma_1
        norm = getattr(self.model, 'norm', None)
        return {'classifier': clf, 'layer_scale': scale,
                'norm_weight': getattr(norm, 'weight', None) if isinstance(norm, nn.Module) else None}

    def _value_maps(self, captured: torch.Tensor, kwargs: Dict[str, Any], hw: Tuple[int, int],
                    labels: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """Per label, the (N, gh, gw) map of what each patch adds to the class token's output along the label's
        classifier row (the final norm's centring and weight included; its per-sample scale, common to both
        labels, and the later MLP left out)."""
        spec, readout = self._attention, self._readout
        parts = class_value_contributions(spec, captured, kwargs)[:, spec.num_prefix_tokens:]     # (N, P, D)
        if readout['layer_scale'] is not None:
            parts = parts * readout['layer_scale'].detach().float()
        parts = parts - parts.mean(-1, keepdim=True)
        rows = readout['classifier'].weight.detach().float()
        if readout['norm_weight'] is not None:
            rows = rows * readout['norm_weight'].detach().float()
        gh, gw = self._grid(parts.shape[1], hw)
        return [torch.einsum('npd,nd->np', parts, rows[y.to(rows.device)]).view(-1, gh, gw) for y in labels]

    def _probe_batch(self) -> torch.Tensor:
        size = probe_input_size(self.model, self.data_config)     # the data config's size, else the model's own
        p = next(self.model.parameters(), None)
        dev = p.device if p is not None else (self.device or torch.device('cpu'))
        dtype = p.dtype if p is not None and p.is_floating_point() else torch.float32
        return torch.zeros((2,) + tuple(size), device=dev, dtype=dtype)

    def _size_error(self, e: Exception) -> ValueError:
        return input_size_error(self.name, self.model, probe_input_size(self.model, self.data_config), e)

    def _check_model(self) -> None:
        """One forward of two blank images: the hook sees it, and what it captures fits the patch grid."""
        x = self._probe_batch()
        probe = ForwardCapture(self._capture.module, self._capture.kind)
        try:
            with cam_forward_mode(self.model), torch.no_grad():
                probe.arm()
                try:
                    self.model(x)
                except AssertionError as e:
                    raise self._size_error(e) from None
            if not probe.records:
                raise ValueError(f"transmix: {type(self.model).__name__}'s forward does not run {self._where()} where "
                                 "a hook can see it (a TorchScript or traced model?): pass the plain timm model")
            captured, kwargs = probe.records[-1]
            hw = (int(x.shape[-2]), int(x.shape[-1]))
            if self.reader == ATTENTION:
                self._patch_attention(captured, kwargs, hw)
            elif self.reader == VALUE:
                labels = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
                try:
                    self._value_maps(captured, kwargs, hw, [labels])
                except NoClassAttention as e:
                    raise ValueError(f"transmix: label_map='value': {e}; use label_map='attention'") from None
            else:
                labels = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
                class_maps(self.model, captured, hw, [labels])
        finally:
            probe.close()

    def _grid(self, tokens: int, hw: Tuple[int, int]) -> Tuple[int, int]:
        try:
            return _token_grid(self.model, tokens, hw)
        except ValueError:
            raise RuntimeError(f"transmix: the class token attends to {tokens} patch tokens, which do not form the "
                               f"patch grid of a {hw[0]}x{hw[1]} input (patch dropout? set patch_drop_rate=0)") from None

    def _patch_attention(self, captured: torch.Tensor, kwargs: Dict[str, Any],
                         hw: Tuple[int, int]) -> Tuple[torch.Tensor, Tuple[int, int]]:
        """The class token's attention to each patch (N, P) from what the hook captured, and the patch grid."""
        attn = patch_attention(self._attention, captured, kwargs)
        return attn, self._grid(attn.shape[1], hw)

    # --- the call and its completion after the forward

    def _make_params(self, x: torch.Tensor, labels: torch.Tensor) -> TransMixParams:
        p = super()._make_params(x, labels)
        return TransMixParams(p.active, p.perm, p.lam, p.use_cutmix, p.boxes, p.seed)

    def _check_even(self, n: int) -> None:
        # the flip pairs sample i with N-1-i; in an odd batch the middle sample is its own partner (unchanged
        # image, unchanged label), so only 'pair' mode, which draws per pair, needs an even batch
        if self.mixup_mode == 'pair':
            super()._check_even(n)

    def _apply(self, x: torch.Tensor, soft: torch.Tensor, labels: torch.Tensor,
               params: TimmMixupParams) -> Tuple[torch.Tensor, torch.Tensor]:
        # the unmixed targets and the input size, for _begin_pending (apply stays pure)
        self._stash = (soft, (int(x.shape[-2]), int(x.shape[-1])))
        if self.mixup_mode != 'batch' or not bool(params.active.any()):
            return super()._apply(x, soft, labels, params)
        # one draw for the whole batch: timm's own operations (the box copied, or one blend) on a copy of the
        # batch, rather than per-sample masks over every pixel
        partner = x.flip(0)
        if bool(params.use_cutmix[0]):
            y0, y1, x0, x1 = (int(v) for v in params.boxes[0])
            mixed = x.clone()
            mixed[:, :, y0:y1, x0:x1] = partner[:, :, y0:y1, x0:x1]
        else:
            lam = float(params.lam[0])
            mixed = x * lam + partner * (1.0 - lam)        # timm: x.mul_(lam).add_(x.flip(0).mul_(1 - lam))
        lam_t = to_device(params.lam, x.device)
        return mixed, mix_soft_targets(soft, to_device(params.perm, x.device), lam_t, 1.0 - lam_t)

    def _begin_pending(self, params: TransMixParams, soft: torch.Tensor, labels: torch.Tensor) -> _Pending:
        (unmixed, hw), self._stash = self._stash, None
        self._finalized = False
        capture = None
        if bool((params.active & params.use_cutmix).any()):      # CPU params: no device sync
            capture = self._capture
            capture.arm()
        return _Pending(params, unmixed, labels, hw, capture)

    def finalize(self, target: torch.Tensor) -> torch.Tensor:
        """The targets of the last mixed batch completed from the training forward on it (detached).

        CutMix batches get the pasted image's weight from that forward (see the class docs); Mixup and unmixed
        batches return ``target`` as it is. Call it once per call of the mode, after the forward and before the
        loss.
        """
        if self._pending is None and self._finalized:
            raise RuntimeError("transmix: finalize() called twice for one mixed batch: call it once, after the "
                               "training forward and before the loss")
        return super().finalize(target)

    def _finalize(self, target: torch.Tensor, pending: _Pending) -> torch.Tensor:
        self._finalized = True
        if pending.capture is None:
            return target
        n = pending.labels.shape[0]
        if not isinstance(target, torch.Tensor) or tuple(target.shape) != (n, self.num_classes):
            raise ValueError(f"transmix: finalize() takes the ({n}, {self.num_classes}) soft target the call returned, "
                             f"got {tuple(target.shape) if isinstance(target, torch.Tensor) else type(target).__name__}")
        records = pending.capture.records
        if not records:
            raise RuntimeError(
                "transmix: finalize() found no training forward on the mixed batch: run the model on the mixed "
                "images between mix_fn(x, target) and finalize(). A model compiled by torch.compile after this mode "
                "was built, and whose first compiled call came before a mixed batch, ignores the hook: build the mode "
                "with keep_hook=True (train.py's --torchcompile does)")
        if len(records) > 1:
            raise RuntimeError("transmix: the model ran more than one forward between the mix and finalize(); the "
                               "labels are read from the one training forward on the mixed batch")
        captured, kwargs = records[0]
        if captured.shape[0] != n:
            raise RuntimeError(f"transmix: the forward after the mix ran on a batch of {captured.shape[0]}, not on the "
                               f"{n} mixed images")
        params = pending.params
        dev = target.device
        h, w = pending.hw
        cut = to_device(params.active & params.use_cutmix, dev)
        area = to_device((params.boxes[:, 1] - params.boxes[:, 0]) * (params.boxes[:, 3] - params.boxes[:, 2]), dev)
        area = area.float() / float(h * w)
        perm = to_device(params.perm, dev)
        if self.reader == ATTENTION:
            attn, grid = self._patch_attention(captured, kwargs, (h, w))
            mask = to_device(patch_box_mask(params.boxes, (h, w), grid), dev)
            weight, evidence = transmix_pasted_weight(attn.to(dev), mask, area, self.ratio)
        else:
            labels = [pending.labels, pending.labels[perm]]
            if self.reader == VALUE:
                map_a, map_b = self._value_maps(captured, kwargs, (h, w), labels)
            else:
                map_a, map_b = class_maps(self.model, captured, (h, w), labels)
            cover = to_device(cell_box_cover(params.boxes, (h, w), map_a.shape[-2:]), dev)
            evidence, fell_back = _cam_share(map_a, map_b, cover, area)
            if not self._fallback.reported:     # counted on the device; read here on the CPU, else at set_epoch
                self._fallback.add(fell_back, cut, int((params.active & params.use_cutmix).sum()))
                if self._fallback.on_host:
                    self._report_fallback()
            weight = (1.0 - self.cam_ratio) * area + self.cam_ratio * evidence
        soft = pending.soft.to(dev)
        completed = (1.0 - weight)[:, None] * soft + weight[:, None] * soft[perm]
        params.area, params.evidence = area, evidence
        params.pasted_weight = torch.where(cut, weight, 1.0 - to_device(params.lam, dev).float())
        return torch.where(cut[:, None], completed, target).detach()

    def _release(self, pending: _Pending) -> None:
        if pending.capture is not None:
            pending.capture.disarm()

    def _left_at(self, pending: _Pending) -> Optional[str]:
        return "CutMix's box-area rule" if pending.capture is not None else None

    def close(self) -> None:
        """Remove the capture hook (also a persistent one) and drop a pending batch (deliberately: no warning)."""
        self._drop_pending(warn=False)
        self._capture.close()

    def set_epoch(self, epoch: int) -> None:
        self._report_fallback()       # the epoch that ended; on an accelerator the count is read here, once
        super().set_epoch(epoch)

    def _report_fallback(self) -> None:
        """Warn once when most CutMix batches counted since the last report had class maps with no positive
        evidence on either side of the box for every row: those labels fell back to the box-area rule."""
        fell_back, seen = self._fallback.take()
        if not seen or fell_back * 2 < seen or self._fallback.reported:
            return
        self._fallback.reported = True
        model = type(self.model).__name__
        maps = 'value-weighted attention maps' if self.reader == VALUE else 'class maps'
        what = ('this CutMix batch' if seen == 1 else f'{fell_back} of the last {seen} CutMix batches') + \
            f' (epoch {self.epoch})'
        clf = self.model.get_classifier() if hasattr(self.model, 'get_classifier') else None
        if isinstance(clf, nn.Linear) and not bool(clf.weight.detach().any()):
            why = (f"{model}'s classifier is all zeros (timm zero-initialises some heads, MLP-Mixer's among them), "
                   "so its maps appear only once the head has trained; start from pretrained weights (train.py: "
                   "--pretrained)")
        else:
            why = f"{model}'s {maps} have no positive part where the two labels' images show"
        _logger.warning(f"transmix: the {maps} of {model} gave no evidence for any row of {what}, so their labels "
                        f"fell back to CutMix's box-area rule; {why}")

    # --- what preview and the label-fidelity measure ask

    def row_notes(self, params: TransMixParams, labels: torch.Tensor) -> List[str]:
        """For CutMix rows: the box's share of the image and of the map (attention or class maps), after finalize;
        the pasted label's weight, which blends them by ``ratio``, is in ``params.pasted_weight``."""
        n = int(params.active.shape[0])
        cut = (params.active & params.use_cutmix).cpu()
        if not bool(cut.any()):
            return [''] * n
        if params.pasted_weight is None:
            return ['(label completed after the forward)' if c else '' for c in cut.tolist()]
        what = {ATTENTION: 'attention', VALUE: 'value-weighted attention', CAM: 'class maps'}[self.reader]
        area, ev = (t.detach().float().cpu().tolist() for t in (params.area, params.evidence))
        return [f'box: area {a:.2f}, {what} {e:.2f}' if c else '' for c, a, e in zip(cut.tolist(), area, ev)]


class _AreaFallbacks(DeviceCount):
    """Counts CutMix batches whose every CutMix row fell back to the area share, without a host-device sync
    (:class:`~timm_camaug.devices.DeviceCount`; taken after every batch on the CPU, at ``set_epoch`` on an
    accelerator, as the CAM modes take their :class:`~timm_camaug.modes.cam_guided.DegenerateMaps`)."""

    def add(self, fell_back: torch.Tensor, cut: torch.Tensor, n_cut: int) -> None:
        """``fell_back``, ``cut``: (N,) bool on the device (rows that fell back, CutMix rows); ``n_cut``: the
        number of CutMix rows, known on the host."""
        if n_cut:
            super().add((fell_back & cut).sum() == n_cut, 1)


def _check_model_arg(model: Optional[nn.Module]) -> nn.Module:
    if model is None:
        raise ValueError("transmix needs the model under training: create_mix_fn('transmix', model=model, ...)")
    if isinstance(model, torch.jit.ScriptModule):
        raise ValueError("transmix: a TorchScript model runs no Python hooks, so its training forward cannot be read "
                         "(train.py: drop --torchscript)")
    if not isinstance(model, nn.Module):
        raise TypeError(f"transmix: model must be an nn.Module, got {type(model).__name__}")
    model = unwrap_model(model)
    if isinstance(model, torch.jit.ScriptModule):
        raise ValueError("transmix: a TorchScript model runs no Python hooks, so its training forward cannot be read "
                         "(train.py: drop --torchscript)")
    return model
