"""What a run shows and leaves behind: progress bars, the summary, JSON lines, Markdown."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import trio
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from ._stats import Histogram
from ._targets import Target

# The columns of the load-run table: (aggregate key, heading, format).
LOAD_COLUMNS = (
    ("viewers", "viewers", "{}"),
    ("format", "fmt", "{}"),
    ("source_fps", "src fps", "{:.1f}"),
    ("delivered_fps", "frames/s", "{:.0f}"),
    ("delivered_MBps", "MB/s", "{:.1f}"),
    ("ceiling_ratio", "of ceiling", "{:.0%}"),
    ("fraction_min", "min frac", "{:.1%}"),
    ("fps_min", "min fps", "{:.1f}"),
    ("latency_p50_ms", "lat p50", "{:.1f}"),
    ("latency_p99_ms", "lat p99", "{:.1f}"),
    ("health_p99_ms", "health p99", "{:.1f}"),
    ("server_cpu_util", "srv CPU", "{:.0%}"),
    ("server_cpu_us_per_frame", "µs/frame", "{:.0f}"),
    ("server_rss_mb", "RSS MB", "{:.0f}"),
    ("rss_per_viewer_kb", "KB/viewer", "{:.0f}"),
    ("client_cpu_util", "client CPU", "{:.0%}"),
    ("other_cpu_util", "other CPU", "{:.0%}"),
)


def _cell(value: Any, fmt: str) -> str:
    if value is None:
        return "-"
    try:
        return fmt.format(value)
    except (ValueError, TypeError):
        return str(value)


class _Task:
    def __init__(self, progress: Progress | None, task_id: Any) -> None:
        self._progress = progress
        self._id = task_id

    def update(
        self, *, completed: float | None = None, total: float | None = None, info: str = ""
    ) -> None:
        if self._progress is None:
            return
        fields: dict[str, Any] = {"info": info}
        if completed is not None:
            fields["completed"] = completed
        if total is not None:
            fields["total"] = total
        self._progress.update(self._id, **fields)


class Reporter:
    """Rich progress bars while the load runs (or plain lines when ``progress`` is off)."""

    def __init__(self, *, progress: bool = True, console: Console | None = None) -> None:
        # Off a terminal (a log, a CI job) the tables keep their columns rather than wrapping.
        self.console = console or Console(
            highlight=False, width=None if sys.stdout.isatty() else 220
        )
        self._progress = (
            Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                TimeElapsedColumn(),
                console=self.console,
                refresh_per_second=4,
            )
            if progress
            else None
        )

    def __enter__(self) -> Reporter:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def note(self, text: str) -> None:
        self.console.print(text)

    @contextmanager
    def task(self, description: str, total: float | None = None) -> Iterator[_Task]:
        if self._progress is None:
            self.console.print(f"… {description}")
            yield _Task(None, None)
            return
        task_id = self._progress.add_task(description, total=total, info="")
        try:
            yield _Task(self._progress, task_id)
        finally:
            self._progress.remove_task(task_id)


class Results:
    """Everything measured in one harness run, written as JSON lines as it comes in."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.loads: list[dict[str, Any]] = []  # {"run", "scenario", "aggregate", "rows", "latency"}
        self.figures: list[dict[str, Any]] = []  # {"scenario", "run", "figures"}
        self.targets: list[Target] = []
        self.series: dict[str, list[tuple[float, float]]] = {}  # name -> points
        self.tables: list[dict[str, Any]] = []  # {"title", "columns", "rows"}

    async def write(self, *records: dict[str, Any]) -> None:
        lines = "".join(json.dumps(record, default=str) + "\n" for record in records)

        def append() -> None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as file:
                file.write(lines)

        await trio.to_thread.run_sync(append)

    async def add_load(
        self,
        scenario: str,
        run: str,
        params: dict[str, Any],
        rows: list[dict[str, Any]],
        aggregate: dict[str, Any],
        latency: Histogram,
    ) -> None:
        self.loads.append(
            {
                "scenario": scenario,
                "run": run,
                "params": params,
                "rows": rows,
                "aggregate": aggregate,
                "latency": latency,
            }
        )
        await self.write(
            {"kind": "run", "scenario": scenario, "run": run, "params": params, **aggregate},
            *({"kind": "viewer", "scenario": scenario, "run": run, **row} for row in rows),
            {
                "kind": "latency_histogram",
                "scenario": scenario,
                "run": run,
                "bucket_ms": 0.1,
                "counts": latency.to_json(),
            },
        )

    async def add_figures(self, scenario: str, run: str, figures: dict[str, Any]) -> None:
        self.figures.append({"scenario": scenario, "run": run, "figures": figures})
        await self.write({"kind": "figures", "scenario": scenario, "run": run, **figures})

    async def add_targets(self, *targets: Target) -> None:
        self.targets.extend(targets)
        await self.write(*(t.to_json() for t in targets))

    async def add_table(
        self,
        scenario: str,
        title: str,
        columns: tuple[tuple[str, str, str], ...],
        rows: list[dict[str, Any]],
    ) -> None:
        """Rows of one kind (the parts of a scenario, its rounds) as one table:
        ``columns`` are (row key, heading, format) like ``LOAD_COLUMNS``."""
        self.tables.append({"title": title, "columns": columns, "rows": rows})
        await self.write(
            *({"kind": "row", "scenario": scenario, "table": title, **row} for row in rows)
        )

    async def add_series(self, name: str, points: list[tuple[float, float]]) -> None:
        self.series[name] = points
        await self.write({"kind": "series", "name": name, "points": points})

    # -- the summary ------------------------------------------------------------------------

    def print_summary(self, console: Console) -> None:
        if self.loads:
            table = Table(title="load runs", title_justify="left", show_lines=False)
            table.add_column("run", no_wrap=True)
            for _, heading, _ in LOAD_COLUMNS:
                table.add_column(heading, justify="right")
            for load in self.loads:
                aggregate = {**load["params"], **load["aggregate"]}
                table.add_row(
                    load["run"], *(_cell(aggregate.get(k), f) for k, _, f in LOAD_COLUMNS)
                )
            console.print(table)
        for item in self.tables:
            table = Table(title=item["title"], title_justify="left")
            for _, heading, _ in item["columns"]:
                table.add_column(heading, justify="right")
            for row in item["rows"]:
                table.add_row(*(_cell(row.get(k), f) for k, _, f in item["columns"]))
            console.print(table)
        for item in self.figures:
            table = Table(title=item["run"], title_justify="left", show_header=False)
            table.add_column("figure")
            table.add_column("value", overflow="fold")
            for key, value in item["figures"].items():
                table.add_row(key, _format_value(value))
            console.print(table)
        if self.targets:
            table = Table(title="targets", title_justify="left")
            for heading in ("", "scenario", "target", "requirement", "measured"):
                table.add_column(heading)
            for target in self.targets:
                colour = {True: "green", False: "red", None: "yellow"}[target.passed]
                table.add_row(
                    f"[bold {colour}]{target.verdict}[/]",
                    target.scenario,
                    target.name,
                    target.requirement,
                    target.measured,
                )
            console.print(table)

    def markdown(self) -> str:
        out: list[str] = []
        if self.targets:
            out += [
                "## Targets",
                "",
                "| | scenario | target | requirement | measured |",
                "|---|---|---|---|---|",
            ]
            out += [
                f"| **{t.verdict}** | {t.scenario} | {t.name} | {t.requirement} | {t.measured} |"
                for t in self.targets
            ]
            out.append("")
        if self.loads:
            out += ["## Load runs", ""]
            out.append("| run | " + " | ".join(h for _, h, _ in LOAD_COLUMNS) + " |")
            out.append("|---" * (len(LOAD_COLUMNS) + 1) + "|")
            for load in self.loads:
                aggregate = {**load["params"], **load["aggregate"]}
                cells = (_cell(aggregate.get(k), f) for k, _, f in LOAD_COLUMNS)
                out.append(f"| {load['run']} | " + " | ".join(cells) + " |")
            out.append("")
        for item in self.tables:
            out += [f"### {item['title']}", ""]
            out.append("| " + " | ".join(h for _, h, _ in item["columns"]) + " |")
            out.append("|---" * len(item["columns"]) + "|")
            for row in item["rows"]:
                cells = (_cell(row.get(k), f) for k, _, f in item["columns"])
                out.append("| " + " | ".join(cells) + " |")
            out.append("")
        for item in self.figures:
            out += [f"### {item['run']}", "", "| figure | value |", "|---|---|"]
            out += [f"| {k} | {_format_value(v)} |" for k, v in item["figures"].items()]
            out.append("")
        return "\n".join(out)


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict | list):
        return json.dumps(value, default=str)
    return str(value)
