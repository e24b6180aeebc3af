"""PANNs CNN10/CNN14: sizes, names, forward structure, initialisation, PANNs checkpoint loading."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ascsharp.train.models import (
    ARCHS,
    build_model,
    count_parameters,
    fold_batchnorm,
    load_pretrained,
)

torch.set_num_threads(1)

PANNS_CHANNELS = {"cnn10": [64, 128, 256, 512], "cnn14": [64, 128, 256, 512, 1024, 2048]}
PANNS_FC = {"cnn10": 512, "cnn14": 2048}


def closed_form_count(channels: list[int], fc: int, n_classes: int, n_mels: int = 64) -> int:
    """Layer sizes summed by hand: 3x3 convs without bias, BN affine, two Linear layers."""
    total = 2 * n_mels  # bn0
    c_in = 1
    for c in channels:
        total += 9 * c_in * c + 9 * c * c + 2 * (2 * c)
        c_in = c
    return total + (c_in * fc + fc) + (fc * n_classes + n_classes)


@pytest.mark.parametrize(("arch", "expected"), [("cnn10", 4_954_058), ("cnn14", 79_694_282)])
def test_parameter_counts_match_paper_models(arch: str, expected: int) -> None:
    model = build_model(arch, n_classes=10, width=1.0, n_mels=64)
    assert count_parameters(model) == expected
    assert closed_form_count(PANNS_CHANNELS[arch], PANNS_FC[arch], 10) == expected


def expected_keys(n_blocks: int) -> list[str]:
    bn = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    keys = [f"bn0.{k}" for k in bn]
    for b in range(1, n_blocks + 1):
        for i in (1, 2):
            keys.append(f"conv_block{b}.conv{i}.weight")
            keys += [f"conv_block{b}.bn{i}.{k}" for k in bn]
    return keys + ["fc1.weight", "fc1.bias", "out.weight", "out.bias"]


@pytest.mark.parametrize(("arch", "n_blocks"), [("cnn10", 4), ("cnn14", 6)])
def test_state_dict_keys_are_panns_names(arch: str, n_blocks: int) -> None:
    model = build_model(arch, width=1 / 64, n_classes=10, n_mels=64)
    assert sorted(model.state_dict()) == sorted(expected_keys(n_blocks))


@pytest.mark.parametrize("arch", ["cnn10", "cnn14"])
def test_output_shape_full_width_short_clip(arch: str) -> None:
    model = build_model(arch, n_classes=10, width=1.0, n_mels=64).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 64, 101))
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(("arch", "frames"), [("cnn10", 101), ("cnn10", 1001), ("cnn14", 1001)])
def test_output_shape_reduced_width(arch: str, frames: int) -> None:
    model = build_model(arch, n_classes=7, width=0.125, n_mels=64).eval()
    with torch.no_grad():
        assert model(torch.randn(3, 64, frames)).shape == (3, 7)


def test_width_scales_every_channel_count() -> None:
    model = build_model("cnn14", width=0.25, n_classes=10, n_mels=64)
    for k, c in enumerate(PANNS_CHANNELS["cnn14"], start=1):
        block = getattr(model, f"conv_block{k}")
        assert block.conv1.out_channels == c // 4 and block.conv2.out_channels == c // 4
    assert model.fc1.out_features == 512
    expected = closed_form_count([c // 4 for c in PANNS_CHANNELS["cnn14"]], 512, 10)
    assert count_parameters(model) == expected
    # Rounded, never below one channel.
    tiny = build_model("cnn10", width=0.001, n_classes=10, n_mels=64)
    assert tiny.conv_block1.conv1.out_channels == 1 and tiny.conv_block4.conv2.out_channels == 1
    assert build_model(
        "cnn10", width=0.3, n_classes=10, n_mels=64
    ).conv_block1.conv1.out_channels == round(64 * 0.3)


def test_eval_is_deterministic_and_training_uses_dropout() -> None:
    torch.manual_seed(0)
    model = build_model("cnn10", width=0.125, n_classes=10, n_mels=64)
    x = torch.randn(4, 64, 64)
    model.eval()
    with torch.no_grad():
        a, b = model(x), model(x)
    assert torch.equal(a, b)
    model.train()
    with torch.no_grad():
        c, d = model(x), model(x)
    assert not torch.equal(c, d)


def test_unknown_arch_is_named() -> None:
    with pytest.raises(ValueError, match="'cnn12'"):
        build_model("cnn12", n_classes=10, width=1.0, n_mels=64)
    with pytest.raises(ValueError, match="width"):
        build_model("cnn10", width=0, n_classes=10, n_mels=64)


def test_too_short_input_and_wrong_mel_count_are_refused() -> None:
    model = build_model("cnn10", width=0.125, n_classes=10, n_mels=64)
    with pytest.raises(ValueError, match="frames"):
        model(torch.randn(1, 64, 8))  # 4 poolings need >= 16 frames
    with pytest.raises(ValueError, match="64 mel bins"):
        model(torch.randn(1, 40, 100))
    assert build_model("cnn10", n_mels=40, width=0.125, n_classes=10).eval()(
        torch.randn(1, 40, 100)
    ).shape == (
        1,
        10,
    )


def test_initialisation_is_panns() -> None:
    torch.manual_seed(0)
    model = build_model("cnn10", n_classes=10, width=1.0, n_mels=64)
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            assert torch.equal(m.weight, torch.ones_like(m.weight)), name
            assert torch.equal(m.bias, torch.zeros_like(m.bias)), name
        elif isinstance(m, torch.nn.Conv2d | torch.nn.Linear):
            w = m.weight
            fan_in = w.shape[1] * w[0, 0].numel()
            fan_out = w.shape[0] * w[0, 0].numel()
            bound = math.sqrt(6.0 / (fan_in + fan_out))
            assert w.abs().max() <= bound, name
            if w.numel() > 1000:  # uniform(-b, b) has std b / sqrt(3)
                assert abs(float(w.detach().std()) - bound / math.sqrt(3)) < 0.05 * bound, name
            if m.bias is not None:
                assert torch.equal(m.bias, torch.zeros_like(m.bias)), name


def reference_forward(
    model: torch.nn.Module, x: torch.Tensor, n_blocks: int, last_pool: bool, training: bool
) -> torch.Tensor:
    """The study's CNN10/CNN14 forward, written from its description on (batch, mel, time).

    BatchNorm uses batch statistics in training and running statistics in eval; dropout 0.2
    after every conv block (drawn with F.dropout on the same layout, so a seeded call draws the
    same mask as the model's); after pooling over time, relu(fc1) and the output layer.
    """

    def batch_norm(h: torch.Tensor, bn: torch.nn.Module, dims: tuple[int, ...], shape):
        if training:
            mean, var = h.mean(dim=dims), h.var(dim=dims, unbiased=False)
        else:
            mean, var = bn.running_mean, bn.running_var
        h = (h - mean.view(shape)) / torch.sqrt(var.view(shape) + 1e-5)
        return h * bn.weight.view(shape) + bn.bias.view(shape)

    h = batch_norm(x, model.bn0, (0, 2), (1, -1, 1))  # one channel per mel bin
    h = h.transpose(1, 2).unsqueeze(1)  # (B, 1, time, mel)
    for k in range(1, n_blocks + 1):
        block = getattr(model, f"conv_block{k}")
        for conv, bn in ((block.conv1, block.bn1), (block.conv2, block.bn2)):
            h = F.conv2d(h, conv.weight, padding=1)
            h = batch_norm(h, bn, (0, 2, 3), (1, -1, 1, 1)).clamp(min=0)
        if k < n_blocks or last_pool:
            t, mel = h.shape[2] // 2, h.shape[3] // 2
            h = h[:, :, : 2 * t, : 2 * mel].reshape(h.shape[0], h.shape[1], t, 2, mel, 2)
            h = h.mean(dim=(3, 5))
        if training:
            h = F.dropout(h, p=0.2, training=True)
    h = h.mean(dim=3)  # frequency
    h = h.max(dim=2).values + h.mean(dim=2)  # time
    h = (h @ model.fc1.weight.T + model.fc1.bias).clamp(min=0)
    return h @ model.out.weight.T + model.out.bias


def randomised_bn(model: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial BN statistics and affine parameters, so that a mis-oriented bn0 would show."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return model


ARCH_SHAPES = [("cnn10", 4, True), ("cnn14", 6, False)]


@pytest.mark.parametrize(("arch", "n_blocks", "last_pool"), ARCH_SHAPES)
def test_eval_forward_matches_independent_reference(
    arch: str, n_blocks: int, last_pool: bool
) -> None:
    torch.manual_seed(1)
    model = randomised_bn(build_model(arch, width=0.0625, n_classes=10, n_mels=64)).eval()
    x = torch.randn(2, 64, 77) * 3 + torch.linspace(-5, 5, 64)[None, :, None]
    with torch.no_grad():
        expected = reference_forward(model, x, n_blocks, last_pool, training=False)
        assert torch.allclose(model(x), expected, atol=1e-5)


@pytest.mark.parametrize(("arch", "n_blocks", "last_pool"), ARCH_SHAPES)
def test_training_forward_has_the_studys_dropout_and_no_other(
    arch: str, n_blocks: int, last_pool: bool
) -> None:
    """Same seed, same dropout calls: a missing block dropout or an extra one around fc1
    (PANNs has one before it) draws different masks or none, and the outputs differ."""
    torch.manual_seed(1)
    model = randomised_bn(build_model(arch, width=0.0625, n_classes=10, n_mels=64)).train()
    x = torch.randn(4, 64, 77) * 3 + torch.linspace(-5, 5, 64)[None, :, None]
    with torch.no_grad():
        torch.manual_seed(7)
        got = model(x)
        torch.manual_seed(7)
        expected = reference_forward(model, x, n_blocks, last_pool, training=True)
        torch.manual_seed(8)
        other_masks = reference_forward(model, x, n_blocks, last_pool, training=True)
    assert torch.allclose(got, expected, atol=1e-4)
    assert not torch.allclose(got, other_masks, atol=1e-4)  # dropout is active at all


@pytest.mark.parametrize(("arch", "n_blocks", "last_pool"), ARCH_SHAPES)
def test_training_gradients_match_the_reference_forward(
    arch: str, n_blocks: int, last_pool: bool
) -> None:
    """Every parameter's gradient, bn0's included (torch 2.14's CPU batch-norm backward got
    PANNs' transposed bn0 layout wrong), equals autograd through the hand-written forward."""
    torch.manual_seed(1)
    model = randomised_bn(build_model(arch, width=0.0625, n_classes=10, n_mels=64)).double().train()
    x = torch.randn(4, 64, 40, dtype=torch.float64) * 3 + 1
    upstream = torch.randn(4, 10, dtype=torch.float64)
    params = [p for _, p in model.named_parameters()]
    torch.manual_seed(7)
    got = torch.autograd.grad((model(x) * upstream).sum(), params)
    torch.manual_seed(7)
    ref = reference_forward(model, x, n_blocks, last_pool, training=True)
    want = torch.autograd.grad((ref * upstream).sum(), params)
    for (name, _), g, w in zip(model.named_parameters(), got, want, strict=True):
        assert torch.allclose(g, w, rtol=1e-7, atol=1e-9), name


def test_folded_batchnorm_uses_each_bns_eps_on_nearly_dead_channels() -> None:
    """Folding divides by sqrt(running_var + eps) with the BN's own eps: on channels whose
    running variance is near 0 and with a non-default eps, eps sets the scale, and the folded
    network must still equal the unfolded one (torch's BatchNorm) in eval mode."""
    torch.manual_seed(2)
    model = randomised_bn(build_model("cnn10", width=0.0625, n_classes=10, n_mels=64))
    model = model.double().eval()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eps = 1e-3
                dead = torch.rand(m.num_features, generator=g) < 0.25
                var = torch.where(dead, 1e-6, 0.5 + torch.rand(m.num_features, generator=g))
                m.running_var.copy_(var)
    x = torch.randn(3, 64, 40, generator=g).double()
    with torch.no_grad():
        torch.testing.assert_close(fold_batchnorm(model)(x), model(x), rtol=1e-9, atol=1e-9)


def test_bn0_normalises_each_mel_bin_in_training() -> None:
    model = build_model("cnn10", width=0.125, n_classes=10, n_mels=64).train()
    x = torch.randn(8, 64, 40) * torch.linspace(0.1, 10, 64)[None, :, None] + 7
    seen = {}
    model.bn0.register_forward_hook(lambda m, i, o: seen.update(out=o))
    with torch.no_grad():
        model(x)
    out = seen["out"]  # (B, mel, T): mel bins on the channel axis
    assert out.shape == (8, 64, 40)
    assert torch.allclose(out.mean(dim=(0, 2)), torch.zeros(64), atol=1e-4)
    v = x.var(dim=(0, 2), unbiased=False)
    assert torch.allclose(out.var(dim=(0, 2), unbiased=False), v / (v + 1e-5), atol=1e-4)


def test_panns_checkpoint_loads_except_head_and_front_end() -> None:
    torch.manual_seed(2)
    panns = build_model("cnn10", n_classes=527, width=0.125, n_mels=64)
    state = {k.replace("out.", "fc_audioset."): v for k, v in panns.state_dict().items()}
    state["spectrogram_extractor.stft.conv_real.weight"] = torch.zeros(257, 1, 512)
    state["logmel_extractor.melW"] = torch.zeros(257, 64)
    model = build_model("cnn10", width=0.125, n_classes=10, n_mels=64)
    head = model.out.weight.clone()
    unused = load_pretrained(model, {"model": state, "iteration": 600000})
    assert sorted(unused) == sorted(
        [
            "fc_audioset.weight",
            "fc_audioset.bias",
            "spectrogram_extractor.stft.conv_real.weight",
            "logmel_extractor.melW",
        ]
    )
    assert torch.equal(model.conv_block3.conv2.weight, panns.conv_block3.conv2.weight)
    assert torch.equal(model.bn0.running_mean, panns.bn0.running_mean)
    assert torch.equal(model.out.weight, head)
    del state["fc1.bias"]
    with pytest.raises(ValueError, match="fc1.bias"):
        load_pretrained(model, {"model": state})


def test_study_checkpoint_loads_whole_head_included() -> None:
    """The study's files are plain state dicts with a 10-class head named `out`."""
    torch.manual_seed(3)
    study = randomised_bn(build_model("cnn14", width=0.0625, n_classes=10, n_mels=64))
    model = build_model("cnn14", width=0.0625, n_classes=10, n_mels=64)
    assert load_pretrained(model, dict(study.state_dict())) == []
    for key, value in study.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    wrong = dict(study.state_dict())
    wrong["conv_block2.conv1.weight"] = torch.zeros(3, 3, 3, 3)
    with pytest.raises(ValueError, match="conv_block2.conv1.weight"):
        load_pretrained(model, wrong)


def test_arch_table_matches_paper() -> None:
    assert list(ARCHS["cnn10"].channels) == PANNS_CHANNELS["cnn10"]
    assert list(ARCHS["cnn14"].channels) == PANNS_CHANNELS["cnn14"]
    assert ARCHS["cnn14"].pools[-1] == (1, 1) and set(ARCHS["cnn10"].pools) == {(2, 2)}
