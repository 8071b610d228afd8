""" Reading what a user points the command line at: image files (or the bundled photos), a checkpoint's
class count, and class-name files. Each problem is a :class:`ReadError` whose message names the file and
the fix; the commands print it.
"""
import json
import os
from typing import Any, List, Optional, Sequence, Tuple

__all__ = ['ReadError', 'DEFAULT_PHOTOS', 'load_images', 'checkpoint_num_classes', 'read_class_names']

DEFAULT_PHOTOS = ('chelsea', 'astronaut', 'coffee', 'rocket')


class ReadError(ValueError):
    """A file (or folder) given on the command line cannot be used; the message says why."""


def load_images(paths: Sequence[str], size: int):
    """(N, 3, size, size) float images in [0, 1] and their names: files (resized on the short side, centre
    cropped), or scikit-image's bundled photos when ``paths`` is empty."""
    import torch
    from torchvision.transforms import functional as TF
    arrays: List[Tuple[str, Any]] = []
    if not paths:
        try:
            import skimage.data as skdata
        except ImportError:
            raise ReadError("the default photos come from scikit-image: pip install 'timm-camaug[preview]', "
                        "or name image files") from None
        arrays = [(name, torch.from_numpy(getattr(skdata, name)().copy()).permute(2, 0, 1)) for name in DEFAULT_PHOTOS]
    else:
        from PIL import Image, UnidentifiedImageError
        for p in paths:
            if not os.path.isfile(p):
                raise ReadError(f"image file {p!r} does not exist")
            try:
                with Image.open(p) as im:
                    arrays.append((os.path.basename(p), TF.pil_to_tensor(im.convert('RGB'))))
            except (UnidentifiedImageError, OSError) as e:
                raise ReadError(f"cannot read image {p!r}: {e}") from None
    out = []
    for _, img in arrays:
        img = TF.resize(img, size, antialias=True)
        out.append(TF.center_crop(img, [size, size]).float() / 255.0)
    return torch.stack(out), [name for name, _ in arrays]


def checkpoint_num_classes(name: str, checkpoint: str) -> Optional[int]:
    """Classes of the head stored in ``checkpoint`` for timm model ``name``: the rows of its classifier weight
    (the key of ``model.get_classifier()`` + ``.weight``), read as the model loads it
    (:func:`timm_camaug.extractor.checkpoint_state`). None when it cannot tell (no such key, unreadable file:
    loading the checkpoint then reports the problem)."""
    import timm
    import torch
    from .extractor import checkpoint_state
    try:
        with torch.device('meta'):      # the module names only: no memory, no initialisation
            model = timm.create_model(name, pretrained=False)
    except Exception:
        model = timm.create_model(name, pretrained=False)
    try:
        state, _ = checkpoint_state(checkpoint, model)
    except Exception:
        return None
    head = model.get_classifier()
    head = head[0] if isinstance(head, (tuple, list)) else head
    key = next((f'{n}.weight' for n, m in model.named_modules() if m is head and n), None)
    weight = state.get(key) if key is not None else None
    if not isinstance(weight, torch.Tensor) or weight.ndim < 2:
        return None
    return int(weight.shape[0])


def read_class_names(path: str) -> List[str]:
    """Class names in class-index order from ``path``: a text file with one name per line, ``timm-camaug
    prepare``'s ``classes.json`` (official names) or ``class_map.txt`` (its ``<index>_<name>`` folders, shown
    without the index), or a prepared dataset folder holding either."""
    from .datasets.common import CLASS_MAP_FILE, CLASSES_FILE
    if os.path.isdir(path):
        found = [os.path.join(path, f) for f in (CLASSES_FILE, CLASS_MAP_FILE) if os.path.isfile(os.path.join(path, f))]
        if not found:
            raise ReadError(f"--class-names {path!r}: a folder must hold {CLASSES_FILE} or {CLASS_MAP_FILE} "
                        "(as timm-camaug prepare writes)")
        path = found[0]
    if not os.path.isfile(path):
        raise ReadError(f"--class-names file {path!r} does not exist")
    try:
        with open(path, encoding='utf-8') as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise ReadError(f"cannot read --class-names file {path!r}: {e}") from None
    if path.lower().endswith('.json'):
        try:
            meta = json.loads(text)
            entries = meta['classes'] if isinstance(meta, dict) else meta
            if not isinstance(entries, list):
                raise TypeError(f'{type(entries).__name__} instead of a list')
            if all(isinstance(e, dict) for e in entries):
                entries = sorted(entries, key=lambda e: int(e['index']))
                if [int(e['index']) for e in entries] != list(range(len(entries))):
                    raise ValueError('the indices are not 0, 1, 2, ...')
                entries = [e['name'] for e in entries]
            names = [str(e).strip() for e in entries]
        except (ValueError, KeyError, TypeError) as e:
            raise ReadError(f"--class-names {path!r}: expected timm-camaug prepare's {CLASSES_FILE} (a 'classes' list "
                        f"of {{'index', 'name'}}) or a JSON list of names ({type(e).__name__}: {e})") from None
    else:
        names = [line.strip() for line in text.rstrip('\n').split('\n')] if text.strip() else []
        width = len(names[0].split('_', 1)[0]) if names else 0
        if names and width >= 3 and all(n.startswith(f'{i:0{width}d}_') for i, n in enumerate(names)):
            # prepare's class_map.txt: folder names '<zero-padded index>_<safe name>'
            names = [n.split('_', 1)[1].replace('_', ' ') for n in names]
    if not names:
        raise ReadError(f"--class-names {path!r} lists no class names")
    if any(not n for n in names):
        raise ReadError(f"--class-names {path!r}: class {names.index('')} has an empty name (one name per line)")
    return names
