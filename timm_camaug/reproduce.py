""" ``timm-camaug reproduce``: the SnapMix paper's table through a patched stock train.py.

Runs train.py once per dataset x mode x seed, each with ``configs/<dataset>_<mode>.yaml`` (mode ``none``:
``<dataset>_baseline.yaml``) merged with ``--set`` overrides, and writes ``results.md`` and ``results.json``
(top-1 mean +- std over seeds, final and best epoch, seconds per epoch, the paper's figure and the gap) into
the output folder, which also keeps every run's command line, config, log and train.py files::

    OUTPUT/reproduction.json                    what this reproduction is (a different one is refused)
    OUTPUT/results.md, results.json             rewritten after every run
    OUTPUT/runs/<dataset>/<mode>/seed<k>/       command.txt, config.yaml, train.log, run.json, and train.py's
                                                own: args.yaml, summary.csv, last.pth.tar, model_best.pth.tar

Run it again with the same arguments to resume: a run whose summary.csv shows its last scheduled epoch is
not run again, an interrupted or failed one restarts from its last checkpoint (train.py ``--resume``).
"""
import argparse
import ast
import difflib
import functools
import hashlib
import json
import math
import os
import re
import shlex
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

from .console import command_error
from .train_py_runner import TrainPyError, check_patched_train_py, run_train_py_process, summary_rows

__all__ = ['PAPER_TOP1', 'PAPER_SOURCE', 'PAPER_MISSING', 'Run', 'ReproduceError', 'config_path', 'parse_sets',
           'train_py_options', 'plan_runs', 'run_command', 'check_output', 'run_status', 'summarize', 'register',
           'run']

def _paper_table() -> Dict[str, Any]:
    """The SnapMix paper's figures, kept as data (``timm_camaug/tables/snapmix_paper.json``)."""
    from importlib import resources
    return json.loads(resources.files('timm_camaug.tables').joinpath('snapmix_paper.json').read_text('utf-8'))


_PAPER = _paper_table()
# --- the paper's figures: top-1 (%) with ResNet-50 at 448 px, by config row and dataset
PAPER_SOURCE: str = _PAPER['source']
PAPER_TOP1: Dict[str, Dict[str, float]] = _PAPER['top1']
# rows the paper has but this table leaves empty, and why (never a number that could not be checked)
PAPER_MISSING: Dict[str, str] = _PAPER['missing']

DEFAULT_DATASETS = ('cub', 'cars', 'aircraft')
DEFAULT_MODES = tuple(_PAPER['default_rows'])
DEFAULT_SEEDS = (0, 1, 2)
NO_MIX = 'none'                 # --modes name of the no-mixing row: <dataset>_baseline.yaml
BASELINE_ROW = 'baseline'

STATE_FILE = 'reproduction.json'
LOCK_FILE = '.reproduce.lock'
RUN_FILE = 'run.json'
FORMAT = 1
# config keys the harness sets for every run (what to use instead)
HARNESS_KEYS = {'data_dir': '--data-root', 'seed': '--seeds', 'output': '--output', 'experiment': '--output',
                'resume': 'resume by running the same command again', 'config': '--configs'}
SCHEDULED = re.compile(r'Scheduled epochs: (\d+)')
NAME = re.compile(r'^[A-Za-z0-9][A-Za-z0-9_.+-]*$')
TAIL_LINES = 25


class ReproduceError(ValueError):
    """A reproduction that cannot start; the message says why and what to do."""


_fail = functools.partial(command_error, 'reproduce')


@dataclass
class Run:
    """One train.py run: a dataset, a mode (a row of the table), a seed, and the config it runs with."""
    dataset: str
    mode: str
    seed: int
    source: Path                # the config file it comes from
    config: Dict[str, Any]      # what train.py is handed: the file, --set, and the harness's keys
    dir: Path                   # its folder, train.py's output folder

    @property
    def key(self) -> str:
        return f'{self.dataset}/{self.mode}/seed{self.seed}'


def config_row(mode: str) -> str:
    """The row name of a --modes entry (and the paper table's): ``none`` is the baseline."""
    return BASELINE_ROW if mode == NO_MIX else mode


def config_path(configs_dir: Path, dataset: str, mode: str) -> Path:
    return Path(configs_dir) / f'{dataset}_{config_row(mode)}.yaml'


