"""What a finished run cost, per rule, from Snakemake's benchmark files.

Every rule that runs a command declares `benchmark: benchmarks/<rule>/<its wildcards>.tsv`;
Snakemake writes one row per run of the job there (s: wall seconds, cpu_time: user + system CPU
seconds, max_rss: MB, ...). A rerun of a job (after a kill, or a retry) overwrites its file, so an
interrupted attempt's time is not counted.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pandas as pd

# The rules that declare `resources: gpu=1` in workflow/rules (a test keeps the two equal): their
# wall time is device time, whatever device they ran on.
GPU_RULES = ("interpolate", "landscape_shard", "measure", "train", "trajectory_plane")
COLUMNS = ["rule", "jobs", "wall_h", "cpu_h", "gpu_h", "max_rss_mb"]


def read_benchmarks(root: str | Path) -> pd.DataFrame:
    """One row per benchmark row: rule (first folder under `root`), job (the rest of the path),
    s, cpu_time and max_rss (NaN where Snakemake wrote NA)."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root}: no such benchmarks folder")
    frames = []
    for path in sorted(root.rglob("*.tsv")):
        try:
            table = pd.read_csv(path, sep="\t", na_values=["NA", "-"])
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: unreadable benchmark file ({type(e).__name__})") from None
        if "s" not in table.columns:
            raise ValueError(f"{path}: not a Snakemake benchmark file (no column 's')")
        rel = path.relative_to(root)
        if len(rel.parts) < 2:
            raise ValueError(f"{path}: expected benchmarks/<rule>/<job>.tsv")
        frames.append(pd.DataFrame({
            "rule": rel.parts[0],
            "job": str(Path(*rel.parts[1:]).with_suffix("")),
            "s": pd.to_numeric(table["s"], errors="coerce"),
            "cpu_time": pd.to_numeric(table.get("cpu_time"), errors="coerce"),
            "max_rss": pd.to_numeric(table.get("max_rss"), errors="coerce"),
        }))  # fmt: skip
    if not frames:
        raise ValueError(f"{root}: no benchmark files (*.tsv)")
    return pd.concat(frames, ignore_index=True)


def cost_table(root: str | Path, gpu_rules: Iterable[str] = GPU_RULES) -> pd.DataFrame:
    """Per rule: jobs, wall hours, CPU hours, GPU hours (wall hours of the GPU rules, one device
    per job) and the largest resident memory; then a row `total`."""
    rows = read_benchmarks(root)
    gpu = set(gpu_rules)
    per_rule = rows.groupby("rule").agg(
        jobs=("job", "nunique"), s=("s", "sum"), cpu=("cpu_time", "sum"), rss=("max_rss", "max")
    )
    table = pd.DataFrame({
        "rule": per_rule.index,
        "jobs": per_rule["jobs"].to_numpy(),
        "wall_h": per_rule["s"].to_numpy() / 3600,
        "cpu_h": per_rule["cpu"].to_numpy() / 3600,
        "gpu_h": [s / 3600 if r in gpu else 0.0 for r, s in zip(per_rule.index, per_rule["s"],
                                                                strict=True)],
        "max_rss_mb": per_rule["rss"].to_numpy(),
    })  # fmt: skip
    total = {"rule": "total", "jobs": table["jobs"].sum(), "wall_h": table["wall_h"].sum(),
             "cpu_h": table["cpu_h"].sum(), "gpu_h": table["gpu_h"].sum(),
             "max_rss_mb": table["max_rss_mb"].max()}  # fmt: skip
    return pd.concat([table, pd.DataFrame([total])], ignore_index=True)[COLUMNS]
