""" Frozen auxiliary networks: a timm model from a name (hub weights or a local checkpoint), and its feature map.

Used by the attentive mode's feature extractor, and by anything else that needs a pretrained network
that is not the model under training.
"""
import argparse
import copy
import difflib
import os
import socket
import threading
import urllib.parse
import urllib.request
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

from .pixels import resolve_mean_std

__all__ = ['CheckpointError', 'ForwardError', 'HubUnreachableError', 'create_timm_model', 'freeze', 'frozen_copy', 'hub_reachable',
           'model_mean_std', 'read_checkpoint', 'checkpoint_state', 'spatial_features']

HUB_TIMEOUT = 3.0    # seconds to wait for a TCP connection to the hub before calling it unreachable
_WEIGHT_SUFFIXES = ('.pth', '.pt', '.bin', '.safetensors', '.pth.tar', '.ckpt')


class CheckpointError(ValueError):
    """A checkpoint file that cannot give the model its weights; the message says why and what to do."""


class ForwardError(ValueError):
    """The network's forward failed on an image batch (:func:`spatial_features`)."""


class HubUnreachableError(RuntimeError):
    """Pretrained weights are needed from a hub that cannot be reached (or their download failed), and are not in
    the local cache."""


def _classifier_prefixes(model: nn.Module) -> Tuple[str, ...]:
    names = (getattr(model, 'pretrained_cfg', None) or {}).get('classifier') or ()
    return tuple(f'{n}.' for n in ((names,) if isinstance(names, str) else names))


def _first_sentence(text: str) -> str:
    """An error's text for a one-line message: whole when short, else its first sentence; never torch's advice
    to load with ``weights_only=False`` (which runs arbitrary code, and no flag here can ask for)."""
    text = ' '.join(str(text).split())
    if 'weights_only' in text:
        return ''
    return (text if len(text) <= 160 else text.split('. ')[0]).rstrip('.')


def _file_format(path: str) -> Optional[str]:
    """'torch' (torch.save, zip or legacy pickle) or 'safetensors' from a file's first bytes; None if neither."""
    size = os.path.getsize(path)
    with open(path, 'rb') as f:
        head = f.read(16)
    if head[:4] == b'PK\x03\x04' or head[:2] in (b'\x80\x02', b'\x80\x03', b'\x80\x04', b'\x80\x05'):
        return 'torch'
    if len(head) >= 9 and head[8:9] == b'{' and 0 < int.from_bytes(head[:8], 'little') <= size - 8:
        return 'safetensors'
    return None


def _unsafe_globals(path: str) -> List[str]:
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:      # an older torch, or not a zip checkpoint
        return []


def read_checkpoint(path: str) -> Any:
    """The object a weights file holds (torch.save, weights only; or safetensors), on the CPU.

    Raises FileNotFoundError for a missing file, :class:`CheckpointError` for a directory, an empty, corrupt or
    truncated file, or a pickle of Python objects that a weights-only load refuses; never loads such objects.
    """
    path = os.path.expanduser(path)
    if os.path.isdir(path):
        inside = sorted(f for f in os.listdir(path) if f.endswith(_WEIGHT_SUFFIXES))
        held = f" (it holds {', '.join(inside[:4])}{' ...' if len(inside) > 4 else ''})" if inside else ''
        raise CheckpointError(f"{path!r} is a directory, not a weights file{held}; pass the file itself")
    if not os.path.isfile(path):
        parent = os.path.dirname(os.path.abspath(path))
        where = '' if os.path.isdir(parent) else f" (nor does its folder {parent!r})"
        raise FileNotFoundError(f"{path!r} does not exist{where}; pass the path of an existing weights file")
    try:
        size = os.path.getsize(path)
        fmt = _file_format(path)
    except OSError as e:       # no permission to read it, an I/O error
        raise CheckpointError(f"{path!r} cannot be read ({e.strerror or e}); check its permissions") from None
    if size == 0:
        raise CheckpointError(f"{path!r} is empty (0 bytes): the file is corrupt (an interrupted download or "
                              "copy?); write or copy it again")
    if fmt is None:
        raise CheckpointError(f"{path!r} is corrupt or not a weights file: its {size} bytes are neither a PyTorch "
                              "(torch.save) nor a safetensors file; write or copy it again")
    try:
        if fmt == 'safetensors':
            import safetensors.torch
            return safetensors.torch.load_file(path, device='cpu')
        if hasattr(torch.serialization, 'safe_globals'):    # train.py checkpoints hold an argparse.Namespace
            with torch.serialization.safe_globals([argparse.Namespace]):
                return torch.load(path, map_location='cpu', weights_only=True)
        return torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:
        unsafe = _unsafe_globals(path) if fmt == 'torch' else []
        if not unsafe and fmt == 'torch' and 'unsupported global' in str(e).lower():   # the legacy (non-zip) format
            unsafe = ['classes not allowed in a weights-only load']
        if unsafe:
            names = ', '.join(unsafe[:3]) + (' ...' if len(unsafe) > 3 else '')
            raise CheckpointError(
                f"{path!r} holds pickled Python objects ({names}) besides tensors, which a safe weights-only load "
                "does not run: it is not a plain weights file; where it was written, save the weights alone with "
                "torch.save(model.state_dict(), FILE)") from None
        reason = _first_sentence(e) or type(e).__name__
        kind = 'PyTorch' if fmt == 'torch' else fmt
        raise CheckpointError(f"{path!r} is corrupt (a truncated or damaged {kind} file of {size} bytes: {reason}); "
                              "write or copy it again") from None


