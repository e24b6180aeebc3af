# Helpers of the views of Li et al. (2018) (rules in views.smk), and the trajectory output of
# the train rule (train.smk), so included before both.
from ascsharp.core.runs import interpolation_pairs

VIEWS = config["views"]
INTERPOLATION = VIEWS["interpolation"]
TRAJECTORY = VIEWS["trajectory"]
VIEW_FEATURES = {
    "npy": f"results/features/{LAND['split']}.npy",
    "tsv": f"results/features/{LAND['split']}.tsv",
}


def configured_pairs():
    """views.interpolation.pairs, each run checked against the grid; null: the default pairs."""
    if INTERPOLATION["pairs"] is None:
        return interpolation_pairs(RUNS.dataframe)
    for i, (a, b) in enumerate(INTERPOLATION["pairs"]):
        for run in (a, b):
            if run not in RUN_IDS:
                sys.exit(
                    f"error: views.interpolation.pairs[{i}]: {run!r} is not a grid run"
                )
        if a == b:
            sys.exit(f"error: views.interpolation.pairs[{i}]: a run paired with itself")
    return [tuple(pair) for pair in INTERPOLATION["pairs"]]


def interpolation_path(a, b, ext):
    return f"results/views/interpolation/{a}/vs/{b}.{ext}"


def views_targets():
    """The views' figures (and with them their JSON / h5) of every enabled view."""
    targets = []
    if INTERPOLATION["enabled"]:
        targets += [interpolation_path(a, b, "svg") for a, b in configured_pairs()]
    if TRAJECTORY["enabled"]:
        targets += expand("results/views/trajectory/{run}.svg", run=RUN_IDS)
    return targets


def view_point_minutes(wildcards):
    """One forward pass over the landscape's clips, as a landscape grid point (common.smk)."""
    clips = min(1.0, LAND["clips"] / PAPER_TRAIN_CLIPS) if LAND["clips"] else 1.0
    return LANDSCAPE_POINT_MINUTES[_arch(wildcards)] * CLIP_SCALE * clips


def interpolation_runtime(wildcards, attempt):
    """Minutes: a forward pass per α, another to recompute BN statistics, one for loading."""
    passes = 2 if INTERPOLATION["bn_statistics"] == "recompute" else 1
    points = INTERPOLATION["alpha"]["num"] * passes + 1
    return attempt * math.ceil(points * view_point_minutes(wildcards))


def trajectory_runtime(wildcards, attempt):
    """Minutes: the plane's grid points, plus reading the stored epochs and their PCA."""
    points = TRAJECTORY["num"] ** 2 + 1
    return attempt * math.ceil(points * view_point_minutes(wildcards) + 10)


# With views.trajectory.enabled, training also stores every epoch's weights (views.smk's PCA).
TRAJECTORY_OUTPUT = (
    {"trajectory": "results/models/{run}/trajectory.h5"}
    if TRAJECTORY["enabled"]
    else {}
)


def trajectory_option(wildcards, output):
    return f"--trajectory {output.trajectory}" if TRAJECTORY_OUTPUT else ""
