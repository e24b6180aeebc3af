"""The report's figures and pages: what each draws (panels, series, titles, labels), not pixels.

Everything is built from small synthetic tables and surfaces, through the same `ascsharp`
commands the rules run, so that a figure that loses a panel or a series fails here.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from ascsharp.analysis import figures, published, report_html
from ascsharp.analysis import summary as run_summary
from ascsharp.analysis.summary import run_correlations
from ascsharp.cli import main
from ascsharp.core import plotting
from ascsharp.core.runs import parse_run_id, run_id
from ascsharp.data.meta import DEVICES
from ascsharp.landscape import figures as landscape_figures
from ascsharp.train import figures as train_figures

ROOT = Path(__file__).resolve().parents[2]
PAPER_CSV = ROOT / "workflow" / "reference" / "paper_results_icassp2024.csv"
SEEDS = (42, 43, 44)


def _summary(n_per_cell: int = 2) -> pd.DataFrame:
    """summary.tsv-like: 2 architectures x 2 optimisers x n seeds, sharper is less accurate."""
    rng = np.random.default_rng(0)
    rows = []
    for arch in ("cnn10", "cnn14"):
        for optimizer in ("adam", "sgd"):
            for seed in range(42, 42 + n_per_cell):
                hp = {"arch": arch, "optimizer": optimizer, "lr": 0.001, "batch_size": 16,
                      "seed": seed}  # fmt: skip
                per_seed = rng.uniform(5, 40) + rng.normal(0, 2, len(SEEDS))
                sharp = per_seed.mean()
                acc = 0.7 - sharp / 200 + rng.normal(0, 0.02)
                row = {"run": run_id(hp), **hp, "converged": True, "excluded": False,
                       "exclusion_reason": "", "test_all": acc, "seen": acc + 0.05,
                       "unseen": acc - 0.1 - sharp / 400, "generalisation_gap": 0.9 - acc,
                       "mean_sharpness": sharp, "std_sharpness": per_seed.std(ddof=1),
                       "max_sharpness": per_seed.max(),
                       "hessian_lambda_max": sharp * 3 + rng.normal(0, 5)}  # fmt: skip
                row.update({f"sharpness_seed{s}": v for s, v in zip(SEEDS, per_seed, strict=True)})
                row.update({f"acc_{d}": acc + rng.normal(0, 0.03) for d in DEVICES})
                rows.append(row)
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def tables(tmp_path_factory) -> tuple[Path, Path, pd.DataFrame, pd.DataFrame]:
    folder = tmp_path_factory.mktemp("tables")
    summary = _summary()
    corr = run_correlations(summary, n_boot=20, seed=0)
    summary.to_csv(folder / "summary.tsv", sep="\t", index=False)
    corr.to_csv(folder / "correlations.tsv", sep="\t", index=False)
    return folder / "summary.tsv", folder / "correlations.tsv", summary, corr


def _headline(corr: pd.DataFrame) -> pd.DataFrame:
    """The rows of the runs the figures show (every run of `_summary` is in `headline`)."""
    return corr[corr["subset"] == "headline"]


def _files(folder: Path, name: str) -> list[Path]:
    return [folder / f"{name}.png", folder / f"{name}.svg"]


def _written(paths: list[Path]) -> bool:
    png, svg = paths
    return png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and b"<svg" in svg.read_bytes()[:2000]


def _panels(fig) -> dict[str, object]:
    return {ax.get_gid(): ax for ax in fig.axes if ax.get_gid()}


def _series(ax) -> list[str]:
    return [line.get_label() for line in ax.get_lines() if not line.get_label().startswith("_")]


# --- the labels --------------------------------------------------------------------------------


def test_columns_are_labelled_in_words():
    assert plotting.label("unseen") == "test accuracy, unseen devices (S4–S6)"
    assert plotting.label("acc_s5") == "test accuracy, device S5"
    assert plotting.label("acc_lyon") == "test accuracy, Lyon"
    assert plotting.label("sharpness_disk_centre_mean") == (
        "sharpness (disk, centre reference), mean over direction seeds"
    )
    assert plotting.label("sharpness_seed43") == "sharpness (ε-disk), direction seed 43"
    assert plotting.group_name("optimizer=kfac") == "K-FAC" and plotting.group_name("all") == (
        "all runs"
    )


# --- the `figures` command: pooled, per device, per group, forest, seeds -------------------------


def test_figures_command_writes_every_figure_as_png_and_svg(tables, tmp_path):
    summary, corr, *_ = tables
    names = ["scatter", "devices", "heatmap", "by-optimizer", "by-arch", "forest", "seeds"]
    args = ["figures", "--summary", str(summary), "--correlations", str(corr)]
    for name in names:
        args += [f"--{name}", *map(str, _files(tmp_path, name))]
    assert main(args) == 0
    assert all(_written(_files(tmp_path, name)) for name in names)


def test_group_facets_have_a_row_per_group_and_seen_unseen_side_by_side(tables, tmp_path):
    summary, corr = tables[2], _headline(tables[3])
    fig = figures.group_facets(
        summary, "mean_sharpness", "optimizer", _files(tmp_path, "g"), correlations=corr
    )
    panels = _panels(fig)
    assert set(panels) == {
        f"optimizer={o}|{t}" for o in ("adam", "sgd") for t in ("seen", "unseen")
    }
    adam_unseen = panels["optimizer=adam|unseen"]
    adam = summary[summary["optimizer"] == "adam"]
    from scipy import stats

    rho = stats.spearmanr(adam["mean_sharpness"], adam["unseen"]).statistic
    assert adam_unseen.get_title().startswith("Adam, unseen devices\nρ = ")
    assert f"ρ = {rho:.3f}" in adam_unseen.get_title() and "(n = 4)" in adam_unseen.get_title()
    assert adam_unseen.get_ylabel() == "test accuracy, unseen devices (S4–S6)"
    assert adam_unseen.get_xlabel() == "sharpness (ε-disk), mean over direction seeds"
    # One point collection per architecture and the panel's own fit line.
    assert len(adam_unseen.collections) == 2 and len(adam_unseen.get_lines()) == 1
    by_arch = figures.group_facets(
        summary, "mean_sharpness", "arch", _files(tmp_path, "a"), correlations=corr
    )
    assert len(_panels(by_arch)) == 4 and _written(_files(tmp_path, "a"))


def test_figure_titles_print_the_correlation_tables_numbers(tables, tmp_path):
    """Figures never compute a statistic of their own: a planted value in the table is what
    the panel says."""
    summary, corr = tables[2], _headline(tables[3]).copy()
    corr["statistic"] = np.where(corr["method"] == "spearman", 0.123, 0.456)
    corr["p_value"], corr["n"] = 0.5, 99
    fig = figures.group_facets(
        summary, "mean_sharpness", "optimizer", _files(tmp_path, "g"), correlations=corr
    )
    assert "ρ = 0.123, p = 0.500 (n = 99)" in _panels(fig)["optimizer=adam|unseen"].get_title()
    fig = figures.scatter_sharpness(
        summary, "mean_sharpness", _files(tmp_path, "s"), correlations=corr
    )
    assert "r = 0.456, p = 0.500 (n = 99)" in _panels(fig)["seen"].get_title()
    fig = figures.device_facets(summary, "mean_sharpness", _files(tmp_path, "d"), correlations=corr)
    assert "r = 0.456" in _panels(fig)["acc_s4"].get_title()
    with pytest.raises(ValueError, match="no pearson row for mean_sharpness against seen"):
        figures.scatter_sharpness(
            summary, "mean_sharpness", _files(tmp_path, "s"),
            correlations=corr[corr["target"] != "seen"],
        )  # fmt: skip


def test_forest_plot_rows_headline_marks_and_adjusted_p(tables, tmp_path):
    corr = tables[3]
    table = corr[corr["subset"] == "headline"]
    fig = figures.forest_plot(table, _files(tmp_path, "forest"))
    panels = _panels(fig)
    assert list(panels) == list(figures.FOREST_TARGETS)
    sel = table[(table["method"] == "spearman") & ~table["group"].str.startswith("axis=")]
    groups, measures = sel["group"].unique(), sel["measure"].unique()
    assert set(groups) == {"all", "optimizer=adam", "optimizer=sgd", "arch=cnn10", "arch=cnn14"}
    n_rows = len(groups) * len(measures)
    ticks = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert (
        len(ticks) == n_rows and "all runs: sharpness (ε-disk), mean over direction seeds" in ticks
    )
    unseen = panels["unseen"]
    # Headline: one red diamond (mean sharpness, all runs); the other rows are exploratory.
    series = {line.get_label(): line for line in unseen.get_lines() if line.get_marker() != "None"}
    assert len(series["headline (Holm p)"].get_xdata()) == 1
    assert len(series["exploratory (BH q)"].get_xdata()) == len(measures) * len(groups) - 1
    p_texts = [t.get_text() for t in unseen.texts]
    assert len(p_texts) == n_rows and sum(t.startswith("p ") for t in p_texts) == 1
    assert len(unseen.collections[0].get_segments()) == n_rows  # one interval per row
    # The gap is never headline: no red diamond there.
    assert "headline (Holm p)" not in _series(panels["generalisation_gap"])


def test_seed_spread_shows_every_seed_and_both_spreads(tables, tmp_path):
    summary = tables[2]
    fig = figures.seed_spread(summary, _files(tmp_path, "seeds"))
    left, right = _panels(fig)["per_seed"], _panels(fig)["spread"]
    assert _series(left) == [f"direction seed {s}" for s in SEEDS] + ["mean"]
    assert all(len(line.get_xdata()) == len(summary) for line in left.get_lines())
    assert len(left.get_yticklabels()) == len(summary)
    assert [t.get_text() for t in right.get_xticklabels()][0].startswith("seed to seed")
    assert "run to run = " in right.get_title()
    # One direction seed: drawn, with a note instead of a seed-to-seed spread.
    one = summary.drop(columns=["sharpness_seed43", "sharpness_seed44"])
    fig = figures.seed_spread(one, _files(tmp_path, "one"))
    assert any("one direction seed" in t.get_text() for t in fig.texts)


# --- training curves ----------------------------------------------------------------------------


def _history(folder: Path, runs: list[dict]) -> tuple[list[Path], list[Path]]:
    hist, metrics = [], []
    for k, hp in enumerate(runs):
        d = folder / f"run{k}"
        d.mkdir()
        epochs = np.arange(1, 6)
        history = pd.DataFrame({"epoch": epochs, "train_loss": 2 / epochs,
                                "train_accuracy": 0.1 * epochs, "select_loss": 2.2 / epochs,
                                "select_accuracy": 0.09 * epochs})  # fmt: skip
        history.to_csv(d / "history.tsv", sep="\t", index=False)
        doc = {"run": run_id(hp), "hyperparameters": hp, "epoch": 3 + k % 2,
               "selected_on": "validation"}  # fmt: skip
        (d / "metrics.json").write_text(json.dumps(doc))
        hist.append(d / "history.tsv")
        metrics.append(d / "metrics.json")
    return hist, metrics


def test_training_curves_one_pair_of_panels_per_run(tmp_path):
    runs = [{"arch": "cnn10", "optimizer": "kfac", "lr": lr, "batch_size": 16, "seed": s}
            for lr in (1e-3, 1e-4, 1e-5) for s in (42, 43)]  # fmt: skip
    hist, metrics = _history(tmp_path, runs)
    out = _files(tmp_path, "training")
    args = ["training-curves", "--history", *map(str, hist), "--metrics", *map(str, metrics)]
    assert main([*args, "--out", *map(str, out)]) == 0 and _written(out)
    history = pd.concat(
        pd.read_csv(h, sep="\t").assign(run=plotting.run_label(hp), selected_epoch=3 + k % 2,
                                        selected_on="validation")
        for k, (h, hp) in enumerate(zip(hist, runs, strict=True))
    )  # fmt: skip
    fig = train_figures.training_curves(history, _files(tmp_path, "direct"))
    panels = _panels(fig)
    assert len(panels) == 2 * len(runs)
    name = "CNN10 K-FAC lr 1e-05 bs 16 seed 43"
    loss, acc = panels[f"{name}|loss"], panels[f"{name}|accuracy"]
    assert loss.get_title() == name and acc.get_ylabel() == "accuracy"
    assert _series(acc) == ["training", "validation (selection)", "selected (epoch 4)"]
    assert list(acc.get_lines()[2].get_xdata()) == [4, 4]
    assert len(acc.get_lines()[0].get_xdata()) == 5
    assert fig.get_suptitle().startswith("Training curves of 6 runs")
    # Mismatched lists name the problem in one line.
    with pytest.raises(SystemExit):
        main([*args[:-1], "--out", *map(str, out)])


# --- landscapes: montage, slices, the interactive page, the per-surface plots -------------------


def _surface(path: Path, run: str, seed: int, scale: float, num: int = 5) -> Path:
    x = np.linspace(-0.25, 0.25, num)
    xx, yy = np.meshgrid(x, x)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f["xcoordinates"], f["ycoordinates"] = x, x
        f["train_loss"] = 0.1 + scale * (xx**2 + 2 * yy**2)
        f.attrs["run"], f.attrs["direction_seed"] = run, seed
    return path


def _runs(arch: str = "cnn10") -> list[str]:
    return [
        run_id({"arch": arch, "optimizer": o, "lr": lr, "batch_size": b, "seed": s})
        for o, lr in (("adam", 0.001), ("sgd", 0.001), ("sgd", 0.0001))
        for b, s in ((16, 42), (32, 42), (16, 43))
    ][:-1]


def test_landscape_montage_one_panel_per_run_on_one_colour_scale(tmp_path):
    runs = _runs()
    paths = [_surface(tmp_path / f"s{k}.h5", run, 42, 10 * (k + 1)) for k, run in enumerate(runs)]
    sharp = []
    for k, path in enumerate(paths):
        sharp.append(tmp_path / f"sharpness{k}.json")
        assert main(["run-sharpness", str(path), "--radius", "0.25", "--out", str(sharp[-1])]) == 0
    out = _files(tmp_path, "montage")
    assert main(["landscape-montage", *map(str, paths), "--sharpness", *map(str, sharp),
                 "--out", *map(str, out)]) == 0  # fmt: skip
    assert _written(out)
    surfaces = [
        ({"run": r, **parse_run_id(r)}, *_read(p)) for r, p in zip(runs, paths, strict=True)
    ]
    # The titles print the sharpness stage's values, not a number of the figure's own.
    planted = {run: 1000.0 + k for k, run in enumerate(runs)}
    fig = landscape_figures.landscape_montage(
        surfaces, out, radius=0.25, sharpness=planted, title="t"
    )
    panels = _panels(fig)
    assert set(panels) == set(runs)
    assert all(f"sharpness {planted[r]:.4g}" in panels[r].get_title() for r in runs)
    # 3 rows (optimiser, lr) x 3 columns (batch size, seed), one cell empty.
    assert sum(not ax.axison for ax in fig.axes if not ax.get_gid()) == 1
    norms = {(c.norm.vmin, c.norm.vmax) for ax in panels.values() for c in ax.collections[:1]}
    assert len(norms) == 1  # the shared colour scale
    assert len([ax for ax in fig.axes if ax.get_label() == "<colorbar>"]) == 1
    assert all(len(ax.patches) == 1 for ax in panels.values())  # the ε-disk
    # A run whose sharpness file is not given: one line naming the surface.
    with pytest.raises(SystemExit):
        main(["landscape-montage", *map(str, paths), "--sharpness", str(sharp[0]),
              "--out", *map(str, out)])  # fmt: skip


def _read(path: Path):
    from ascsharp.core.surface import read_surface

    return read_surface(path)


def _page_figures(page: str) -> dict[str, dict]:
    """The plotly figures (by run id) that a surfaces page carries: its FIGURES object."""
    start = page.index("{", page.index("const FIGURES = "))
    return json.JSONDecoder().raw_decode(page, start)[0]


def _array(value) -> np.ndarray:
    """A plotly JSON array: a list, or plotly's typed array {"dtype", "bdata"[, "shape"]}."""
    if isinstance(value, dict):
        import base64

        flat = np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"])
        shape = value.get("shape")
        return flat.reshape([int(n) for n in str(shape).split(",")]) if shape else flat
    return np.asarray(value, dtype=float)


