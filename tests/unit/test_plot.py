"""`gdpo plot`: curves per reward component, one line per run, final-reward table."""

from __future__ import annotations

import argparse
import json

import pytest

from gdpo_megatron.commands import plot as plot_command
from gdpo_megatron.metrics.jsonl import MetricsFileError
from gdpo_megatron.plotting import final_rewards, format_table, label_runs, load_run, moving_average, plot_runs


def _write_run(path, name, rows):
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(f"name: {name}\nseed: 1\n")
    with open(path / "metrics.jsonl", "w") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")


@pytest.fixture
def two_runs(tmp_path):
    gdpo = [{"step": s, "reward/format/mean": 0.1 * s, "reward/correct/mean": 0.05 * s,
             "reward/combined/mean": 0.15 * s, "response_len/mean": 20.0 - s} for s in range(1, 6)]
    gdpo.append({"step": 5, "val/reward/combined/mean": 0.9})  # a second record for step 5 merges in
    grpo = [{"step": s, "reward/format/mean": 0.2, "reward/combined/mean": None if s == 2 else 0.3,
             "response_len/mean": 15.0} for s in range(1, 4)]
    _write_run(tmp_path / "gdpo", "tiny-gdpo", gdpo)
    _write_run(tmp_path / "grpo", "tiny-grpo", grpo)
    return tmp_path / "gdpo", tmp_path / "grpo"


def test_plot_has_one_line_per_run_in_each_panel(two_runs, tmp_path):
    runs = [load_run(p) for p in two_runs]
    out = tmp_path / "out" / "compare.png"
    figure = plot_runs(runs, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    visible = [axis for axis in figure.axes if axis.get_visible()]
    panels = {axis.get_title(): {line.get_label(): (list(line.get_xdata()), list(line.get_ydata()))
                                 for line in axis.lines} for axis in visible}
    assert list(panels) == ["reward: correct", "reward: format", "reward: combined", "response length (tokens)"]
    assert set(panels["reward: format"]) == {"tiny-gdpo", "tiny-grpo"}
    assert set(panels["reward: correct"]) == {"tiny-gdpo"}  # GRPO run never logged it
    assert panels["reward: combined"]["tiny-grpo"] == ([1, 3], [0.3, 0.3])  # the null step is skipped
    steps, values = panels["response length (tokens)"]["tiny-gdpo"]
    assert steps == [1, 2, 3, 4, 5] and values == [19.0, 18.0, 17.0, 16.0, 15.0]
    assert len(figure.legends) == 1
    assert [t.get_text() for t in figure.legends[0].get_texts()] == ["tiny-gdpo", "tiny-grpo"]
    colours = {(line.get_label(), line.get_color()) for axis in visible for line in axis.lines}
    assert colours == {("tiny-gdpo", "C0"), ("tiny-grpo", "C1")}


def test_final_rewards_table_means_over_last_n(two_runs):
    runs = [load_run(p) for p in two_runs]
    header, rows = final_rewards(runs, last_n=2)
    assert header == ["run", "steps", "reward/correct/mean", "reward/format/mean", "reward/combined/mean",
                      "response_len/mean"]
    gdpo, grpo = rows
    assert gdpo[:2] == ["tiny-gdpo", 5]
    assert gdpo[2:] == pytest.approx([0.05 * 4.5, 0.1 * 4.5, 0.15 * 4.5, 15.5])
    assert grpo == ["tiny-grpo", 3, None, pytest.approx(0.2), pytest.approx(0.3), pytest.approx(15.0)]
    table = format_table(header, rows)
    assert table.splitlines()[2] == "| tiny-gdpo | 5 | 0.225 | 0.45 | 0.675 | 15.5 |"
    assert table.splitlines()[3] == "| tiny-grpo | 3 | - | 0.2 | 0.3 | 15 |"


def test_same_names_are_disambiguated_by_directory(tmp_path):
    row = [{"step": 1, "reward/combined/mean": 1.0}]
    _write_run(tmp_path / "seed1", "tiny", row)
    _write_run(tmp_path / "seed2", "tiny", row)
    assert label_runs([load_run(tmp_path / "seed1"), load_run(tmp_path / "seed2")]) == ["tiny (seed1)", "tiny (seed2)"]


def test_moving_average_golden():
    assert moving_average([1.0, 2.0, 3.0, 4.0], 1) == [1.0, 2.0, 3.0, 4.0]
    assert moving_average([1.0, 2.0, 3.0, 4.0], 2) == [1.0, 1.5, 2.5, 3.5]
    assert moving_average([3.0, 6.0, 9.0], 5) == [3.0, 4.5, 6.0]


def test_run_dir_without_metrics_is_a_clear_error(tmp_path):
    (tmp_path / "empty-run").mkdir()
    with pytest.raises(MetricsFileError, match=r"empty-run: has no metrics.jsonl"):
        load_run(tmp_path / "empty-run")
    with pytest.raises(MetricsFileError, match=r"nowhere: not a directory"):
        load_run(tmp_path / "nowhere")


def _cli(argv):
    parser = argparse.ArgumentParser()
    plot_command.register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


def test_plot_command_writes_png_and_table(two_runs, tmp_path, capsys):
    out = tmp_path / "cmp.png"
    table_out = tmp_path / "table.md"
    code = _cli(["plot", str(two_runs[0]), str(two_runs[1]), "--out", str(out), "--last", "2",
                 "--table-out", str(table_out)])
    assert code == 0
    assert out.stat().st_size > 10_000
    printed = capsys.readouterr().out
    assert "final rewards (mean over the last 2 steps)" in printed
    assert "| tiny-gdpo | 5 | 0.225 | 0.45 | 0.675 | 15.5 |" in printed
    assert table_out.read_text().startswith("| run | steps |")


def test_plot_command_reports_missing_metrics(tmp_path, capsys):
    (tmp_path / "not-a-run").mkdir()
    assert _cli(["plot", str(tmp_path / "not-a-run"), "--out", str(tmp_path / "x.png")]) == 2
    assert "gdpo plot: error: " in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
