"""How large is the single-file report at paper size? Measured on a synthetic results tree.

The single-file report (`snakemake --report x.html`) carries every file listed in it as a base64
data URI (4/3 of its size) plus a fixed part (Snakemake's app, the rule graph, the captions).
This script

1. takes a finished small run (`--finished`, e.g. the tiny test run) and its single-file report,
   and measures the fixed part: the report's size minus 4/3 of every file the report lists;
2. writes the files that grow with the grid for a synthetic paper-size tree (`--runs` runs of the
   paper preset's grid, its 3 direction seeds and 11 x 11 grid): per surface the contour and 3-D
   plot, per run the 1-D slices, per architecture the montage, and the one 3-D page with every
   run, all drawn by the workflow's own functions from bowl-shaped synthetic losses; with
   `--analysis` also the analysis figures and tables from a synthetic summary of those runs;
3. prints the estimate: fixed part + 4/3 x (synthetic files + the small run's files that were
   not redrawn: training curves, paper figures, and without `--analysis` the analysis figures).

    python tests/benchmarks/report_size.py --finished /tmp/tiny [--runs 46] [--out DIR] [--analysis]

It is an extrapolation (stated as such in its output): the fixed part is the small run's, and
what is not redrawn is counted at the small run's size.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "workflow"))

from ascsharp.analysis import (  # noqa: E402
    figures,
    report_html,
)
from ascsharp.analysis import summary as run_summary  # noqa: E402
from ascsharp.cli import main  # noqa: E402
from ascsharp.core import plotting  # noqa: E402
from ascsharp.core.runs import expand_grid, run_id  # noqa: E402
from ascsharp.data.meta import DEVICES  # noqa: E402
from ascsharp.landscape import figures as landscape_figures  # noqa: E402

SEEDS = (42, 43, 44)
MB = 1e6


def listed_files(report: Path, workdir: Path) -> list[Path]:
    """The files a single-file report lists (its results, by their path under the workdir)."""
    names = set(re.findall(r'"(results/[^"]+)": \{"name"', report.read_text(errors="replace")))
    return [workdir / n for n in sorted(names) if (workdir / n).is_file()]


def b64(size: int) -> float:
    return 4 * -(-size // 3)


def paper_runs(n: int) -> list[dict]:
    grid = yaml.safe_load((ROOT / "workflow/presets/paper.yaml").read_text())["grid"]
    runs = expand_grid(grid).to_dict("records")
    return (runs * (n // len(runs) + 1))[:n]


def bowl(rng: np.random.Generator, num: int = 11) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x = np.linspace(-0.25, 0.25, num)
    xx, yy = np.meshgrid(x, x)
    a, b = rng.uniform(2, 60, 2)
    loss = 0.05 + a * xx**2 + b * yy**2 + rng.normal(0, 0.01, xx.shape) + rng.uniform(0, 0.5)
    return x, x, np.abs(loss)


def synthetic_tree(out: Path, n: int, analysis: bool) -> list[Path]:
    """The files of a synthetic n-run report that grow with the grid (the analysis figures and
    tables only with `analysis`); returns their paths."""
    rng = np.random.default_rng(0)
    runs = paper_runs(n)
    files: list[Path] = []
    page_runs, by_arch, rows = {}, {}, []
    for k, hp in enumerate(runs):
        hp = {**hp, "seed": int(hp["seed"]) + 100 * (k // 46)}  # distinct ids beyond 46
        run = run_id(hp)
        surfaces = []
        for seed in SEEDS:
            x, y, loss = bowl(rng)
            folder = out / "landscapes" / run / f"direction_seed~{seed}"
            folder.mkdir(parents=True, exist_ok=True)
            with h5py.File(folder / "surface.h5", "w") as f:
                f["xcoordinates"], f["ycoordinates"], f["train_loss"] = x, y, loss
                f.attrs["run"], f.attrs["direction_seed"] = run, seed
            svg = [folder / "contour.svg", folder / "surface3d.svg"]
            landscape_figures.plot_surface(folder / "surface.h5", svg[:1], svg[1:], run)
            files += svg
            surfaces.append((seed, x, y, loss))
        slices = out / "landscapes" / run / "slices.svg"
        landscape_figures.landscape_slices(surfaces, slices, radius=0.25, title=run)
        files.append(slices)
        label = plotting.run_label(hp)
        page_runs[run] = (label, surfaces)
        by_arch.setdefault(hp["arch"], []).append(({**hp, "run": run}, *surfaces[0][1:]))
        sharp = float(np.mean([loss.max() for *_, loss in surfaces]))
        acc = 0.6 - sharp / 100 + rng.normal(0, 0.03)
        row = {"run": run, **hp, "converged": True, "excluded": False, "exclusion_reason": "",
               "test_all": acc, "seen": acc + 0.05, "unseen": acc - 0.1,
               "generalisation_gap": 0.95 - acc, "mean_sharpness": sharp,
               "max_sharpness": sharp * 1.2, "std_sharpness": 0.1 * sharp,
               **{f"sharpness_seed{s}": sharp + rng.normal(0, 1) for s in SEEDS},
               **{f"acc_{d}": acc + rng.normal(0, 0.03) for d in DEVICES},
               **{m: sharp * rng.uniform(0.5, 2) for m in ("hessian_lambda_max",
                  "hessian_trace", "adaptive_average", "adaptive_worst")}}  # fmt: skip
        rows.append(row)
    for arch, surfaces in by_arch.items():
        path = out / f"montage_{arch}.svg"
        values = {hp["run"]: float(loss.max()) for hp, *_, loss in surfaces}  # size only
        landscape_figures.landscape_montage(
            surfaces, path, radius=0.25, sharpness=values, title=arch
        )
        files.append(path)
    page = out / "surfaces3d.html"
    report_html.surfaces_page(page_runs, page, radius=0.25, title="3-D", caption="")
    files.append(page)
    if analysis:
        files += analysis_files(out, pd.DataFrame(rows))
    return files


def analysis_files(out: Path, summary: pd.DataFrame) -> list[Path]:
    """The analysis figures and tables of `summary`'s runs (slow: exact permutation p-values
    for every small group)."""
    corr = run_summary.run_correlations(summary, n_boot=20, seed=0)
    ranking = run_summary.rank_measures(summary, n_boot=20, seed=0)
    paths = {"summary": out / "summary.tsv", "correlations": out / "correlations.tsv",
             "ranking": out / "ranking.tsv"}  # fmt: skip
    summary.to_csv(paths["summary"], sep="\t", index=False)
    corr.to_csv(paths["correlations"], sep="\t", index=False)
    ranking.to_csv(paths["ranking"], sep="\t", index=False)
    names = ["scatter", "devices", "heatmap", "by-optimizer", "by-arch", "forest", "seeds",
             "forest-groups"]  # fmt: skip
    args = ["figures", "--summary", str(paths["summary"]), "--correlations",
            str(paths["correlations"])]  # fmt: skip
    for name in names:
        args += [f"--{name}", str(out / f"{name}.png"), str(out / f"{name}.svg")]
    assert main(args) == 0
    figures.measure_ranking(ranking, out / "measure_ranking.svg")
    paper = out / "paper"
    csv = ROOT / "workflow/reference/paper_results_icassp2024.csv"
    assert main(["paper-table", str(csv), "--summary", str(paper / "summary.tsv"),
                 "--correlations", str(paper / "correlations.tsv"),
                 "--scatter", str(paper / "scatter.svg")]) == 0  # fmt: skip
    assert main(["report-tables", "--summary", str(paths["summary"]), "--correlations",
                 str(paths["correlations"]), "--ranking", str(paths["ranking"]),
                 "--published-correlations", str(paper / "correlations.tsv"),
                 "--scatter", str(out / "scatter.svg"), "--summary-html", str(out / "summary.html"),
                 "--headline-html", str(out / "headline.html")]) == 0  # fmt: skip
    files = [out / f"{name}.svg" for name in names] + [out / "measure_ranking.svg"]
    return files + [out / "summary.html", out / "headline.html"]


def main_() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--finished", type=Path, required=True, help="workdir of a finished run")
    p.add_argument("--runs", type=int, default=46)
    p.add_argument("--out", type=Path, help="where to write the synthetic files (default: tmp)")
    p.add_argument("--analysis", action="store_true",
                   help="also redraw the analysis figures and tables at the synthetic size (slow);"
                   " by default the finished run's are counted")  # fmt: skip
    args = p.parse_args()
    report = args.finished / "results/report.html"
    if not report.exists():
        subprocess.run([str(Path(sys.executable).parent / "snakemake"), "--report",
                        "results/report.html"], cwd=args.finished, check=True)  # fmt: skip
    small = listed_files(report, args.finished)
    fixed = report.stat().st_size - sum(b64(f.stat().st_size) for f in small)
    # The small run's files that the synthetic tree does not redraw: training curves, the
    # paper's scatter, the comparison with the published runs (and without --analysis the
    # analysis figures and tables).
    redrawn = ("/landscapes/", "surfaces3d")
    if args.analysis:
        kept = [f for f in small if "/training/" in str(f) or "/paper/" in str(f)
                or "paper_comparison" in f.name]  # fmt: skip
    else:
        kept = [f for f in small if not any(r in str(f) for r in redrawn)]
    out = args.out or Path(tempfile.mkdtemp(prefix="report_size_"))
    grown = synthetic_tree(out, args.runs, args.analysis)
    total = fixed + sum(b64(f.stat().st_size) for f in grown + kept)
    print(f"small run: {report} is {report.stat().st_size / MB:.1f} MB "
          f"({len(small)} files listed; fixed part {fixed / MB:.1f} MB)")  # fmt: skip
    biggest = sorted(grown, key=lambda f: -f.stat().st_size)[:5]
    for f in biggest:
        print(f"  {f.relative_to(out)}: {f.stat().st_size / MB:.2f} MB")
    print(f"synthetic {args.runs}-run tree in {out}: {len(grown)} files, "
          f"{sum(f.stat().st_size for f in grown) / MB:.1f} MB on disk")  # fmt: skip
    print(f"counted from the small run: {len(kept)} files, "
          f"{sum(b64(f.stat().st_size) for f in kept) / MB:.1f} MB in the report")  # fmt: skip
    print(f"extrapolated single-file report for {args.runs} runs: {total / MB:.1f} MB")


if __name__ == "__main__":
    main_()