def parse_sets(items: Sequence[str]) -> Dict[str, Any]:
    """``key=value`` strings as a dict, the values parsed as YAML (``false`` a boolean, ``[1, 2]`` a list)."""
    import yaml
    out: Dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition('=')
        key = key.strip()
        if not sep or not key:
            raise ReproduceError(f"--set {item!r}: expected key=value, e.g. --set epochs=2")
        if key.startswith('-') or '-' in key:
            raise ReproduceError(f"--set {item!r}: keys are train.py's argument names as in its YAML configs "
                                 f"(underscores, no dashes): --set {key.lstrip('-').replace('-', '_')}={text}")
        if key in HARNESS_KEYS:
            raise ReproduceError(f"--set {key}: set by the harness for every run; use {HARNESS_KEYS[key]}")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as e:
            raise ReproduceError(f"--set {item!r}: the value is not YAML ({str(e).splitlines()[0]})") from None
        if isinstance(value, str) and value == text.strip():
            try:            # YAML 1.1 reads 1e-3 as a string (it wants 1.0e-3); a number is meant
                value = float(value) if any(c in value for c in '.eE') else int(value)
            except ValueError:
                pass
        out[key] = value
    return out


def train_py_options(train_py: Path) -> Optional[Set[str]]:
    """The argument names (dests) train.py's parser knows, read from its source (nothing is run), plus the
    plugin's; None when none can be found (validation then is train.py's own)."""
    try:
        tree = ast.parse(Path(train_py).read_text(encoding='utf-8', errors='replace'))
    except (OSError, SyntaxError, ValueError):
        return None
    dests: Set[str] = set()
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == 'add_argument'):
            continue
        flags = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
        dest = next((k.value.value for k in node.keywords if k.arg == 'dest' and isinstance(k.value, ast.Constant)),
                    None)
        if dest is None and flags:
            longs = [f for f in flags if f.startswith('--')]
            dest = (longs[0][2:] if longs else flags[0].lstrip('-')).replace('-', '_')
        if dest:
            dests.add(dest)
    if not dests:
        return None
    from .args import add_args
    parser = argparse.ArgumentParser()
    add_args(parser)
    return dests | {a.dest for a in parser._actions}


def _unknown_keys(keys, known: Optional[Set[str]]) -> List[str]:
    if known is None:
        return []
    out = []
    for key in keys:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            out.append(f"{key} (did you mean {close[0]}?)" if close else key)
    return out


def _list_arg(text: str, what: str) -> List[str]:
    items = [s.strip() for s in text.split(',') if s.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"{what}: give a comma-separated list")
    bad = [s for s in items if not NAME.match(s)]
    if bad:
        raise argparse.ArgumentTypeError(f"{what}: {bad[0]!r} is not a name (letters, digits, '_.+-')")
    return list(dict.fromkeys(items))


