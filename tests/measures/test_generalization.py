"""Jiang et al.'s measures (PAC-Bayes flatness, norms, path norm, inverse margin) against closed
forms and hand computation; the initial weights the distance is measured from; the ranking's
comparison with the trivial baselines."""

from __future__ import annotations

import itertools
import logging
import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import norm as normal
from torch import nn

from ascsharp.core.tensors import weights_digest
from ascsharp.measures.generalization import (
    inverse_margin,
    norms,
    pacbayes,
    pacbayes_sigma,
    path_norm,
)

LOG = logging.getLogger("test_generalization")
LOG.setLevel(logging.WARNING)


# --- PAC-Bayes flatness -----------------------------------------------------------------------


class OneBias(nn.Module):
    """Two logits (b, 0) for every clip, whose label is 0: correct iff b + u > 0. With noise u
    of standard deviation s the expected accuracy is Phi(b / s), so the accuracy deviation is
    Phi(-b / s) and reaches 0.1 at s = b / z_0.9."""

    def __init__(self, b: float):
        super().__init__()
        self.b = nn.Parameter(torch.tensor([b], dtype=torch.float64))

    def forward(self, x):
        return torch.stack([self.b.expand(len(x)), torch.zeros(len(x), dtype=x.dtype)], dim=1)


def test_bisection_finds_the_largest_sigma_within_the_tolerance():
    from ascsharp.measures.generalization import PacBayesOptions

    opts = PacBayesOptions(samples=1, depth=15, batch_size=1)
    out = pacbayes_sigma(lambda k, s: s**2, opts)  # deviation sigma^2 = 0.1 at sqrt(0.1)
    assert abs(out["sigma"] ** 2 - 0.1) < 0.01 and out["within_tolerance"]
    assert [s["sigma"] for s in out["steps"][:2]] == [1.0, 0.5]  # midpoints of [0, 2]
    flat = pacbayes_sigma(lambda k, s: 0.0, opts)  # never deviates: sigma runs to the top
    assert not flat["within_tolerance"] and flat["sigma"] == pytest.approx(2 - 2 / 2**15)


@pytest.mark.parametrize("b", [0.3, 1.0])
def test_pacbayes_sigma_matches_the_gaussian_closed_form(b):
    model = OneBias(b)
    x, y = torch.zeros(4, 1, dtype=torch.float64), torch.zeros(4, dtype=torch.long)
    opts = {"samples": 4000, "depth": 15, "batch_size": 4}
    v = pacbayes(model, x, y, opts, seed=2, log=LOG)["values"]
    assert v["accuracy"] == 1.0
    z = normal.ppf(0.9)
    # Within the search's tolerance: deviation in [0.09, 0.11] (and Monte Carlo error ~0.005).
    lo, hi = b / normal.ppf(1 - 0.08), b / normal.ppf(1 - 0.12)
    assert lo < v["sigma"] < hi, (v["sigma"], b / z)
    assert v["pacbayes_flatness"] == pytest.approx(1 / v["sigma"] ** 2)

    # Magnitude-aware: std sqrt(sigma^2 b^2 + eps^2) = b / z at sigma = sqrt((b/z)^2 - eps^2)/b.
    def mag(s):
        return math.sqrt(max(s**2 - 1e-6, 0)) / b

    assert mag(lo) < v["magnitude_sigma"] < mag(hi)
    assert model.b.item() == b  # restored


# --- norms and the path norm ------------------------------------------------------------------


class MLP(nn.Module):
    def __init__(self, bn: bool = False):
        super().__init__()
        self.fc1 = nn.Linear(3, 4, bias=not bn)
        self.bn = nn.BatchNorm1d(4) if bn else nn.Identity()
        self.fc2 = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc2(torch.relu(self.bn(self.fc1(x))))