def test_landscape_views_draws_the_slices(tmp_path):
    run = _runs()[0]
    paths = [_surface(tmp_path / f"d{s}.h5", run, s, 5 + s - 42) for s in (43, 42)]
    slices = _files(tmp_path, "slices")
    args = ["landscape-views", *map(str, paths), "--radius", "0.25"]
    assert main([*args, "--slices", *map(str, slices)]) == 0
    assert _written(slices)

    surfaces = [(s, *_read(p)) for s, p in ((42, paths[1]), (43, paths[0]))]
    fig = landscape_figures.landscape_slices(
        surfaces, _files(tmp_path, "direct"), radius=0.25, title="t"
    )
    panels = _panels(fig)
    assert set(panels) == {"dx", "dy"}
    assert _series(panels["dx"]) == ["direction seed 42", "direction seed 43"]
    np.testing.assert_allclose(panels["dy"].get_lines()[0].get_ydata(), surfaces[0][3][:, 2])

    other = _surface(tmp_path / "other.h5", _runs()[1], 42, 1)
    with pytest.raises(SystemExit):
        main(["landscape-views", str(paths[0]), str(other), "--radius", "0.25",
              "--slices", str(slices[0])])  # fmt: skip


def test_surfaces_page_every_run_one_scale_per_run_plotly_once(tmp_path):
    runs = _runs()[:2]
    # Run 0: seed 43's bowl is 4x steeper than seed 42's, so each seed alone would get its own
    # colour range; run 1 has one direction seed.
    paths = [_surface(tmp_path / "a42.h5", runs[0], 42, 5),
             _surface(tmp_path / "a43.h5", runs[0], 43, 20),
             _surface(tmp_path / "b42.h5", runs[1], 42, 1)]  # fmt: skip
    page = tmp_path / "surfaces3d.html"
    assert main(["surfaces-page", *map(str, paths), "--radius", "0.25", "--out", str(page)]) == 0
    text = page.read_text()
    # plotly.js is inside exactly once, nothing is loaded from elsewhere.
    assert text.count("plotly.js v") == 1 and not re.search(r"<script[^>]+src=", text)
    figs = _page_figures(text)
    assert list(figs) == sorted(runs)
    assert f'<option value="{sorted(runs)[0]}">' in text
    first = figs[runs[0]]
    traces = [(t["type"], t["name"]) for t in first["data"]]
    assert traces == [
        (kind, f"{name}{seed}" if name.endswith(" ") else name)
        for seed in (42, 43)
        for kind, name in (("surface", "loss, direction seed "),
                           ("scatter3d", "ε-disk (ε = 0.25)"), ("scatter3d", "trained weights"))
    ]  # fmt: skip
    # One colour scale and one z range for both seeds: the extremes of both surfaces together.
    losses = np.concatenate([_read(p)[2].ravel() for p in paths[:2]])
    lo, hi = losses.min(), losses.max()
    for t in first["data"]:
        if t["type"] == "surface":
            assert (t["cmin"], t["cmax"]) == pytest.approx((lo, hi))
    scenes = [first["layout"][k] for k in ("scene", "scene2")]
    z_ranges = [sc["zaxis"]["range"] for sc in scenes]
    assert z_ranges[0] == z_ranges[1] and z_ranges[0][0] <= lo and z_ranges[0][1] >= hi
    # Exactly one colour bar, and the legend below the plots (they cannot overlap).
    assert sum(t.get("showscale", True) for t in first["data"] if t["type"] == "surface") == 1
    assert first["layout"]["legend"]["orientation"] == "h" and first["layout"]["legend"]["y"] <= 0
    disk = first["data"][1]
    np.testing.assert_allclose(np.hypot(_array(disk["x"]), _array(disk["y"])), 0.25)
    np.testing.assert_allclose(_array(first["data"][3]["z"]), _read(paths[1])[2])
    # Run 1's scale is its own.
    (surface,) = [t for t in figs[runs[1]]["data"] if t["type"] == "surface"]
    assert surface["cmax"] == pytest.approx(_read(paths[2])[2].max())

    with pytest.raises(SystemExit):  # the same run and seed twice
        main(["surfaces-page", str(paths[0]), str(paths[0]), "--radius", "0.25",
              "--out", str(page)])  # fmt: skip