def _seeds_arg(text: str) -> List[int]:
    try:
        seeds = [int(s) for s in text.split(',') if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds {text!r}: give comma-separated integers, e.g. 0,1,2") from None
    if not seeds:
        raise argparse.ArgumentTypeError("--seeds: give comma-separated integers, e.g. 0,1,2")
    return list(dict.fromkeys(seeds))


def _class_folders(path: Path) -> bool:
    try:
        return any(p.is_dir() for p in path.iterdir())
    except OSError:
        return False


def _check_dataset(dataset: str, cfg: Dict[str, Any], data_root: Path) -> None:
    data_dir = Path(cfg['data_dir'])
    hint = (f"prepare it with `timm-camaug prepare {dataset} <the official download> {data_dir}`"
            if dataset in DEFAULT_DATASETS else
            f"give it {cfg.get('train_split', 'train')}/<class>/ and {cfg.get('val_split', 'validation')}/<class>/ "
            "image folders")
    if not data_dir.is_dir():
        raise ReproduceError(f"--data-root {data_root}: no folder {data_dir} for dataset {dataset}; {hint}")
    for key, default in (('train_split', 'train'), ('val_split', 'validation')):
        split = data_dir / str(cfg.get(key) or default)
        if not _class_folders(split):
            what = 'no folder' if not split.is_dir() else 'no class folders in'
            raise ReproduceError(f"{data_dir} is not a prepared dataset: {what} {split} ({key} of the config); {hint}")


def plan_runs(args: argparse.Namespace, train_py: Path) -> List[Run]:
    """Every run of the reproduction, its config merged and checked; raises ReproduceError before any run when a
    config is missing or names an unknown key, or a dataset folder is not prepared."""
    import yaml
    configs_dir = Path(args.configs).resolve()
    data_root = Path(args.data_root).resolve()
    output = Path(args.output).resolve()
    sets = parse_sets(args.set or [])
    known = train_py_options(train_py)
    unknown = _unknown_keys(sets, known)
    if unknown:
        raise ReproduceError(f"--set: train.py ({train_py}) has no option {', '.join(unknown)}; keys are its argument "
                             "names as in its YAML configs (underscores)")
    missing = [(d, m) for d in args.datasets for m in args.modes if not config_path(configs_dir, d, m).is_file()]
    if missing:
        d, m = missing[0]
        have = sorted(p.stem.split('_', 1)[1] for p in configs_dir.glob(f'{d}_*.yaml'))
        listed = ', '.join(NO_MIX if r == BASELINE_ROW else r for r in have) or 'none at all'
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ''
        raise ReproduceError(f"no config for dataset {d}, mode {m}: {config_path(configs_dir, d, m)} does not "
                             f"exist{more}; modes with a config for {d}: {listed} (--configs {configs_dir})")
    runs = []
    for dataset in args.datasets:
        for mode in args.modes:
            source = config_path(configs_dir, dataset, mode)
            try:
                cfg = yaml.safe_load(source.read_text(encoding='utf-8'))
            except (OSError, yaml.YAMLError) as e:
                raise ReproduceError(f"{source}: cannot be read as YAML ({str(e).splitlines()[0]})") from None
            if not isinstance(cfg, dict):
                raise ReproduceError(f"{source}: expected a mapping of train.py options, got {type(cfg).__name__}")
            bad = _unknown_keys(cfg, known)
            if bad:
                raise ReproduceError(f"{source}: train.py ({train_py}) has no option {', '.join(bad)}")
            cfg.update(sets)
            cfg.setdefault('checkpoint_hist', 1)        # last + best + one more per run, not train.py's 10
            cfg['data_dir'] = str(data_root / dataset)
            _check_dataset(dataset, cfg, data_root)
            for seed in args.seeds:
                run_cfg = dict(cfg, seed=seed, output=str(output / 'runs' / dataset / mode), experiment=f'seed{seed}')
                runs.append(Run(dataset, mode, seed, source, run_cfg, output / 'runs' / dataset / mode / f'seed{seed}'))
    return runs


def run_command(train_py: Path, config_file: Path, nproc: int = 1, resume: Optional[Path] = None) -> List[str]:
    """The command line of one run: train.py with the run's config (under torchrun when ``nproc`` > 1)."""
    launcher = [sys.executable]
    if nproc > 1:
        launcher += ['-m', 'torch.distributed.run', '--standalone', f'--nproc_per_node={nproc}']
    cmd = launcher + [str(train_py), '--config', str(config_file)]
    if resume is not None:
        cmd += ['--resume', str(resume)]
    return cmd


# --- the output folder

def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def identity(args: argparse.Namespace, train_py: Path, runs: Sequence[Run]) -> Dict[str, Any]:
    """What makes this reproduction: what reproduction.json holds, and what a later call must match."""
    configs: Dict[str, Any] = {}
    for r in runs:
        configs.setdefault(f'{r.dataset}/{r.mode}', {k: v for k, v in r.config.items() if k not in HARNESS_KEYS})
    return {
        'format': FORMAT,
        'train_py': str(train_py),
        'train_py_sha256': _sha256(train_py),
        'data_root': str(Path(args.data_root).resolve()),
        'datasets': list(args.datasets),
        'modes': list(args.modes),
        'seeds': list(args.seeds),
        'set': parse_sets(args.set or []),
        'nproc': int(args.nproc),
        'configs': configs,
    }


IDENTITY_FIELDS = {'format': 'format', 'train_py_sha256': 'train.py', 'data_root': '--data-root',
                   'datasets': '--datasets', 'modes': '--modes', 'seeds': '--seeds', 'set': '--set', 'nproc': '--nproc',
                   'configs': 'configs'}


def check_output(output: Path, ident: Dict[str, Any]) -> bool:
    """Whether ``output`` can hold this reproduction (nothing is written): True when it holds it already (a
    resume), False when it is new or empty; ReproduceError when it holds anything else."""
    state = output / STATE_FILE
    if output.exists() and not output.is_dir():
        raise ReproduceError(f"--output {output} is a file; give a folder")
    if state.is_file():
        try:
            held = json.loads(state.read_text(encoding='utf-8'))
        except (OSError, ValueError) as e:
            raise ReproduceError(f"--output {output}: {STATE_FILE} cannot be read ({e}); nothing was changed") from None
        differ = [key for key in IDENTITY_FIELDS if held.get(key) != ident.get(key)]
        if differ:
            detail = []
            for key in differ:
                there, here = held.get(key), ident.get(key)
                if key == 'set':
                    there, here = there or {}, here or {}
                    keys = [k for k in dict.fromkeys(list(there) + list(here)) if there.get(k) != here.get(k)]
                    detail += [f"--set {k}: {_yaml_text(there[k]) if k in there else '(not set)'} there, "
                               f"{_yaml_text(here[k]) if k in here else '(not set)'} here" for k in keys]
                elif key == 'train_py_sha256':
                    detail.append(f"train.py: {held.get('train_py')} (sha256 {str(there)[:12]}) there, "
                                  f"{ident['train_py']} (sha256 {str(here)[:12]}) here")
                elif key == 'configs' and not {'set', 'datasets', 'modes'} & set(differ):   # else a consequence
                    there, here = there or {}, here or {}
                    changed = sorted(k for k in set(there) | set(here) if there.get(k) != here.get(k))
                    detail.append(f"the content of the configs of {', '.join(changed[:4])}"
                                  f"{' ...' if len(changed) > 4 else ''}")
                elif key not in ('configs', 'format'):
                    detail.append(f"{IDENTITY_FIELDS[key]}: {_show(there)} there, {_show(here)} here")
            raise ReproduceError(f"--output {output} holds a different reproduction ({'; '.join(detail) or 'format'}); "
                                 "nothing was changed: resume it with its own arguments, or give a new --output")
        return True
    if output.is_dir() and any(output.iterdir()):
        raise ReproduceError(f"--output {output} is not empty and holds no {STATE_FILE} (it is not a reproduction's "
                             "folder); nothing was changed: give a new or empty folder")
    return False


def _show(value: Any) -> str:
    if isinstance(value, list):
        return ','.join(map(str, value))
    if isinstance(value, dict):
        return ' '.join(f'{k}={_yaml_text(v)}' for k, v in value.items()) or '(none)'
    return str(value)


def _yaml_text(value: Any) -> str:
    """A --set value as it is written on the command line (YAML)."""
    return value if isinstance(value, str) else json.dumps(value)


class _Lock:
    """One reproduce process per output folder (a stale lock of a process that is gone is taken over)."""

    def __init__(self, output: Path):
        self.path = output / LOCK_FILE

    def __enter__(self) -> '_Lock':
        while True:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                try:
                    pid = int(self.path.read_text().strip() or 0)
                except (OSError, ValueError):
                    pid = 0
                if pid and pid != os.getpid() and _alive(pid):
                    raise ReproduceError(f"--output {self.path.parent}: reproduce process {pid} is working in it; "
                                         "wait for it, or stop it first") from None
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, 'w') as f:
                f.write(str(os.getpid()))
            return self

    def __exit__(self, *exc) -> None:
        self.path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + '.tmp')
    tmp.write_text(json.dumps(data, indent=1) + '\n', encoding='utf-8')
    os.replace(tmp, path)


