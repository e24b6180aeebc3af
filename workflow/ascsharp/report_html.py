"""Self-contained HTML pages for the Snakemake report: tables and interactive 3-D surfaces.

The report shows an HTML result in a frame of its own, so every page here carries what it needs
(its style sheet, and for the surfaces plotly.js itself) and opens as well from the report as
from the results folder, offline. No torch.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ascsharp.correlation import TABLE_COLUMNS
from ascsharp.io import atomic_path

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


def html_table(df: pd.DataFrame, out: str | Path, *, title: str, caption: str = "") -> None:
    """`df` as one HTML page: a heading, a caption and the table (4 significant digits, sticky
    header, missing values as –), written atomically."""
    table = df.to_html(index=False, na_rep="–", float_format=_number, border=0, escape=True)
    page = (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_STYLE}</style></head><body><h2>{html.escape(title)}</h2>"
        f'<p class="caption">{html.escape(caption)}</p><div class="scroll">{table}</div>'
        "</body></html>\n"
    )
    with atomic_path(out) as tmp:
        tmp.write_text(page, encoding="utf-8")


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


def surface_html(
    surfaces: Sequence[tuple[int, np.ndarray, np.ndarray, np.ndarray]],
    out: str | Path,
    *,
    radius: float,
    title: str,
):
    """One interactive 3-D plot per direction seed of a run, side by side, each with the ε-disk
    drawn on the surface (its rim, interpolated bilinearly) and the trained weights marked, as
    one HTML file with plotly.js inside. `surfaces` holds (direction seed, x, y, loss[iy, ix]).
    Returns the plotly Figure."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots
    from scipy.interpolate import RegularGridInterpolator

    if not surfaces:
        raise ValueError("surface_html: no surfaces given")
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
            go.Surface(x=x, y=y, z=z, colorscale="Viridis", showscale=k == 1,
                       colorbar={"title": {"text": "loss"}}, name=f"loss, direction seed {seed}"),
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
                         marker={"color": "white", "size": 5, "line": {"color": "black"}},
                         legendgroup="centre", showlegend=k == 1),
            row=1, col=k,
        )  # fmt: skip
    axes = {"xaxis_title": "α (dx)", "yaxis_title": "β (dy)", "zaxis_title": "loss"}
    fig.update_scenes(**axes)
    fig.update_layout(title={"text": title}, height=620, margin={"l": 0, "r": 0, "t": 80})
    with atomic_path(out) as tmp:
        fig.write_html(tmp, include_plotlyjs=True, full_html=True)
    return fig
