""" SnapMix's Baseline+ as a timm model: the branch, its loss through the train-loss wrapper, CAMs, weights.

Oracles: the reference code's structure (networks/resnet_ft.py: layer3 -> detach -> 1x1 conv + ReLU -> global
max pool -> linear; test score = main + branch logits), a plain timm ResNet holding the same weights (CAMs of
the main head), timm's own optimizer factory (learning-rate groups) and checkpoint loader.
"""
import argparse
import re
import copy
import doctest
import os

import pytest
import timm
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from timm.loss import SoftTargetCrossEntropy
from torch import nn

import timm_camaug
from timm_camaug.cam import class_activation_maps, pool_linear_classifier
from timm_camaug.loss import MixedTargetLoss
from timm_camaug.models import ResNetBaselinePlus, baseline_plus_resnet, create_baseline_plus
from timm_camaug.models import baseline_plus as baseline_plus_module
from timm_camaug.train_glue import wrap_train_loss

K = 5
NAMES = ['resnet18_baseline_plus', 'resnet34_baseline_plus', 'resnet50_baseline_plus', 'resnet101_baseline_plus',
         'resnet152_baseline_plus', 'test_resnet_baseline_plus', 'baseline_plus']


def _model(seed=0, **kw):
    torch.manual_seed(seed)
    return timm.create_model('test_resnet_baseline_plus', num_classes=K, **kw)


def _batch(n=4, size=64, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g), torch.randint(0, K, (n,), generator=g)


def _layer3(model, x):
    """layer3's output computed module by module, apart from the model's forward."""
    x = model.maxpool(model.act1(model.bn1(model.conv1(x))))
    return model.layer3(model.layer2(model.layer1(x)))


def test_registered_with_timm_on_import():
    assert sorted(NAMES) == sorted(timm.list_models('*baseline_plus*'))
    assert set(NAMES) <= set(timm.list_models(module='baseline_plus'))
    for name in NAMES:
        assert timm.is_model(name) and name in timm_camaug.models.baseline_plus.__all__


@pytest.mark.parametrize('name,mid,feats', [('resnet18_baseline_plus', 256, 512),
                                            ('resnet50_baseline_plus', 1024, 2048),
                                            ('test_resnet_baseline_plus', 192, 96)])
def test_branch_is_the_reference_structure(name, mid, feats):
    model = timm.create_model(name, num_classes=K)
    assert isinstance(model, ResNetBaselinePlus) and model.mid_channels == mid and model.num_features == feats
    conv = model.mid_conv
    assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride) == (mid, mid, (1, 1), (1, 1))
    assert conv.bias is not None
    assert isinstance(model.mid_act, nn.ReLU) and isinstance(model.mid_pool, nn.AdaptiveMaxPool2d)
    assert (model.mid_fc.in_features, model.mid_fc.out_features) == (mid, K)
    branch = [model.mid_conv, model.mid_act, model.mid_pool, model.mid_fc]
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for b in branch for m in b.modules())
    assert model.mid_detach
    # PyTorch's default init (kaiming_uniform a=sqrt(5): |w| <= 1/sqrt(fan_in)), not ResNet's kaiming_normal
    assert float(conv.weight.detach().abs().max()) <= 1 / mid ** 0.5 + 1e-6
    assert model.get_classifier() is model.fc


def test_training_forward_returns_the_main_head_and_keeps_the_branch_once():
    model = _model().train()
    x, _ = _batch()
    out = model(x)
    feats, (mid,) = model.forward_intermediates(x, indices=[3])
    torch.testing.assert_close(out, model.forward_head(feats))
    (aux,) = model.pop_auxiliary_outputs()
    torch.testing.assert_close(aux, model.forward_mid(mid))
    assert aux.requires_grad and model.pop_auxiliary_outputs() == []
    with torch.no_grad():               # a forward without gradients (a CAM forward in train mode) keeps nothing
        model(x)
    assert model.pop_auxiliary_outputs() == []


def test_eval_output_is_the_sum_of_both_heads():
    model = _model().eval()
    x, _ = _batch()
    with torch.no_grad():
        out = model(x)
        mid = _layer3(model, x)
        main = model.fc(model.global_pool(model.layer4(mid)))
        branch = model.mid_fc(F.adaptive_max_pool2d(F.relu(F.conv2d(mid, model.mid_conv.weight,
                                                                     model.mid_conv.bias)), 1).flatten(1))
    torch.testing.assert_close(out, main + branch)
    assert model.pop_auxiliary_outputs() == []          # evaluation forwards keep nothing


