# Minima sharpness for acoustic scene classification (Milling et al., ICASSP 2024).
#
#   data ─► features ─► train (one job per grid run) ─► landscape shards ─► gather ─► sharpness ─► analysis
#
# Results tree ({run} = arch~../optimizer~../lr~../batch_size~../seed~..):
#   results/features/{train,test}.{npy,tsv}, validation.tsv      log-mels + index, hold-out index
#   results/models/{run}/model.pt, metrics.json, history.tsv     selected weights, accuracies, per-epoch log
#   results/landscapes/{run}/direction_seed~{d}/                 directions.pt, shard~{k}.npz, surface.h5, *.png
#   results/sharpness/{run}.json                                 every sharpness variant, per seed + aggregated
#   results/measures/{run}/{measure}.json                        Hessian, adaptive sharpness (average, worst)
#   results/analysis/summary.tsv, correlations.tsv, figures/     one row per run; statistics; figures
#   results/paper/                                               the same statistics on the paper's own table
#   results/views/interpolation/{run}/vs/{other}.json, .svg      loss along the line between two models
#   results/views/trajectory/{run}.h5, .svg                      training path on its PCA plane
#   logs/{rule}/..., benchmarks/{rule}/...                       mirror the outputs

from pathlib import Path

from snakemake.utils import min_version

min_version("9.0")


# The effective config is the schema's defaults (filled in by validate_config, common.smk) under
# the config files in the order given: the demo (config.yaml) when no --configfile is given,
# else only the files given (a preset, then the user's own), so that no demo value ever leaks
# into a preset (docs/reruns.md, "Presets"). config.yaml is found from this file, so that
# `--directory runs/NAME` keeps a run's outputs apart.
if not workflow.overwrite_configfiles:

    configfile: Path(workflow.current_basedir) / "config.yaml"


report: "workflow/report/workflow.rst"


# One rules file per stage, in workflow order (a stage's file reads the settings of the stages
# before it); what they share is in common.smk.
include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/landscape.smk"
include: "workflow/rules/measures.smk"
include: "workflow/rules/views.smk"
include: "workflow/rules/analysis.smk"


localrules:
    all,


rule all:
    default_target: True
    input:
        train_targets(),
        landscape_targets(),
        views_targets(),
        analysis_targets(),
