"""The paper preset's unit counts behind bench_paper.py's GPU-hours, by hand from the preset
(46 runs: CNN10 adam/sgd/gdtuo x 2 lr x batch 16/32 x 2 seeds, CNN10 kfac x 3 lr x batch 16 x
2 seeds, CNN14 adam/sgd x 2 lr x batch 16/32 x 2 seeds; 50 epochs; 3 direction seeds x 121
points; measures on 2048 clips with the schema's settings)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_paper import PRESET, preset_settings, preset_units  # noqa: E402


def test_preset_units_by_hand():
    u = preset_units(preset_settings(), lanczos_hvps=60)
    assert u["runs"] == 46 and u["surfaces"] == 138 and u["measure_clips"] == 2048
    assert u["train"][("cnn10", "adam", 16)] == 2 * 2 * 50  # 2 lr x 2 seeds x 50 epochs
    assert u["train"][("cnn10", "kfac", 16)] == 3 * 2 * 50
    assert ("cnn10", "kfac", 32) not in u["train"]
    assert sum(u["train"].values()) == 46 * 50
    assert u["select"] == {"cnn10": 30 * 50, "cnn14": 16 * 50}  # the paper's selection
    assert u["landscape"] == {"cnn10": 30 * 3 * 121, "cnn14": 16 * 3 * 121}
    assert u["refine"] == {"cnn10": 30 * 3, "cnn14": 16 * 3}  # surfaces (x points refined)
    assert u["hessian"] == {"cnn10": 30 * (60 + 100), "cnn14": 16 * (60 + 100)}
    assert u["adaptive_average"] == {"cnn10": 30 * 101, "cnn14": 16 * 101}  # + the unperturbed
    # 2048 / 128 = 16 batches x 1 start (the reference search) x 20 steps, one gradient each
    assert u["adaptive_worst"] == {"cnn10": 30 * 16 * 1 * 20, "cnn14": 16 * 16 * 1 * 20}
    # 2 variants x 15 bisection steps x 10 draws + the unperturbed accuracy
    assert u["pacbayes"] == {"cnn10": 30 * (2 * 15 * 10 + 1), "cnn14": 16 * (2 * 15 * 10 + 1)}


def test_presets_merge_in_order_over_the_schema():
    """paper.yaml + gpu-fast.yaml as `--configfile` merges them: the overlay's keys win, the
    keys it leaves out stay the paper preset's (or the schema's)."""
    fast = preset_settings(PRESET, PRESET.with_name("gpu-fast.yaml"))
    paper = preset_settings(PRESET)
    assert (
        fast["landscape"]["precision"] == "float16" and paper["landscape"]["precision"] == "float32"
    )
    assert fast["landscape"]["direction_seeds"] == paper["landscape"]["direction_seeds"]
    assert fast["measures"]["adaptive_average"] == {
        **paper["measures"]["adaptive_average"],
        "precision": "float16",
        "batch_size": 256,
    }
    assert fast["measures"]["clips"] == paper["measures"]["clips"] == 2048
    assert preset_units(fast, 60) == preset_units(paper, 60)  # the same work, faster
