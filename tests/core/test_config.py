"""Config schema, cross-field checks and the run grid (incl. the paper preset's 46 runs)."""

import re
from pathlib import Path

import pytest
import yaml
from snakemake.utils import Paramspace

from ascsharp.core.config import ConfigError, load_config, schema_defaults, validate_config
from ascsharp.core.runs import RUN_PATTERN, analysed_runs, expand_grid, parse_run_id, run_id

ROOT = Path(__file__).resolve().parents[2]
BLOCK = {"arch": ["cnn10"], "optimizer": ["adam"], "lr": [0.001], "batch_size": [16], "seed": [42]}


def minimal(**extra):
    return {"grid": {"blocks": [dict(BLOCK)]}, **extra}


@pytest.fixture
def caplog_ascsharp():
    """The ascsharp logger's lines (it does not propagate to the root logger caplog reads)."""
    import io
    import logging

    from ascsharp.core.progress import get_logger

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    get_logger().addHandler(handler)
    yield stream.getvalue
    get_logger().removeHandler(handler)


def test_default_config_is_valid_and_has_eight_runs():
    config = load_config(ROOT / "config.yaml")
    runs = expand_grid(config["grid"])
    assert len(runs) == 8
    assert set(runs["arch"]) == {"cnn10", "cnn14"} and runs["seed"].nunique() == 2


def test_paper_preset_yields_the_46_trained_and_38_reported_runs():
    config = load_config(ROOT / "workflow/presets/paper.yaml")
    runs = expand_grid(config["grid"])
    assert len(runs) == 46
    counts = runs.groupby(["arch", "optimizer"]).size().to_dict()
    assert counts == {
        ("cnn10", "adam"): 8,
        ("cnn10", "sgd"): 8,
        ("cnn10", "gdtuo"): 8,
        ("cnn10", "kfac"): 6,
        ("cnn14", "adam"): 8,
        ("cnn14", "sgd"): 8,
    }
    assert not ((runs["optimizer"] == "kfac") & (runs["batch_size"] == 32)).any()
    kept = analysed_runs(runs, config["analysis"]["exclude"])
    assert len(kept) == 38
    assert not ((kept["optimizer"] == "sgd") & (kept["lr"] == 0.0001)).any()
    assert config["landscape"]["x"] == {"min": -0.25, "max": 0.25, "num": 11}
    assert config["landscape"]["direction_seeds"] == [42, 43, 44]


def test_defaults_are_filled_in():
    config = validate_config(minimal())
    assert config["features"]["n_mels"] == 64
    assert config["train"]["epochs"] == 50
    assert config["landscape"]["x"]["num"] == 11


def test_renamed_keys_still_work_with_a_deprecation_note(caplog_ascsharp):
    config = validate_config(
        minimal(dataset={"sample_rate": 48000}, landscape={"subset": 32, "clips": 64}),
        source="my.yaml",
    )
    assert config["dataset"]["audio_sample_rate"] == 48000
    assert "sample_rate" not in config["dataset"] and "subset" not in config["landscape"]
    assert config["landscape"]["clips"] == 32  # the old key comes from a later (user) file
    notes = caplog_ascsharp()
    assert "my.yaml: dataset.sample_rate is deprecated, renamed dataset.audio_sample_rate" in notes
    assert "landscape.subset is deprecated, renamed landscape.clips" in notes
    assert "replaces landscape.clips: 64" in notes


def test_schema_defaults_are_every_section_but_the_grid():
    defaults = schema_defaults()
    assert "grid" not in defaults and defaults["features"]["n_mels"] == 64
    config = validate_config(minimal())
    assert {k: v for k, v in config.items() if k != "grid"} == defaults


def test_run_ids_match_snakemake_paramspace():
    config = load_config(ROOT / "workflow/presets/paper.yaml")
    runs = expand_grid(config["grid"])
    space = Paramspace(runs, single_wildcard="run")
    ours = [run_id(r) for r in runs.to_dict("records")]
    assert list(space.instance_patterns) == ours
    assert "arch~cnn10/optimizer~kfac/lr~1e-05/batch_size~16/seed~43" in ours
    for rid in ours:
        assert run_id(parse_run_id(rid)) == rid
        assert re.fullmatch(RUN_PATTERN, rid)  # the {run} wildcard constraint
    assert not re.fullmatch(RUN_PATTERN, ours[0] + "/direction_seed~42")


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (minimal(dataset={"rot": "x"}), "unknown key 'dataset.rot'"),
        (minimal(colour="red"), "unknown key 'colour'"),
        (minimal(train={"epochs": "ten"}), "train.epochs: 'ten' is not of type 'integer'"),
        (minimal(train={"epochs": 0}), "train.epochs"),
        (minimal(train={"selection": "test"}), "train.selection"),
        (minimal(landscape={"shards": 200}), "landscape.shards: 200 shards for a grid of 121"),
        (minimal(landscape={"precision": "bfloat16", "shards": 2}), "landscape.refine: re-eval"),
        (minimal(features={"fmax": 9000.0}), "features.fmax"),
        ({"grid": {"blocks": []}}, "grid.blocks"),
        ({"grid": {"blocks": [{**BLOCK, "optimizer": ["adamw"]}]}}, "grid.blocks[0].optimizer[0]"),
        ({"grid": {"blocks": [{**BLOCK, "lr": [-1]}]}}, "grid.blocks[0].lr[0]"),
        ({"grid": {"blocks": [BLOCK], "exclude": [{"arch": "cnn10"}]}}, "removes every run"),
        (minimal(analysis={"exclude": [{"seed": 42}]}), "analysis.exclude: removes every"),
        ({}, "'grid' is a required property"),
    ],
)
def test_bad_configs_are_refused_naming_the_key(config, message):
    with pytest.raises(ConfigError) as info:
        validate_config(config)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_load_config_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(minimal(train={"epochs": -3})))
    with pytest.raises(ConfigError, match=r"bad\.yaml: train\.epochs"):
        load_config(bad)
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "missing.yaml")


def test_parse_run_id_rejects_malformed():
    with pytest.raises(ValueError, match="expected arch~"):
        parse_run_id("arch~cnn10/seed~1")


def test_gpu_fast_overlay_is_valid_over_the_paper_preset():
    """gpu-fast.yaml layered on paper.yaml (as --configfile merges them, key by key) validates,
    and sets only speed: the fast precisions whose error is bounded or tested."""

    def merge(base: dict, over: dict) -> dict:
        out = dict(base)
        for k, v in over.items():
            out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
        return out

    presets = ROOT / "workflow/presets"
    paper = yaml.safe_load((presets / "paper.yaml").read_text())
    fast = yaml.safe_load((presets / "gpu-fast.yaml").read_text())
    config = validate_config(merge(paper, fast))
    assert config["landscape"]["precision"] == "float16" and config["landscape"]["refine"]
    for measure in ("adaptive_average", "pacbayes"):
        assert config["measures"][measure]["precision"] == "float16"
    assert config["measures"]["hessian"]["tf32"] is False  # its tolerance is not yet tested
    assert config["grid"] == validate_config(paper)["grid"]