# --- one run

def _read_run(run: Run) -> Dict[str, Any]:
    try:
        return json.loads((run.dir / RUN_FILE).read_text(encoding='utf-8'))
    except (OSError, ValueError):
        return {}


def _scheduled_epochs(run: Run, record: Dict[str, Any]) -> int:
    if record.get('scheduled_epochs'):
        return int(record['scheduled_epochs'])
    try:
        found = SCHEDULED.findall((run.dir / 'train.log').read_text(encoding='utf-8', errors='replace'))
    except OSError:
        found = []
    if found:
        return int(found[-1])
    cfg = run.config
    return int(cfg.get('epochs') or 0) + int(cfg.get('cooldown_epochs') or 0)


def run_status(run: Run) -> Dict[str, Any]:
    """What the run's folder shows: ``state`` ('done' when summary.csv holds its last scheduled epoch, else the
    recorded 'failed' / 'interrupted' / 'running', or 'queued'), and its results when it has any."""
    record = _read_run(run)
    rows = summary_rows(str(run.dir / 'summary.csv'))
    scheduled = _scheduled_epochs(run, record)
    out = dict(record)
    out['scheduled_epochs'] = scheduled
    if rows:
        best = max(rows, key=lambda r: float(r['eval_top1']))
        out.update(top1=float(rows[-1]['eval_top1']), top1_best=float(best['eval_top1']),
                   best_epoch=int(float(best['epoch'])) + 1, epochs=int(float(rows[-1]['epoch'])) + 1)
    finished = bool(rows) and scheduled > 0 and out['epochs'] >= scheduled
    out['state'] = 'done' if finished else record.get('state', 'queued')
    return out


