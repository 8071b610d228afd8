""" The Python API's refused inputs, one table per surface (issue 15): what ``create_mix_fn`` refuses while it
builds a mode (its options, the attentive extractor and its checkpoint, the CAM layer and method), what a
mode's call refuses (dtype, channels, one-image batch statistics, non-finite pixels), the extractor without
network, and the warning about guidance maps that guide nothing.

Each refusal is a ValueError (FileNotFoundError for a missing file) whose message names the option, its value,
the train.py flag and the fix, so that train.py's start-up can print it as one line.
"""
import logging
import os
import random
import subprocess
import sys
import time

import pytest
import timm
import torch
from torch import nn

from timm_camaug import MIX_MODES, create_mix_fn, get_mode_class
from timm_camaug.modes.options import OptionError

K = 5
CAM_LOGGER = 'timm_camaug.modes.cam_guided'


@pytest.fixture(scope='module')
def files(tmp_path_factory):
    """Checkpoint files, good and bad, of test_resnet (no download)."""
    d = tmp_path_factory.mktemp('checkpoints')
    torch.manual_seed(0)
    model = timm.create_model('test_resnet', num_classes=0)
    good = d / 'test_resnet.pth'
    torch.save(model.state_dict(), good)
    data = good.read_bytes()
    (d / 'truncated.pth').write_bytes(data[:len(data) // 2])
    (d / 'random.pth').write_bytes(random.Random(0).randbytes(4096))
    (d / 'empty.pth').write_bytes(b'')
    torch.save({'lr': 0.1, 'epoch': 3}, d / 'not_a_state_dict.pth')
    torch.save([torch.zeros(2)], d / 'a_list.pth')
    torch.save(model, d / 'pickled_module.pth')
    torch.save(model, d / 'pickled_module_legacy.pth', _use_new_zipfile_serialization=False)
    torch.save({'arch': 'test_resnet', 'state_dict': model.state_dict()}, d / 'train_py_checkpoint.pth.tar')
    import safetensors.torch
    safetensors.torch.save_file(model.state_dict(), str(d / 'w.safetensors'))
    st = (d / 'w.safetensors').read_bytes()
    (d / 'truncated.safetensors').write_bytes(st[:len(st) // 2])
    (d / 'folder').mkdir()
    torch.save(model.state_dict(), d / 'folder' / 'weights.pth')
    torch.manual_seed(0)
    torch.save(timm.create_model('test_convnext', num_classes=0).state_dict(), d / 'test_convnext.pth')
    return d


def _model(name='test_resnet'):
    torch.manual_seed(0)
    return timm.create_model(name, num_classes=K)


CKPT_FLAG = r" \(train.py: --attentive-extractor-checkpoint\): "

# id -> (create_mix_fn keywords, with {d} for the checkpoint folder; exception; message pattern)
BUILD_REFUSALS = {
    # attentive: every failure of the checkpoint file names the option, the value and the fix
    'checkpoint missing': (
        dict(extractor='test_resnet', extractor_checkpoint='{d}/nope.pth'), FileNotFoundError,
        r"attentive: extractor_checkpoint='.*nope\.pth'" + CKPT_FLAG + r"it does not exist; pass the path of an "
        r"existing weights file"),
    'checkpoint in a missing folder': (
        dict(extractor='test_resnet', extractor_checkpoint='{d}/no/such/nope.pth'), FileNotFoundError,
        r"it does not exist \(nor does its folder '.*no/such'\)"),
    'checkpoint is a directory': (
        dict(extractor='test_resnet', extractor_checkpoint='{d}/folder'), ValueError,
        r"extractor_checkpoint='.*folder'" + CKPT_FLAG + r"it is a directory, not a weights file \(it holds "
        r"weights\.pth\); pass the file itself"),
    'checkpoint not a state dict': (
        dict(extractor='test_resnet', extractor_checkpoint='{d}/not_a_state_dict.pth'), ValueError,
        CKPT_FLAG + r"it holds no weight tensors \(its keys: lr, epoch\): it is not a state_dict or a timm/train.py "
        r"checkpoint; save model.state_dict\(\) instead"),
    'checkpoint a list': (
        dict(extractor='test_resnet', extractor_checkpoint='{d}/a_list.pth'), ValueError,
        CKPT_FLAG + r"it holds a list, not a state_dict"),
    'checkpoint of another architecture': (
        dict(extractor='test_efficientnet', extractor_checkpoint='{d}/test_resnet.pth'), ValueError,
        CKPT_FLAG + r"it does not match timm model 'test_efficientnet': missing keys .*; it holds the weights of "
        r"another architecture: pass the name of the timm model it was saved from \(extractor=NAME; train.py: "
        r"--attentive-extractor NAME\), or a checkpoint of 'test_efficientnet'"),
    'train.py checkpoint of another architecture names it': (
        dict(extractor='test_efficientnet', extractor_checkpoint='{d}/train_py_checkpoint.pth.tar'), ValueError,
        r"another architecture \(it names its architecture: 'test_resnet'\)"),
    'checkpoint truncated': (
        dict(extractor='test_resnet', extractor_checkpoint='{d}/truncated.pth'), ValueError,
        CKPT_FLAG + r"it is corrupt \(a truncated or damaged PyTorch file of \d+ bytes: .*\); write or copy it again"),
    'safetensors truncated': (
        dict(extractor='test_resnet', extractor_checkpoint='{d}/truncated.safetensors'), ValueError,
        CKPT_FLAG + r"it is corrupt \(a truncated or damaged safetensors file"),
    'checkpoint random bytes': (
        dict(extractor='test_resnet', extractor_checkpoint='{d}/random.pth'), ValueError,
        CKPT_FLAG + r"it is corrupt or not a weights file: its 4096 bytes are neither a PyTorch \(torch.save\) nor a "
        r"safetensors file; write or copy it again"),
    'checkpoint empty': (
        dict(extractor='test_resnet', extractor_checkpoint='{d}/empty.pth'), ValueError,
        CKPT_FLAG + r"it is empty \(0 bytes\): the file is corrupt"),
    'checkpoint a pickled module': (
        dict(extractor='test_resnet', extractor_checkpoint='{d}/pickled_module.pth'), ValueError,
        CKPT_FLAG + r"it holds pickled Python objects \((timm|torch)\..*\) besides tensors, which a safe "
        r"weights-only load does not run.*torch\.save\(model\.state_dict\(\), FILE\)"),
    'checkpoint a pickled module, legacy format': (
        dict(extractor='test_resnet', extractor_checkpoint='{d}/pickled_module_legacy.pth'), ValueError,
        CKPT_FLAG + r"it holds pickled Python objects \(classes not allowed in a weights-only load\) besides tensors"),
    # attentive: the extractor's name, grid and size
    'extractor unknown': (
        dict(extractor='resnet5o'), ValueError,
        r"attentive: extractor='resnet5o': unknown timm model 'resnet5o'; close names: .*resnet50.* \(train.py: "
        r"--attentive-extractor NAME\)"),
    'top_n beyond the grid': (
        dict(extractor='test_resnet', extractor_checkpoint='{d}/test_resnet.pth', extractor_size=64, top_n=5),
        ValueError,
        r"attentive: top_n=5 is out of range for the extractor's 2x2 grid \(1\.\.4\) at extractor_size=64; lower "
        r"--attentive-top-n to 4 or less, or raise --attentive-extractor-size until the grid has 5 cells"),
    'extractor_size too small to run': (
        dict(extractor='test_convnext', extractor_checkpoint='{d}/test_convnext.pth', extractor_size=2), ValueError,
        r"attentive: extractor_size=2: ConvNeXt failed on a \(1, 3, 2, 2\) image batch \(.*Kernel size can't be "
        r"greater than actual input size\); raise extractor_size \(train.py: --attentive-extractor-size; the "
        r"network's own input size is \d+\)"),
    'extractor_size too small for top_n': (
        dict(extractor='test_resnet', extractor_checkpoint='{d}/test_resnet.pth', extractor_size=8, top_n=2),
        ValueError, r"top_n=2 is out of range for the extractor's 1x1 grid \(1\.\.1\) at extractor_size=8"),
    'extractor channels against data_config': (
        dict(extractor='test_resnet', extractor_checkpoint='{d}/test_resnet.pth', extractor_size=64, top_n=2,
             data_config={'mean': (0.5,), 'std': (0.25,)}), ValueError,
        r"attentive: data_config's mean/std have 1 value\(s\), for 1-channel images, but the extractor 'test_resnet' "
        r"takes 3 channels; give it 3-channel images \(train.py: --in-chans 3 and a 3-value --mean/--std\)"),
    # the CAM modes: the layer and the method
    'cam_layer unknown': (
        dict(mode='snapmix', cam_layer='layer5'), ValueError,
        r"snapmix: cam_layer='layer5': no module named 'layer5' in ResNet; close names: .*layer4.*; name a module "
        r"with a spatial \(N, C, h, w\) or patch-token output \(train.py: --snapmix-cam-layer NAME\), or leave "
        r"cam_layer unset"),
    'cam_layer not spatial (fc)': (
        dict(mode='gutout', cam_layer='fc'), ValueError,
        r"gutout: cam_layer='fc': ResNet has no spatial feature map at target layer 'fc': its output has shape "
        r"\(2, 5\); name a module .*\(train.py: --gutout-cam-layer NAME\)"),
    'cam_layer not spatial (global_pool)': (
        dict(mode='cam-erase', cam_layer='global_pool'), ValueError,
        r"cam-erase: cam_layer='global_pool': .*no spatial feature map.*--cam-erase-cam-layer NAME"),
    'cam_method cam without a pool + linear head': (
        dict(mode='gutout', model='test_convnext', cam_method='cam'), ValueError,
        r"gutout: cam_method='cam': the closed-form CAM needs a global-average-pool \+ linear head after the final "
        r"feature map, and ConvNeXt's head is not one; use cam_method='auto' .* \(train.py: --gutout-cam-method "
        r"auto\)"),
    'cam_method cam at an inner layer': (
        dict(mode='gutout', cam_method='cam', cam_layer='layer3'), ValueError,
        r"gutout: cam_method='cam': the closed-form CAM exists only at the final feature map, not at "
        r"cam_layer='layer3'"),
    'probe size with another channel count': (
        dict(mode='snapmix', data_config={'input_size': (1, 64, 64)}), ValueError,
        r"snapmix: the input size \(1, 64, 64\) \(data_config's input_size, else the model's own\) has 1 channel\(s\), "
        r"but ResNet's first convolution \('conv1[.0]*'\) takes 3; pass data_config with the model's channel count"),
    # types (item 11, done by others: checked here)
    'num_classes not an int': (
        dict(mode='snapmix', num_classes=2.5), TypeError, r"snapmix: num_classes must be an int, got float 2\.5"),
    'beta a string': (dict(mode='snapmix', beta='5'), ValueError, r"snapmix: beta must be a number, got str '5'"),
}


@pytest.mark.parametrize('case', list(BUILD_REFUSALS))
def test_build_refusals(case, files):
    kwargs, error, pattern = BUILD_REFUSALS[case]
    kwargs = {k: v.format(d=files) if isinstance(v, str) and '{d}' in v else v for k, v in kwargs.items()}
    mode = kwargs.pop('mode', 'attentive')
    if get_mode_class(mode).uses_model:
        kwargs['model'] = _model(kwargs.pop('model', 'test_resnet'))
    kwargs.setdefault('num_classes', K)
    kwargs.setdefault('data_config', {'input_size': (3, 64, 64)})
    with pytest.raises(error, match=pattern) as info:
        create_mix_fn(mode, **kwargs)
    message = str(info.value)
    assert 'weights_only' not in message and 'Traceback' not in message
    if isinstance(info.value, OptionError) or isinstance(info.value, FileNotFoundError):
        option = info.value.option     # what train.py's start-up names as --<mode>-<option>
        assert option.replace('_', '-') in message.replace('_', '-')


def test_good_checkpoints_still_load(files):
    """The same reader takes every layout that works: a state_dict, a train.py checkpoint, safetensors (also
    under another suffix), a wrapper's keys (PyTorch Lightning's 'model.' prefix)."""
    reference = torch.load(files / 'test_resnet.pth', weights_only=True)
    other = files / 'safetensors_named.pth'
    other.write_bytes((files / 'w.safetensors').read_bytes())
    torch.save({'epoch': 1, 'state_dict': {f'model.{k}': v for k, v in reference.items()}}, files / 'lightning.ckpt')
    for name in ('test_resnet.pth', 'train_py_checkpoint.pth.tar', 'w.safetensors', 'safetensors_named.pth',
                 'lightning.ckpt'):
        mode = create_mix_fn('attentive', num_classes=K, extractor='test_resnet', extractor_size=64, top_n=2,
                             extractor_checkpoint=str(files / name))
        for k, v in mode.extractor.state_dict().items():
            assert torch.equal(v, reference[k]), (name, k)


def test_checkpoint_path_with_a_tilde_is_expanded(files, monkeypatch):
    monkeypatch.setenv('HOME', str(files))
    mode = create_mix_fn('attentive', num_classes=K, extractor='test_resnet', extractor_size=64, top_n=2,
                         extractor_checkpoint='~/test_resnet.pth')
    assert mode.grid == (2, 2)


def test_unreadable_checkpoint_says_so(files, monkeypatch):
    import builtins
    real_open = builtins.open

    def no_permission(path, *a, **k):
        if str(path).endswith('test_resnet.pth'):
            raise PermissionError(13, 'Permission denied', str(path))
        return real_open(path, *a, **k)
    monkeypatch.setattr(builtins, 'open', no_permission)
    with pytest.raises(ValueError, match=r"extractor_checkpoint='.*test_resnet\.pth'" + CKPT_FLAG +
                                         r"it cannot be read \(Permission denied\); check its permissions"):
        create_mix_fn('attentive', num_classes=K, extractor='test_resnet', extractor_checkpoint=str(files / 'test_resnet.pth'))


@pytest.mark.skipif(torch.cuda.is_available(), reason='needs a machine without CUDA')
def test_attentive_on_a_device_this_machine_lacks():
    with pytest.raises(ValueError, match=r"attentive: device='cuda' is not usable here \(.*\); pass the training "
                                         r"device"):
        _attentive(device='cuda')


# --- a mode's call: the batch against the model (item 7) and non-finite pixels (item 10)

def _cam_mode(mode, **kw):
    kw.setdefault('data_config', {'input_size': (3, 64, 64)})
    return create_mix_fn(mode, model=_model(), num_classes=K, prob=1.0, **kw)


def _attentive(**kw):
    torch.manual_seed(0)
    kw.setdefault('extractor', timm.create_model('test_resnet', num_classes=0))
    return create_mix_fn('attentive', num_classes=K, extractor_size=64, top_n=2, **kw)


CALL_REFUSALS = {
    'snapmix float64 input': (
        lambda: _cam_mode('snapmix'), dict(dtype=torch.float64),
        r"snapmix: x is float64 but the model's parameters are float32; cast the batch \(x.to\(torch.float32\)\) or "
        r"the model to one dtype"),
    'gutout float16 input': (
        lambda: _cam_mode('gutout'), dict(dtype=torch.float16),
        r"gutout: x is float16 but the model's parameters are float32; run the mode under autocast \(amp_autocast="
        r"\.\.\.; train.py does with --amp\), or cast the batch"),
    'gutout float64 input under autocast': (
        lambda: _cam_mode('gutout', amp_autocast=lambda: torch.autocast('cpu', dtype=torch.bfloat16)),
        dict(dtype=torch.float64), r"gutout: x is float64 .*autocast leaves float64 as it is"),
    'snapmix one channel': (
        lambda: _cam_mode('snapmix'), dict(channels=1),
        r"snapmix: x has 1 channel\(s\), but ResNet's first convolution \('conv1[.0]*'\) takes 3; give the model "
        r"3-channel images .* \(timm.create_model\(\.\.\., in_chans=1\); train.py: --in-chans 1\)"),
    'cam-erase four channels': (
        lambda: _cam_mode('cam-erase'), dict(channels=4),
        r"cam-erase: x has 4 channel\(s\), but ResNet's first convolution \('conv1[.0]*'\) takes 3"),
    'attentive one channel': (
        _attentive, dict(channels=1),
        r"attentive: x has 1 channel\(s\), but the extractor 'ResNet' takes 3; give it 3-channel images"),
    'gutout batch on another device than the model': (
        lambda: _cam_mode('gutout'), dict(device='meta'),
        r"gutout: x is on meta but the model is on cpu; move the model to the batch's device"),
    'snapmix one image, cam_bn batch, 1x1 feature map': (
        lambda: _cam_mode('snapmix', cam_bn='batch'), dict(n=1, size=32),
        r"snapmix: cam_bn='batch': BatchNorm cannot take batch statistics of a batch of 1 at 32x32 px, where a "
        r"feature map has one value per channel .*; use cam_bn='eval' \(train.py: --snapmix-cam-bn eval\), or "
        r"batches of 2 or more images"),
}


@pytest.mark.parametrize('case', list(CALL_REFUSALS))
def test_call_refusals(case):
    make, batch, pattern = CALL_REFUSALS[case]
    mix = make()
    n, size, channels = batch.get('n', 4), batch.get('size', 64), batch.get('channels', 3)
    x = torch.randn(n, channels, size, size).to(batch.get('dtype', torch.float32)).to(batch.get('device', 'cpu'))
    with pytest.raises(ValueError, match=pattern):
        mix(x, torch.arange(n) % K)


def test_attentive_extractor_that_gives_no_feature_map():
    with pytest.raises(ValueError, match=r"attentive: extractor Linear has neither forward_features nor a 2-D "
                                         r"convolution, so it gives no spatial \(N, C, h, w\) feature map; pass a "
                                         r"convolutional network"):
        _attentive(extractor=nn.Linear(64, 4))


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16], ids=['fp16', 'bf16'])
def test_attentive_half_precision_extractor_works(dtype):
    """The batch is cast to the extractor's dtype: the same cells as the float32 extractor's (up to ties)."""
    x, y = torch.randn(6, 3, 64, 64, generator=torch.Generator().manual_seed(0)), torch.arange(6) % K
    ref = _attentive(generator=torch.Generator().manual_seed(1))
    half = _attentive(extractor=ref.extractor.to(torch.float32), generator=torch.Generator().manual_seed(1))
    half.extractor.to(dtype)
    half._dtype = dtype
    half_built = _attentive(extractor=timm.create_model('test_resnet', num_classes=0).to(dtype),
                            generator=torch.Generator().manual_seed(1))
    assert next(half_built.extractor.parameters()).dtype == dtype
    xm, t = half_built(x, y)
    assert xm.dtype == x.dtype and t.dtype == torch.float32 and torch.isfinite(t).all()
    torch.testing.assert_close(t.sum(1), torch.ones(6))
    p_ref, p_half = ref.make_params(x, y), half.make_params(x, y)
    torch.testing.assert_close(p_half.guidance, p_ref.guidance, rtol=0.05, atol=0.05)


def _any_mode(mode):
    cls = get_mode_class(mode)
    kw = dict(cls.small_input_options)
    if cls.auxiliary_network is not None:
        torch.manual_seed(0)
        kw[cls.auxiliary_network[0]] = timm.create_model('test_resnet', num_classes=0)
    return create_mix_fn(mode, model=_model(), num_classes=K, prob=1.0, data_config={'input_size': (3, 64, 64)},
                         **kw)


@pytest.mark.parametrize('bad', [float('nan'), float('inf'), -float('inf')], ids=['nan', 'inf', '-inf'])
@pytest.mark.parametrize('mode', MIX_MODES)
def test_non_finite_pixels_are_refused(mode, bad):
    mix = _any_mode(mode)
    x = torch.randn(4, 3, 64, 64)
    x[2, 1, 5, 7] = bad
    for call in (lambda: mix(x, torch.arange(4)), lambda: mix.make_params(x, torch.arange(4))):
        with pytest.raises(ValueError, match=rf"{mode}: x holds NaN or infinite values \(first in sample 2\); a mix "
                                             r"mode refuses them, as one bad pixel changes every sample's label "
                                             r"weights .*check the data pipeline"):
            call()


def test_non_finite_soft_targets_are_refused():
    mix = _any_mode('snapmix')
    soft = torch.eye(K)[:4].clone()
    soft[1, 0] = float('nan')
    with pytest.raises(ValueError, match=r"soft target holds NaN or infinite values \(first in sample 1\); give "
                                         r"finite class weights"):
        mix(torch.randn(4, 3, 64, 64), soft)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
@pytest.mark.cuda
def test_non_finite_pixels_on_cuda_are_a_queued_device_assert():
    """On a GPU the check is queued (no host sync: the call returns), and the run ends at the next sync. A
    device-side assert spoils the CUDA context, so this runs in a process of its own."""
    code = '''
import torch, timm
from timm_camaug import create_mix_fn
model = timm.create_model('test_resnet', num_classes=5).cuda()
mix = create_mix_fn('gutout', model=model, num_classes=5, data_config={'input_size': (3, 64, 64)}, device='cuda')
x = torch.randn(4, 3, 64, 64, device='cuda')
mix(x, torch.arange(4, device='cuda'))
torch.cuda.synchronize()
x[2, 0, 0, 0] = float('nan')
torch.cuda.set_sync_debug_mode('error')
mix(x, torch.arange(4, device='cuda'))       # queued: no sync, no error yet
torch.cuda.set_sync_debug_mode(0)
print('returned', flush=True)
torch.cuda.synchronize()
print('not reached', flush=True)
'''
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert 'returned' in proc.stdout and 'not reached' not in proc.stdout, out
    assert proc.returncode != 0 and 'device-side assert' in out, out


# --- the extractor without network (item 4)

@pytest.fixture
def no_network(monkeypatch, tmp_path):
    """No connection opens, nothing is cached, and any download attempt is a test failure."""
    import socket

    from timm_camaug import extractor
    calls = []

    def refuse(address, *a, **k):
        calls.append(address)
        raise OSError(101, 'Network is unreachable')
    monkeypatch.setattr(socket, 'create_connection', refuse)
    monkeypatch.setattr(extractor, '_REACHABLE', {}, raising=False)
    for var in ('HF_HUB_OFFLINE', 'TRANSFORMERS_OFFLINE', 'HF_ENDPOINT', 'https_proxy', 'HTTPS_PROXY',
                'all_proxy', 'ALL_PROXY'):
        monkeypatch.delenv(var, raising=False)
    import huggingface_hub.constants
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_CACHE', str(tmp_path / 'hf'))
    monkeypatch.setattr(torch.hub, 'get_dir', lambda: str(tmp_path / 'torch_hub'))
    real = timm.create_model

    def guarded(*args, pretrained=False, **kwargs):
        overlay = kwargs.get('pretrained_cfg_overlay') or {}
        assert not pretrained or overlay.get('file'), 'a test tried to download pretrained weights'
        return real(*args, pretrained=pretrained, **kwargs)
    monkeypatch.setattr(timm, 'create_model', guarded)
    return calls


OFFLINE = (r"attentive: extractor='resnet50': the pretrained weights of timm model 'resnet50' are not in the local "
           r"cache and huggingface\.co cannot be reached \(Network is unreachable\); pass a local checkpoint file "
           r"with extractor_checkpoint=<file> \(train.py: --attentive-extractor-checkpoint <file>\)\. To make that "
           r"file on a machine with internet: python -c \"import timm, torch; torch\.save\(timm\.create_model\("
           r"'resnet50', pretrained=True\)\.state_dict\(\), 'resnet50\.pth'\)\", then copy resnet50\.pth to this machine")


def test_attentive_without_network_fails_at_once(no_network):
    from timm_camaug.extractor import HubUnreachableError
    t0 = time.perf_counter()
    with pytest.raises(HubUnreachableError, match=OFFLINE):
        create_mix_fn('attentive', num_classes=K)
    with pytest.raises(HubUnreachableError, match=OFFLINE):
        create_mix_fn('attentive', num_classes=K)
    assert time.perf_counter() - t0 < 5
    assert len(no_network) == 1, 'the hub is asked once per process'


def test_unroutable_endpoint_fails_within_the_timeout(no_network, monkeypatch):
    """A connection that never answers (a black-holed address) is given up after HUB_TIMEOUT seconds."""
    import socket

    from timm_camaug import extractor

    def hang(address, timeout=None, *a, **k):
        time.sleep(timeout)
        raise socket.timeout('timed out')
    monkeypatch.setattr(socket, 'create_connection', hang)
    monkeypatch.setattr(extractor, 'HUB_TIMEOUT', 0.3)
    monkeypatch.setenv('HF_ENDPOINT', 'https://10.255.255.1')
    t0 = time.perf_counter()
    with pytest.raises(RuntimeError, match=r"10\.255\.255\.1 cannot be reached \(timed out\); pass a local "
                                           r"checkpoint file"):
        create_mix_fn('attentive', num_classes=K)
    assert time.perf_counter() - t0 < 3


def test_hf_hub_offline_asks_no_host(no_network, monkeypatch):
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    with pytest.raises(RuntimeError, match=r"'resnet50' are not in the local cache and HF_HUB_OFFLINE is set; pass"):
        create_mix_fn('attentive', num_classes=K)
    assert no_network == []


def test_weights_cached_earlier_are_used_without_network(no_network, tmp_path):
    """Weights that an earlier download left in the hub cache load offline, from the cache file itself."""
    import huggingface_hub.constants
    import safetensors.torch
    torch.manual_seed(3)
    trained = timm.create_model('test_resnet')
    repo = timm.models.get_pretrained_cfg('test_resnet').hf_hub_id
    snapshot = os.path.join(huggingface_hub.constants.HF_HUB_CACHE, f"models--{repo.replace('/', '--')}")
    os.makedirs(os.path.join(snapshot, 'refs'))
    os.makedirs(os.path.join(snapshot, 'snapshots', 'abc123'))
    with open(os.path.join(snapshot, 'refs', 'main'), 'w') as f:
        f.write('abc123')
    safetensors.torch.save_file(trained.state_dict(), os.path.join(snapshot, 'snapshots', 'abc123', 'model.safetensors'))
    mode = create_mix_fn('attentive', num_classes=K, extractor='test_resnet', extractor_size=64, top_n=2)
    for k, v in mode.extractor.state_dict().items():
        assert torch.equal(v, trained.state_dict()[k]), k


# --- guidance maps that guide nothing (item 8)

def _warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.name == CAM_LOGGER and r.levelno == logging.WARNING]


def test_zero_head_warns_at_start_up(caplog):
    """timm's MLP-Mixer starts with an all-zero head: its CAM is zero everywhere until the head trains."""
    torch.manual_seed(0)
    model = timm.create_model('mixer_s32_224', num_classes=K, img_size=64)
    with caplog.at_level(logging.WARNING, logger=CAM_LOGGER):
        mix = create_mix_fn('gutout', model=model, num_classes=K)
        mix(torch.randn(4, 3, 64, 64), torch.arange(4))
    (message,) = _warnings(caplog)          # once, not again at the call
    assert message.startswith("gutout: the CAM of MlpMixer at layer 'features' (cam_method='auto') is constant for "
                              "both noise images of the start-up probe at 64x64 px: a constant map guides nothing")
    assert "its classifier is all zeros (timm initialises this model's head so)" in message
    assert '--pretrained' in message and '--gutout-cam-method eigencam' in message


def test_layer_without_spatial_dependence_warns_at_start_up(caplog):
    """The patch tokens after a class-token ViT's last block do not reach its head: a zero CAM there."""
    with caplog.at_level(logging.WARNING, logger=CAM_LOGGER):
        create_mix_fn('snapmix', model=_model('test_vit'), num_classes=K, cam_layer='blocks.-1')
    (message,) = _warnings(caplog)
    assert message.startswith("snapmix: the CAM of VisionTransformer at layer 'blocks.-1'")
    assert ("try another layer (cam_layer=NAME; train.py: --snapmix-cam-layer NAME; the default layer is "
            "'blocks.5.norm1' (leave cam_layer unset)), or cam_method='eigencam'") in message
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=CAM_LOGGER):
        create_mix_fn('snapmix', model=_model('test_vit'), num_classes=K, cam_layer='blocks.-1', cam_method='eigencam')
        create_mix_fn('snapmix', model=_model('test_vit'), num_classes=K)
        create_mix_fn('gutout', model=_model(), num_classes=K, data_config={'input_size': (3, 64, 64)})
    assert _warnings(caplog) == [], 'a map that varies is not reported'


