""" Does mixing help? Validation top-1 of each mix mode against no mixing, timm's CutMix and timm's Mixup,
over several seeds, in the regimes the papers argue from, on the built-in synthetic fine-grained sets.

Every run goes through the demo's own code path: ``timm_camaug.train_loop.train_synthetic`` (create_mix_fn,
the mixed forward, finalize, SoftTargetCrossEntropy, AdamW with warm-up and cosine decay, flips), with each
mode's demo options (``timm_camaug.demo.row_options``: its small-input settings, its defaults derived from
the run's length, the offline ImageNet EfficientNet-Lite0 as Attentive CutMix's extractor).

Regimes (``--regimes``):
- ``finetune``: the offline ImageNet EfficientNet-Lite0 fine-tuned on 32 images per class of the head set
  (``synthetic.make_split``: classes differ in a small head's colour and pattern). Its learning rate is the
  best of a sweep without mixing (seed 0, 20 epochs: lr 1e-3 42 %, 2e-3 66 %, 1e-3 with a 10x head 54 %,
  2e-3 with a 10x head 74 %, 4e-3 92 %; the same network from scratch at 2e-3: 29 %), one rate for all
  parameters: an under-trained baseline would flatter any regulariser.
- ``snapmix`` also measures SnapMix's label weights during its own run (``snapmix_fidelity_run``).
- ``parts``: the parts set (``synthetic.make_parts_split``: classes differ in head, wing and tail at once,
  any one part names the class), a small ResNet from scratch; besides the clean test split, test splits in
  which one part of every bird is hidden under a grey occluder (the claim of the erasing methods: a model
  that is made to look past its most discriminative part still knows the class when that part is hidden).
- ``snapmix``: why SnapMix falls behind CutMix in ``finetune`` (same settings): its geometry (the source box
  resized into a target box elsewhere) against a box of the same size moved, and a box at the same place;
  its CAM label weights against area weights; the CAM of the untrained head early on (``snapmix:1.0`` with
  ``cam_start_epoch``: no mixing until the head has trained); a finer CAM (a stride-16 layer).
- ``long``: none, CutMix and SnapMix in ``finetune`` with three times the epochs (the authors train 200).

Rows are compared per seed (a seed fixes the images, the initialisation, the order and the draws, the same
for every row), so the table gives each row's mean +- std over seeds and the paired difference to no
mixing and to CutMix (mean +- std of the per-seed differences). Results are kept in a JSON file after every
run: an interrupted run resumes where it stopped (``--json``; runs whose settings changed are run again).

Run: ``nice -n 19 python benchmarks/accuracy.py`` (hours on a 2-core CPU; ``--shard I/N`` splits the runs
among N workers sharing the JSON file; ``--quick``: the same regimes shrunk, about 2.5 minutes of one core, a
check that everything runs, its numbers not a measurement).
"""
import argparse
import dataclasses
import hashlib
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, markdown_table  # noqa: E402

from timm_camaug import synthetic  # noqa: E402
from timm_camaug.boxes import box_area  # noqa: E402
from timm_camaug.demo import offline_network, row_options  # noqa: E402
from timm_camaug.modes import get_mode_class, mix_modes, register_mode  # noqa: E402
from timm_camaug.targets import mix_soft_targets  # noqa: E402
from timm_camaug.train_loop import BASELINE, train_synthetic  # noqa: E402

RESULTS = Path(__file__).resolve().parent / 'results'
FIDELITY = 'snapmix label fidelity during training'
REFERENCE = 'cutmix'        # timm's CutMix: the row every mode is compared with
TIMM_ROWS = ('cutmix', 'mixup')


# ------------------------------------------------------------------------------------------------------
# SnapMix controls (benchmark-only modes): SnapMix with one thing changed

_SnapMix = get_mode_class('snapmix')


