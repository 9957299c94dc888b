"""Compare runs: reward curves per component, combined reward and response length, and a
table of final rewards. Reads only `<run>/metrics.jsonl` (and the run name from
`<run>/config.yaml`), so it works on runs from any machine, finished or still going.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import yaml

from gdpo_megatron.metrics.jsonl import MetricsFileError, read_metrics
from gdpo_megatron.metrics.keys import REWARD_COMBINED, RESPONSE_LEN_MEAN, reward_components, reward_mean


@dataclass
class RunCurves:
    name: str
    path: Path
    by_step: dict[int, dict[str, Any]]

    def keys(self) -> set[str]:
        return {key for record in self.by_step.values() for key in record}

    def series(self, key: str) -> tuple[list[int], list[float]]:
        """(steps, values) of `key`, skipping steps where it is absent or non-finite (null)."""
        steps, values = [], []
        for step in sorted(self.by_step):
            value = self.by_step[step].get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                steps.append(step)
                values.append(float(value))
        return steps, values


def load_run(run_dir: str | Path) -> RunCurves:
    """A run's metrics, merged per step (validation may log a second record for a step)."""
    path = Path(run_dir)
    if not path.is_dir():
        raise MetricsFileError(f"{path}: not a directory (expected a run directory with metrics.jsonl)")
    metrics_file = path / "metrics.jsonl"
    if not metrics_file.is_file():
        raise MetricsFileError(f"{path}: has no metrics.jsonl; is it a run directory, and has the run "
                               "finished its first step?")
    by_step: dict[int, dict[str, Any]] = {}
    for record in read_metrics(metrics_file):
        by_step.setdefault(record["step"], {}).update(record)
    if not by_step:
        raise MetricsFileError(f"{metrics_file}: empty; the run has not logged a step yet")
    return RunCurves(_run_name(path), path, by_step)


def _run_name(path: Path) -> str:
    config = path / "config.yaml"
    if config.is_file():
        try:
            data = yaml.safe_load(config.read_text(encoding="utf-8"))
        except yaml.YAMLError:
            data = None
        if isinstance(data, dict) and isinstance(data.get("name"), str) and data["name"]:
            return data["name"]
    return path.resolve().name


def label_runs(runs: Sequence[RunCurves]) -> list[str]:
    """Run names, made unique with the directory name where two runs share a name."""
    names = [run.name for run in runs]
    labels = []
    for run in runs:
        if names.count(run.name) > 1:
            labels.append(f"{run.name} ({run.path.resolve().name})")
        else:
            labels.append(run.name)
    if len(set(labels)) < len(labels):
        labels = [f"{label} [{i + 1}]" for i, label in enumerate(labels)]
    return labels


def panel_keys(runs: Sequence[RunCurves]) -> list[tuple[str, str]]:
    """(title, key) of each panel: every reward component found, combined, response length."""
    all_keys = set().union(*(run.keys() for run in runs))
    panels = [(f"reward: {name}", reward_mean(name)) for name in reward_components(all_keys)]
    panels.append(("reward: combined", REWARD_COMBINED))
    panels.append(("response length (tokens)", RESPONSE_LEN_MEAN))
    return panels


def moving_average(values: Sequence[float], window: int) -> list[float]:
    """Trailing mean over up to `window` points (window 1: the values themselves)."""
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def plot_runs(runs: Sequence[RunCurves], out: str | Path, *, smooth: int = 1, title: str | None = None):
    """Draw one panel per curve, one line per run; saves `out` (PNG) and returns the figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = panel_keys(runs)
    labels = label_runs(runs)
    columns = min(3, len(panels))
    rows = math.ceil(len(panels) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(5 * columns, 3.6 * rows), squeeze=False)
    for index, (panel_title, key) in enumerate(panels):
        axis = axes[index // columns][index % columns]
        for run_index, (run, label) in enumerate(zip(runs, labels)):
            steps, values = run.series(key)
            if steps:
                # A fixed colour per run: a run missing from one panel must not shift the others.
                axis.plot(steps, moving_average(values, smooth), label=label, linewidth=1.6,
                          color=f"C{run_index % 10}")
        axis.set_title(panel_title)
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
        if not axis.lines:
            axis.text(0.5, 0.5, f"no {key} logged", ha="center", va="center", transform=axis.transAxes)
    for index in range(len(panels), rows * columns):
        axes[index // columns][index % columns].set_visible(False)
    # One legend for the figure, from every panel (a run may be absent from some).
    legend: dict[str, Any] = {}
    for axis in axes.flat:
        for handle, label in zip(*axis.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    legend_labels = [label for label in labels if label in legend]
    handles = [legend[label] for label in legend_labels]
    if handles:
        figure.legend(handles, legend_labels, loc="lower center", ncol=min(len(handles), 4), frameon=False)
    if title:
        figure.suptitle(title)
    figure.tight_layout(rect=(0, 0.06 if handles else 0, 1, 1))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)
    plt.close(figure)
    return figure


def final_rewards(runs: Sequence[RunCurves], last_n: int = 10) -> tuple[list[str], list[list[Any]]]:
    """(header, rows): per run the mean of each plotted curve over its last `last_n` logged steps."""
    if last_n < 1:
        raise ValueError(f"last_n must be >= 1, got {last_n}")
    panels = panel_keys(runs)
    header = ["run", "steps"] + [key for _, key in panels]
    rows = []
    for run, label in zip(runs, label_runs(runs)):
        row: list[Any] = [label, max(run.by_step)]
        for _, key in panels:
            _, values = run.series(key)
            tail = values[-last_n:]
            row.append(sum(tail) / len(tail) if tail else None)
        rows.append(row)
    return header, rows


def format_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table (numbers to 4 significant digits, missing values as '-')."""
    def cell(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