def test_branch_loss_reaches_no_backbone_parameter():
    model = _model().train()
    x, y = _batch()
    model(x)
    (aux,) = model.pop_auxiliary_outputs()
    F.cross_entropy(aux, y).backward()
    for name, p in model.named_parameters():
        if name.startswith('mid_'):
            assert p.grad is not None and bool(p.grad.abs().sum() > 0), name
        else:
            assert p.grad is None, f'{name} got a gradient from the branch loss'
    # and with the main loss too: the backbone's gradients are exactly the main head's
    plain, both = _model(), _model()
    for m, with_aux in ((plain, False), (both, True)):
        m.train()
        loss = F.cross_entropy(m(x), y)
        aux = m.pop_auxiliary_outputs()
        if with_aux:
            loss = loss + F.cross_entropy(aux[0], y)
        loss.backward()
    for (name, p), q in zip(plain.named_parameters(), both.parameters()):
        if not name.startswith('mid_'):
            assert torch.equal(p.grad, q.grad), name


def test_without_detach_the_branch_trains_layer3():
    """The switch the reference code has (set_detach(False)): the branch's loss then reaches layer3."""
    model = _model(mid_detach=False).train()
    x, y = _batch()
    model(x)
    F.cross_entropy(model.pop_auxiliary_outputs()[0], y).backward()
    assert model.layer3[0].conv1.weight.grad is not None and model.layer4[0].conv1.weight.grad is None


def test_train_loss_adds_the_branch_loss_exactly_once_per_step():
    model = _model().train()
    args = argparse.Namespace(mix_mode='none', rank=0)
    loss_fn = wrap_train_loss(SoftTargetCrossEntropy(), args, model)
    assert isinstance(loss_fn, MixedTargetLoss)             # a stock run of a plain ResNet is not wrapped
    assert wrap_train_loss(SoftTargetCrossEntropy(), args, timm.create_model('test_resnet')).__class__ \
        is SoftTargetCrossEntropy
    x, y = _batch()
    target = F.one_hot(y, K).float()
    for step in range(3):
        out = model(x)
        feats, (mid,) = model.forward_intermediates(x, indices=[3])
        expected = SoftTargetCrossEntropy()(out, target) + SoftTargetCrossEntropy()(model.forward_mid(mid), target)
        model.pop_auxiliary_outputs()           # the oracle's own forward replaced the step's aux: run it again
        out = model(x)
        loss = loss_fn(out, target)
        torch.testing.assert_close(loss, expected)
        # a second loss on the same forward (nothing pending) is the main loss alone
        torch.testing.assert_close(loss_fn(out, target), SoftTargetCrossEntropy()(out, target))
        loss.backward()


def test_compiled_model_keeps_the_auxiliary_output():
    """train.py --torchcompile: the compiled forward still leaves the branch's logits on the plain module (where the
    wrapped loss looks), with their graph, in one graph without recompiles."""
    from torch._dynamo.utils import counters
    from timm_camaug.train_glue import training_module
    torch._dynamo.reset()
    graphs = int(counters['stats']['unique_graphs'])       # a process-wide count: earlier tests compiled too
    model = _model().train()
    compiled = torch.compile(model, backend='eager')
    x, y = _batch()
    for _ in range(2):
        out = compiled(x)
        (aux,) = training_module(compiled).pop_auxiliary_outputs()
        (F.cross_entropy(out, y) + F.cross_entropy(aux, y)).backward()
    assert model.mid_fc.weight.grad is not None and int(counters['stats']['unique_graphs']) - graphs == 1


def test_mix_mode_cam_forwards_leave_no_auxiliary_output():
    """SnapMix (closed-form CAM of the main head) and a hooked Grad-CAM forward on the training model: nothing
    is left for the loss, and a pending training output is not disturbed by them."""
    model = _model().train()
    x, y = _batch()
    mix_fn = timm_camaug.create_mix_fn('snapmix', model=model, num_classes=K, data_config={'input_size': (3, 64, 64)})
    mix_fn(x.clone(), y)
    mix_fn.finalize(F.one_hot(y, K).float())
    assert model.pop_auxiliary_outputs() == []
    class_activation_maps(model, x, y, method='gradcam', target_layer='layer4')
    assert model.pop_auxiliary_outputs() == []
    model(x)
    (pending,) = model._auxiliary
    mix_fn(x.clone(), y)
    class_activation_maps(model, x, y, method='gradcam', target_layer='layer3')
    assert model.pop_auxiliary_outputs()[0] is pending and model.training