def _mean(xs: Sequence[float]) -> Optional[float]:
    return sum(xs) / len(xs) if xs else None


def execute(run: Run, train_py: Path, nproc: int, progress: '_Progress', index: int) -> Dict[str, Any]:
    """Runs (or resumes) ``run``; returns its status. KeyboardInterrupt stops the child and is re-raised."""
    import yaml
    run.dir.mkdir(parents=True, exist_ok=True)
    config_file = run.dir / 'config.yaml'
    config_file.write_text(yaml.safe_dump(run.config, sort_keys=False), encoding='utf-8')
    record = _read_run(run)
    checkpoint = run.dir / 'last.pth.tar'
    resume = checkpoint if checkpoint.is_file() else None
    summary = run.dir / 'summary.csv'
    if resume is None and summary.exists():         # a start from scratch gets a fresh summary; the old one is kept
        summary.rename(run.dir / f"summary.attempt{int(record.get('attempts', 0))}.csv")
    cmd = run_command(train_py, config_file, nproc, resume)
    cwd = os.getcwd()
    (run.dir / 'command.txt').write_text(f"cd {shlex.quote(cwd)}\n{shlex.join(cmd)}\n", encoding='utf-8')
    attempts = int(record.get('attempts', 0)) + 1
    log_file = run.dir / 'train.log'
    with open(log_file, 'a', encoding='utf-8') as log:
        log.write(f"=== timm-camaug reproduce: attempt {attempts}, {time.strftime('%Y-%m-%d %H:%M:%S')}"
                  f"{', resuming from ' + str(resume) if resume else ''} ===\n$ {shlex.join(cmd)}\n")
    record.update(state='running', attempts=attempts, command=cmd, returncode=None)
    _write_json(run.dir / RUN_FILE, record)
    total = _scheduled_epochs(run, record)
    progress.update(index, run, f'running epoch 1 of {total}' if resume is None else
                    f"resuming from {checkpoint.name}", final=False)

    def on_epoch(done: int) -> None:
        if done < total:        # the last epoch's end is the run's end: its final line follows
            progress.update(index, run, f'running epoch {done + 1} of {total}', final=False)
    state = 'interrupted'
    result = None
    try:
        result = run_train_py_process(cmd, cwd, on_epoch=on_epoch, log_file=str(log_file))
        state = 'done' if result.returncode == 0 else 'failed'
    finally:
        if result is not None:
            found = SCHEDULED.findall(result.output)
            if found:
                record['scheduled_epochs'] = int(found[-1])
            record['epoch_seconds'] = list(record.get('epoch_seconds') or []) + result.epoch_seconds
            record['returncode'] = result.returncode
            record['log_tail'] = result.tail(TAIL_LINES) if result.returncode != 0 else None
            record['seconds'] = float(record.get('seconds') or 0.0) + result.seconds
        record['state'] = state
        _write_json(run.dir / RUN_FILE, record)
    status = run_status(run)
    if state == 'done' and status['state'] != 'done':      # exit code 0, yet the summary lacks epochs
        record.update(state='failed', log_tail=result.tail(TAIL_LINES) if result else None, returncode=0)
        record['error'] = (f"train.py exited normally but {summary} holds {status.get('epochs', 0)} of "
                           f"{status['scheduled_epochs']} epochs")
        _write_json(run.dir / RUN_FILE, record)
        status = run_status(run)
    return status


# --- progress lines

class _Progress:
    """One line per run: queued / running epoch k of n / done / failed (in place on a terminal)."""

    def __init__(self, runs: Sequence[Run], stream=None):
        self.stream = stream or sys.stdout
        self.tty = bool(getattr(self.stream, 'isatty', lambda: False)())
        self.n = len(runs)
        self.dw = max([len(r.dataset) for r in runs] + [1])
        self.mw = max([len(r.mode) for r in runs] + [1])
        self.open = False

    def label(self, index: int, run: Run) -> str:
        w = len(str(self.n))
        return f"[{index + 1:>{w}}/{self.n}] {run.dataset:<{self.dw}}  {run.mode:<{self.mw}}  seed {run.seed}"

    def update(self, index: int, run: Run, text: str, final: bool = True) -> None:
        line = f"{self.label(index, run)}  {text}"
        if self.tty:
            self.stream.write('\r\033[K' + line + ('\n' if final else ''))
            self.open = not final
        else:
            self.stream.write(line + '\n')
        self.stream.flush()


