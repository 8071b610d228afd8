""" Run the benchmarks and gather their tables into BENCHMARKS.md.

Each benchmark's printed output is kept in ``benchmarks/results/<name>.md`` (with the command that made it
and the date), so one can be re-run alone (``--only modes``) and BENCHMARKS.md is rebuilt from all kept
results. Run: ``python benchmarks/run_all.py`` (``--quick`` passes ``--quick`` to every script: smaller
grids, for checking that they run; its outputs go to a temporary folder and never replace the kept results
or BENCHMARKS.md; ``--list`` shows the benchmarks).
"""
import argparse
import datetime
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / 'results'

# name -> (title, script arguments, what it answers)
BENCHMARKS = {
    'cam': ('CAM engine', ['cam.py'],
            'Time of each CAM method, and of pytorch-grad-cam\'s own `GradCAM` call on the same work, divided by '
            'one plain no-grad forward of the same batch.'),
    'modes': ('Mix modes per training step', ['modes.py', '--memory', '--settings', '224x16,224x32,448x16'],
              'Time of each mode\'s call divided by one resnet50 training step of the same batch, next to timm\'s '
              '`Mixup` (CutMix) and the reference implementations (`benchmarks/references.py`: the authors\' '
              'algorithms written their way), all in one run; extra peak memory of call + step over a step.'),
    # a run of its own: on a 2-core CPU this one setting takes about as long as the three above
    'modes_448x32': ('Mix modes per training step, 448 px, batch 32', ['modes.py', '--memory', '--settings', '448x32'],
                     'As above for 448 px at batch 32.'),
    'saliency': ('SaliencyMix saliency', ['saliency.py'],
                 'SaliencyMix call (both variants) against the reference per-image OpenCV-contrib saliency, as a '
                 'share of one training step.'),
    'schedule': ('Schedule cost', ['schedule.py'],
                 "A snapmix:0.5+cutmix:0.5 schedule's cost per call against SnapMix alone, on the same batches."),
    'transmix_cost': ('TransMix per training step', ['transmix_cost.py'],
                      'TransMix\'s call and its label completion after the forward (the forward itself is the '
                      'step\'s own and not counted), as a share of one training step of vit_small_patch16_224 '
                      '(class-token attention) and resnet50 (the extension\'s class maps) at 224 px, measured in the '
                      'same run; a whole step with TransMix as a cross-check.'),
    'label_fidelity_64': ('Label fidelity, 64 px', ['label_fidelity.py', '--img-size', '64'],
                          'Mean |label weight - visible share of that source\'s discriminative part| on the '
                          'synthetic fine-grained set, per mode and for timm\'s CutMix; the share of the label '
                          'against the share of the visible parts; labels from the training forward (TransMix, its '
                          'extension, other maps of a ViT) on TransMix\'s own boxes.'),
    'label_fidelity_128': ('Label fidelity, 128 px', ['label_fidelity.py', '--img-size', '128', '--vit-model', 'none'],
                           'As above at 128 px (a finer CAM grid for the same model).'),
    # hours of CPU: every run is kept in benchmarks/results/accuracy.json as it ends, so an interrupted run resumes
    'accuracy': ('Does it help? Accuracy per mode over seeds', ['accuracy.py'],
                 'Validation top-1 of no mixing, timm\'s CutMix and Mixup and each mode, mean ± std over 3 seeds (2 for the runs at 3x the epochs), in '
                 'the regimes the papers argue from (fine-tuning an ImageNet network on 32 images per class; '
                 'classes that differ in several parts, tested with one part hidden), and the runs that explain '
                 'SnapMix\'s result (`benchmarks/accuracy.py`).'),
}


def run_one(name: str, quick: bool, results: Path = RESULTS) -> None:
    title, argv, _ = BENCHMARKS[name]
    cmd = [sys.executable, str(HERE / argv[0])] + argv[1:] + (['--quick'] if quick else [])
    shown = 'python benchmarks/' + ' '.join(shlex.quote(a) for a in argv + (['--quick'] if quick else []))
    print(f'== {name}: {shown}', file=sys.stderr, flush=True)
    out = subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.PIPE, text=True).stdout
    results.mkdir(exist_ok=True)
    (results / f'{name}.md').write_text(
        f'Command: `{shown}` (run {datetime.date.today().isoformat()})\n\n{out.strip()}\n')


def gather(results: Path = RESULTS) -> str:
    parts = ['# Benchmarks', '',
             'Written by `python benchmarks/run_all.py` from the outputs kept in `benchmarks/results/`; every '
             'ratio is against a baseline measured in the same run, on the machine each section names. '
             'Re-run one section with `--only NAME`.', '']
    for name, (title, _, what) in BENCHMARKS.items():
        path = results / f'{name}.md'
        parts += [f'## {title}', '', what, '']
        parts += [path.read_text().strip() if path.is_file() else '_Not measured yet._', '']
    return '\n'.join(parts)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--only', nargs='+', choices=list(BENCHMARKS), metavar='NAME',
                    help=f'run only these ({", ".join(BENCHMARKS)}); the others keep their last results')
    ap.add_argument('--quick', action='store_true', help='pass --quick to each script and print the tables (a check, not a measurement: nothing kept is replaced)')
    ap.add_argument('--gather-only', action='store_true', help='rebuild BENCHMARKS.md without running anything')
    ap.add_argument('--output', default=str(ROOT / 'BENCHMARKS.md'))
    ap.add_argument('--list', action='store_true', help='list the benchmarks and exit')
    args = ap.parse_args(argv)
    if args.list:
        for name, (title, argv_, _) in BENCHMARKS.items():
            print(f'{name:20s} {title}: python benchmarks/{" ".join(argv_)}')
        return 0
    if args.quick:     # a check that the scripts run: its numbers replace nothing that is kept
        with tempfile.TemporaryDirectory() as tmp:
            for name in args.only or BENCHMARKS:
                run_one(name, True, Path(tmp))
            print(gather(Path(tmp)))
        return 0
    if not args.gather_only:
        for name in args.only or BENCHMARKS:
            run_one(name, False)
    Path(args.output).write_text(gather())
    print(f'wrote {args.output}', file=sys.stderr)
    return 0


if __name__ == '__main__':
    sys.exit(main())
