"""`ascsharp cost`: hours per rule from a run's Snakemake benchmark files, by hand."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

from ascsharp.analysis.cost import GPU_RULES, cost_table
from ascsharp.cli import main

ROOT = Path(__file__).resolve().parents[2]
HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def bench(path: Path, *rows: tuple[float, float, float]) -> None:
    """A benchmark file as Snakemake writes it: (s, max_rss, cpu_time) per row."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"{s}\t0:00:01\t{rss}\t1\t1\t1\t0\t0\t50\t{cpu}\n" for s, rss, cpu in rows]
    path.write_text(HEADER + "".join(lines))


@pytest.fixture
def tree(tmp_path):
    b = tmp_path / "benchmarks"
    bench(b / "train/arch~cnn10/optimizer~adam/seed~1.tsv", (3600, 900, 3000))
    bench(b / "train/arch~cnn10/optimizer~sgd/seed~1.tsv", (1800, 1200, "NA"))
    bench(b / "landscape_shard/run/direction_seed~42/shard~0.tsv", (720, 500, 700))
    bench(b / "features/train.tsv", (360, 300, 1440), (360, 300, 1440))  # repeat(): 2 rows
    return b


def test_hours_per_rule_by_hand(tree):
    t = cost_table(tree).set_index("rule")
    assert list(t.index) == ["features", "landscape_shard", "train", "total"]
    assert t.loc["train", "jobs"] == 2
    assert t.loc["train", "wall_h"] == pytest.approx(1.5)
    assert t.loc["train", "cpu_h"] == pytest.approx(3000 / 3600)  # NA counts as nothing
    assert t.loc["train", "gpu_h"] == pytest.approx(1.5)
    assert t.loc["landscape_shard", "gpu_h"] == pytest.approx(0.2)
    assert t.loc["features", "gpu_h"] == 0  # a CPU rule
    assert t.loc["features", "cpu_h"] == pytest.approx(0.8)  # both rows
    assert t.loc["features", "jobs"] == 1
    assert t.loc["total", "gpu_h"] == pytest.approx(1.7)
    assert t.loc["total", "wall_h"] == pytest.approx(1.9)
    assert t.loc["total", "max_rss_mb"] == 1200


def test_cli_prints_and_writes_the_table(tree, tmp_path, capsys):
    assert main(["cost", str(tree), "--out", str(tmp_path / "cost.tsv")]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"^\s*train\s+2\s+1\.5\s", printed, re.M), printed
    written = pd.read_csv(tmp_path / "cost.tsv", sep="\t")
    assert written["gpu_h"].iloc[-1] == pytest.approx(1.7)


def test_bad_trees_are_named(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["cost", str(tmp_path / "nowhere")])
    assert "nowhere: no such benchmarks folder" in capsys.readouterr().err
    (tmp_path / "b/train").mkdir(parents=True)
    (tmp_path / "b/train/x.tsv").write_text("a\tb\n1\t2\n")
    with pytest.raises(ValueError, match=r"x.tsv: not a Snakemake benchmark file"):
        cost_table(tmp_path / "b")


def test_gpu_rules_are_the_rules_with_a_gpu_resource():
    text = "\n".join(p.read_text() for p in sorted((ROOT / "workflow/rules").glob("*.smk")))
    rules = re.split(r"^rule (\w+):", text, flags=re.M)
    with_gpu = {name for name, body in zip(rules[1::2], rules[2::2], strict=True)
                if re.search(r"^\s+gpu=", body, re.M)}  # fmt: skip
    assert with_gpu == set(GPU_RULES)
