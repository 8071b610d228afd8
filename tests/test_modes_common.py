""" Invariants every mix mode keeps: shapes, targets, gating, exact replay, no side effects, odd inputs. """
import argparse
import gc
import warnings

import pytest
import timm
import torch
import torch.nn.functional as F

from conftest import assert_same_state, fill_grads, state_snapshot
from helpers import device_under_test, finalize_without_trace, no_grad_mix_step
from timm_camaug import MIX_MODES, add_args, create_mix_fn, get_mode_class
from timm_camaug.modes.cam_guided import CamGuidedMode
from timm_camaug.targets import smooth_one_hot

K = 6
DEVICE = device_under_test()     # TIMM_CAMAUG_TEST_DEVICE: the models, batches and auxiliary networks live there
# options that make a mode draw something random (gutout's default fixed threshold draws nothing)
RANDOM_DRAWS = {'gutout': {'t_draw': 'sample'}}
CAM_MODES = tuple(m for m in MIX_MODES if issubclass(get_mode_class(m), CamGuidedMode))


@pytest.fixture(scope='module')
def extractor():
    torch.manual_seed(1)
    return timm.create_model('resnet18', num_classes=0).eval()


def _model():
    torch.manual_seed(0)
    model = timm.create_model('resnet18', num_classes=K, drop_rate=0.2)
    model.train()
    return model.to(DEVICE)


def aux(mode, extractor):
    """The options a mode that takes a pretrained network needs here: the network and its small-image settings."""
    cls = get_mode_class(mode)
    if cls.auxiliary_network is None:
        return {}
    return {cls.auxiliary_network[0]: extractor, **cls.small_input_options}


def build(mode, model, extractor, seed=0, **kw):
    opts = {**aux(mode, extractor), **kw}
    opts.setdefault('prob', 1.0)
    return create_mix_fn(mode, model=model, num_classes=K, generator=torch.Generator().manual_seed(seed),
                         data_config={'input_size': (3, 64, 64)}, device=DEVICE, **opts)


def batch(n=6, h=64, w=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, h, w, generator=g).to(DEVICE), torch.randint(0, K, (n,), generator=g).to(DEVICE)


@pytest.mark.parametrize('mode', MIX_MODES)
@pytest.mark.parametrize('smoothing', [0.0, 0.1])
def test_shapes_and_targets(mode, smoothing, extractor):
    mix = build(mode, _model(), extractor, label_smoothing=smoothing)
    x, y = batch()
    x_orig = x.clone()
    xm, t = mix(x, y)
    assert xm.shape == x.shape and xm.dtype == x.dtype and xm.device == x.device
    assert t.shape == (6, K) and t.dtype == torch.float32 and t.device == x.device
    assert torch.equal(x, x_orig), 'the input batch must not be modified in place'
    assert torch.isfinite(xm).all() and torch.isfinite(t).all()
    assert (t >= 0).all()
    one_hot = smooth_one_hot(y, K, smoothing)
    cls = get_mode_class(mode)
    if not cls.mixes_pairs:
        assert torch.equal(t, one_hot)
        assert not torch.equal(xm, x), 'prob=1 must erase something'
    else:
        assert not torch.equal(xm, x), 'prob=1 must mix something'
        if cls.weights_sum_to_one:
            torch.testing.assert_close(t.sum(1), torch.ones(6, device=DEVICE))
        # the targets are a combination of the smoothed one-hots of y and y[perm]
        params = mix.make_params(x, y)
        perm = mix.regions(params, x.shape[-2:]).perm
        w = torch.linalg.lstsq(torch.stack([one_hot, one_hot[perm]], 2), mix.apply(x, y, params)[1][:, :, None]).solution
        torch.testing.assert_close(torch.bmm(torch.stack([one_hot, one_hot[perm]], 2), w)[:, :, 0],
                                   mix.apply(x, y, params)[1], rtol=1e-5, atol=1e-6)


@pytest.mark.filterwarnings('ignore:.*finalize.target. was not called:UserWarning')   # replays apply with no forward
@pytest.mark.parametrize('mode', MIX_MODES)
def test_replay_and_seeded_reproducibility(mode, extractor):
    model = _model()
    x, y = batch()
    kw = RANDOM_DRAWS.get(mode, {})
    mix = build(mode, model, extractor, seed=3, **kw)
    params = mix.make_params(x, y)
    a = mix.apply(x, y, params)
    b = mix.apply(x, y, params)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    again = build(mode, model, extractor, seed=3, **kw)(x, y)
    assert torch.equal(a[0], again[0]) and torch.equal(a[1], again[1])
    other = build(mode, model, extractor, seed=4, **kw)(x, y)
    assert not (torch.equal(a[0], other[0]) and torch.equal(a[1], other[1]))


