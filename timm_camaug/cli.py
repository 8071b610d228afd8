""" The ``timm-camaug`` console script. Each subcommand lives in its own module with a ``register`` function. """
import argparse
import importlib
import sys
from typing import List, Optional

__all__ = ['main', 'COMMANDS']

# subcommand -> module providing ``register(subparsers)``; the module imports heavy packages lazily
COMMANDS = {
    'patch': 'timm_camaug.train_patch',
    'prepare': 'timm_camaug.datasets.prepare',
    'preview': 'timm_camaug.preview',
    'demo': 'timm_camaug.demo',
    'bench': 'timm_camaug.bench',
    'reproduce': 'timm_camaug.reproduce',
}


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    parser = argparse.ArgumentParser(
        prog='timm-camaug', description='CAM- and saliency-guided mixing augmentations for timm train.py')
    parser.add_argument('--version', action='version', version=f'%(prog)s {__version__}')
    sub = parser.add_subparsers(dest='command', metavar='COMMAND')
    for module in COMMANDS.values():
        importlib.import_module(module).register(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, 'func', None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print('interrupted', file=sys.stderr)
        return 130


if __name__ == '__main__':
    sys.exit(main())
