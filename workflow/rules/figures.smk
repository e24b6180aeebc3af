# Figures and tables for the report, each in the category of the question it answers (REPORT in
# report.smk). Every figure is written twice: PNG (README, a quick look) and SVG (vector graphics,
# the copy the report lists). All are cheap and run on the submit host (localrules, Snakefile).


wildcard_constraints:
    optimizer=r"[^/~]+",
    arch=r"[^/~]+",


rule figures:
    input:
        summary="results/analysis/summary.tsv",
        correlations="results/analysis/correlations.tsv",
    output:
        scatter=f"{FIGURES}/scatter.png",
        scatter_svg=figure(f"{FIGURES}/scatter.svg", "scatter", REPORT["answer"]),
        devices=f"{FIGURES}/devices.png",
        devices_svg=figure(f"{FIGURES}/devices.svg", "devices", REPORT["unseen"]),
        heatmap=f"{FIGURES}/correlations.png",
        heatmap_svg=figure(f"{FIGURES}/correlations.svg", "heatmap", REPORT["unseen"]),
        by_optimizer=f"{FIGURES}/by_optimizer.png",
        by_optimizer_svg=figure(
            f"{FIGURES}/by_optimizer.svg", "by_optimizer", REPORT["group"]
        ),
        by_arch=f"{FIGURES}/by_arch.png",
        by_arch_svg=figure(f"{FIGURES}/by_arch.svg", "by_arch", REPORT["group"]),
        forest=f"{FIGURES}/forest.png",
        forest_svg=figure(f"{FIGURES}/forest.svg", "forest", REPORT["predict"]),
        forest_groups=f"{FIGURES}/forest_groups.png",
        forest_groups_svg=figure(
            f"{FIGURES}/forest_groups.svg", "forest_groups", REPORT["group"]
        ),
        seeds=f"{FIGURES}/seeds.png",
        seeds_svg=figure(f"{FIGURES}/seeds.svg", "seeds", REPORT["stable"]),
    log:
        "logs/figures/figures.log",
    shell:
        "ascsharp figures --summary {input.summary} --correlations {input.correlations}"
        " --scatter {output.scatter} {output.scatter_svg}"
        " --devices {output.devices} {output.devices_svg}"
        " --heatmap {output.heatmap} {output.heatmap_svg}"
        " --by-optimizer {output.by_optimizer} {output.by_optimizer_svg}"
        " --by-arch {output.by_arch} {output.by_arch_svg}"
        " --forest {output.forest} {output.forest_svg}"
        " --forest-groups {output.forest_groups} {output.forest_groups_svg}"
        " --seeds {output.seeds} {output.seeds_svg} 2> {log}"


rule report_tables:
    input:
        summary="results/analysis/summary.tsv",
        correlations="results/analysis/correlations.tsv",
        ranking="results/analysis/measure_ranking.tsv",
        published="results/paper/correlations.tsv",
        scatter=f"{FIGURES}/scatter.svg",
    output:
        summary=report(
            "results/analysis/tables/summary.html",
            caption="../report/summary_table.rst",
            category=REPORT["predict"],
        ),
        headline=report(
            "results/analysis/tables/headline.html",
            caption="../report/headline_table.rst",
            category=REPORT["answer"],
        ),
    log:
        "logs/report_tables/report_tables.log",
    shell:
        "ascsharp report-tables --summary {input.summary} --correlations {input.correlations}"
        " --ranking {input.ranking} --published-correlations {input.published}"
        " --scatter {input.scatter} --summary-html {output.summary}"
        " --headline-html {output.headline} 2> {log}"


rule training_curves:
    input:
        history=lambda w: expand(
            "results/models/{run}/history.tsv",
            run=runs_where("optimizer", w.optimizer),
        ),
        metrics=lambda w: expand(
            "results/models/{run}/metrics.json",
            run=runs_where("optimizer", w.optimizer),
        ),
    output:
        png=f"{FIGURES}/training/optimizer~{{optimizer}}.png",
        svg=figure(
            f"{FIGURES}/training/optimizer~{{optimizer}}.svg",
            "training",
            REPORT["training"],
            optimizer="{optimizer}",
        ),
    log:
        "logs/training_curves/optimizer~{optimizer}.log",
    shell:
        "ascsharp training-curves --history {input.history} --metrics {input.metrics}"
        " --out {output.png} {output.svg} 2> {log}"


rule landscape_montage:
    input:
        lambda w: expand(
            "{dir}/surface.h5",
            dir=[
                landscape_dir(run, MONTAGE_SEED) for run in runs_where("arch", w.arch)
            ],
        ),
    output:
        png=f"{FIGURES}/landscapes/arch~{{arch}}.png",
        svg=figure(
            f"{FIGURES}/landscapes/arch~{{arch}}.svg",
            "montage",
            REPORT["landscapes"],
            "all runs",
            figure="montage",
            architecture="{arch}",
        ),
    log:
        "logs/landscape_montage/arch~{arch}.log",
    params:
        radius=config["sharpness"]["radius"],
    shell:
        "ascsharp landscape-montage {input} --radius {params.radius}"
        " --out {output.png} {output.svg} 2> {log}"


rule landscape_views:
    input:
        surfaces,
    output:
        png="results/landscapes/{run}/slices.png",
        svg=report(
            "results/landscapes/{run}/slices.svg",
            caption="../report/slices.rst",
            category=REPORT["landscapes"],
            subcategory="{run}",
            labels={"figure": "1-D slices", "direction seed": "all"},
        ),
    log:
        "logs/landscape_views/{run}.log",
    params:
        radius=config["sharpness"]["radius"],
    shell:
        "ascsharp landscape-views {input} --radius {params.radius}"
        " --slices {output.png} {output.svg} 2> {log}"


rule surfaces_page:
    input:
        [
            f"{landscape_dir(run, d)}/surface.h5"
            for run in RUN_IDS
            for d in LAND["direction_seeds"]
        ],
    output:
        report(
            f"{FIGURES}/surfaces3d.html",
            caption="../report/surface3d_html.rst",
            category=REPORT["landscapes"],
            subcategory="all runs",
            labels={"figure": "3-D, interactive", "architecture": "all"},
        ),
    log:
        "logs/surfaces_page/surfaces_page.log",
    params:
        radius=config["sharpness"]["radius"],
    shell:
        "ascsharp surfaces-page {input} --radius {params.radius} --out {output} 2> {log}"


rule compare_published:
    input:
        summary="results/analysis/summary.tsv",
        published=PAPER_TABLE,
    output:
        table="results/analysis/paper_comparison.tsv",
        html=report(
            "results/analysis/tables/paper_comparison.html",
            caption="../report/paper_comparison.rst",
            category=REPORT["study"],
        ),
        png=f"{FIGURES}/paper_comparison.png",
        svg=figure(
            f"{FIGURES}/paper_comparison.svg", "paper_comparison", REPORT["study"]
        ),
    log:
        "logs/compare_published/compare_published.log",
    shell:
        "ascsharp compare-published --summary {input.summary} --published {input.published}"
        " --table {output.table} --html {output.html} --figure {output.png} {output.svg}"
        " 2> {log}"
