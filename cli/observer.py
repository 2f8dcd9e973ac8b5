"""A lifecycle-hook observer that shows a run in the terminal with rich (process 0 only)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

import dnax


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


class RichObserver:
    """Renders dnax's lifecycle hooks: one progress bar per task, one line per stage."""

    def __init__(self, console: Console):
        self.console = console
        self.progress = Progress(
            SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(),
            MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"), console=console, transient=True,
        )
        self.tasks: dict[tuple[str, str], TaskID] = {}

    @dnax.hookimpl
    def dnax_pipeline_start(self, config: Any, run_dir: Path, plan: Sequence[Any]) -> None:
        self.console.print(f"[bold]dnax[/] pipeline [cyan]{config.pipeline.name}[/] → {run_dir}")
        for step in plan:
            self.console.print(f"  [dim]plan:[/] {step.stage:<8} {step.action:<7} "
                               f"[dim]({step.reason})[/]", highlight=False)
        self.progress.start()

    @dnax.hookimpl
    def dnax_pipeline_end(self, config: Any, run_dir: Path, results: Mapping[str, Any]) -> None:
        self.progress.stop()

    @dnax.hookimpl
    def dnax_stage_start(self, stage: str, run_dir: Path) -> None:
        self.tasks = {k: v for k, v in self.tasks.items() if k[0] != stage}

    @dnax.hookimpl
    def dnax_stage_end(self, stage: str, run_dir: Path, result: Any, skipped: bool,
                       seconds: float) -> None:
        for (s, _), task in list(self.tasks.items()):
            if s == stage:
                self.progress.remove_task(task)
        how = "[dim]reused (unchanged)[/]" if skipped else f"done in {seconds:.1f} s"
        self.console.print(f"  [green]✓[/] {stage:<8} {how}")

    @dnax.hookimpl
    def dnax_progress(self, stage: str, task: str, completed: int, total: int | None,
                      info: Mapping[str, Any]) -> None:
        key = (stage, task)
        text = "  ".join(f"{k}={_fmt(v)}" for k, v in info.items())
        if key not in self.tasks:
            for (s, t), tid in list(self.tasks.items()):  # a new task of a stage ends its last
                if s == stage:
                    self.progress.remove_task(tid)
                    del self.tasks[(s, t)]
            self.tasks[key] = self.progress.add_task(f"{stage}: {task}", total=total, info=text)
        self.progress.update(self.tasks[key], completed=completed, total=total, info=text)

    @dnax.hookimpl
    def dnax_log(self, stage: str, message: str) -> None:
        self.console.print(f"  [dim]{stage}:[/] {message}")
