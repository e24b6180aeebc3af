# Statistics over all runs: summary table, correlations (with and without the runs excluded in
# analysis.exclude or flagged not converged), the measure ranking; and the same statistics on the
# paper's table. The figures and report tables are in figures.smk.


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
    params:
        exclude=ANALYSIS_EXCLUDE,
        # Judged here, not in training: a new threshold reruns the statistics only.
        converged_min_train_accuracy=config["train"]["converged_min_train_accuracy"],
    shell:
        "ascsharp summarize --metrics {input.metrics} --sharpness {input.sharpness}"
        " --measures {input.measures} --exclude {params.exclude:q}"
        " --converged-min-train-accuracy {params.converged_min_train_accuracy}"
        " --out {output} 2> {log}"


rule correlations:
    input:
        "results/analysis/summary.tsv",
    output:
        "results/analysis/correlations.tsv",
    log:
        "logs/correlations/correlations.log",
    params:
        bootstrap=config["analysis"]["bootstrap"],
        seed=config["analysis"]["seed"],
    shell:
        "ascsharp correlate {input} --bootstrap {params.bootstrap}"
        " --seed {params.seed} --out {output} 2> {log}"


rule rank_measures:
    input:
        "results/analysis/summary.tsv",
    output:
        table="results/analysis/measure_ranking.tsv",
        figure="results/analysis/figures/measure_ranking.png",
        figure_svg=report(
            "results/analysis/figures/measure_ranking.svg",
            caption="../report/ranking.rst",
            category=REPORT["predict"],
        ),
    log:
        "logs/rank_measures/rank_measures.log",
    params:
        bootstrap=config["analysis"]["bootstrap"],
        seed=config["analysis"]["seed"],
    shell:
        "ascsharp rank-measures {input} --bootstrap {params.bootstrap}"
        " --seed {params.seed} --out {output.table} --figure {output.figure}"
        " {output.figure_svg}"
        " 2> {log}"


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
    shell:
        "ascsharp paper-table {input} --summary {output.summary}"
        " --correlations {output.correlations} --scatter {output.scatter}"
        " {output.scatter_svg} 2> {log}"
