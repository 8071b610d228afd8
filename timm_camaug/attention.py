""" The class token's attention row in the last attention of stock timm models, recomputed from a hook.

timm runs attention through ``F.scaled_dot_product_attention`` (fused), so the attention probabilities are
never materialised and a model would have to be patched to return them (TransMix's reference code ships its
own ``vision_transformer.py`` with ``*_return_attn`` models). Here nothing is patched: a forward pre-hook on
the last attention module keeps its input (the block's normalised tokens, which autograd keeps anyway for the
qkv projection's backward) and its keyword arguments (rotary embeddings, masks, shared relative-position
bias); after the forward, the class token's row is recomputed from the module's own parameters:

    softmax(q_0 · K^T · scale + bias_0)       q_0 = the class token's query, K = every token's key

per head, in float32 with autocast off: one (B, 1, D) and one (B, N, D) projection and one (B, heads, N)
product, no (N, N) matrix. Every family below was checked against timm's own unfused softmax to 1e-5
(``tests/test_attention.py``).

Families (matched by the attention module's exact type, so a subclass with other maths is not taken for
its parent):

==========================================  =================================  ==========================
attention module                            models                             extra terms
==========================================  =================================  ==========================
``timm.layers.Attention``                   ViT, DeiT (distilled), DeiT-3,     q/k norms, masks
                                            registers (DINOv2), qk_norm ViTs
``timm.models.eva.EvaAttention``,           EVA-02, ``vit_*_rope_*``           q/k bias, q/k norms, rotary
``timm.layers.AttentionRope``                                                  embedding of patch keys,
                                                                               grouped keys, masks
``timm.models.beit.Attention``              BEiT, BEiT-v2                      relative-position bias
                                                                               (own and shared)
``timm.models.cait.ClassAttn``              CaiT, XCiT (class-attention        query = class token only
                                            blocks)
==========================================  =================================  ==========================
"""
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ['ClassAttention', 'find_class_attention', 'class_attention_rows', 'patch_attention',
           'class_value_contributions', 'supported_attention_types', 'NoClassAttention']


class NoClassAttention(ValueError):
    """The model has no class-token attention this module can recompute (the message says why)."""


@dataclass
class ClassAttention:
    """Where a model's class-token attention is read and how its row is recomputed.

    ``module`` is the attention module whose forward pre-hook captures ``(x, kwargs)``; ``row(module, x, kwargs)``
    returns the (B, heads, N) softmax row of query 0 over all N tokens; the first ``num_prefix_tokens`` tokens
    (class, distillation, register tokens) precede the row-major patch grid.
    """
    module: nn.Module
    name: str                       # its name in the model, e.g. 'blocks.11.attn'
    num_prefix_tokens: int
    family: str
    row: Callable[[nn.Module, torch.Tensor, Dict[str, Any]], torch.Tensor]


# --- the recomputations (B, heads, N), float32, query 0

def _linear(x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor]) -> torch.Tensor:
    return F.linear(x, w.float(), None if b is None else b.float())