@pytest.mark.parametrize('mode', MIX_MODES)
def test_prob_zero_and_disabled_leave_batch_untouched(mode, extractor):
    x, y = batch()
    for mix in (build(mode, _model(), extractor, prob=0.0, label_smoothing=0.1),
                build(mode, _model(), extractor, label_smoothing=0.1)):
        if mix.prob == 1.0:
            mix.mixup_enabled = False      # what train.py's --mixup-off-epoch does
        xm, t = mix(x, y)
        assert torch.equal(xm, x)
        assert torch.equal(t, smooth_one_hot(y, K, 0.1))


@pytest.mark.parametrize('mode', MIX_MODES)
def test_default_prob_and_epoch_hooks(mode, extractor):
    mix = build(mode, _model(), extractor, prob=None)
    assert mix.prob == get_mode_class(mode).default_prob
    assert mix.mixup_enabled is True
    assert mix.epoch == 0
    mix.set_epoch(3)
    assert mix.epoch == 3


@pytest.mark.parametrize('mode', MIX_MODES)
@pytest.mark.parametrize('shape', [(1, 64, 64), (3, 37, 53), (2, 80, 48)])
def test_batch_size_one_and_odd_sizes(mode, shape, extractor):
    mix = build(mode, _model(), extractor)
    x, y = batch(*shape)
    xm, t = mix(x, y)
    assert xm.shape == x.shape and t.shape == (shape[0], K)
    assert torch.isfinite(xm).all() and torch.isfinite(t).all()


@pytest.mark.parametrize('mode', MIX_MODES)
def test_constant_images_give_no_nan(mode, extractor):
    mix = build(mode, _model(), extractor)
    x = torch.zeros(4, 3, 64, 64, device=DEVICE)
    y = torch.tensor([0, 1, 2, 3], device=DEVICE)
    xm, t = mix(x, y)
    assert torch.isfinite(xm).all() and torch.isfinite(t).all()
    assert (t >= 0).all()


@pytest.mark.parametrize('mode', MIX_MODES)
def test_model_state_untouched(mode, extractor):
    """Gradient accumulation, BatchNorm statistics, training flags and hooks survive every call."""
    model = _model()
    model.layer1.eval()
    fill_grads(model)
    before = state_snapshot(model)
    mix = build(mode, model, extractor)
    for seed in range(3):
        xm, t = mix(*batch(seed=seed))
        finalize_without_trace(mix, model, xm, t)
    assert_same_state(before, state_snapshot(model))
    assert torch.is_grad_enabled()