def _state_of(checkpoint: Any, path: str) -> Tuple[Dict[str, torch.Tensor], Optional[str]]:
    """(state_dict, the architecture the checkpoint names) of a loaded checkpoint, as timm picks it (EMA
    weights first, then ``state_dict``, then ``model``)."""
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{path!r} holds a {type(checkpoint).__name__}, not a state_dict (a dict of tensors) "
                              "or a timm/train.py checkpoint; save model.state_dict() instead")
    arch = checkpoint.get('arch') if isinstance(checkpoint.get('arch'), str) else None
    state = checkpoint
    for key in ('state_dict_ema', 'model_ema', 'state_dict', 'model'):
        if isinstance(checkpoint.get(key), dict):
            state = checkpoint[key]
            break
    from timm.models import clean_state_dict     # DDP / torch.compile prefixes, in either order
    tensors = clean_state_dict({str(k): v for k, v in state.items() if isinstance(v, torch.Tensor)})
    if not tensors:
        keys = ', '.join(map(str, list(state)[:4])) + (' ...' if len(state) > 4 else '')
        raise CheckpointError(f"{path!r} holds no weight tensors (its keys: {keys or 'none'}): it is not a state_dict "
                              "or a timm/train.py checkpoint; save model.state_dict() instead")
    return tensors, arch


def _without_wrapper_prefix(state: Dict[str, torch.Tensor], own: Dict[str, Any]) -> Dict[str, torch.Tensor]:
    """``state`` without a first key component that every key shares (a wrapper module's attribute, e.g.
    PyTorch Lightning's ``model.``), when that is what makes its keys the model's; else ``state`` as it is."""
    if any(k in own for k in state):
        return state
    firsts = {k.split('.', 1)[0] for k in state}
    if len(firsts) != 1 or not all('.' in k for k in state):
        return state
    stripped = {k.split('.', 1)[1]: v for k, v in state.items()}
    return stripped if set(own) <= set(stripped) else state


def checkpoint_state(checkpoint: str, model: nn.Module) -> Tuple[Dict[str, torch.Tensor], Optional[str]]:
    """(state_dict, the architecture it names) of a weights file for ``model``: a plain state_dict or a
    timm/train.py checkpoint (EMA weights first), with DDP/compile prefixes and a wrapper's (Lightning's
    ``model.``) removed where that makes its keys the model's. Errors as :func:`read_checkpoint`."""
    state, arch = _state_of(read_checkpoint(checkpoint), checkpoint)
    return _without_wrapper_prefix(state, model.state_dict()), arch


def _load_local(model: nn.Module, name: str, checkpoint: str, name_hint: str = '') -> None:
    """Load a plain state_dict or a timm/train.py checkpoint into ``model`` (EMA weights when present)."""
    state, arch = checkpoint_state(checkpoint, model)
    own = model.state_dict()
    # a head the model was built without (num_classes=0) is not needed for features
    drop = _classifier_prefixes(model)
    state = {k: v for k, v in state.items() if k in own or not k.startswith(drop)}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        parts = [f"{label} {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}" for label, keys in
                 (('missing keys', missing), ('unexpected keys', unexpected), ('shape mismatch', wrong)) if keys]
        saved = f" (it names its architecture: {arch!r})" if arch and arch != name else ''
        raise CheckpointError(
            f"{checkpoint!r} does not match timm model {name!r}: {'; '.join(parts)}; it holds the weights of another "
            f"architecture{saved}: pass the name of the timm model it was saved from{name_hint}, or a checkpoint of "
            f"{name!r}")
    model.load_state_dict(state)