def _heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, L, heads * d) -> (B, heads, L, d)."""
    b, length, dim = t.shape
    return t.view(b, length, heads, dim // heads).transpose(1, 2)


def _fused_qk(attn: nn.Module, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """The class token's query and every token's key from a fused qkv projection (EVA/BEiT: bias from
    ``q_bias``, the zero ``k_bias`` buffer and ``v_bias``)."""
    w, b = attn.qkv.weight, attn.qkv.bias
    q_bias = getattr(attn, 'q_bias', None)
    if q_bias is not None:
        extra = torch.cat((q_bias, attn.k_bias, attn.v_bias))
        b = extra if b is None else b + extra      # qkv_bias_separate adds it to the Linear's own output
    d = w.shape[0] // 3
    q0 = _linear(x[:, :1], w[:d], None if b is None else b[:d])
    k = _linear(x, w[d:2 * d], None if b is None else b[d:2 * d])
    return q0, k


def _masked(scores: torch.Tensor, kwargs: Dict[str, Any]) -> torch.Tensor:
    """Row 0 of timm's mask semantics (SDPA's): ``is_causal`` first, a bool mask True = attend, a float mask
    added. ``scores`` is (B, heads, 1, N)."""
    n = scores.shape[-1]
    if kwargs.get('is_causal', False):
        keep = torch.zeros(n, dtype=torch.bool, device=scores.device)
        keep[0] = True
        return scores.masked_fill(~keep, float('-inf'))
    mask = kwargs.get('attn_mask')
    if mask is None:
        return scores
    row = mask[..., :1, :]
    if mask.dtype == torch.bool:
        return scores.masked_fill(~row, float('-inf'))
    return scores + row.float()


def _norm_qk(attn: nn.Module, q0: torch.Tensor, k: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    q_norm, k_norm = getattr(attn, 'q_norm', None), getattr(attn, 'k_norm', None)
    if q_norm is not None:
        q0 = q_norm(q0).float()
    if k_norm is not None:
        k = k_norm(k).float()
    return q0, k


def vit_row(attn: nn.Module, x: torch.Tensor, kwargs: Dict[str, Any]) -> torch.Tensor:
    """``timm.layers.Attention``: fused qkv (+ bias), q/k norms (LayerNorm over the head dim when
    ``qk_norm``), masks."""
    q0, k = _fused_qk(attn, x)
    q0, k = _norm_qk(attn, _heads(q0, attn.num_heads), _heads(k, attn.num_heads))
    scores = (q0 * attn.scale) @ k.transpose(-2, -1)
    return _masked(scores, kwargs).softmax(-1)[:, :, 0]


def eva_row(attn: nn.Module, x: torch.Tensor, kwargs: Dict[str, Any]) -> torch.Tensor:
    """``EvaAttention`` / ``AttentionRope``: fused or separate projections, q/k norms, the rotary embedding
    of the patch keys (the class query is a prefix token and is not rotated), grouped keys, masks."""
    heads = attn.num_heads
    kv_heads = heads
    if getattr(attn, 'qkv', None) is not None:
        q0, k = _fused_qk(attn, x)
    else:
        q0 = _linear(x[:, :1], attn.q_proj.weight, attn.q_proj.bias)
        k = _linear(x, attn.k_proj.weight, attn.k_proj.bias)
        kv_heads = int(getattr(attn, 'num_kv_heads', None) or heads)
    q0, k = _norm_qk(attn, _heads(q0, heads), _heads(k, kv_heads))
    rope = kwargs.get('rope')
    if rope is not None:
        from timm.layers.pos_embed_sincos import apply_rot_embed_cat
        npt = int(attn.num_prefix_tokens)
        k = torch.cat([k[:, :, :npt], apply_rot_embed_cat(k[:, :, npt:], rope.float(),
                                                          half=getattr(attn, 'rotate_half', False))], dim=2)
    if kv_heads != heads:
        k = k.repeat_interleave(heads // kv_heads, dim=1)
    scores = (q0 * attn.scale) @ k.transpose(-2, -1)
    return _masked(scores, kwargs).softmax(-1)[:, :, 0]


def beit_row(attn: nn.Module, x: torch.Tensor, kwargs: Dict[str, Any]) -> torch.Tensor:
    """``timm.models.beit.Attention``: fused qkv with q/v bias, the block's relative-position bias (class row
    and column included) and the model's shared one (passed to the block as a keyword)."""
    q0, k = _fused_qk(attn, x)
    q0, k = _heads(q0, attn.num_heads), _heads(k, attn.num_heads)
    scores = (q0 * attn.scale) @ k.transpose(-2, -1)
    if getattr(attn, 'relative_position_bias_table', None) is not None:
        scores = scores + attn._get_rel_pos_bias()[..., :1, :].float()
    shared = kwargs.get('shared_rel_pos_bias')
    if shared is not None:
        scores = scores + shared[..., :1, :].float()
    return scores.softmax(-1)[:, :, 0]


