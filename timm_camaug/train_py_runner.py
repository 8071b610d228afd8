""" Running a train.py patched by ``timm-camaug patch`` as a subprocess, and reading what it wrote: the epochs
it finished (from its log lines, for a progress bar) and its final top-1 (from its ``summary.csv``, else
its ``--result`` JSON). Used by ``demo --train-py`` and ``reproduce``.
"""
import json
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

__all__ = ['TrainPyError', 'check_patched_train_py', 'ProcessResult', 'run_train_py_process',
           'parse_train_py_result', 'final_summary_row', 'summary_rows', 'EpochProgress', 'RESULT_JSON_EPOCHS']


class TrainPyError(ValueError):
    """The train.py given cannot be run, or a run failed; the message says why."""


def check_patched_train_py(path: str) -> Path:
    """The train.py file of ``path`` (a file or a timm checkout), if it carries the whole timm-camaug patch."""
    from .train_patch import MARKER, PatchError, inspect_text, resolve_train_py
    try:
        p = resolve_train_py(path)
        text = p.read_text(encoding='utf-8', errors='replace')
    except (PatchError, OSError) as e:
        raise TrainPyError(f"--train-py: {e}") from None
    stock = [s.part for s in inspect_text(text) if s.state == 'stock']     # anchor there, part not applied
    if stock and MARKER in text:
        raise TrainPyError(f"{p} is only partly patched for --mix-mode (part(s) {', '.join(map(str, stock))} "
                           f"not applied); run `timm-camaug patch --revert {path}` and then "
                           f"`timm-camaug patch {path}`")
    if stock or MARKER not in text:
        raise TrainPyError(f"{p} is not patched for --mix-mode; run `timm-camaug patch {path}` first (it adds "
                           "the flag to timm's train.py)")
    return p


@dataclass
class ProcessResult:
    """A finished train.py process: its exit code, its whole output, and its wall time; the first epoch it
    trained (a resumed run starts after its checkpoint's) and the wall seconds of each epoch it finished, from
    its log (the first one from its first training log line, so without train.py's start-up)."""
    returncode: int
    output: str
    seconds: float
    first_epoch: Optional[int] = None
    epoch_seconds: List[float] = field(default_factory=list)

    def tail(self, lines: int = 25) -> str:
        return ''.join(self.output.splitlines(keepends=True)[-lines:])


def run_train_py_process(cmd: List[str], cwd: str, on_epoch: Optional[Callable[[int], None]] = None,
                         log_file: Optional[str] = None) -> ProcessResult:
    """Run ``cmd`` (a train.py command line) in ``cwd``, with its output (stdout and stderr) read line by
    line: ``on_epoch(k)`` is called as epoch ``k`` (1-based count of finished epochs) ends, and the lines are
    appended to ``log_file`` as they come."""
    t0 = time.perf_counter()
    lines: List[str] = []
    epochs, shown = EpochProgress(), 0
    last_mark: Optional[float] = None       # when the previous epoch ended (or the first one started)
    epoch_seconds: List[float] = []
    log = open(log_file, 'a', encoding='utf-8') if log_file else None
    try:
        # its own session: stopping it stops what it started too (torchrun's workers, loader workers)
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                                cwd=cwd, start_new_session=os.name == 'posix')
        try:
            for line in proc.stdout:
                lines.append(line)
                if log is not None:
                    log.write(line)
                    log.flush()
                done = epochs.feed(line)
                if epochs.first is not None:
                    now = time.perf_counter()
                    if last_mark is None:
                        last_mark = now
                    elif done > shown:
                        epoch_seconds.extend([(now - last_mark) / (done - shown)] * (done - shown))
                        last_mark = now
                if on_epoch is not None and done > shown:
                    on_epoch(done)
                shown = done
            rc = proc.wait()
        except BaseException:       # interrupted: the child and its own children go with us
            _kill(proc)
            raise
    finally:
        if log is not None:
            log.close()
    return ProcessResult(rc, ''.join(lines), time.perf_counter() - t0, epochs.first, epoch_seconds)


def _kill(proc: subprocess.Popen) -> None:
    if os.name == 'posix':
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            proc.kill()
    else:
        proc.kill()
    proc.wait()