def hub_reachable(url: str, timeout: Optional[float] = None) -> bool:
    """Whether a TCP connection to ``url``'s host (or to the proxy the environment names for it) opens within
    ``timeout`` seconds (default :data:`HUB_TIMEOUT`). Asked once per host and process; name resolution is bounded by the same timeout."""
    return _hub_problem(url, timeout) is None


def _connect(host: str, port: int, timeout: float) -> Optional[str]:
    """None when a TCP connection to (host, port) opens within ``timeout`` s, else why not (asked once)."""
    key = (host, port)
    if key not in _REACHABLE:
        result = [f"no answer within {timeout:g} s"]

        def probe():
            try:
                socket.create_connection((host, port), timeout=timeout).close()
                result[0] = None
            except OSError as e:
                result[0] = e.strerror or str(e) or type(e).__name__
        thread = threading.Thread(target=probe, name='timm-camaug-hub-probe', daemon=True)
        thread.start()
        thread.join(timeout + 0.5)
        _REACHABLE[key] = result[0]
    return _REACHABLE[key]


_REACHABLE: Dict[Tuple[str, int], Optional[str]] = {}


def _hub_problem(url: str, timeout: Optional[float] = None) -> Optional[str]:
    """Why the host of ``url`` (or its proxy) cannot be reached, or None when it can."""
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname or '', parts.port or (443 if parts.scheme == 'https' else 80)
    proxy = urllib.request.getproxies().get(parts.scheme)
    via = ''
    if proxy and not urllib.request.proxy_bypass(host):
        pp = urllib.parse.urlsplit(proxy if '://' in proxy else f'http://{proxy}')
        via = f" through the proxy {pp.hostname}:{pp.port or 80}"
        host, port = pp.hostname or host, pp.port or 80
    problem = _connect(host, port, HUB_TIMEOUT if timeout is None else timeout)
    return None if problem is None else f"{parts.hostname} cannot be reached{via} ({problem})"


def _hf_endpoint() -> str:
    try:
        from huggingface_hub import constants
        return os.environ.get('HF_ENDPOINT') or constants.ENDPOINT
    except ImportError:
        return os.environ.get('HF_ENDPOINT') or 'https://huggingface.co'


def _offline_requested() -> bool:
    return any(os.environ.get(v, '').strip().lower() in ('1', 'true', 'yes', 'on')
               for v in ('HF_HUB_OFFLINE', 'TRANSFORMERS_OFFLINE'))


def _weights_source(name: str) -> Optional[Tuple[str, str, Tuple[str, ...]]]:
    """Where timm fetches ``name``'s pretrained weights: ('hf-hub', repo id, file names) or ('url', url, ()),
    in timm's own order of preference; None when timm names no source (it then fails by itself)."""
    from timm.models import get_pretrained_cfg
    cfg = get_pretrained_cfg(name)
    if cfg is None:
        return None
    try:
        import huggingface_hub  # noqa: F401
        has_hub = True
    except ImportError:
        has_hub = False
    if cfg.hf_hub_id and has_hub:
        files = (cfg.hf_hub_filename,) if cfg.hf_hub_filename else ('model.safetensors', 'pytorch_model.bin',
                                                                    'open_clip_pytorch_model.bin')
        return 'hf-hub', cfg.hf_hub_id, files
    if cfg.url:
        return 'url', cfg.url, ()
    return None


def _cached_weights(source: Tuple[str, str, Tuple[str, ...]]) -> Optional[str]:
    """The local copy of the weights from an earlier download, if any (no network)."""
    kind, where, files = source
    if kind == 'url':
        path = os.path.join(torch.hub.get_dir(), 'checkpoints', os.path.basename(urllib.parse.urlsplit(where).path))
        return path if os.path.isfile(path) else None
    from huggingface_hub import try_to_load_from_cache
    repo, _, revision = where.partition('@')
    for filename in files:
        try:
            path = try_to_load_from_cache(repo, filename, revision=revision or None)
        except Exception:
            path = None
        if isinstance(path, str) and os.path.isfile(path):
            return path
    return None