def test_cams_come_from_the_main_head():
    """The closed form applies (global-average-pool + linear main head) and every CAM equals that of a plain
    ResNet holding the same backbone and main head: SnapMix's maps come from the main head, as the reference's."""
    model = _model().eval()
    plain = timm.create_model('test_resnet', num_classes=K).eval()
    missing, unexpected = plain.load_state_dict(model.state_dict(), strict=False)
    assert not missing and unexpected and all(k.startswith('mid_') for k in unexpected)
    assert pool_linear_classifier(model) is model.fc
    x, y = _batch()
    for method in ('auto', 'gradcam', 'gradcam++'):
        torch.testing.assert_close(class_activation_maps(model, x, y, method=method),
                                   class_activation_maps(plain, x, y, method=method))


def test_reset_classifier_and_feature_extractor():
    model = _model()
    model.reset_classifier(3)
    assert model.num_classes == 3 and model.fc.out_features == 3 and model.mid_fc.out_features == 3
    assert model.eval()(_batch()[0]).shape == (4, 3)
    model.reset_classifier(0)
    assert isinstance(model.mid_fc, nn.Identity)
    assert model(_batch()[0]).shape == (4, model.num_features)
    assert timm.create_model('test_resnet_baseline_plus', num_classes=0)(_batch()[0]).shape == (4, model.num_features)


def test_copies_carry_no_pending_graph():
    model = _model().train()
    model(_batch()[0])
    clone = copy.deepcopy(model)            # ModelEma's copy
    assert clone._auxiliary == [] and len(model._auxiliary) == 1


def test_pretrained_loads_the_backbones_timm_weights_offline(tmp_path, monkeypatch):
    import timm.models._builder as builder

    def no_download(*a, **k):
        raise AssertionError('a test tried to download weights')
    for name in ('load_state_dict_from_url', 'load_state_dict_from_hf', 'load_custom_from_hf'):
        if hasattr(builder, name):
            monkeypatch.setattr(builder, name, no_download)
    torch.manual_seed(3)
    source = timm.create_model('test_resnet').state_dict()          # 1000 classes, as timm's checkpoints
    path = tmp_path / 'test_resnet.pth'
    torch.save(source, path)
    # what train.py passes for --pretrained --pretrained-path FILE, with a tag as a config names one
    model = timm.create_model('test_resnet_baseline_plus.r160_in1k', pretrained=True, num_classes=K,
                              pretrained_cfg_overlay=dict(file=str(path), num_classes=-1))
    assert model.pretrained_cfg['tag'] == 'r160_in1k' and model.pretrained_cfg['architecture'] == 'test_resnet'
    state = model.state_dict()
    backbone = [k for k in source if not k.startswith('fc.')]
    assert backbone and all(torch.equal(state[k], source[k]) for k in backbone)
    assert state['fc.weight'].shape == (K, source['fc.weight'].shape[1])        # a new head for K classes
    fresh = _model()
    assert not torch.equal(state['layer1.0.conv1.weight'], fresh.state_dict()['layer1.0.conv1.weight'])
    # the generic entry point takes any timm ResNet by name
    generic = timm.create_model('baseline_plus', base_model='test_resnet', pretrained=True, num_classes=K,
                                pretrained_cfg_overlay=dict(file=str(path), num_classes=-1))
    assert torch.equal(generic.state_dict()['layer1.0.conv1.weight'], source['layer1.0.conv1.weight'])


def test_any_timm_resnet_and_only_resnets():
    model = create_baseline_plus('seresnext26d_32x4d', num_classes=K)
    assert isinstance(model, ResNetBaselinePlus) and model.mid_channels == 1024
    assert model.eval()(_batch()[0]).shape == (4, K)
    with pytest.raises(TypeError, match='Baseline\\+ needs a timm ResNet'):
        baseline_plus_resnet(timm.create_model('efficientnet_b0'))
    with pytest.raises(TypeError, match='Baseline\\+ needs a timm ResNet'):
        baseline_plus_resnet(_model())                      # already converted
    with pytest.raises(ValueError, match="unknown timm model 'resnet_nope'"):
        timm.create_model('baseline_plus', base_model='resnet_nope')