def test_surface_plots_of_gather_are_written_in_every_format(tmp_path):
    path = _surface(tmp_path / "s.h5", _runs()[0], 42, 30)
    landscape_figures.plot_surface(path, _files(tmp_path, "c"), _files(tmp_path, "d"), "bowl")
    assert _written(_files(tmp_path, "c")) and _written(_files(tmp_path, "d"))
    with pytest.raises(ValueError, match="x.jpg"):
        landscape_figures.plot_surface(path, tmp_path / "x.jpg", tmp_path / "y.png", "bowl")


# --- ours against the study; the report tables --------------------------------------------------


def test_comparison_with_the_published_table(tmp_path):
    paper = published.read_paper_table(PAPER_CSV)
    # Our "runs": three of the published ones (one CNN14) with other numbers, and one of our own.
    twins = paper.iloc[[0, 5, 20]].copy()
    ours = twins.assign(run=[f"r{k}" for k in range(3)], test_all=twins["test_all"] - 0.1,
                        mean_sharpness=twins["mean_sharpness"] * 2)  # fmt: skip
    extra = ours.iloc[[0]].assign(run="new", lr=0.003)
    summary = pd.concat([ours, extra]).drop(columns="id")
    summary.to_csv(tmp_path / "summary.tsv", sep="\t", index=False)
    out = _files(tmp_path, "cmp")
    args = ["compare-published", "--summary", str(tmp_path / "summary.tsv"), "--published",
            str(PAPER_CSV), "--table", str(tmp_path / "cmp.tsv"), "--html",
            str(tmp_path / "cmp.html"), "--figure", *map(str, out)]  # fmt: skip
    assert main(args) == 0 and _written(out)
    table = pd.read_csv(tmp_path / "cmp.tsv", sep="\t")
    assert sorted(table["run"]) == ["r0", "r1", "r2"]
    np.testing.assert_allclose(table["test_all_diff"], -0.1)
    assert sorted(table["paper_id"]) == sorted(twins["id"])
    assert "<table" in (tmp_path / "cmp.html").read_text()

    stats = published.agreement(table, figures.PAPER_PANELS)
    assert stats["test_all"]["n"] == 3
    np.testing.assert_allclose(stats["test_all"]["mean_difference"], -0.1)
    np.testing.assert_allclose(stats["mean_sharpness"]["r"], 1.0)  # ours = 2 x published
    fig = figures.paper_comparison(table, _files(tmp_path, "direct"), agreement=stats)
    panels = _panels(fig)
    assert list(panels) == list(figures.PAPER_PANELS)
    assert sum(len(c.get_offsets()) for c in panels["mean_sharpness"].collections) == 3
    assert "mean difference -0.1" in panels["test_all"].get_title()
    assert panels["unseen"].get_xlabel() == "published (Milling et al. 2024)"
    # No twin: no axes at all, only the title and one line saying why.
    empty = published.compare_with_published(extra.drop(columns="id", errors="ignore"), paper)
    assert empty.empty and "test_all_diff" in empty.columns
    none = published.agreement(empty, figures.PAPER_PANELS)
    fig = figures.paper_comparison(empty, _files(tmp_path, "none"), agreement=none, note="no twin")
    assert not fig.axes and _written(_files(tmp_path, "none"))
    assert [t.get_text() for t in fig.texts if t.get_gid() == "note"] == ["no twin"]


