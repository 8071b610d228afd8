""" Timing helpers for the benchmark scripts: medians of interleaved repeats, machine description, tables. """
import json
import os
from typing import Sequence

from timm_camaug.bench import machine, time_interleaved  # noqa: F401  (the package's own, shared with `timm-camaug bench`)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    out = ['| ' + ' | '.join(header) + ' |', '|' + '|'.join('---' for _ in header) + '|']
    for r in rows:
        out.append('| ' + ' | '.join(f'{v:.2f}' if isinstance(v, float) else str(v) for v in r) + ' |')
    return '\n'.join(out)


def save_json(path: str, payload: dict) -> None:
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    with open(path, 'w') as f:
        json.dump(payload, f, indent=2)