def _describe(status: Dict[str, Any], run: Run, output: Path, before: bool = False) -> str:
    state = status['state']
    if state == 'done':
        secs = _mean(status.get('epoch_seconds') or [])
        return (f"done{' before' if before else ''}: top-1 {status['top1']:.2f} (best {status['top1_best']:.2f}, "
                f"epoch {status['best_epoch']})"
                + (f", {secs:.1f} s/epoch" if secs is not None else ''))
    if state == 'failed':
        rc = status.get('returncode')
        log = os.path.relpath(run.dir / 'train.log', output)
        return (f"failed{' before' if before else ''} (exit code {rc})" if rc else
                f"failed ({status.get('error', 'see its log')})") + f": {log}"
    if state in ('interrupted', 'running'):
        return f"interrupted after {status.get('epochs', 0)} of {status['scheduled_epochs']} epochs"
    return 'queued'


# --- results

def summarize(runs: Sequence[Run], statuses: Dict[str, Dict[str, Any]], output: Path) -> List[Dict[str, Any]]:
    """One row per dataset and mode (results.json's ``rows``)."""
    rows = []
    groups: Dict[Tuple[str, str], List[Run]] = {}
    for r in runs:
        groups.setdefault((r.dataset, r.mode), []).append(r)
    for (dataset, mode), members in groups.items():
        done = [r for r in members if statuses[r.key]['state'] == 'done']
        failed = [r for r in members if statuses[r.key]['state'] == 'failed']
        top1 = [statuses[r.key]['top1'] for r in done]
        best = [statuses[r.key]['top1_best'] for r in done]
        secs = [s for s in (_mean(statuses[r.key].get('epoch_seconds') or []) for r in done) if s is not None]
        row_name = config_row(mode)
        paper = PAPER_TOP1.get(row_name, {}).get(dataset)
        mean = _mean(top1)
        rows.append({
            'dataset': dataset,
            'mode': mode,
            'config': str(members[0].source),
            'seeds': [r.seed for r in done],
            'top1_mean': _round(mean),
            'top1_std': _round(statistics.stdev(top1)) if len(top1) > 1 else None,
            'top1_best_mean': _round(_mean(best)),
            'epochs': sorted({statuses[r.key]['epochs'] for r in done}),
            'epoch_seconds': _round(_mean(secs), 3),
            'paper_top1': paper,
            'gap': _round(mean - paper) if mean is not None and paper is not None else None,
            'paper_note': PAPER_MISSING.get(row_name) if paper is None else None,
            'failed': [{'seed': r.seed, 'returncode': statuses[r.key].get('returncode'),
                        'error': statuses[r.key].get('error'),
                        'log': os.path.relpath(r.dir / 'train.log', output),
                        'log_tail': statuses[r.key].get('log_tail') or ''} for r in failed],
            'pending': [r.seed for r in members if r not in done and r not in failed],
        })
    return rows


def _round(x: Optional[float], digits: int = 4) -> Optional[float]:
    return None if x is None or not math.isfinite(x) else round(x, digits)


def _fmt(x: Optional[float], digits: int = 2) -> str:
    return '–' if x is None else f'{x:.{digits}f}'


def write_results(output: Path, ident: Dict[str, Any], runs: Sequence[Run], statuses: Dict[str, Dict[str, Any]]) -> \
        List[Dict[str, Any]]:
    rows = summarize(runs, statuses, output)
    per_run = [{'dataset': r.dataset, 'mode': r.mode, 'seed': r.seed, 'dir': os.path.relpath(r.dir, output),
                **{k: statuses[r.key].get(k) for k in ('state', 'top1', 'top1_best', 'best_epoch', 'epochs',
                                                      'scheduled_epochs', 'attempts', 'returncode')},
                'epoch_seconds': _round(_mean(statuses[r.key].get('epoch_seconds') or []), 3)} for r in runs]
    payload = {
        'rows': rows,
        'paper': {'source': PAPER_SOURCE, 'top1': PAPER_TOP1, 'missing': PAPER_MISSING},
        'settings': {k: v for k, v in ident.items() if k != 'configs'},
        'runs': per_run,
    }
    _write_json(output / 'results.json', payload)
    (output / 'results.md').write_text(format_markdown(rows, ident, per_run), encoding='utf-8')
    return rows