# train.py's --result JSON lists the best epochs only (sorted by top-1, at most this many)
RESULT_JSON_EPOCHS = 10


def final_summary_row(summary_csv: Optional[str]) -> Optional[Dict[str, str]]:
    """The last row of train.py's ``summary.csv`` (the final epoch) when it holds a validation top-1."""
    if not summary_csv or not os.path.isfile(summary_csv):
        return None
    import csv
    with open(summary_csv, newline='') as f:
        rows = [r for r in csv.DictReader(f) if r.get('epoch') not in (None, '', 'epoch')]
    return rows[-1] if rows and rows[-1].get('eval_top1') not in (None, '') else None


def summary_rows(summary_csv: Optional[str]) -> List[Dict[str, str]]:
    """The rows of train.py's ``summary.csv`` that hold a validation top-1, one per epoch in epoch order (a
    resumed run appends its rows, with a second header line, and may repeat the epoch it was interrupted in:
    the last row of an epoch wins)."""
    if not summary_csv or not os.path.isfile(summary_csv):
        return []
    import csv
    by_epoch: Dict[int, Dict[str, str]] = {}
    with open(summary_csv, newline='') as f:
        for r in csv.DictReader(f):
            try:
                epoch = int(float(r.get('epoch') or ''))
                float(r.get('eval_top1') or '')
            except ValueError:      # a repeated header line, or an epoch without validation
                continue
            by_epoch[epoch] = r
    return [by_epoch[e] for e in sorted(by_epoch)]


def _result_json(stdout: str) -> Optional[List[Dict[str, Any]]]:
    i = stdout.rfind('--result')
    if i < 0:
        return None
    try:
        records, _ = json.JSONDecoder().raw_decode(stdout[i + len('--result'):].lstrip())
    except ValueError:
        return None
    if not isinstance(records, list):
        return None
    records = [r for r in records if isinstance(r, dict) and isinstance(r.get('epoch'), int)
               and 'top1' in (r.get('validation') or {})]
    return records or None


def parse_train_py_result(stdout: str, summary_csv: Optional[str] = None,
                          epochs: Optional[int] = None) -> Tuple[float, int]:
    """(top-1 %, epochs) of the final epoch of a train.py run.

    Read from train.py's ``summary.csv`` (one row per evaluated epoch, the last row the final epoch) when
    ``summary_csv`` exists, else from its ``--result`` JSON. That JSON lists only the 10 best epochs, so it is
    accepted only when its latest epoch is ``epochs - 1`` (``epochs`` not given: when it lists fewer than 10
    epochs, none left out).
    """
    row = final_summary_row(summary_csv)
    if row is not None:
        return float(row['eval_top1']), int(float(row['epoch'])) + 1
    records = _result_json(stdout)
    if records is None:
        raise ValueError("train.py finished without a summary.csv nor a '--result' JSON with validation top-1")
    last = max(records, key=lambda r: r['epoch'])
    final = last['epoch'] == epochs - 1 if epochs is not None else len(records) < RESULT_JSON_EPOCHS
    if not final:
        raise ValueError("train.py wrote no summary.csv, and its '--result' JSON (its best epochs only) may not "
                         "hold the final epoch")
    return float(last['validation']['top1']), last['epoch'] + 1


class EpochProgress:
    """Epochs a train.py run has finished, from its log lines: epoch E ends with the last batch of its
    validation (``Test: [ n/n]``) or, when train.py skips validation, as ``Train: E+1 [...`` starts."""
    TRAIN = re.compile(r'Train: (\d+) \[')
    TEST_END = re.compile(r'Test: \[\s*(\d+)/(\d+)\]')

    def __init__(self) -> None:
        self.done = 0
        self.training: Optional[int] = None     # the epoch whose Train lines came last
        self.first: Optional[int] = None        # the first epoch with Train lines (after a resume: not 0)

    def feed(self, line: str) -> int:
        """Read one log line; returns the epochs finished so far."""
        m = self.TRAIN.search(line)
        if m:
            self.training = int(m.group(1))
            if self.first is None:
                self.first = self.training
            self.done = max(self.done, self.training)
        else:
            m = self.TEST_END.search(line)
            if m and m.group(1) == m.group(2) and self.training is not None:
                self.done = max(self.done, self.training + 1)
        return self.done