def _html_table(path: Path) -> pd.DataFrame:
    """The one table of an HTML page, as text cells (pandas' reader needs lxml)."""
    from html.parser import HTMLParser

    rows: list[list[str]] = []

    class Cells(HTMLParser):
        cell: list[str] | None = None

        def handle_starttag(self, tag, attrs):
            if tag == "tr":
                rows.append([])
            elif tag in ("td", "th"):
                self.cell = []

        def handle_endtag(self, tag):
            if tag in ("td", "th") and self.cell is not None:
                rows[-1].append("".join(self.cell).strip())
                self.cell = None

        def handle_data(self, data):
            if self.cell is not None:
                self.cell.append(data)

    Cells().feed(path.read_text())
    return pd.DataFrame(rows[1:], columns=rows[0])


def test_report_tables_summary_and_the_headline_answer(tables, tmp_path):
    summary, corr, frame, table = tables
    paper = tmp_path / "paper"
    published.paper_table(PAPER_CSV, paper / "summary.tsv", paper / "correlations.tsv", n_boot=20)
    ranking = run_summary.rank_measures(frame, n_boot=20, seed=0)
    ranking.to_csv(tmp_path / "ranking.tsv", sep="\t", index=False)
    scatter = tmp_path / "scatter.svg"
    scatter.write_text('<svg xmlns="http://www.w3.org/2000/svg"><text>dots</text></svg>')
    out = {"summary": tmp_path / "summary.html", "headline": tmp_path / "headline.html"}
    args = ["report-tables", "--summary", str(summary), "--correlations", str(corr),
            "--ranking", str(tmp_path / "ranking.tsv"),
            "--published-correlations", str(paper / "correlations.tsv"),
            "--scatter", str(scatter), "--summary-html", str(out["summary"]),
            "--headline-html", str(out["headline"])]  # fmt: skip
    assert main(args) == 0
    rows = _html_table(out["summary"])
    assert len(rows) == len(frame) and list(rows.columns) == list(frame.columns)
    page = out["headline"].read_text()
    # The scatter is inside the page, and both tables (the answer, every subset) are there.
    assert base64.b64encode(scatter.read_bytes()).decode() in page and page.count("<table") == 2

    answer = report_html.headline_answer(table, pd.read_csv(paper / "correlations.tsv", sep="\t"),
                                         ranking)  # fmt: skip
    assert len(answer) == 12  # 3 targets x (r, rho, tau, Psi)
    cell = answer.set_index([("", "devices"), ("", "statistic")])
    ours, theirs = cell["this workflow"], cell["published table"]
    # The published table's Pearson r against all devices: 0.412, Holm p 0.041 (README).
    assert ours.columns.tolist() == ["value", "95 % interval", "Holm p", "n"]
    assert theirs.loc[("all devices", "Pearson r"), "value"] == "0.412"
    assert theirs.loc[("all devices", "Pearson r"), "Holm p"] == "0.041"
    assert theirs.loc[("all devices", "Pearson r"), "n"] == "38"
    # Ours: the headline rows of correlations.tsv, as printed; Psi's interval from the ranking.
    want = table[(table["group"] == "all") & (table["measure"] == "mean_sharpness")
                 & (table["target"] == "unseen")
                 & (table["method"] == "kendall")].iloc[0]  # fmt: skip
    row = ours.loc[("unseen devices", "Kendall τ")]
    assert row["value"] == f"{want['statistic']:.3f}"
    assert row["95 % interval"] == f"[{want['ci_low']:.2f}, {want['ci_high']:.2f}]"
    assert row["Holm p"] == (f"{want['p_holm']:.3f}" if want["p_holm"] >= 0.001 else "< 0.001")
    psi = ranking[(ranking["measure"] == "mean_sharpness") & (ranking["target"] == "seen")].iloc[0]
    row = ours.loc[("seen devices", "granulated Ψ")]
    assert row["value"] == f"{psi['psi']:.3f}" and row["Holm p"] == "–"
    assert row["95 % interval"] == f"[{psi['psi_ci_low']:.2f}, {psi['psi_ci_high']:.2f}]"


