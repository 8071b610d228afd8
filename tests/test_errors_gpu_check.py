""" benchmarks/gpu_check.sh in its quickest CPU form, so that the script the GPU machine runs is not untested:
the same steps (bench, results file naming the device), small, on the CPU; and its refusals. """
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / 'benchmarks' / 'gpu_check.sh'


def _run(*argv, timeout=900):
    env = dict(os.environ, PYTHON=sys.executable)
    env.pop('TIMM_TRAIN_PY', None)
    return subprocess.run(['bash', str(SCRIPT), *map(str, argv)], capture_output=True, text=True, env=env,
                          timeout=timeout)


@pytest.mark.slow
def test_quickest_cpu_form_writes_the_results_file(tmp_path):
    out = tmp_path / 'gpu_check.md'
    proc = _run('--device', 'cpu', '--quick', '--no-cuda-tests', '--modes', 'gutout', '--bench', 'test_resnet:32:2',
                '--out', out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = out.read_text()
    assert text.startswith('# timm-camaug GPU check\n')
    assert '- device: `cpu`: ' in text and '- modes: gutout' in text
    assert '## 3. `timm-camaug bench`' in text and 'test_resnet, 32 px, batch 2' in text
    assert 'gutout ' in text and 'train step' in text
    # what it leaves out it says, with the reason
    assert 'left out (--no-cuda-tests).' in text and 'left out (--quick).' in text
    assert "skipped: no timm train.py here (it is not in the timm wheel)" in text
    assert 'Not run: CUDA-only tests, the test suite, train.py runs (no train.py).' in text


@pytest.mark.parametrize('argv,message', [
    (['--device', 'no-such-device'], 'gpu_check.sh: --device no-such-device is not usable here: '),
    (['--frobnicate'], 'gpu_check.sh: unknown argument --frobnicate (see --help)'),
])
def test_refusals(argv, message, tmp_path):
    proc = _run(*argv, '--out', tmp_path / 'x.md', timeout=300)
    assert proc.returncode == 2 and message in proc.stderr
    assert not (tmp_path / 'x.md').exists()