def format_markdown(rows: Sequence[Dict[str, Any]], ident: Dict[str, Any], per_run: Sequence[Dict[str, Any]]) -> str:
    states = [r['state'] for r in per_run]
    counts = ', '.join(f"{states.count(s)} {s}" for s in ('done', 'failed', 'interrupted', 'running', 'queued')
                       if states.count(s))
    out = ['# Reproduction of the SnapMix table (`timm-camaug reproduce`)', '',
           f"- train.py: `{ident['train_py']}` (sha256 {ident['train_py_sha256'][:12]}), "
           f"{ident['nproc']} process{'es' if ident['nproc'] > 1 else ''} per run",
           f"- data: `{ident['data_root']}`; seeds {', '.join(map(str, ident['seeds']))}",
           f"- runs: {len(per_run)} ({counts})"]
    if ident['set']:
        sets = ', '.join(f'`{k}={_yaml_text(v)}`' for k, v in ident['set'].items())
        out.append(f"- overrides (`--set`): {sets}: the runs do not follow the paper's setting, so the paper column "
                   "is a reference point only")
    out += ['', "Top-1 (%) on each dataset's validation split: the final epoch's mean ± standard deviation over the "
            "seeds that finished, and the mean of each seed's best epoch. Paper: the SnapMix paper's figure "
            "(ResNet-50 at 448 px, 200 epochs); gap = final mean − paper.", '',
            '| dataset | mode | seeds | top-1 final | top-1 best | epochs | s / epoch | paper | gap |',
            '|---|---|---:|---:|---:|---:|---:|---:|---:|']
    for row in rows:
        n_all = len(row['seeds']) + len(row['failed']) + len(row['pending'])
        seeds = f"{len(row['seeds'])}/{n_all}" + (f" ({len(row['failed'])} failed)" if row['failed'] else '')
        final = _fmt(row['top1_mean']) + (f" ± {_fmt(row['top1_std'])}" if row['top1_std'] is not None else '')
        paper = _fmt(row['paper_top1']) if row['paper_top1'] is not None else \
            ('n/a¹' if row['paper_note'] else '–')
        gap = '–' if row['gap'] is None else f"{row['gap']:+.2f}"
        epochs = ','.join(map(str, row['epochs'])) or '–'
        out.append(f"| {row['dataset']} | {row['mode']} | {seeds} | {final} | {_fmt(row['top1_best_mean'])} | "
                   f"{epochs} | {_fmt(row['epoch_seconds'], 1)} | {paper} | {gap} |")
    notes = sorted({row['paper_note'] for row in rows if row['paper_note']})
    out += ['', f"Paper figures: {PAPER_SOURCE}."]
    for note in notes:
        out.append(f"¹ Not shown: {note}.")
    failed = [(row, f) for row in rows for f in row['failed']]
    if failed:
        out += ['', '## Failed runs']
        for row, f in failed:
            why = f"exit code {f['returncode']}" if f['returncode'] else (f['error'] or 'see its log')
            out += ['', f"### {row['dataset']} / {row['mode']} / seed {f['seed']}: {why}", '',
                    f"Log: `{f['log']}`; its last lines:", '', '```', f['log_tail'].rstrip('\n'), '```']
    return '\n'.join(out) + '\n'


# --- command line

