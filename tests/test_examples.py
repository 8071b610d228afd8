""" The runnable ``Examples:`` of the docs (kornia's style): every registered mode's class shows a seeded example,
and every example in the package (and in the test plugin's mode) runs and prints what it says. """
import doctest
import importlib
import pkgutil

import pytest

import timm_camaug
from timm_camaug import MIX_MODES, get_mode_class


def _package_modules():
    names = ['timm_camaug']
    for info in pkgutil.walk_packages(timm_camaug.__path__, 'timm_camaug.'):
        names.append(info.name)
    return names


def _examples(module_name):
    module = importlib.import_module(module_name)
    return [t for t in doctest.DocTestFinder(exclude_empty=True).find(module, module_name) if t.examples]


@pytest.mark.parametrize('mode', MIX_MODES)
def test_every_mode_class_has_an_example(mode):
    cls = get_mode_class(mode)
    tests = [t for t in doctest.DocTestFinder().find(cls, cls.__qualname__) if t.examples]
    assert tests and any(t.name == cls.__qualname__ for t in tests), f'{cls.__qualname__} has no Examples: block'


MODULES = sorted({get_mode_class(m).__module__ for m in MIX_MODES} | set(_package_modules()))


@pytest.mark.parametrize('module_name', MODULES)
def test_examples_run(module_name):
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in _examples(module_name):
        result = runner.run(test)
        assert result.failed == 0, f'{test.name}: {result.failed} of {result.attempted} examples failed (see output)'