class _SnapMixControl(_SnapMix):
    """SnapMix with its source box or its label weights replaced; the draws are SnapMix's own."""

    def _source_box(self, params, hw):
        return params.box_s

    def _make_params(self, x, labels):
        params = super()._make_params(x, labels)
        params.box_s = self._source_box(params, x.shape[-2:])
        return params


class SnapMixSamePlace(_SnapMixControl):
    """The source box is the target box: the source's pixels stay where they were (CutMix's geometry, SnapMix's
    Beta(5, 5) box and CAM label weights)."""
    name = 'snapmix-same-place'

    def _source_box(self, params, hw):
        return params.box_t.clone()


class SnapMixSameSize(_SnapMixControl):
    """The source box has the target box's size (no resize) at a random place of the source image (moved)."""
    name = 'snapmix-same-size'

    def _source_box(self, params, hw):
        box_t = params.box_t
        bh, bw = box_t[:, 1] - box_t[:, 0], box_t[:, 3] - box_t[:, 2]
        u = torch.rand(2, generator=self.generator)
        y0 = (u[0] * (int(hw[0]) - bh + 1).float()).long()
        x0 = (u[1] * (int(hw[1]) - bw + 1).float()).long()
        return torch.stack([y0, y0 + bh, x0, x0 + bw], 1)


class SnapMixAreaLabels(_SnapMixControl):
    """SnapMix's geometry (the source box resized into the target box) with CutMix's area label weights."""
    name = 'snapmix-area-labels'

    def _apply(self, x, soft, labels, params):
        valid = self._valid(params)
        x_mixed, _ = super()._apply(x, soft, labels, params)
        area = (box_area(params.box_t).double() / float(x.shape[-2] * x.shape[-1])).to(soft.device)
        w_b = torch.where(valid.to(soft.device), area, torch.zeros_like(area)).float()
        return x_mixed, mix_soft_targets(soft, params.perm.to(soft.device), 1.0 - w_b, w_b)


# ------------------------------------------------------------------------------------------------------
# regimes and rows

@dataclasses.dataclass(frozen=True)
class Regime:
    title: str
    model: str
    pretrained: bool
    data: str               # 'head' (synthetic.make_split) or 'parts' (synthetic.make_parts_split)
    img_size: int
    train_size: int
    test_size: int
    epochs: int
    batch_size: int
    lr: float
    head_lr: Optional[float]
    num_classes: int = 8
    weight_decay: float = 0.05
    occluded: Tuple[str, ...] = ()      # parts hidden in the extra test splits
    channels_last: bool = True          # faster on a CPU (1.4-1.6x here), same training
    max_seeds: Optional[int] = None     # run only the first seeds of --seeds (the costly long regime)


CONTROLS = (SnapMixSamePlace, SnapMixSameSize, SnapMixAreaLabels)


def register_controls() -> None:
    """Make the controls buildable by name (``create_mix_fn``, as the training loop builds every row); done by
    :func:`main`, not on import, so importing this module leaves the registry as it was."""
    known = mix_modes()
    for cls in CONTROLS:
        if cls.name not in known:
            register_mode(cls)


def _main_rows() -> List[str]:
    return [BASELINE, *TIMM_ROWS] + [m for m in mix_modes() if m not in {cls.name for cls in CONTROLS}]