def test_maps_that_become_constant_warn_once_at_run_time(caplog):
    model = _model()
    mix = create_mix_fn('snapmix', model=model, num_classes=K, data_config={'input_size': (3, 64, 64)})
    with torch.no_grad():
        model.get_classifier().weight.zero_()
        model.get_classifier().bias.zero_()
    with caplog.at_level(logging.WARNING, logger=CAM_LOGGER):
        for _ in range(3):
            mix(torch.randn(4, 3, 64, 64), torch.arange(4))
    (message,) = _warnings(caplog)
    assert message.startswith("snapmix: the CAM of ResNet at layer 'features' (cam_method='spm') is constant for 4 of "
                              "the last 4 images (epoch 0)")


def test_one_cell_grid_warns(caplog):
    with caplog.at_level(logging.WARNING, logger=CAM_LOGGER):
        create_mix_fn('gutout', model=_model(), num_classes=K, data_config={'input_size': (3, 32, 32)})
    (message,) = _warnings(caplog)
    assert message.startswith("gutout: the CAM of ResNet at layer 'features' is a 1x1 grid at 32x32 px, one value "
                              "per image, so it guides nothing")
    assert 'train on larger images, or name an earlier layer' in message


def test_degenerate_count_needs_no_sync():
    """The count stays on the maps' device until it is taken (at an epoch's start on an accelerator)."""
    from timm_camaug.modes.cam_guided import DegenerateMaps
    count = DegenerateMaps()
    maps = torch.randn(5, 3, 3)
    maps[1] = 0.0
    maps[3] = 2.5
    maps[4, 0, 0] = float('nan')
    count.add(maps, (32, 32))
    count.add(torch.zeros(2, 3, 3), (32, 32))
    assert isinstance(count._count, torch.Tensor) and count.seen == 7
    assert count.take() == (5, 7)
    assert count.take() == (0, 0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
@pytest.mark.cuda
def test_degenerate_maps_on_cuda_are_counted_without_sync_and_reported_at_set_epoch(caplog):
    model = _model().cuda()
    mix = create_mix_fn('gutout', model=model, num_classes=K, data_config={'input_size': (3, 64, 64)}, device='cuda')
    with torch.no_grad():
        model.get_classifier().weight.zero_()
    x, y = torch.randn(4, 3, 64, 64, device='cuda'), torch.arange(4, device='cuda')
    mix(x, y)
    torch.cuda.synchronize()
    with caplog.at_level(logging.WARNING, logger=CAM_LOGGER):
        torch.cuda.set_sync_debug_mode('error')
        try:
            for _ in range(3):
                mix(x, y)
        finally:
            torch.cuda.set_sync_debug_mode(0)
        assert _warnings(caplog) == []
        mix.set_epoch(1)
    (message,) = _warnings(caplog)
    assert 'is constant for 16 of the last 16 images (epoch 0)' in message