def mlp(bn: bool = False, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = MLP(bn).double()
    if bn:
        with torch.no_grad():
            model.bn.running_mean.copy_(torch.tensor([0.3, -0.2, 0.1, 0.5]))
            model.bn.running_var.copy_(torch.tensor([0.5, 2.0, 1.5, 0.7]))
            model.bn.weight.copy_(torch.tensor([1.2, -0.7, 0.4, 2.0]))
            model.bn.bias.copy_(torch.tensor([0.1, 0.3, -0.5, 0.2]))
    return model.eval()


def test_path_norm_is_the_sum_over_paths_of_squared_weights():
    m = mlp()
    w1, b1, w2, b2 = (p.detach() for p in (m.fc1.weight, m.fc1.bias, m.fc2.weight, m.fc2.bias))
    # Every input-output path's product of squared weights (biases start paths of their own).
    want = 0.0
    for o, h in itertools.product(range(2), range(4)):
        want += w2[o, h] ** 2 * (sum(w1[h, i] ** 2 for i in range(3)) + b1[h] ** 2)
    want += (b2**2).sum()
    assert path_norm(m, (3,)) == pytest.approx(float(want), rel=1e-12)


def test_path_norm_takes_batchnorm_as_the_folded_affine_map():
    m = mlp(bn=True).requires_grad_(False)
    bn = m.bn
    a = bn.weight / (bn.running_var + bn.eps).sqrt()
    folded_w1 = a[:, None] * m.fc1.weight  # bias-free linear followed by BN, folded
    folded_b1 = bn.bias - a * bn.running_mean
    hidden = (folded_w1**2).sum(dim=1) + folded_b1**2
    want = ((m.fc2.weight**2) @ hidden + m.fc2.bias**2).sum()
    assert path_norm(m, (3,)) == pytest.approx(float(want), rel=1e-12)
    assert m.bn.running_var[1].item() == 2.0  # the model itself untouched


def test_norms_match_numpy_with_convs_reshaped_to_matrices():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv1d(2, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(12, 4)).double()
    torch.manual_seed(2)
    initial = nn.Sequential(nn.Conv1d(2, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(12, 4)).double()
    x = torch.zeros(5, 2, 6, dtype=torch.float64)
    v = norms(model, x, torch.zeros(5, dtype=torch.long), {}, 0, LOG, initial=initial)["values"]
    mats = [model[0].weight.detach().numpy().reshape(3, 6), model[3].weight.detach().numpy()]
    inits = [initial[0].weight.detach().numpy().reshape(3, 6), initial[3].weight.detach().numpy()]
    fro = [np.linalg.norm(w) for w in mats]
    spec = [np.linalg.svd(w, compute_uv=False)[0] for w in mats]
    assert v["weight_tensors"] == 2  # biases are not weights
    assert v["log_prod_frobenius"] == pytest.approx(np.log(np.prod(np.square(fro))), rel=1e-12)
    assert v["log_prod_spectral"] == pytest.approx(np.log(np.prod(np.square(spec))), rel=1e-12)
    dist = np.sqrt(sum(np.sum((w - w0) ** 2) for w, w0 in zip(mats, inits, strict=True)))
    assert v["distance_from_init"] == pytest.approx(dist, rel=1e-12)
    assert v["weight_norm"] == pytest.approx(np.sqrt(np.sum(np.square(fro))), rel=1e-12)


# --- margin -----------------------------------------------------------------------------------


class Logits(nn.Module):
    """Returns its input as the logits (a parameter so that the measure finds a device)."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones((), dtype=torch.float64))

    def forward(self, x):
        return self.scale * x


def test_inverse_margin_is_one_over_the_squared_tenth_percentile_margin():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(40, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 5, (40,), generator=g)
    margins = []
    for row, label in zip(logits.tolist(), y.tolist(), strict=True):
        others = [v for k, v in enumerate(row) if k != label]
        margins.append(row[label] - max(others))
    gamma = sorted(margins)[40 // 10 - 1]  # the 4th smallest of 40
    v = inverse_margin(Logits(), logits, y, {"batch_size": 7}, 0, LOG)["values"]
    assert v["margin"] == pytest.approx(gamma, rel=1e-12)
    assert v["inverse_margin"] == pytest.approx(1 / gamma**2, rel=1e-12)
    assert v["negative_margins"] == sum(m < 0 for m in margins)


# --- the initial weights ----------------------------------------------------------------------


def test_regenerated_initial_weights_are_those_training_started_from(feature_store, tmp_path):
    """train() records the digest of the model it starts from; the measure regenerates the
    weights from the run's seed and must find the same digest (and distance 0 to an untrained
    copy); a wrong digest is refused by name."""
    from defaults import train_settings

    from ascsharp.features.clips import Store
    from ascsharp.measures.job import _initial_weights
    from ascsharp.train import checkpoint
    from ascsharp.train.loop import TrainFiles, train

    run = "arch~cnn10/optimizer~sgd/lr~0.001/batch_size~16/seed~43"
    files = TrainFiles(
        train=Store(feature_store / "train.npy", feature_store / "train.tsv"),
        test=Store(feature_store / "test.npy", feature_store / "test.tsv"),
        holdout=feature_store / "validation.tsv",
        model=tmp_path / "model.pt",
        metrics=tmp_path / "metrics.json",
        history=tmp_path / "history.tsv",
    )
    torch.manual_seed(123)  # training must not depend on the global RNG state before it
    train(
        files,
        run,
        train_settings(epochs=1, width=0.125, eval_batch_size=64),
        {},
        torch.device("cpu"),
    )
    ckpt = checkpoint.load(files.model)
    initial, check = _initial_weights(ckpt, files.model, LOG)
    assert check == {"sha256": ckpt["init_sha256"], "verified": True}
    assert weights_digest(initial) == ckpt["init_sha256"]
    trained, _ = checkpoint.load_model(files.model)
    assert weights_digest(trained) != ckpt["init_sha256"]  # training moved the weights
    with pytest.raises(ValueError, match="model.pt: init_sha256"):
        _initial_weights({**ckpt, "init_sha256": "0" * 64}, files.model, LOG)


# --- the ranking against the trivial baselines -------------------------------------------------


def ranking_summary(seed: int = 0) -> pd.DataFrame:
    """16 runs over lr x batch size x optimiser x seed; `oracle` orders the runs exactly as the
    gap does within every group, the baselines and `noise` at random."""
    rng = np.random.default_rng(seed)
    rows = []
    for lr, bs, opt, s in itertools.product([1e-3, 1e-4], [16, 32], ["adam", "sgd"], [42, 43]):
        gap = rng.normal()
        rows.append({"run": f"{lr}-{bs}-{opt}-{s}", "arch": "cnn10", "optimizer": opt, "lr": lr,
                     "batch_size": bs, "seed": s, "converged": True, "excluded": False,
                     "generalisation_gap": gap, "unseen": -gap, "adaptive_worst": 3 * gap + 1,
                     "train_loss": rng.normal(), "weight_norm": rng.normal()})  # fmt: skip
    return pd.DataFrame(rows)


@pytest.mark.slow
def test_ranking_states_which_measures_beat_the_trivial_baselines():
    from ascsharp.analysis.summary import rank_measures

    table = rank_measures(ranking_summary(), n_boot=200, seed=0)
    gap = table[table["target"] == "generalisation_gap"].set_index("measure")
    unseen = table[table["target"] == "unseen"].set_index("measure")
    assert {"train_loss", "weight_norm", "adaptive_worst"} <= set(gap.index)
    assert gap.loc["train_loss", "baseline"] and not gap.loc["adaptive_worst", "baseline"]
    for t in (gap, unseen):  # a perfect measure: Psi +-1, signed agreement 1, beats both
        assert t.loc["adaptive_worst", "psi_agreement"] == pytest.approx(1.0)
        assert t.loc["adaptive_worst", "beats_train_loss"]
        assert t.loc["adaptive_worst", "beats_weight_norm"]
        low = t.loc["adaptive_worst", "psi_gain_vs_train_loss_ci_low"]
        assert 0 < low <= t.loc["adaptive_worst", "psi_gain_vs_train_loss"]
        assert not t.loc["train_loss", "beats_train_loss"]  # no gain over itself
        assert t.loc["train_loss", "psi_gain_vs_train_loss"] == 0
    assert unseen.loc["adaptive_worst", "psi"] == pytest.approx(-1.0)  # falls with accuracy
