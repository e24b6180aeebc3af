# Statistics over all runs: summary table, correlations (with and without the runs excluded in
# analysis.exclude or flagged not converged), the measure ranking, and the same statistics on
# the paper's table; then the figures and the report's tables that answer the study's questions
# (REPORT, common.smk). All are cheap and run on the submit host under --profile slurm.
import json

ANALYSIS = config["analysis"]
# Passed to `ascsharp summarize` as JSON: runs left out of the headline statistics. Sorted keys:
# the order in which a config file spells a filter's keys must not rerun the summary.
ANALYSIS_EXCLUDE = json.dumps(ANALYSIS["exclude"], sort_keys=True)
# The published study's table, shipped with the workflow: found from this file (not from the
# Snakefile that includes the workflow, nor from the working directory), so that `--directory`
# and `module` both work.
PAPER_TABLE = str(
    Path(workflow.current_basedir).parent / "reference/paper_results_icassp2024.csv"
)


def analysis_targets():
    """What `all` asks of the analysis: the statistics, every figure and the report's tables."""
    names = ["scatter", "devices", "correlations", "by_optimizer", "by_arch", "forest"]
    names += ["forest_groups", "seeds", "measure_ranking", "paper_comparison"]
    return [
        "results/analysis/summary.tsv",
        "results/analysis/correlations.tsv",
        "results/analysis/measure_ranking.tsv",
        "results/paper/correlations.tsv",
        f"{FIGURES}/scatter.png",
        *expand(f"{FIGURES}/{{name}}.svg", name=names),
        "results/analysis/tables/summary.html",
        "results/analysis/tables/headline.html",
        "results/analysis/tables/paper_comparison.html",
    ]


localrules:
    summarize,
    correlations,
    rank_measures,
    paper_table,
    figures,
    report_tables,
    compare_published,


rule summarize:
    input:
        metrics=expand("results/models/{run}/metrics.json", run=RUN_IDS),
        sharpness=expand("results/sharpness/{run}.json", run=RUN_IDS),
        measures=expand(
            "results/measures/{run}/{measure}.json", run=RUN_IDS, measure=MEASURE_NAMES
        ),
    output:
        "results/analysis/summary.tsv",
    log:
        "logs/summarize/summarize.log",
    benchmark:
        "benchmarks/summarize/summarize.tsv"
    params:
        exclude=ANALYSIS_EXCLUDE,
        # Judged here, not in training: a new threshold reruns the statistics only.
        converged_min_train_accuracy=config["train"]["converged_min_train_accuracy"],
    shell:
        "ascsharp summarize --metrics {input.metrics} --sharpness {input.sharpness}"
        " --measures {input.measures} --exclude {params.exclude:q}"
        " --converged-min-train-accuracy {params.converged_min_train_accuracy}"
        " --out {output} > {log} 2>&1"


rule correlations:
    input:
        "results/analysis/summary.tsv",
    output:
        "results/analysis/correlations.tsv",
    log:
        "logs/correlations/correlations.log",
    benchmark:
        "benchmarks/correlations/correlations.tsv"
    params:
        bootstrap=ANALYSIS["bootstrap"],
        seed=ANALYSIS["seed"],
    shell:
        "ascsharp correlate {input} --bootstrap {params.bootstrap}"
        " --seed {params.seed} --out {output} > {log} 2>&1"


rule rank_measures:
    input:
        "results/analysis/summary.tsv",
    output:
        table="results/analysis/measure_ranking.tsv",
        figure=f"{FIGURES}/measure_ranking.png",
        figure_svg=report(
            f"{FIGURES}/measure_ranking.svg",
            caption="../report/ranking.rst",
            category=REPORT["predict"],
        ),
    log:
        "logs/rank_measures/rank_measures.log",
    benchmark:
        "benchmarks/rank_measures/rank_measures.tsv"
    params:
        bootstrap=ANALYSIS["bootstrap"],
        seed=ANALYSIS["seed"],
    shell:
        "ascsharp rank-measures {input} --bootstrap {params.bootstrap}"
        " --seed {params.seed} --out {output.table}"
        " --figure {output.figure} {output.figure_svg} > {log} 2>&1"


rule paper_table:
    input:
        PAPER_TABLE,
    output:
        correlations="results/paper/correlations.tsv",
        summary="results/paper/summary.tsv",
        scatter="results/paper/figures/scatter.png",
        scatter_svg=report(
            "results/paper/figures/scatter.svg",
            caption="../report/paper.rst",
            category=REPORT["study"],
        ),
    log:
        "logs/paper_table/paper_table.log",
    benchmark:
        "benchmarks/paper_table/paper_table.tsv"
    shell:
        "ascsharp paper-table {input} --summary {output.summary}"
        " --correlations {output.correlations}"
        " --scatter {output.scatter} {output.scatter_svg} > {log} 2>&1"


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
    benchmark:
        "benchmarks/figures/figures.tsv"
    shell:
        "ascsharp figures --summary {input.summary} --correlations {input.correlations}"
        " --scatter {output.scatter} {output.scatter_svg}"
        " --devices {output.devices} {output.devices_svg}"
        " --heatmap {output.heatmap} {output.heatmap_svg}"
        " --by-optimizer {output.by_optimizer} {output.by_optimizer_svg}"
        " --by-arch {output.by_arch} {output.by_arch_svg}"
        " --forest {output.forest} {output.forest_svg}"
        " --forest-groups {output.forest_groups} {output.forest_groups_svg}"
        " --seeds {output.seeds} {output.seeds_svg} > {log} 2>&1"


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
    benchmark:
        "benchmarks/report_tables/report_tables.tsv"
    shell:
        "ascsharp report-tables --summary {input.summary} --correlations {input.correlations}"
        " --ranking {input.ranking} --published-correlations {input.published}"
        " --scatter {input.scatter} --summary-html {output.summary}"
        " --headline-html {output.headline} > {log} 2>&1"


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
    benchmark:
        "benchmarks/compare_published/compare_published.tsv"
    shell:
        "ascsharp compare-published --summary {input.summary} --published {input.published}"
        " --table {output.table} --html {output.html} --figure {output.png} {output.svg}"
        " > {log} 2>&1"