def test_learning_rates_follow_the_configs_split():
    """The configs' lr 0.01 + layer_decay 0.1 (min scale 0.1) gives the branch the new-layer rate 0.01, like the
    main classifier, and the backbone 0.001: the reference's ftlayer / freshlayer groups."""
    from timm.optim import create_optimizer_v2
    model = timm.create_model('resnet50_baseline_plus', num_classes=K)
    opt = create_optimizer_v2(model, opt='sgd', lr=0.01, momentum=0.9, weight_decay=1e-4, layer_decay=0.1,
                              layer_decay_min_scale=0.1, filter_bias_and_bn=False)
    lr_of = {id(p): g['lr'] * g.get('lr_scale', 1.0) for g in opt.param_groups for p in g['params']}
    for name, p in model.named_parameters():
        fresh = name.startswith(('fc.', 'mid_'))
        assert lr_of[id(p)] == pytest.approx(0.01 if fresh else 0.001), name
    assert all(g['weight_decay'] == 1e-4 for g in opt.param_groups)


def test_examples_run():
    assert doctest.testmod(baseline_plus_module).failed == 0


# --- DDP: two CPU processes, the train loss wrapped as patch part 6 wraps it

def _ddp_steps(rank, with_aux):
    from torch.nn.parallel import DistributedDataParallel as DDP
    from timm_camaug.train_glue import training_module
    torch.manual_seed(rank)                 # replicas start different: DDP broadcasts rank 0's weights
    model = timm.create_model('test_resnet_baseline_plus', num_classes=K)
    ddp = DDP(model)
    args = argparse.Namespace(mix_mode='none', rank=rank)
    loss_fn = wrap_train_loss(SoftTargetCrossEntropy(), args, ddp) if with_aux else SoftTargetCrossEntropy()
    assert not with_aux or loss_fn._model[0] is training_module(ddp)
    mix_fn = timm_camaug.create_mix_fn('snapmix', model=model, num_classes=K, data_config={'input_size': (3, 48, 48)})
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(100 + rank)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    ddp.train()
    try:
        for _ in range(3):
            x, y = torch.randn(4, 3, 48, 48, generator=g), torch.randint(0, K, (4,), generator=g)
            x, target = mix_fn(x, y)
            loss = loss_fn(ddp(x), mix_fn.finalize(target))
            opt.zero_grad()
            loss.backward()
            opt.step()
    except RuntimeError as e:       # both ranks fail at the same step: nothing is left waiting
        return {'error': str(e)}
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    gathered = [torch.empty_like(flat) for _ in range(2)]
    dist.all_gather(gathered, flat)
    return {'identical': torch.equal(gathered[0], gathered[1]),
            'branch_trained': not torch.equal(start['mid_fc.weight'], model.mid_fc.weight.detach())}


def _ddp_worker(rank, init_file, result_dir):
    torch.set_num_threads(1)
    dist.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank, world_size=2)
    try:
        result = {with_aux: _ddp_steps(rank, with_aux) for with_aux in (True, False)}
    finally:
        dist.destroy_process_group()
    torch.save(result, os.path.join(result_dir, f'rank{rank}.pt'))