def create_timm_model(
        name: str,
        checkpoint: Optional[str] = None,
        *,
        pretrained: bool = True,
        offline_hint: str = 'a local checkpoint file',
        name_hint: str = '',
        **kwargs,
) -> nn.Module:
    """A timm model by name with pretrained weights: from ``checkpoint`` (a local file) if given, else from the hub.

    ``checkpoint`` may be a plain state_dict (``.pth``/``.bin``/``.safetensors``) or a timm train.py
    checkpoint (``state_dict``/``model``, ``state_dict_ema`` preferred when present); a file that cannot give the
    weights is a :class:`CheckpointError` (FileNotFoundError when missing). Before a download the hub's host is
    asked once for a connection (:data:`HUB_TIMEOUT` seconds): when it cannot be reached, weights cached by an
    earlier download are used, else :class:`HubUnreachableError` says how to make a checkpoint file on a
    machine with internet. ``offline_hint`` names how the caller's user passes a local checkpoint,
    ``name_hint`` (shown after "the name of the timm model") how they name the model. Extra keyword args go to ``timm.create_model`` (e.g. ``num_classes=0``).
    """
    import timm
    from timm.models import is_model_pretrained
    if not isinstance(name, str) or not timm.is_model(name):
        close = difflib.get_close_matches(str(name), timm.list_models(), n=5)
        raise ValueError(f"unknown timm model {name!r}" + (f"; close names: {', '.join(close)}" if close else ''))
    if checkpoint is not None:
        if not isinstance(checkpoint, (str, os.PathLike)):
            raise TypeError(f"checkpoint must be a path, got {type(checkpoint).__name__}")
        checkpoint = os.path.expanduser(os.fspath(checkpoint))
        if not os.path.isfile(checkpoint):
            read_checkpoint(checkpoint)     # a directory or a missing file: refused before the model is built
        model = timm.create_model(name, pretrained=False, **kwargs)
        _load_local(model, name, checkpoint, name_hint)
        return model
    if pretrained and not is_model_pretrained(name):
        raise ValueError(f"timm has no pretrained weights for {name!r}; pick a model listed by "
                         f"timm.list_pretrained(), or pass {offline_hint}")
    if pretrained:
        source = _weights_source(name)
        if source is not None:
            url = _hf_endpoint() if source[0] == 'hf-hub' else source[1]
            why = 'HF_HUB_OFFLINE is set' if _offline_requested() else _hub_problem(url)
            if why is not None:
                cached = _cached_weights(source)
                if cached is not None:
                    return timm.create_model(name, pretrained=True, pretrained_cfg_overlay={'file': cached}, **kwargs)
                raise HubUnreachableError(
                    f"the pretrained weights of timm model {name!r} are not in the local cache and {why}; pass "
                    f"{offline_hint}. To make that file on a machine with internet: python -c \"import timm, torch; "
                    f"torch.save(timm.create_model('{name}', pretrained=True).state_dict(), '{name}.pth')\", then "
                    f"copy {name}.pth to this machine")
    try:
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    except OSError as e:     # huggingface_hub's LocalEntryNotFoundError, urllib's URLError, ...
        raise HubUnreachableError(
            f"could not download the pretrained weights of timm model {name!r} ({type(e).__name__}: {e}). "
            f"Without internet access, download them elsewhere and pass {offline_hint}") from e


def freeze(model: nn.Module) -> nn.Module:
    """``model`` in eval mode with no parameter requiring grad (in place)."""
    model.eval()
    model.requires_grad_(False)
    return model


def frozen_copy(model: nn.Module) -> nn.Module:
    """A frozen deep copy of ``model`` (the caller's module keeps its mode, device and ``requires_grad``)."""
    return freeze(copy.deepcopy(model))


def model_mean_std(model: nn.Module) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """Input mean and std of a model, from its timm ``pretrained_cfg`` (ImageNet's when it has none)."""
    return resolve_mean_std(getattr(model, 'pretrained_cfg', None))


def spatial_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's final spatial feature map (N, C, h, w): ``forward_features`` (or the forward) of ``x``.

    timm models that return channels-last features (``output_fmt == 'NHWC'``, e.g. Swin) are permuted.
    Token outputs (vision transformers) have no spatial map and raise ``ValueError``; a forward that fails on
    the batch raises :class:`ForwardError` (a ``ValueError``).
    """
    fwd = getattr(model, 'forward_features', None)
    try:
        out = fwd(x) if callable(fwd) else model(x)
    except RuntimeError as e:     # an nn.Linear given an image batch, a kernel larger than a tiny input, ...
        raise ForwardError(f"{type(model).__name__} failed on a {tuple(x.shape)} image batch "
                           f"({_first_sentence(e)})") from None
    if isinstance(out, (list, tuple)):
        out = out[-1]
    shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    if not isinstance(out, torch.Tensor) or out.ndim != 4:
        raise ValueError(f"{type(model).__name__} gives features of shape {shape}, not a spatial (N, C, h, w) "
                         "feature map; use a convolutional network (e.g. resnet50)")
    if getattr(model, 'output_fmt', 'NCHW') == 'NHWC':
        out = out.permute(0, 3, 1, 2)
    return out