def test_measure_ranking_heat_map_draws_every_measure_of_the_table(tables, tmp_path):
    frame = tables[2]
    ranking = run_summary.rank_measures(frame, n_boot=20, seed=0)
    # A measure added to the table later (as other measures will be) is drawn too.
    extra = ranking[ranking["measure"] == "mean_sharpness"].assign(measure="new_measure")
    ranking = pd.concat([ranking, extra], ignore_index=True)
    fig = figures.measure_ranking(ranking, _files(tmp_path, "rank"))
    assert _written(_files(tmp_path, "rank"))
    (ax,) = [a for a in fig.axes if a.get_images()]
    rows = [t.get_text().replace("\n", " ") for t in ax.get_yticklabels()]
    assert sorted(rows) == sorted(
        plotting.label(m).replace("\n", " ") for m in set(ranking["measure"])
    )
    columns = [t.get_text().replace("\n", " ") for t in ax.get_xticklabels()]
    assert columns == [plotting.label(t) for t in figures.FOREST_TARGETS]
    # Best on average on top; the colour of a cell is its agreement.
    mean = ranking.groupby("measure")["agreement"].mean()
    by_label = {plotting.label(m): m for m in mean.index}
    shown = [mean[by_label[r]] for r in rows]
    assert shown == sorted(shown, reverse=True)
    image = ax.get_images()[0].get_array()
    top = by_label[rows[0]]
    c = ranking[(ranking["measure"] == top) & (ranking["target"] == "unseen")].iloc[0]
    assert image[0, 2] == pytest.approx(c["agreement"])
    texts = [t.get_text() for t in ax.texts]
    assert len(texts) == len(ranking) and f"{c['kendall_tau']:+.2f}".replace("-", "−") in texts[2]