# row label -> (mode or schedule for create_mix_fn, extra create_mix_fn keywords)
def _snapmix_rows(regime: Regime) -> Dict[str, Tuple[str, Dict[str, Any]]]:
    start = max(1, regime.epochs // 4)
    return {
        BASELINE: (BASELINE, {}),
        REFERENCE: (REFERENCE, {}),
        'snapmix': ('snapmix', {}),
        'snapmix, box at the same place': (SnapMixSamePlace.name, {}),
        'snapmix, same-size box moved': (SnapMixSameSize.name, {}),
        'snapmix, area labels': (SnapMixAreaLabels.name, {}),
        f'snapmix from epoch {start} (snapmix:1.0, cam_start_epoch={start})': ('snapmix:1.0', {'cam_start_epoch': start}),
        'snapmix, stride-16 CAM (cam_layer=blocks.4, spm_floor=zero)': ('snapmix', {'cam_layer': 'blocks.4',
                                                                                   'spm_floor': 'zero'}),
    }


FINETUNE = Regime('fine-tuning the offline ImageNet EfficientNet-Lite0 on few images per class (head set)',
                  model='efficientnet_lite0', pretrained=True, data='head', img_size=96, train_size=256,
                  test_size=512, epochs=20, batch_size=32, lr=4e-3, head_lr=None)
PARTS = Regime('a small ResNet from scratch on the parts set (head, wing and tail each name the class)',
               model='test_resnet', pretrained=False, data='parts', img_size=64, train_size=1024, test_size=1024,
               epochs=30, batch_size=32, lr=2e-3, head_lr=None, occluded=synthetic.PARTS)


def regimes(quick: bool) -> Dict[str, Tuple[Regime, Dict[str, Tuple[str, Dict[str, Any]]]]]:
    """name -> (settings, rows)."""
    ft, parts = FINETUNE, PARTS
    if quick:
        ft = dataclasses.replace(ft, train_size=64, test_size=128, epochs=2, img_size=64)
        parts = dataclasses.replace(parts, train_size=128, test_size=128, epochs=3, img_size=48)
    main_rows = {r: (r, {}) for r in _main_rows()}
    long = dataclasses.replace(ft, title=ft.title + ', 3x the epochs', epochs=ft.epochs * 3, max_seeds=2)
    return {
        'finetune': (ft, main_rows),
        'parts': (parts, main_rows),
        'snapmix': (dataclasses.replace(ft, title='why SnapMix falls behind: ' + ft.title), _snapmix_rows(ft)),
        'long': (long, {r: (r, {}) for r in (BASELINE, REFERENCE, 'snapmix')}),
    }


# ------------------------------------------------------------------------------------------------------
# data and runs

def _data(regime: Regime, seed: int):
    """train (images, labels), val, and the extra test splits {name: (images, labels)} of one seed."""
    if regime.data == 'head':
        split = lambda name, n, **kw: synthetic.make_split(name, n, regime.img_size, seed, regime.num_classes)[:2]  # noqa: E731
    elif regime.data == 'parts':
        split = lambda name, n, **kw: synthetic.make_parts_split(name, n, regime.img_size, seed,  # noqa: E731
                                                                 regime.num_classes, **kw)[:2]
    else:
        raise ValueError(f"unknown data {regime.data!r}")
    train, val = split('train', regime.train_size), split('val', regime.test_size)
    extra = {}
    if regime.occluded:
        extra['clean'] = split('test', regime.test_size)
        extra.update({f'{p} hidden': split('test', regime.test_size, occlude=p) for p in regime.occluded})
    return train, val, extra


def run_key(regime: Regime, spec: Tuple[str, Dict[str, Any]], seed: int) -> str:
    """What a kept result must match to be reused: every setting of the run (not the row's label, the regime's
    title or its number of seeds: the snapmix regime reuses finetune's runs) and the data's version."""
    version = synthetic.VERSION if regime.data == 'head' else synthetic.PARTS_VERSION
    settings = {k: v for k, v in dataclasses.asdict(regime).items() if k not in ('title', 'max_seeds')}
    payload = json.dumps([settings, spec[0], sorted(spec[1].items()), seed, version], sort_keys=True, default=str)
    return hashlib.sha1(payload.encode()).hexdigest()[:16]


def run_one(regime: Regime, spec: Tuple[str, Dict[str, Any]], seed: int, network) -> Dict[str, Any]:
    mode, extra_kw = spec
    train, val, extra = _data(regime, seed)
    options = {} if mode == BASELINE else {**row_options(mode, regime.epochs, network), **extra_kw}
    res = train_synthetic(regime.model, mode, train=train, val=val, num_classes=regime.num_classes,
                          epochs=regime.epochs, batch_size=regime.batch_size, lr=regime.lr,
                          weight_decay=regime.weight_decay, head_lr=regime.head_lr, pretrained=regime.pretrained,
                          seed=seed, mix_options=options, progress=False, eval_sets=extra,
                          eval_every=max(1, regime.epochs // 5), channels_last=regime.channels_last)
    return {'top1': res.top1, 'extra': res.extra, 'history': res.history, 'history_epochs': res.history_epochs,
            'seconds': res.seconds}


FIDELITY_EPOCHS = (0, 1, 2, 5, 10, 20)     # when SnapMix's label weights are measured during its own run
FIDELITY_IMAGES = 256


def snapmix_fidelity_run(regime: Regime, seed: int, checkpoints: Sequence[int] = FIDELITY_EPOCHS) -> Dict[str, Any]:
    """SnapMix's own run of ``regime``, its label weights measured as the model trains: on the same
    ``FIDELITY_IMAGES`` validation images and the same boxes at each checkpoint (a generator seeded alike), the
    mean |label weight - visible share of that source's head| of SnapMix's CAM weights and of area weights
    (CutMix's rule) on the same boxes, over mixed pairs of two different labels (timm_camaug.fidelity)."""
    import timm
    from timm_camaug import create_mix_fn
    from timm_camaug import fidelity as fd
    from timm_camaug.pixels import normalize
    images, labels, masks = synthetic.make_split('val', FIDELITY_IMAGES, regime.img_size, seed, regime.num_classes)
    options = row_options('snapmix', regime.epochs)
    by_epoch: Dict[int, Dict[str, float]] = {}

    def measure(epoch, model):
        if epoch not in checkpoints:
            return
        config = timm.data.resolve_data_config({'input_size': (3, regime.img_size, regime.img_size)}, model=model)
        x_all = normalize(images.float() / 255.0, config['mean'], config['std'])
        mix_fn = create_mix_fn('snapmix', model=model, num_classes=regime.num_classes, data_config=config,
                               generator=torch.Generator().manual_seed(12345), **options)
        cam, area = [], []
        for i in range(0, FIDELITY_IMAGES - regime.batch_size + 1, regime.batch_size):
            x, y, m = x_all[i:i + regime.batch_size], labels[i:i + regime.batch_size], masks[i:i + regime.batch_size]
            params = mix_fn.make_params(x, y)
            _, soft = mix_fn.apply(x, y, params)
            soft = mix_fn.finalize(soft)
            vis_a, vis_b, active = fd.visible_fractions(mix_fn, params, m)
            regions = mix_fn.regions(params, m.shape[-2:])
            keep = active & (y != y[regions.perm])
            w_a, w_b = fd.label_weights(soft, y, regions.perm)
            frac = regions.target.flatten(1).double().mean(1)
            cam.append(fd.fidelity_errors(w_a, vis_a, w_b, vis_b, keep))
            area.append(fd.fidelity_errors(1.0 - frac, vis_a, frac, vis_b, keep))
        mae = lambda errs: float(torch.cat([torch.cat([e.err_a, e.err_b]) for e in errs]).mean())  # noqa: E731
        by_epoch[epoch] = {'snapmix': mae(cam), 'area': mae(area),
                           'pairs': int(sum(e.err_a.numel() for e in cam))}

    train, val, _ = _data(regime, seed)
    res = train_synthetic(regime.model, 'snapmix', train=train, val=val,
                          num_classes=regime.num_classes, epochs=regime.epochs, batch_size=regime.batch_size,
                          lr=regime.lr, weight_decay=regime.weight_decay, head_lr=regime.head_lr,
                          pretrained=regime.pretrained, seed=seed, mix_options=options, progress=False,
                          eval_every=max(1, regime.epochs // 5), channels_last=regime.channels_last,
                          on_epoch=measure)
    return {'top1': res.top1, 'seconds': res.seconds, 'fidelity': {str(k): v for k, v in by_epoch.items()}}


def fidelity_table(record: Dict[str, Any]) -> str:
    rows = [[k, v['pairs'], f"{v['snapmix']:.3f}", f"{v['area']:.3f}", f"{v['snapmix'] / v['area']:.2f}"]
            for k, v in sorted(record['fidelity'].items(), key=lambda kv: int(kv[0]))]
    return markdown_table(['epochs trained', 'pairs', "SnapMix's CAM weights: MAE", 'area weights, same boxes: MAE',
                           'ratio'], rows)


class Store:
    """The JSON file of kept runs. Each run is merged into the file under a lock as soon as it ends, so several
    workers (``--shard``) can share one file and an interrupted benchmark resumes where it stopped."""

    def __init__(self, path: str):
        self.path = path
        self.data: Dict[str, Any] = {'runs': {}}
        self.reload()

    def reload(self) -> None:
        if os.path.isfile(self.path):
            with open(self.path) as f:
                self.data = json.load(f)
            self.data.setdefault('runs', {})

    def get(self, key: str) -> Optional[Dict[str, Any]]:
        return self.data['runs'].get(key)

    def put(self, key: str, record: Dict[str, Any]) -> None:
        import fcntl
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        with open(self.path + '.lock', 'w') as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self.reload()
            self.data['runs'][key] = record
            self.data['machine'] = machine()
            tmp = f'{self.path}.{os.getpid()}.tmp'
            with open(tmp, 'w') as f:
                json.dump(self.data, f, indent=1)
            os.replace(tmp, self.path)


# ------------------------------------------------------------------------------------------------------
# tables

def mean_std(values: Sequence[float]) -> Tuple[float, float]:
    """Mean and sample standard deviation (n - 1; NaN for one value)."""
    n = len(values)
    if n == 0:
        return float('nan'), float('nan')
    m = sum(values) / n
    if n == 1:
        return m, float('nan')
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1))


def fmt(values: Sequence[float]) -> str:
    m, s = mean_std(values)
    if math.isnan(m):
        return '-'
    return f'{m:.1f}' if math.isnan(s) else f'{m:.1f} ± {s:.1f}'


def fmt_diff(a: Dict[int, float], b: Dict[int, float]) -> str:
    """Paired difference a - b over the seeds both have: mean ± std, and how many seeds it is positive in."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return '-'
    d = [a[s] - b[s] for s in seeds]
    m, s = mean_std(d)
    wins = sum(v > 0 for v in d)
    spread = '' if math.isnan(s) else f' ± {s:.1f}'
    return f'{m:+.1f}{spread} ({wins}/{len(d)})'


def regime_table(regime: Regime, rows: Sequence[str], results: Dict[str, Dict[int, Dict[str, Any]]],
                 base_row: str = BASELINE) -> str:
    """Markdown: one line per row, mean ± std over seeds, paired differences to no mixing and to CutMix."""
    header = ['row', 'seeds', 'val top-1 (%)', f'vs {base_row}', f'vs {REFERENCE}']
    if regime.occluded:
        header += ['one part hidden (%)', f'hidden vs {base_row}', f'hidden vs {REFERENCE}'] + \
                  [f'{p} hidden' for p in regime.occluded]
    header += ['min / run']
    top1 = {r: {s: rec['top1'] for s, rec in results.get(r, {}).items()} for r in rows}
    hidden = {r: {s: sum(rec['extra'][f'{p} hidden'] for p in regime.occluded) / len(regime.occluded)
                  for s, rec in results.get(r, {}).items()} for r in rows} if regime.occluded else {}
    lines = []
    for r in rows:
        recs = results.get(r, {})
        if not recs:
            lines.append([r, 0] + ['-'] * (len(header) - 2))
            continue
        line = [r, len(recs), fmt(list(top1[r].values())),
                '' if r == base_row else fmt_diff(top1[r], top1[base_row]),
                '' if r == REFERENCE else fmt_diff(top1[r], top1.get(REFERENCE, {}))]
        if regime.occluded:
            line += [fmt(list(hidden[r].values())),
                     '' if r == base_row else fmt_diff(hidden[r], hidden[base_row]),
                     '' if r == REFERENCE else fmt_diff(hidden[r], hidden.get(REFERENCE, {}))]
            line += [fmt([rec['extra'][f'{p} hidden'] for rec in recs.values()]) for p in regime.occluded]
        line.append(f"{sum(rec['seconds'] for rec in recs.values()) / len(recs) / 60:.1f}")
        lines.append(line)
    return markdown_table(header, lines)


def describe(regime: Regime) -> str:
    lr = f'lr {regime.lr:g}' + (f' (new head {regime.head_lr:g})' if regime.head_lr else '')
    data = 'head set' if regime.data == 'head' else 'parts set'
    return (f"{regime.model}{' (ImageNet, offline)' if regime.pretrained else ' (from scratch)'}, {data} at "
            f"{regime.img_size} px, {regime.num_classes} classes, {regime.train_size} training images "
            f"({regime.train_size // regime.num_classes} per class), {regime.epochs} epochs, batch "
            f"{regime.batch_size}, AdamW {lr}, weight decay {regime.weight_decay:g}, one warm-up epoch then "
            f"cosine, flips; top-1 on {regime.test_size} validation images after the last epoch")


# ------------------------------------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--regimes', default='finetune,parts,snapmix,long',
                   help='comma-separated, in the order to run: finetune, parts, snapmix, long')
    p.add_argument('--seeds', default='0,1,2', help='comma-separated seeds (default 0,1,2)')
    p.add_argument('--rows', default=None,
                   help="comma-separated rows of the finetune and parts regimes (default: none, cutmix, mixup and "
                        "every registered mode)")
    p.add_argument('--json', default=None, metavar='PATH',
                   help='kept runs (resumed from, written after every run); default '
                        'benchmarks/results/accuracy.json, with --quick a file in the temporary directory')
    p.add_argument('--threads', type=int, default=1, help='torch threads (default 1: the machine is shared)')
    p.add_argument('--report-only', action='store_true', help='print the tables from the kept runs, run nothing')
    p.add_argument('--shard', default='0/1', metavar='I/N',
                   help='run only every N-th missing run, from the I-th (several workers sharing one --json)')
    p.add_argument('--quick', action='store_true',
                   help='every regime shrunk (a few epochs on a few images, 2 seeds): a check that it runs')
    args = p.parse_args(argv)
    if args.json is None:
        args.json = (os.path.join(tempfile.gettempdir(), 'timm-camaug-bench', 'accuracy-quick.json') if args.quick
                     else str(RESULTS / 'accuracy.json'))
    if args.quick and args.seeds == '0,1,2':
        args.seeds = '0,1'
    args.seeds = [int(s) for s in args.seeds.split(',') if s.strip()]
    try:
        args.shard = tuple(int(v) for v in args.shard.split('/'))
        assert len(args.shard) == 2 and 0 <= args.shard[0] < args.shard[1]
    except (ValueError, AssertionError):
        p.error(f'--shard {args.shard!r}: write I/N with 0 <= I < N')
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    register_controls()
    all_regimes = regimes(args.quick)
    names = [n.strip() for n in args.regimes.split(',') if n.strip()]
    unknown = [n for n in names if n not in all_regimes]
    if unknown:
        raise SystemExit(f"accuracy.py: unknown regime {', '.join(unknown)}; choose from {', '.join(all_regimes)}")
    store = Store(args.json)
    t0 = time.perf_counter()
    network = None
    todo = []
    for name in names:
        regime, rows = all_regimes[name]
        if args.rows and name in ('finetune', 'parts'):
            rows = {r: (r, {}) for r in args.rows.split(',') if r.strip()}
            all_regimes[name] = (regime, rows)
        for seed in args.seeds[:regime.max_seeds]:     # seed-major: every row of a seed before the next
            for row, spec in rows.items():
                todo.append((name, regime, row, spec, seed))
    # one entry per distinct run (the snapmix regime shares its none/cutmix/snapmix runs with finetune)
    seen, unique = set(), []
    for entry in todo:
        key = run_key(entry[1], entry[3], entry[4])
        if key not in seen:
            seen.add(key)
            unique.append(entry)
    todo = unique
    if 'snapmix' in names:      # the last job: SnapMix's label weights measured during its own run
        regime = all_regimes['snapmix'][0]
        todo.append(('snapmix', regime, FIDELITY, (FIDELITY, {}), args.seeds[0]))
    if not args.report_only:
        for i, (name, regime, row, spec, seed) in enumerate(todo):
            key = run_key(regime, spec, seed)
            if i % args.shard[1] != args.shard[0]:
                continue
            store.reload()
            if store.get(key) is not None:
                continue
            if network is None and spec[0] not in (BASELINE, FIDELITY) and any(
                    get_mode_class(m).auxiliary_network for m in _members(spec[0])):
                network = offline_network(get_mode_class(next(m for m in _members(spec[0])
                                                               if get_mode_class(m).auxiliary_network)))
            print(f'[{i + 1}/{len(todo)}] {name}: {row}, seed {seed} ...', file=sys.stderr, flush=True)
            rec = snapmix_fidelity_run(regime, seed) if row == FIDELITY else run_one(regime, spec, seed, network)
            rec.update(regime=name, row=row, seed=seed, mode=spec[0])
            store.put(key, rec)
            print(f'    top-1 {rec["top1"]:.1f} {rec.get("extra") or ""} in {rec["seconds"] / 60:.1f} min',
                  file=sys.stderr, flush=True)
    store.reload()
    print(report(names, all_regimes, store, args, time.perf_counter() - t0))
    return 0


def _members(spec: str) -> List[str]:
    from timm_camaug.modes.schedule import parse_schedule
    return [m for m, _ in parse_schedule(spec) if m in mix_modes()]


def report(names, all_regimes, store: Store, args, elapsed: float) -> str:
    out = ['Validation top-1 on the synthetic fine-grained sets; every row trained by the demo\'s own loop '
           '(`timm_camaug.train_loop.train_synthetic`) with the mode\'s demo options.',
           f'machine: {store.data.get("machine") or machine()}', '']
    total = 0.0
    for name in names:
        regime, rows = all_regimes[name]
        results: Dict[str, Dict[int, Dict[str, Any]]] = {}
        for row, spec in rows.items():
            for seed in args.seeds[:regime.max_seeds]:
                rec = store.get(run_key(regime, spec, seed))
                if rec is not None:
                    results.setdefault(row, {})[seed] = rec
                    total += rec['seconds']
        out += [f'### {name}: {regime.title}', '', describe(regime) + '.', '',
                regime_table(regime, list(rows), results), '']
        fidelity = store.get(run_key(regime, (FIDELITY, {}), args.seeds[0])) if name == 'snapmix' else None
        if fidelity is not None:
            total += fidelity['seconds']
            out += [f"SnapMix's label weights as its model trains (its seed-{args.seeds[0]} run again, top-1 "
                    f"{fidelity['top1']:.1f} %): mean |label weight - visible share of that source's head| over "
                    f"mixed pairs of two labels on {FIDELITY_IMAGES} validation images, the same boxes at every "
                    "checkpoint; area weights are CutMix's rule on those boxes.", '', fidelity_table(fidelity), '']
    out += ["Each cell: mean ± standard deviation over the seeds; 'vs' columns: the paired per-seed difference "
            "(mean ± std, and in how many seeds it is positive). "
            + ("'one part hidden': mean over the head, wing and tail test splits. " if any(
                all_regimes[n][0].occluded for n in names) else '')
            + "A difference smaller than its std is not a difference.",
            f'wall time: the runs shown took {total / 3600:.1f} h end to end, each on one thread (their sum; several '
            f'ran side by side); this invocation {elapsed / 60:.0f} min']
    return '\n'.join(out)


if __name__ == '__main__':
    sys.exit(main())
