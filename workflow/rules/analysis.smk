# Statistics over all runs: summary table, correlations (with and without the runs excluded in
# analysis.exclude or flagged not converged), figures; and the same statistics on the paper's table.


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
    shell:
        "ascsharp summarize --metrics {input.metrics} --sharpness {input.sharpness}"
        " --measures {input.measures} --exclude {params.exclude:q} --out {output} 2> {log}"


rule correlations:
    input:
        "results/analysis/summary.tsv",
    output:
        "results/analysis/correlations.tsv",
    log:
        "logs/correlations/correlations.log",
    params:
        analysis=config["analysis"],
    shell:
        "ascsharp correlate {input} --bootstrap {params.analysis[bootstrap]}"
        " --seed {params.analysis[seed]} --out {output} 2> {log}"


rule rank_measures:
    input:
        "results/analysis/summary.tsv",
    output:
        table="results/analysis/measure_ranking.tsv",
        figure=report(
            "results/analysis/figures/measure_ranking.png",
            caption="../report/ranking.rst",
            category="Sharpness and accuracy",
        ),
    log:
        "logs/rank_measures/rank_measures.log",
    params:
        analysis=config["analysis"],
    shell:
        "ascsharp rank-measures {input} --bootstrap {params.analysis[bootstrap]}"
        " --seed {params.analysis[seed]} --out {output.table} --figure {output.figure}"
        " 2> {log}"


rule figures:
    input:
        summary="results/analysis/summary.tsv",
        correlations="results/analysis/correlations.tsv",
    output:
        scatter=report(
            "results/analysis/figures/scatter.png",
            caption="../report/scatter.rst",
            category="Sharpness and accuracy",
        ),
        devices=report(
            "results/analysis/figures/devices.png",
            caption="../report/devices.rst",
            category="Sharpness and accuracy",
        ),
        heatmap=report(
            "results/analysis/figures/correlations.png",
            caption="../report/heatmap.rst",
            category="Sharpness and accuracy",
        ),
    log:
        "logs/figures/figures.log",
    shell:
        "ascsharp figures --summary {input.summary} --correlations {input.correlations}"
        " --scatter {output.scatter} --devices {output.devices} --heatmap {output.heatmap}"
        " 2> {log}"


rule paper_table:
    input:
        PAPER_TABLE,
    output:
        correlations="results/paper/correlations.tsv",
        summary="results/paper/summary.tsv",
        scatter=report(
            "results/paper/figures/scatter.png",
            caption="../report/paper.rst",
            category="Published table",
        ),
    log:
        "logs/paper_table/paper_table.log",
    shell:
        "ascsharp paper-table {input} --out results/paper --figures 2> {log}"