def register(subparsers) -> None:
    p = subparsers.add_parser(
        'reproduce', help="run the SnapMix paper's table (datasets x modes x seeds) through a patched train.py",
        description="Run a train.py patched by `timm-camaug patch` once per dataset, mode and seed, with "
                    "configs/<dataset>_<mode>.yaml (mode none: <dataset>_baseline.yaml) and --set overrides, and "
                    "write results.md and results.json (top-1 mean and std over seeds, final and best epoch, "
                    "seconds per epoch, the SnapMix paper's figure and the gap) into --output. Run the same command "
                    "again to resume: finished runs are kept, interrupted and failed ones restart from their last "
                    "checkpoint.")
    p.add_argument('--train-py', metavar='PATH', required=True,
                   help='train.py (or the timm checkout holding it), patched by `timm-camaug patch`')
    p.add_argument('--datasets', type=lambda s: _list_arg(s, '--datasets'), default=list(DEFAULT_DATASETS),
                   metavar='LIST', help=f"comma-separated (default: {','.join(DEFAULT_DATASETS)})")
    p.add_argument('--modes', type=lambda s: _list_arg(s, '--modes'), default=list(DEFAULT_MODES), metavar='LIST',
                   help=f"comma-separated rows, each run with configs/<dataset>_<mode>.yaml ('none': "
                        f"<dataset>_baseline.yaml) (default: {','.join(DEFAULT_MODES)}, the paper's ResNet-50 rows)")
    p.add_argument('--seeds', type=_seeds_arg, default=list(DEFAULT_SEEDS), metavar='LIST',
                   help=f"comma-separated (default: {','.join(map(str, DEFAULT_SEEDS))})")
    p.add_argument('--data-root', metavar='DIR', default='data',
                   help="folder holding one prepared dataset per name, <DIR>/<dataset>/{train,val} as "
                        "`timm-camaug prepare` writes them (default: data)")
    p.add_argument('--configs', metavar='DIR', default='configs',
                   help='folder of the <dataset>_<mode>.yaml configs (default: configs, as in the source checkout)')
    p.add_argument('--output', metavar='DIR', required=True,
                   help='folder for the runs and results (new, empty, or this reproduction\'s to resume it)')
    p.add_argument('--nproc', type=int, default=1, metavar='N',
                   help='processes (GPUs) per run, through torchrun when > 1 (default: 1); batch_size is per '
                        'process: --set batch_size=<16 / N> keeps the recipe\'s global batch')
    p.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                   help='override a config key for every run, the value parsed as YAML; keys are train.py\'s argument '
                        'names as in its YAML configs (e.g. --set epochs=2 --set model=test_resnet '
                        '--set img_size=64 --set pretrained=false); repeatable')
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.nproc < 1:
        raise _fail("--nproc must be >= 1")
    try:
        train_py = check_patched_train_py(args.train_py).resolve()
    except TrainPyError as e:
        raise _fail(str(e)) from None
    output = Path(args.output).resolve()
    try:
        runs = plan_runs(args, train_py)
        ident = identity(args, train_py, runs)
        resumed = check_output(output, ident)
        output.mkdir(parents=True, exist_ok=True)
        lock = _Lock(output).__enter__()
    except ReproduceError as e:
        raise _fail(str(e)) from None
    try:
        if not resumed:
            _write_json(output / STATE_FILE, dict(ident, created=time.strftime('%Y-%m-%d %H:%M:%S')))
        return _run_all(runs, train_py, args.nproc, output, ident, resumed)
    finally:
        lock.__exit__()


def _run_all(runs: Sequence[Run], train_py: Path, nproc: int, output: Path, ident: Dict[str, Any],
             resumed: bool) -> int:
    print(f"{'resuming' if resumed else 'reproduction'}: {len(runs)} runs ({len(ident['datasets'])} dataset(s) x "
          f"{len(ident['modes'])} mode(s) x {len(ident['seeds'])} seed(s)) in {output}, through {train_py}")
    progress = _Progress(runs)
    statuses = {r.key: run_status(r) for r in runs}
    for i, r in enumerate(runs):
        progress.update(i, r, _describe(statuses[r.key], r, output, before=True))
    write_results(output, ident, runs, statuses)
    t0 = time.perf_counter()
    try:
        for i, r in enumerate(runs):
            if statuses[r.key]['state'] == 'done':
                continue
            try:
                statuses[r.key] = execute(r, train_py, nproc, progress, i)
            except KeyboardInterrupt:
                statuses[r.key] = run_status(r)
                progress.update(i, r, _describe(statuses[r.key], r, output))
                raise
            progress.update(i, r, _describe(statuses[r.key], r, output))
            write_results(output, ident, runs, statuses)
    finally:
        write_results(output, ident, runs, statuses)
    failed = [r for r in runs if statuses[r.key]['state'] == 'failed']
    print(f"\n{len(runs) - len(failed)} of {len(runs)} runs done ({time.perf_counter() - t0:.0f} s this time); "
          f"results: {output / 'results.md'}" + (f"; {len(failed)} failed: their log tails are in results.md, run "
                                                   "the same command again to retry them" if failed else ''))
    return 1 if failed else 0