def class_attn_row(attn: nn.Module, x: torch.Tensor, kwargs: Dict[str, Any]) -> torch.Tensor:
    """``timm.models.cait.ClassAttn`` (CaiT's and XCiT's class-attention blocks): separate q, k projections,
    the class token the only query."""
    q0 = _heads(_linear(x[:, :1], attn.q.weight, attn.q.bias), attn.num_heads)
    k = _heads(_linear(x, attn.k.weight, attn.k.bias), attn.num_heads)
    return ((q0 * attn.scale) @ k.transpose(-2, -1)).softmax(-1)[:, :, 0]


def _families() -> Dict[type, Tuple[str, Callable]]:
    """Attention class -> (family, recomputation), for the classes this timm has."""
    out: Dict[type, Tuple[str, Callable]] = {}
    for module, cls_name, family, fn in (
            ('timm.layers', 'Attention', 'vit', vit_row),
            ('timm.models.vision_transformer', 'Attention', 'vit', vit_row),   # timm < 1.0.16 defined its own
            ('timm.models.eva', 'EvaAttention', 'eva', eva_row),
            ('timm.layers', 'AttentionRope', 'eva', eva_row),
            ('timm.models.beit', 'Attention', 'beit', beit_row),
            ('timm.models.cait', 'ClassAttn', 'class-attention', class_attn_row)):
        try:
            cls = getattr(__import__(module, fromlist=[cls_name]), cls_name)
        except (ImportError, AttributeError):   # an older timm without this family
            continue
        out.setdefault(cls, (family, fn))
    return out


_FAMILIES: Optional[Dict[type, Tuple[str, Callable]]] = None


def supported_attention_types() -> Dict[type, Tuple[str, Callable]]:
    global _FAMILIES
    if _FAMILIES is None:
        _FAMILIES = _families()
    return _FAMILIES


def _module_name(model: nn.Module, module: nn.Module) -> str:
    return next((n for n, m in model.named_modules() if m is module), type(module).__name__)


def find_class_attention(model: nn.Module) -> ClassAttention:
    """The attention module of ``model`` whose query 0 is the class token, in the last block that has one.

    Raises :class:`NoClassAttention` (a ``ValueError``) naming why: no class token, a last attention of a
    type whose maths is not known here, or a block without an ``attn`` module.
    """
    kind = type(model).__name__
    families = supported_attention_types()
    for attr in ('blocks_token_only', 'cls_attn_blocks'):       # CaiT, XCiT: class-attention blocks
        blocks = getattr(model, attr, None)
        if isinstance(blocks, (nn.Sequential, nn.ModuleList)) and len(blocks):
            attn = getattr(blocks[-1], 'attn', None)
            if type(attn) in families:
                family, fn = families[type(attn)]
                return ClassAttention(attn, _module_name(model, attn), 1, family, fn)
            raise NoClassAttention(f"{kind}: the last class-attention block's attention is "
                                   f"{type(attn).__name__}, whose maths this version does not recompute")
    if getattr(model, 'cls_token', None) is None:
        raise NoClassAttention(f"{kind} has no class token")
    blocks = getattr(model, 'blocks', None)
    if not isinstance(blocks, (nn.Sequential, nn.ModuleList)) or not len(blocks):
        raise NoClassAttention(f"{kind} has a class token but no 'blocks' to read its attention from")
    attn = getattr(blocks[-1], 'attn', None)
    if attn is None:
        raise NoClassAttention(f"{kind}: its last block ({type(blocks[-1]).__name__}) has no 'attn' module (a "
                               "parallel or fused block): the class token's attention cannot be read from a hook")
    if type(attn) not in families:
        known = ', '.join(sorted({f'{c.__module__}.{c.__name__}' for c in families}))
        raise NoClassAttention(f"{kind}: its last attention is {type(attn).__module__}.{type(attn).__name__}, "
                               f"whose maths this version does not recompute (known: {known})")
    npt = int(getattr(model, 'num_prefix_tokens', 1) or 1)
    family, fn = families[type(attn)]
    return ClassAttention(attn, _module_name(model, attn), npt, family, fn)


