# What the report shows and how it is grouped: one category per question the figures answer,
# and the helpers of the figure rules (figures.smk). Included before the rules that list outputs
# in the report.

# Report categories, numbered in reading order.
REPORT = {
    "answer": "1. The answer: does a sharper minimum mean lower accuracy?",
    "predict": "2. Every measure, target and group",
    "unseen": "3. On unseen recording devices?",
    "group": "4. Within an optimiser or architecture?",
    "stable": "5. Is the sharpness stable over direction seeds?",
    "landscapes": "6. Loss landscapes",
    "training": "7. Training",
    "study": "8. Ours against the published study",
}
FIGURES = "results/analysis/figures"
# The montage shows every run's landscape for the first direction seed; slices and the 3-D
# pages show every direction seed of one run.
MONTAGE_SEED = LAND["direction_seeds"][0]
GRID_VALUES = RUNS.dataframe


def runs_where(key, value):
    """The run ids of the grid whose `key` is `value` (a wildcard's string)."""
    rows = GRID_VALUES.to_dict("records")
    return [run for run, row in zip(RUN_IDS, rows) if str(row[key]) == value]


def figure(path, caption, category, subcategory=None, **labels):
    """An SVG output listed in the report under `category`, with its caption."""
    return report(
        path,
        caption=f"../report/{caption}.rst",
        category=category,
        subcategory=subcategory,
        labels=labels or None,
    )


def figure_targets():
    """What the report needs beyond all_targets(): every figure's SVG and the HTML pages."""
    names = ["scatter", "devices", "correlations", "by_optimizer", "by_arch", "forest"]
    names += ["forest_groups", "seeds", "measure_ranking", "paper_comparison"]
    return [
        *expand(f"{FIGURES}/{{name}}.svg", name=names),
        *expand(
            f"{FIGURES}/training/optimizer~{{optimizer}}.svg",
            optimizer=sorted(set(GRID_VALUES["optimizer"])),
        ),
        *expand(
            f"{FIGURES}/landscapes/arch~{{arch}}.svg",
            arch=sorted(set(GRID_VALUES["arch"])),
        ),
        *expand(
            "results/landscapes/{run}/{name}",
            run=RUN_IDS,
            name=["slices.svg"],
        ),
        *expand(
            "results/landscapes/{run}/direction_seed~{d}/{name}.svg",
            run=RUN_IDS,
            d=LAND["direction_seeds"],
            name=["contour", "surface3d"],
        ),
        f"{FIGURES}/surfaces3d.html",
        "results/analysis/tables/summary.html",
        "results/analysis/tables/headline.html",
        "results/analysis/tables/paper_comparison.html",
    ]