@pytest.mark.parametrize('mode', MIX_MODES)
@pytest.mark.parametrize('amp_dtype', [torch.bfloat16, torch.float16], ids=['bf16', 'fp16'])
def test_autocast_and_channels_last(mode, amp_dtype, extractor):
    model = _model()
    x, y = batch()
    ref = build(mode, model, extractor, seed=5)(x, y)
    with torch.autocast(DEVICE.type, dtype=amp_dtype):
        xm, t = build(mode, model, extractor, seed=5)(x, y)
    assert xm.dtype == x.dtype and t.dtype == torch.float32
    assert torch.isfinite(xm).all() and torch.isfinite(t).all()
    model_cl = model.to(memory_format=torch.channels_last)
    xc, tc = build(mode, model_cl, extractor, seed=5)(x.contiguous(memory_format=torch.channels_last), y)
    torch.testing.assert_close(xc, ref[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(tc, ref[1], rtol=1e-4, atol=1e-4)


@pytest.mark.filterwarnings('ignore:.*finalize.target. was not called:UserWarning')   # replays apply with no forward
@pytest.mark.parametrize('mode', MIX_MODES)
def test_input_size_changes_between_calls(mode, extractor):
    """train.py can change the input size from one step to the next (--train-img-sizes): one mix function
    serves every size, and a replay at each size is exact."""
    mix = build(mode, _model(), extractor, seed=3)
    for h, w in [(64, 64), (48, 80), (96, 72), (64, 64)]:
        x, y = batch(h=h, w=w, seed=h + w)
        params = mix.make_params(x, y)
        xm, t = mix.apply(x, y, params)
        assert xm.shape == x.shape and t.shape == (6, K)
        assert torch.isfinite(xm).all() and torch.isfinite(t).all() and (t >= 0).all()
        xr, tr = mix.apply(x, y, params)
        assert torch.equal(xm, xr) and torch.equal(t, tr)


@pytest.mark.parametrize('mode', CAM_MODES)
def test_cam_scale_with_bf16_inputs(mode, extractor):
    """The CAM of a downscaled batch: antialiased resizing has no bf16 kernel on the CPU."""
    model = _model()
    x, y = batch()
    ref_x, ref_t = build(mode, model, extractor, seed=5, cam_scale=0.5)(x, y)
    with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
        xm, t = build(mode, model, extractor, seed=5, cam_scale=0.5)(x.bfloat16(), y)
    assert xm.dtype == torch.bfloat16 and t.dtype == torch.float32
    assert torch.isfinite(xm.float()).all() and torch.isfinite(t).all()
    model_bf16 = _model().to(torch.bfloat16)
    xb, tb = build(mode, model_bf16, extractor, seed=5, cam_scale=0.5)(x.bfloat16(), y)
    assert xb.dtype == torch.bfloat16 and torch.isfinite(xb.float()).all() and torch.isfinite(tb).all()
    if mode == 'gutout':     # labels unchanged, the cut follows the CAM: most of the cut pixels agree
        cut, ref_cut = xm.float() == 0, ref_x == 0
        assert (cut & ref_cut).sum() > 0.5 * ref_cut.sum()


@pytest.mark.parametrize('mode', MIX_MODES)
def test_targets_checked_once_per_call(mode, extractor, monkeypatch):
    """Checking the labels' range costs a host-device sync: a call checks them once, not in both steps."""
    import importlib
    from timm_camaug import targets
    calls = []

    def counting(*a, **k):
        calls.append(1)
        return targets.prepare_targets(*a, **k)
    for module in ('timm_camaug.modes.base', get_mode_class(mode).__module__):
        module = importlib.import_module(module)
        if hasattr(module, 'prepare_targets'):
            monkeypatch.setattr(module, 'prepare_targets', counting)
    mix = build(mode, _model(), extractor)
    mix(*batch())
    assert len(calls) == 1
    params = mix.make_params(*batch())
    mix.apply(*batch(), params)     # apply on its own still checks its targets
    assert len(calls) == 3
    with pytest.raises(ValueError, match=f'label {K} is out of range for num_classes={K}'):
        mix.apply(batch()[0], torch.full((6,), K), params)


@pytest.mark.parametrize('mode', CAM_MODES)
def test_model_with_fewer_classes_is_refused(mode, extractor):
    small = timm.create_model('resnet18', num_classes=K - 2)
    with pytest.raises(ValueError, match=rf"{mode}: the model has {K - 2} classes, fewer than num_classes={K}: "
                                         rf"labels >= {K - 2} have no class score"):
        build(mode, small, extractor)


@pytest.mark.parametrize('mode', MIX_MODES)
def test_generator_must_be_a_cpu_generator(mode, extractor):
    class CudaGenerator(torch.Generator):       # what a CUDA generator reports, on a machine without one
        @property
        def device(self):
            return torch.device('cuda', 0)
    kw = aux(mode, extractor)
    with pytest.raises(ValueError, match=rf"{mode}: generator must be a CPU torch.Generator \(random draws are made "
                                         r"on the CPU and moved to the input's device\), got one on cuda:0"):
        create_mix_fn(mode, model=_model(), num_classes=K, generator=CudaGenerator(), **kw)
    with pytest.raises(TypeError, match=f'{mode}: generator must be a torch.Generator, got int'):
        create_mix_fn(mode, model=_model(), num_classes=K, generator=0, **kw)


@pytest.mark.parametrize('mode', MIX_MODES)
def test_soft_targets_in(mode, extractor):
    x, y = batch()
    ints = build(mode, _model(), extractor, seed=7)(x, y)
    soft = build(mode, _model(), extractor, seed=7)(x, F.one_hot(y, K).float())
    torch.testing.assert_close(soft[0], ints[0])
    torch.testing.assert_close(soft[1], ints[1])


@pytest.mark.parametrize('mode', MIX_MODES)
def test_bad_batches(mode, extractor):
    mix = build(mode, _model(), extractor)
    x, y = batch()
    with pytest.raises(ValueError, match=r'x must be an \(N, C, H, W\) tensor, got \(3, 64, 64\)'):
        mix(x[0], y)
    with pytest.raises(ValueError, match=f'label {K} is out of range for num_classes={K}'):
        mix(x, torch.full((6,), K))
    with pytest.raises(ValueError, match='target has 5 labels for a batch of 6'):
        mix(x, y[:5])
    with pytest.raises(ValueError, match=rf'soft target has shape \(6, 3\), expected \(6, {K}\)'):
        mix(x, torch.zeros(6, 3))
    with pytest.raises(ValueError, match='x must be a float tensor'):
        mix(x.to(torch.uint8), y)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device (host-device synchronisation)')
@pytest.mark.cuda
@pytest.mark.parametrize('mode', MIX_MODES)
def test_no_host_device_synchronisation_on_cuda(mode, extractor):
    """A call queues its work on the GPU and returns: no .item(), no blocking copy, no data-dependent shape."""
    dev = torch.device('cuda')
    model = _model().to(dev)
    mix = create_mix_fn(mode, model=model, num_classes=K, generator=torch.Generator().manual_seed(0), device=dev,
                        data_config={'input_size': (3, 64, 64)}, prob=1.0,
                        **aux(mode, extractor))
    x, y = (t.to(dev) for t in batch())
    mix(x, y)                                   # first call: lazy set-up may synchronise
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode('error')
    try:
        xm, t = mix(x, y)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert xm.device.type == 'cuda' and t.device.type == 'cuda'
    assert torch.isfinite(xm).all() and torch.isfinite(t).all()


@pytest.mark.parametrize('mode', MIX_MODES)
def test_no_memory_growth(mode, extractor):
    model = _model()
    mix = build(mode, model, extractor)
    for seed in range(2):
        no_grad_mix_step(mix, model, *batch(seed=seed))

    def live():
        gc.collect()
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))
    start = live()
    for seed in range(10):
        no_grad_mix_step(mix, model, *batch(seed=seed))
    assert live() <= start