@torch.no_grad()
def class_attention_rows(spec: ClassAttention, x: torch.Tensor, kwargs: Optional[Dict[str, Any]] = None) -> torch.Tensor:
    """(B, heads, N) float32 softmax row of the class token over every token, from the captured input ``x``
    (B, N, D) of ``spec.module`` and its keyword arguments; autocast off, no gradient."""
    with torch.autocast(x.device.type, enabled=False):
        return spec.row(spec.module, x.detach().float(), dict(kwargs or {}))


def patch_attention(spec: ClassAttention, x: torch.Tensor, kwargs: Optional[Dict[str, Any]] = None) -> torch.Tensor:
    """(B, P) the class token's attention to each patch, averaged over heads, prefix columns dropped (what
    TransMix's patched model returns: ``attn[:, :, 0, 1:].mean(1)`` for one prefix token). Not renormalised."""
    return class_attention_rows(spec, x, kwargs).mean(1)[:, spec.num_prefix_tokens:]


# --- what each key token adds to the class token's attention output

def _values(spec: ClassAttention, x: torch.Tensor) -> torch.Tensor:
    """(B, heads, N, d) values of every token, the value heads repeated for grouped attention."""
    attn, heads = spec.module, spec.module.num_heads
    if spec.family == 'class-attention':
        v = _linear(x, attn.v.weight, attn.v.bias)
        return _heads(v, heads)
    if getattr(attn, 'qkv', None) is not None:
        w, b = attn.qkv.weight, attn.qkv.bias
        if getattr(attn, 'q_bias', None) is not None:
            extra = torch.cat((attn.q_bias, attn.k_bias, attn.v_bias))
            b = extra if b is None else b + extra
        d = w.shape[0] // 3
        return _heads(_linear(x, w[2 * d:], None if b is None else b[2 * d:]), heads)
    kv_heads = int(getattr(attn, 'num_kv_heads', None) or heads)
    v = _heads(_linear(x, attn.v_proj.weight, attn.v_proj.bias), kv_heads)
    return v.repeat_interleave(heads // kv_heads, dim=1) if kv_heads != heads else v


@torch.no_grad()
def class_value_contributions(spec: ClassAttention, x: torch.Tensor,
                              kwargs: Optional[Dict[str, Any]] = None) -> torch.Tensor:
    """(B, N, D) what each token ``j`` adds to the class token's attention output: the output projection (its
    weight; the bias is shared by all tokens) of ``concat_heads(a_hj v_hj)``. Their sum over ``j`` plus the
    projection's bias is the module's output for the class token. Float32, autocast off, no gradient.

    Raises :class:`NoClassAttention` for attentions whose output is not linear in the values (a norm or a gate
    between the attention and the projection)."""
    attn = spec.module
    inner = getattr(attn, 'norm', None)
    if (inner is not None and not isinstance(inner, nn.Identity)) or getattr(attn, 'gate', None) is not None:
        raise NoClassAttention(f"{type(attn).__name__} normalises or gates its output before the projection: the "
                               "class token's output is not a sum over the key tokens")
    with torch.autocast(x.device.type, enabled=False):
        x = x.detach().float()
        rows = spec.row(attn, x, dict(kwargs or {}))                     # (B, H, N)
        v = _values(spec, x)                                             # (B, H, N, d)
        per_token = (rows[..., None] * v).transpose(1, 2).flatten(2)     # (B, N, H * d)
        return F.linear(per_token, attn.proj.weight.float())
