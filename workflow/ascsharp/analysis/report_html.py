"""Self-contained HTML pages for the Snakemake report: tables, the headline answer and the
interactive 3-D surfaces.

The report shows an HTML result in a frame of its own, so every page here carries what it needs
(its style sheet, and for the surfaces plotly.js itself) and opens as well from the report as
from the results folder, offline. plotly.js (4.8 MB) is in one page only, the one with every
run's surfaces, so the single-file report carries it once. No torch.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ascsharp.analysis.correlation import HEADLINE_MEASURE, TABLE_COLUMNS
from ascsharp.core.io import atomic_path

_STYLE = """
body { font-family: sans-serif; font-size: 13px; margin: 1em; }
p.caption { max-width: 60em; color: #444; }
div.scroll { overflow: auto; max-height: 85vh; }
table { border-collapse: collapse; }
th, td { padding: 3px 8px; border-bottom: 1px solid #ddd; white-space: nowrap; }
td { text-align: right; font-variant-numeric: tabular-nums; }
th { position: sticky; top: 0; background: #f2f2f2; text-align: left; }
tbody tr:nth-child(even) { background: #fafafa; }
"""


def _number(value: float) -> str:
    return f"{value:.4g}"


def _page(title: str, body: str) -> str:
    """A whole HTML page with the report's style sheet: a heading, then `body` (HTML)."""
    return (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_STYLE}</style></head><body><h2>{html.escape(title)}</h2>{body}"
        "</body></html>\n"
    )


def _table_html(df: pd.DataFrame) -> str:
    return df.to_html(index=False, na_rep="–", float_format=_number, border=0, escape=True)


def html_table(df: pd.DataFrame, out: str | Path, *, title: str, caption: str = "") -> None:
    """`df` as one HTML page: a heading, a caption and the table (4 significant digits, sticky
    header, missing values as –), written atomically."""
    body = (
        f'<p class="caption">{html.escape(caption)}</p><div class="scroll">{_table_html(df)}</div>'
    )
    with atomic_path(out) as tmp:
        tmp.write_text(_page(title, body), encoding="utf-8")


ANSWER_METHODS = {
    "pearson": "Pearson r",
    "spearman": "Spearman ρ",
    "kendall": "Kendall τ",
    "granulated_kendall": "granulated Ψ",
}
ANSWER_TARGETS = {"test_all": "all devices", "seen": "seen devices", "unseen": "unseen devices"}


def _fmt(value: float, digits: int = 2) -> str:
    return "–" if not np.isfinite(value) else f"{value:.{digits}f}"


def _fmt_p(p: float) -> str:
    if not np.isfinite(p):
        return "–"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def _answer_cells(corr: pd.DataFrame, target: str, method: str, psi_ci=None) -> list[str]:
    """Value, 95 % interval, Holm p and n of one headline statistic of a correlations table."""
    row = corr[(corr["group"] == "all") & (corr["measure"] == HEADLINE_MEASURE)
               & (corr["target"] == target) & (corr["method"] == method)]  # fmt: skip
    if row.empty:
        return ["–"] * 4
    r = row.iloc[0]
    low, high = psi_ci if psi_ci is not None else (r["ci_low"], r["ci_high"])
    interval = "–" if not np.isfinite([low, high]).all() else f"[{_fmt(low)}, {_fmt(high)}]"
    return [_fmt(r["statistic"], 3), interval, _fmt_p(r["p_holm"]), str(int(r["n"]))]


def headline_answer(
    ours: pd.DataFrame,
    published: pd.DataFrame,
    ranking: pd.DataFrame | None = None,
    subset: str = "headline",
) -> pd.DataFrame:
    """The answer in one table: mean sharpness against accuracy on all, seen and unseen devices
    by Pearson r, Spearman ρ, Kendall τ (95 % bootstrap interval, Holm p within the paper's 9
    tests) and granulated Ψ (interval from resampling runs, from `ranking`), our `subset` of runs
    beside the published table's. Cells are text, as printed."""
    ours = ours[ours["subset"] == subset] if "subset" in ours.columns else ours
    rows = []
    for target, devices in ANSWER_TARGETS.items():
        for method, name in ANSWER_METHODS.items():
            psi_ci = None
            if method == "granulated_kendall" and ranking is not None and not ranking.empty:
                hit = ranking[(ranking["measure"] == HEADLINE_MEASURE)
                              & (ranking["target"] == target)
                              & (ranking["subset"] == subset)]  # fmt: skip
                if not hit.empty:
                    psi_ci = (hit["psi_ci_low"].iloc[0], hit["psi_ci_high"].iloc[0])
            rows.append([devices, name, *_answer_cells(ours, target, method, psi_ci),
                         *_answer_cells(published, target, method)])  # fmt: skip
    columns = pd.MultiIndex.from_product([["this workflow", "published table"],
                                          ["value", "95 % interval", "Holm p", "n"]])  # fmt: skip
    table = pd.DataFrame([r[2:] for r in rows], columns=columns)
    table.insert(0, ("", "statistic"), [r[1] for r in rows])
    table.insert(0, ("", "devices"), [r[0] for r in rows])
    return table


def answer_page(
    answer: pd.DataFrame,
    every_subset: pd.DataFrame,
    scatter_svg: str | Path,
    out: str | Path,
    *,
    title: str,
    caption: str,
) -> None:
    """The report's first page: the headline numbers (`headline_answer`), the pooled scatter
    (its SVG inside the page), then the headline rows of every subset (`headline_rows`)."""
    import base64

    svg = base64.b64encode(Path(scatter_svg).read_bytes()).decode("ascii")
    body = (
        f'<p class="caption">{html.escape(caption)}</p>'
        f'<div class="scroll">{_table_html(answer)}</div>'
        f'<p><img alt="mean sharpness against test accuracy" style="max-width: 100%" '
        f'src="data:image/svg+xml;base64,{svg}"></p>'
        "<h3>The same rows for every subset of runs</h3>"
        f'<div class="scroll">{_table_html(every_subset)}</div>'
    )
    with atomic_path(out) as tmp:
        tmp.write_text(_page(title, body), encoding="utf-8")


def headline_rows(ours: pd.DataFrame, published: pd.DataFrame | None = None) -> pd.DataFrame:
    """The headline family (mean sharpness against test_all, seen and unseen; Pearson, Spearman,
    Kendall; all runs) of every subset of our correlations.tsv, then the published table's."""
    columns = ["subset", *[c for c in TABLE_COLUMNS if c not in ("family", "p_bh", "n_skipped")]]
    tables = [ours.assign(source="this workflow")]
    if published is not None:
        tables.append(published.assign(source="published table", subset="its 38 runs"))
    rows = []
    for t in tables:
        missing = [c for c in ["family", *columns] if c not in t.columns]
        if missing:
            raise ValueError(f"correlation table: missing column {missing[0]!r}")
        rows.append(t.loc[t["family"] == "headline", ["source", *columns]])
    return pd.concat(rows, ignore_index=True).drop(columns="group")


# One run's surfaces: (direction seed, x, y, loss[iy, ix]).
RunSurfaces = Sequence[tuple[int, np.ndarray, np.ndarray, np.ndarray]]

_SURFACE_PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>
html, body {{ height: 100%; margin: 0; font-family: sans-serif; font-size: 13px; }}
body {{ display: flex; flex-direction: column; }}
header {{ padding: 6px 12px; }}
header p {{ margin: 4px 0; color: #444; max-width: 70em; }}
#plot {{ flex: 1 1 auto; min-height: 360px; }}
</style>
<script>{plotly}</script>
</head><body>
<header><label for="run"><b>Run</b> </label><select id="run">{options}</select>
<p>{caption}</p></header>
<div id="plot"></div>
<script>
const FIGURES = {figures};
const select = document.getElementById("run");
function show() {{
  const fig = FIGURES[select.value];
  Plotly.react("plot", fig.data, fig.layout, {{responsive: true, displaylogo: false}});
  history.replaceState(null, "", "#" + encodeURIComponent(select.value));
}}
const wanted = decodeURIComponent(location.hash.slice(1));
if (wanted in FIGURES) select.value = wanted;
select.addEventListener("change", show);
show();
</script>
</body></html>
"""


def surface_figure(surfaces: RunSurfaces, *, radius: float, title: str):
    """One run's direction seeds side by side as 3-D surfaces on one colour scale and one z
    range (so equal colours and heights mean equal losses in every panel), each with the ε-disk
    drawn on the surface (its rim, interpolated bilinearly) and the trained weights marked; the
    colour bar at the right, the legend below the panels. Returns the plotly Figure."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots
    from scipy.interpolate import RegularGridInterpolator

    if not surfaces:
        raise ValueError("surface_figure: no surfaces given")
    finite = np.concatenate([loss[np.isfinite(loss)] for *_, loss in surfaces])
    if finite.size == 0:
        raise ValueError(f"{title}: no finite loss values to plot")
    lo, hi = float(finite.min()), float(finite.max())
    hi = hi if hi > lo else lo + 1.0
    fig = make_subplots(
        rows=1,
        cols=len(surfaces),
        specs=[[{"type": "scene"}] * len(surfaces)],
        subplot_titles=[f"direction seed {seed}" for seed, *_ in surfaces],
        horizontal_spacing=0.02,
    )
    angle = np.linspace(0.0, 2 * np.pi, 241)
    rim_x, rim_y = radius * np.cos(angle), radius * np.sin(angle)
    for k, (seed, x, y, loss) in enumerate(surfaces, start=1):
        z = np.where(np.isfinite(loss), loss, np.nan)
        fig.add_trace(
            go.Surface(x=x, y=y, z=z, colorscale="Viridis", cmin=lo, cmax=hi, showscale=k == 1,
                       colorbar={"title": {"text": "loss"}, "x": 1.0, "xanchor": "left",
                                 "len": 0.8},
                       name=f"loss, direction seed {seed}"),
            row=1, col=k,
        )  # fmt: skip
        rim = RegularGridInterpolator((y, x), z, bounds_error=False, fill_value=np.nan)
        fig.add_trace(
            go.Scatter3d(x=rim_x, y=rim_y, z=rim(np.column_stack([rim_y, rim_x])), mode="lines",
                         line={"color": "red", "width": 6}, name=f"ε-disk (ε = {radius:g})",
                         legendgroup="disk", showlegend=k == 1),
            row=1, col=k,
        )  # fmt: skip
        centre = RegularGridInterpolator((y, x), z, bounds_error=False)([[0.0, 0.0]])
        fig.add_trace(
            go.Scatter3d(x=[0.0], y=[0.0], z=centre, mode="markers", name="trained weights",
                         marker={"color": "white", "size": 6,
                                 "line": {"color": "black", "width": 2}},
                         legendgroup="centre", showlegend=k == 1),
            row=1, col=k,
        )  # fmt: skip
    pad = 0.02 * (hi - lo)
    # The camera a little farther out than plotly's default, so that the whole box with its axis
    # labels fits a panel a third of the window wide.
    fig.update_scenes(xaxis_title="α (dx)", yaxis_title="β (dy)", zaxis_title="loss",
                      zaxis_range=[lo - pad, hi + pad], aspectmode="cube",
                      camera={"eye": {"x": 1.7, "y": 1.7, "z": 1.3}})  # fmt: skip
    fig.update_layout(
        title={"text": title},
        margin={"l": 0, "r": 60, "t": 70, "b": 10},
        legend={"orientation": "h", "x": 0.5, "xanchor": "center", "y": 0.0, "yanchor": "top"},
    )
    return fig


def surfaces_page(
    runs: Mapping[str, tuple[str, RunSurfaces]],
    out: str | Path,
    *,
    radius: float,
    title: str,
    caption: str,
) -> dict[str, Any]:
    """Every run's 3-D surfaces on one HTML page with plotly.js inside once: a menu chooses the
    run (also from the address, `#<run id>`), the plot fills the window below the menu. Each run
    is drawn by `surface_figure`. `runs` maps run id -> (menu label, its surfaces). Returns the
    figures as plotly JSON by run, in menu order."""
    import plotly.io as pio
    from plotly.offline import get_plotlyjs

    if not runs:
        raise ValueError("surfaces_page: no runs given")
    figures = {
        run: surface_figure(s, radius=radius, title=label).to_plotly_json()
        for run, (label, s) in runs.items()
    }
    options = "".join(
        f'<option value="{html.escape(run)}">{html.escape(label)}</option>'
        for run, (label, _) in runs.items()
    )
    # JSON inside <script>: plotly's encoder, with "</" broken so no string can end the script.
    data = pio.to_json(figures, validate=False).replace("</", "<\\/")
    page = _SURFACE_PAGE.format(
        title=html.escape(title),
        plotly=get_plotlyjs(),
        options=options,
        caption=html.escape(caption),
        figures=data,
    )
    with atomic_path(out) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return figures