def _parser():
    parser = argparse.ArgumentParser()
    parser.add_argument('--num-classes', type=int, default=K)
    parser.add_argument('--smoothing', type=float, default=0.0)
    parser.add_argument('--epochs', type=int, default=10)
    add_args(parser)
    return parser


@pytest.mark.parametrize('mode', MIX_MODES)
def test_create_from_train_args(mode, extractor):
    args = _parser().parse_args(['--mix-mode', mode, '--smoothing', '0.1'])
    assert args.mix_mode == mode
    mix = create_mix_fn(args, model=_model(), data_config={'input_size': (3, 64, 64)}, **aux(mode, extractor))
    assert mix.name == mode and mix.num_classes == K and mix.label_smoothing == 0.1
    assert mix.prob == get_mode_class(mode).default_prob
    derived = get_mode_class(mode).train_defaults(args, {})     # defaults a mode derives from train.py's args
    assert all(getattr(mix, k) == v for k, v in derived.items())
    x, y = batch()
    xm, t = mix(x, y)
    assert t.shape == (6, K)


def test_label_smoothing_given_overrides_args():
    """label_smoothing=0.0 given to create_mix_fn is a value, not 'not given': it overrides --smoothing."""
    args = _parser().parse_args(['--mix-mode', 'gutout', '--smoothing', '0.1'])
    assert create_mix_fn(args, model=_model()).label_smoothing == 0.1
    assert create_mix_fn(args, model=_model(), label_smoothing=0.0).label_smoothing == 0.0
    assert create_mix_fn(args, model=_model(), label_smoothing=0.2).label_smoothing == 0.2
    assert create_mix_fn('gutout', model=_model()).label_smoothing == 0.0


def test_defaults_of_the_methods_table():
    args = _parser().parse_args([])
    assert args.mix_mode == 'none'
    assert args.snapmix_beta == 5.0 and args.snapmix_boxes == 'batch' and args.snapmix_cam_bn == 'batch'
    assert args.saliencymix_beta == 1.0 and args.saliencymix_variant == 'paper'
    assert args.attentive_extractor == 'resnet50' and args.attentive_top_n == 6 and args.attentive_reduce == 'mean'
    assert args.gutout_t == 0.6 and args.gutout_target == 'label'
    assert args.cam_erase_warmup_epochs is None and args.cam_erase_t == 0.5 and args.cam_erase_prob == 0.5
    assert args.cam_erase_area_min == 0.02 and args.cam_erase_area_max == 0.4 and args.cam_erase_fill == 'pixel'


def test_unknown_mode_and_option_errors():
    with pytest.raises(ValueError, match="^unknown mix mode snapmixx; choose one of snapmix, saliencymix"):
        create_mix_fn('snapmixx', num_classes=3)
    with pytest.raises(TypeError, match='snapmix: unknown option.s. betaa'):
        create_mix_fn('snapmix', model=_model(), num_classes=K, betaa=2.0)
    with pytest.raises(ValueError, match='snapmix needs the model under training'):
        create_mix_fn('snapmix', num_classes=K)
    with pytest.raises(SystemExit):
        _parser().parse_args(['--mix-mode', 'snapmixx'])