def test_forest_split_into_pooled_and_within_groups(tables, tmp_path):
    summary, corr, *_ = tables
    outs = {name: _files(tmp_path, name) for name in ("scatter", "devices", "heatmap",
            "by-optimizer", "by-arch", "forest", "seeds", "forest-groups")}  # fmt: skip
    args = ["figures", "--summary", str(summary), "--correlations", str(corr)]
    args += [a for name, paths in outs.items() for a in (f"--{name}", *map(str, paths))]
    assert main(args) == 0 and all(_written(p) for p in outs.values())
    table = tables[3][tables[3]["subset"] == "headline"]
    pooled = figures.forest_plot(table, _files(tmp_path, "p"), groups=["all"])
    within = figures.forest_plot(
        table, _files(tmp_path, "w"), groups=["optimizer=adam", "arch=cnn14"]
    )
    measures = table[(table["method"] == "spearman") & (table["group"] == "all")][
        "measure"
    ].unique()
    ticks = [t.get_text() for t in pooled.axes[0].get_yticklabels()]
    assert ticks == [plotting.label(m) for m in measures]  # one group: no group prefix
    ticks = [t.get_text() for t in within.axes[0].get_yticklabels()]
    assert len(ticks) == 2 * len(measures) and ticks[0].startswith("Adam: ")
    assert ticks[-1].startswith("CNN14: ")


def test_bad_input_is_one_line_naming_the_file(tmp_path, capsys):
    bad = tmp_path / "summary.tsv"
    bad.write_text("run\tx\n1\t2\n")
    with pytest.raises(SystemExit) as e:
        main(["compare-published", "--summary", str(bad), "--published", str(PAPER_CSV),
              "--table", str(tmp_path / "t.tsv"), "--html", str(tmp_path / "t.html"),
              "--figure", str(tmp_path / "f.png")])  # fmt: skip
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(bad) in err and "missing column" in err