def test_ddp_steps_with_the_wrapped_loss(tmp_path):
    """Under DDP (two CPU processes, SnapMix on the training model) the branch's loss must be in the backward;
    with the loss wrapped as patch part 6 wraps it, the replicas stay identical and the branch trains. The
    unwrapped loss shows that the reducer notices when it is not."""
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip('torch.distributed with the gloo backend is not available')
    mp.spawn(_ddp_worker, args=(str(tmp_path / 'init'), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        result = torch.load(tmp_path / f'rank{rank}.pt')
        assert result[True].get('identical') and result[True].get('branch_trained'), result[True]
        assert 'finished reduction in the prior iteration' in result[False].get('error', ''), result[False]


# --- through timm's real train.py, patched (TIMM_TRAIN_PY: a train.py file or the timm git directory)

N_TRAIN, N_VAL, BATCH = 4, 2, 4              # per class; 3 classes: 12 train images = 3 steps of 4


def _patched_train_py(dest):
    import subprocess
    from pathlib import Path
    value = os.environ.get('TIMM_TRAIN_PY')
    if not value:
        pytest.skip('set TIMM_TRAIN_PY to a timm train.py or the timm git directory to run')
    p = Path(value)
    dest.mkdir(parents=True, exist_ok=True)
    if p.is_file():
        dest.joinpath('train.py').write_bytes(p.read_bytes())
    else:
        git_dir = p / '.git' if (p / '.git').exists() else p
        dest.joinpath('train.py').write_bytes(subprocess.run(['git', f'--git-dir={git_dir}', 'show', 'HEAD:train.py'],
                                                             capture_output=True, check=True).stdout)
    from timm_camaug import cli
    assert cli.main(['patch', str(dest / 'train.py')]) == 0
    return dest / 'train.py'


def _image_folder(root):
    from PIL import Image
    g = torch.Generator().manual_seed(0)
    for split, n in (('train', N_TRAIN), ('val', N_VAL)):
        for c in range(3):
            d = root / split / f'class{c}'
            d.mkdir(parents=True)
            for i in range(n):
                base = torch.tensor([60 * c + 40, 200 - 50 * c, 90], dtype=torch.float32).view(3, 1, 1)
                img = (base + 60 * torch.rand(3, 64, 64, generator=g)).clamp(0, 255).to(torch.uint8)
                Image.fromarray(img.permute(1, 2, 0).numpy()).save(d / f'{i}.png')


def test_train_py_trains_baseline_plus(tmp_path):
    """``--model test_resnet_baseline_plus --pretrained`` in the patched train.py: the backbone's weights from a
    local file, the branch's loss added once per step by the wrapped train loss (alone and with SnapMix), and the
    Baseline+ configs as they are (their learning-rate split and SnapMix settings), model and weights swapped."""
    import csv
    import json
    import subprocess
    import sys
    from pathlib import Path
    repo = Path(__file__).resolve().parents[1]
    train_py = _patched_train_py(tmp_path / 'timm')
    data, out = tmp_path / 'data', tmp_path / 'out'
    _image_folder(data)
    weights = tmp_path / 'test_resnet.pth'
    torch.manual_seed(0)
    torch.save(timm.create_model('test_resnet').state_dict(), weights)
    common = ['--data-dir', str(data), '--val-split', 'val', '--num-classes', '3', '--img-size', '64',
              '--batch-size', str(BATCH), '--epochs', '1', '--workers', '0', '--device', 'cpu', '--seed', '1',
              '--log-interval', '1', '--warmup-epochs', '0', '--checkpoint-hist', '1', '--output', str(out),
              '--model', 'test_resnet_baseline_plus', '--pretrained', '--pretrained-path', str(weights)]
    runs = {
        'bplus': ['--lr', '0.01'],
        'bplus-snapmix': ['--lr', '0.01', '--mix-mode', 'snapmix'],
        'bplus-config': ['--config', str(repo / 'configs' / 'cub_baseline-plus-snapmix.yaml')],
    }
    plan = dict(result=str(tmp_path / 'results.json'),
                runs=[dict(id=run_id, script=str(train_py), cwd=str(tmp_path), argv=common + ['--experiment', run_id]
                           + extra) for run_id, extra in runs.items()])
    (tmp_path / 'plan.json').write_text(json.dumps(plan))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(repo), os.environ.get('PYTHONPATH')])))
    proc = subprocess.run([sys.executable, str(repo / 'tests' / '_train_py_runner.py'), str(tmp_path / 'plan.json')],
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((tmp_path / 'results.json').read_text())
    steps = N_TRAIN * 3 // BATCH
    for run_id in runs:
        r = results[run_id]
        log = Path(r['log']).read_text()
        assert r['ok'], f"{run_id}: {r.get('error', '')[-2000:]}\n{log[-3000:]}"
        assert 'Loading pretrained weights from file' in log and str(weights) in log
        assert 'auxiliary_outputs=True' in log                       # patch part 6 wrapped the loss
        # exactly one auxiliary output, the branch's (N, K) logits, added at every training step
        assert r['auxiliary_losses'] == [[[BATCH, 3]]] * steps, r['auxiliary_losses']
        # the stock loss of each run, wrapped: smoothed cross-entropy without a mode, soft targets with one
        assert r['train_losses'] == ['LabelSmoothingCrossEntropy' if run_id == 'bplus' else 'SoftTargetCrossEntropy']
        with open(out / run_id / 'summary.csv') as f:
            (row,) = list(csv.DictReader(f))
        assert 0.0 <= float(row['eval_top1']) <= 100.0 and float(row['train_loss']) > 0
    for run_id in ('bplus-snapmix', 'bplus-config'):
        (created,) = results[run_id]['created']
        assert created['mode'] == 'SnapMix' and created['module'] == 'ResNetBaselinePlus'
        assert len(results[run_id]['calls']) == steps
    assert 'created' not in results['bplus']
    config_log = Path(results['bplus-config']['log']).read_text()
    assert re.search(r'Created SGD \(sgd\) optimizer: lr: 0\.01, momentum: 0\.9.*nesterov: True', config_log)
