"""The driver's view of a training run: one progress display, one line per checkpoint, a short summary.

Rank 0 appends every logged step to `<run>/metrics.jsonl` (`revela.train.runfolder`) and Ray writes checkpoints under `<run>/`; `RunConsole`
follows both from the driver while `trainer.fit()` runs (worker output reaches the driver through Ray's log
forwarding, where a carriage-return bar would be mangled). On a terminal it draws a rich progress bar; when
stdout is a file (`ray job logs`, CI) it prints one plain line per log interval instead.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path
from typing import TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.text import Text

from revela.train.checkpoint import CHECKPOINT_MARKER
from revela.train.runfolder import EVAL_FILE, METRICS_FILE, read_temperature
from revela.train.sim_health import SimHealthWatch
from revela.train.temperature import Calibration


def _num(row: dict, key: str, spec: str) -> str:
    value = row.get(key)
    return "-" if value is None else format(value, spec)


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def step_stats(row: dict) -> str:
    """The numbers a person reads at a glance, from one metrics.jsonl row (missing keys shown as '-')."""
    return (f"loss {_num(row, 'loss', '.4f')} | pass-2 {_num(row, 'pass2_loss', '.4f')} | "
            f"Sim H {_num(row, 'sim_entropy', '.3f')}{_sim_share(row)} | {_num(row, 'groups_per_s', '.2f')} groups/s | "
            f"data wait {_num(row, 'data_wait_fraction', '.0%')}")


def _sim_share(row: dict) -> str:
    """Sim H as a share of its maximum ln(B-1), when the row has it: ' (72%)'."""
    share = row.get("sim_entropy_fraction")
    return "" if share is None or share != share else f" ({share:.0%})"


def step_line(row: dict, max_steps: int, eta_s: float | None) -> str:
    return f"step {row['step']}/{max_steps} | {step_stats(row)} | ETA {duration(eta_s)}"


def checkpoint_line(path: Path, meta: dict, dev: dict | None, eval_metric: str | None) -> str:
    parts = [f"checkpoint step {meta.get('step')}", f"loss {_num(meta.get('metrics', {}), 'loss', '.4f')}"]
    if eval_metric:
        parts.append(f"{eval_metric} {_num(dev or {}, eval_metric, '.4f')}" if dev else f"{eval_metric} not scored")
    return " | ".join(parts) + f" | {path}"


class TwoLineProgress(Progress):
    """A rich progress bar (step, bar, ETA) with the run's numbers on their own line below it, so that both fit an
    80-column terminal."""

    def __init__(self, console: Console):
        super().__init__(TextColumn("step"), MofNCompleteColumn(), BarColumn(bar_width=30),
                         TextColumn("ETA {task.fields[eta]}"), console=console)

    def get_renderables(self):
        yield self.make_tasks_table(self.tasks)
        for task in self.tasks:
            yield Text(task.fields["stats"])


class StepClock:
    """Seconds left, from the wall time between the logged steps seen so far in this session."""

    def __init__(self, max_steps: int):
        self.max_steps = max_steps
        self.first: tuple[int, float] | None = None
        self.last: tuple[int, float] | None = None

    def add(self, row: dict) -> float | None:
        point = (int(row["step"]), float(row.get("wall_time", time.time())))
        if self.last is None or point[0] <= self.last[0]:  # first row, or steps retrained after a restart
            self.first = point
        self.last = point
        steps = self.last[0] - self.first[0]
        if steps <= 0:
            return None
        return (self.last[1] - self.first[1]) / steps * max(self.max_steps - self.last[0], 0)


class MetricsTail:
    """New complete rows of a JSONL file that another process appends to."""

    def __init__(self, path: Path, from_end: bool = True):
        self.path = path
        self.offset = path.stat().st_size if from_end and path.is_file() else 0
        self.partial = b""

    def read(self) -> list[dict]:
        if not self.path.is_file():
            return []
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        self.offset += len(data)
        lines = (self.partial + data).split(b"\n")
        self.partial = lines.pop()
        return [json.loads(line) for line in lines if line.strip()]


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):  # not there yet, or still being copied
        return None


class RunConsole:
    """Context manager around `trainer.fit()`: follows the run directory from a background thread."""

    def __init__(self, run_dir: Path, max_steps: int, log_every: int = 1, eval_metric: str | None = None,
                 stream: TextIO | None = None, interactive: bool | None = None, poll_s: float = 0.5,
                 sim: str = "softmax"):
        self.run_dir = Path(run_dir)
        self.health = SimHealthWatch(sim)
        self.max_steps, self.log_every, self.eval_metric = max_steps, log_every, eval_metric
        self.stream = stream or sys.stdout
        self.interactive = self.stream.isatty() if interactive is None else interactive
        self.poll_s = poll_s
        self.clock = StepClock(max_steps)
        self.announced: set[Path] = set()
        self.pending: dict[Path, dict] = {}
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.progress = None
        self.task = None

    # ------------------------------------------------------------------------------------------- lifecycle

    def __enter__(self) -> "RunConsole":
        self.tail = MetricsTail(self.run_dir / METRICS_FILE)  # a resumed run's earlier rows are not news
        self.temperature = read_temperature(self.run_dir)  # nor its earlier tau; a resumed worker rewrites it
        self.announced = set(self._checkpoint_dirs())
        if self.interactive:
            self.progress = TwoLineProgress(Console(file=self.stream))
            self.task = self.progress.add_task("train", total=self.max_steps, eta="-",
                                               stats="waiting for the first step")
            self.progress.start()
        self.thread = threading.Thread(target=self._follow, name="revela-console", daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop_event.set()
        self.thread.join()
        self.poll(final=True)
        with self.lock:
            warning = self.health.finish()  # a run shorter than the health window: the verdict over all of it
        if warning:
            self.emit(warning)
        if self.progress is not None:
            self.progress.stop()

    def _follow(self) -> None:
        while not self.stop_event.wait(self.poll_s):
            try:
                self.poll()
            except Exception as err:  # the display must never take the run down
                self.emit(f"(progress display stopped: {err})")
                return

    # ---------------------------------------------------------------------------------------------- polling

    def poll(self, final: bool = False) -> None:
        with self.lock:
            self._check_temperature()
            for row in self.tail.read():
                if "step" in row:
                    self._show_step(row)
            self._check_checkpoints(final)

    def emit(self, line: str) -> None:
        if self.progress is not None:
            self.progress.console.print(line, markup=False, highlight=False)
        else:
            print(line, file=self.stream, flush=True)

    def _show_step(self, row: dict) -> None:
        eta = self.clock.add(row)
        step = int(row["step"])
        if self.progress is not None:
            self.progress.update(self.task, completed=step, eta=duration(eta), stats=step_stats(row))
        elif step % self.log_every == 0 or step >= self.max_steps:
            self.emit(step_line(row, self.max_steps, eta))
        warning = self.health.add(row)
        if warning:
            self.emit(warning)

    def _check_temperature(self) -> None:
        current = read_temperature(self.run_dir)
        if current and current != self.temperature:
            self.temperature = current
            self.emit(Calibration(**current).line())

    def _checkpoint_dirs(self) -> list[Path]:
        return sorted(p for p in self.run_dir.glob("checkpoint_*") if p.is_dir())

    def _check_checkpoints(self, final: bool) -> None:
        for path in self._checkpoint_dirs():
            if path in self.announced or path in self.pending:
                continue
            meta = _read_json(path / CHECKPOINT_MARKER)
            if meta is not None:
                self.pending[path] = meta
        for path, meta in sorted(self.pending.items(), key=lambda kv: kv[1].get("step", 0)):
            dev = None
            if self.eval_metric:
                dev = (_read_json(path / EVAL_FILE) or {}).get("metrics")
                if dev is None and not final and path.exists():
                    continue  # the dev score comes from an evaluation task; the line waits for it
            self.emit(checkpoint_line(path, meta, dev, self.eval_metric))
            self.announced.add(path)
            del self.pending[path]


def final_summary(report: dict, report_path: Path) -> list[str]:
    """A few lines for the end of a run: held-out numbers before/after, the best checkpoint, where the files are."""
    lines = [f"done: {report.get('steps')} steps in {duration(report.get('wall_s'))}"]
    before, after = (report.get("heldout") or {}).get("before"), (report.get("heldout") or {}).get("after")
    if before and after:
        lines.append(f"held-out ({after['groups']} groups): pass-3 loss {before['pass3_loss']:.4f} -> "
                     f"{after['pass3_loss']:.4f}, pass-2 loss {before['pass2_loss']:.4f} -> "
                     f"{after['pass2_loss']:.4f}, top-1 same-document hit-rate "
                     f"{_num(before, 'top1_same_doc', '.3f')} -> {_num(after, 'top1_same_doc', '.3f')}")
    if report.get("checkpoint"):
        lines.append(f"checkpoint: {report['checkpoint']}")
    if report.get("plot"):
        lines.append(f"loss curve: {report['plot']}")
    lines.append(f"report: {report_path}")
    return lines
