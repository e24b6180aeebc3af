"""CNN10 and CNN14 as the study trained them: PANNs (Kong et al. 2020) bodies, from scratch.

One definition, parametrised by a depth table, so that the two architectures cannot drift apart.
Where the study's variant differs from PANNs, the study wins: dropout 0.2 after every conv block,
and after clip pooling no dropout at all (`relu(fc1(x))`, then the output layer; PANNs has a 0.5
dropout before `fc1`). Parameter names are PANNs' (`bn0`, `conv_block{k}.conv1`, ..., `fc1`)
and the 10-class head is `out`, as in the study's checkpoints, so that `load_pretrained` takes
the study's released weights whole and a PANNs checkpoint except its 527-class `fc_audioset`.
PANNs' waveform front end (`spectrogram_extractor`, `logmel_extractor`) and SpecAugment are not
part of the model: features are computed once by the workflow and no augmentation is used.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights


@dataclass(frozen=True)
class ArchSpec:
    """Channels per conv block, pooling after each block, and the width of `fc1`."""

    channels: tuple[int, ...]
    pools: tuple[tuple[int, int], ...]
    fc: int


ARCHS: dict[str, ArchSpec] = {
    "cnn10": ArchSpec(channels=(64, 128, 256, 512), pools=((2, 2),) * 4, fc=512),
    # CNN14's last block is not pooled (PANNs passes pool_size=(1, 1)).
    "cnn14": ArchSpec(
        channels=(64, 128, 256, 512, 1024, 2048), pools=((2, 2),) * 5 + ((1, 1),), fc=2048
    ),
}


def _scaled(channels: int, width: float) -> int:
    return max(1, round(channels * width))


class ConvBlock(nn.Module):
    """Two 3x3 conv + BN + ReLU layers; pooling is applied by the caller as in PANNs."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # In place, as PANNs: the activation maps dominate memory traffic at small widths.
        x = F.relu_(self.bn1(self.conv1(x)))
        return F.relu_(self.bn2(self.conv2(x)))


class PannsCnn(nn.Module):
    """PANNs CNN10/CNN14 on log-mel input of shape (batch, n_mels, frames); returns logits.

    Logits, not PANNs' sigmoid: the paper trains single-label scenes with cross-entropy.
    """

    def __init__(self, spec: ArchSpec, *, n_classes: int, width: float, n_mels: int):
        super().__init__()
        self.spec, self.n_mels = spec, n_mels
        # PANNs' bn0 is a BatchNorm2d over mel bins moved to the channel axis of (B, 1, T, mel)
        # and back; BatchNorm1d on (B, mel, T) is the same map with the same state dict, and
        # torch 2.14's CPU backward gets that transposed layout's weight/bias gradients wrong.
        self.bn0 = nn.BatchNorm1d(n_mels)
        in_channels = 1
        for k, c in enumerate(spec.channels, start=1):
            out_channels = _scaled(c, width)
            self.add_module(f"conv_block{k}", ConvBlock(in_channels, out_channels))
            in_channels = out_channels
        fc = _scaled(spec.fc, width)
        self.fc1 = nn.Linear(in_channels, fc)
        self.out = nn.Linear(fc, n_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # PANNs' init_layer / init_bn: Xavier-uniform weights, zero biases, BN as identity.
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 3 or x.shape[1] != self.n_mels:
            raise ValueError(
                f"input shape {tuple(x.shape)}: expected (batch, {self.n_mels} mel bins, frames)"
            )
        shrink = 1
        for p in self.spec.pools:
            shrink *= p[0]
        if x.shape[2] < shrink or self.n_mels < shrink:
            raise ValueError(
                f"input shape {tuple(x.shape)}: frames and mel bins must be >= {shrink} "
                "to survive the pooling"
            )
        x = self.bn0(x)  # each mel bin normalised over batch and time
        x = x.transpose(1, 2).unsqueeze(1)  # (B, 1, time, mel) as PANNs
        for k, pool in enumerate(self.spec.pools, start=1):
            x = getattr(self, f"conv_block{k}")(x)
            if pool != (1, 1):
                x = F.avg_pool2d(x, kernel_size=pool)
            x = F.dropout(x, p=0.2, training=self.training)
        x = x.mean(dim=3)  # over frequency
        x = x.amax(dim=2) + x.mean(dim=2)  # max + mean over time
        return self.out(F.relu(self.fc1(x)))


def fold_batchnorm(model: PannsCnn) -> PannsCnn:
    """An eval-only copy of `model` in which every conv absorbs the BatchNorm after it.

    In eval mode BN is an affine map per channel, so conv+BN equals one conv with scaled weights
    and a bias (exact up to float rounding) and the forward skips a full pass over every
    activation map: what a landscape grid point spends its time on. Weights are copied in by
    `refold_`, which the landscape calls after each perturbation of `model`.
    """
    folded = copy.deepcopy(model).eval()
    for block in folded.modules():
        if isinstance(block, ConvBlock):
            for conv_name, bn_name in _CONV_BN:
                conv = getattr(block, conv_name)
                fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size,
                                  padding=conv.padding, bias=True)  # fmt: skip
                setattr(block, conv_name, fused.to(conv.weight.device, conv.weight.dtype))
                setattr(block, bn_name, nn.Identity())
    refold_(folded, model)
    return folded


_CONV_BN = (("conv1", "bn1"), ("conv2", "bn2"))


@torch.no_grad()
def refold_(folded: PannsCnn, model: PannsCnn) -> None:
    """Copy `model`'s current weights into `folded` (made by fold_batchnorm), folding each BN."""
    source = dict(model.named_modules())
    for name, block in folded.named_modules():
        if isinstance(block, ConvBlock):
            for conv_name, bn_name in _CONV_BN:
                conv, bn = getattr(source[name], conv_name), getattr(source[name], bn_name)
                weight, bias = fuse_conv_bn_weights(
                    conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps,
                    bn.weight, bn.bias,
                )  # fmt: skip
                getattr(block, conv_name).weight.copy_(weight)
                getattr(block, conv_name).bias.copy_(bias)
    for layer in ("bn0", "fc1", "out"):
        getattr(folded, layer).load_state_dict(getattr(model, layer).state_dict())


def build_model(arch: str, *, n_classes: int, width: float, n_mels: int) -> nn.Module:
    """A freshly initialised CNN10/CNN14 for `n_classes` scenes on `n_mels` mel bands; `width`
    scales every channel count (1.0: PANNs, as the paper; the config's model.width)."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; valid: {', '.join(sorted(ARCHS))}")
    if not width > 0:
        raise ValueError(f"width {width!r} must be > 0")
    if n_classes < 1 or n_mels < 1:
        raise ValueError(f"n_classes {n_classes} and n_mels {n_mels} must be >= 1")
    return PannsCnn(ARCHS[arch], n_classes=n_classes, width=width, n_mels=n_mels)


def count_parameters(model: nn.Module) -> int:
    """Trainable parameter count (BN running statistics are buffers and are not counted)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# Keys of a PANNs checkpoint that are not part of this model: its waveform front end.
_FRONT_END = ("spectrogram_extractor.", "logmel_extractor.")


def load_pretrained(model: nn.Module, checkpoint: dict[str, Any]) -> list[str]:
    """Load released weights into `model`; return the checkpoint keys that were not used.

    Takes both forms in circulation: the study's (a plain state dict, head `out.*`) and PANNs'
    (`{"model": state_dict, ...}`, head `fc_audioset.*`, plus the waveform front end). The front
    end is skipped; a head is loaded when its shape fits (10 scenes) and skipped otherwise
    (AudioSet's 527 classes). Every body tensor must be present with the right shape.
    """
    state = checkpoint.get("model", checkpoint)
    if not isinstance(state, dict):
        raise ValueError("checkpoint: expected a state dict or a dict with key 'model'")
    own = model.state_dict()
    renamed: dict[str, torch.Tensor] = {}
    unused: list[str] = []
    for key, value in state.items():
        target = (
            "out." + key.removeprefix("fc_audioset.") if key.startswith("fc_audioset.") else key
        )
        if key.startswith(_FRONT_END) or target not in own:
            unused.append(key)
        elif own[target].shape != value.shape:
            if not target.startswith("out."):
                raise ValueError(
                    f"checkpoint key {key!r} has shape {tuple(value.shape)}, "
                    f"the model expects {tuple(own[target].shape)}"
                )
            unused.append(key)
        else:
            renamed[target] = value
    missing = [k for k in own if k not in renamed and not k.startswith("out.")]
    if missing:
        raise ValueError(f"checkpoint lacks key {missing[0]!r}")
    model.load_state_dict(renamed, strict=False)
    return unused


def initial_model(arch: str, *, run: str, n_classes: int, width: float, n_mels: int) -> nn.Module:
    """The weights training starts `run` from: build_model after seeding torch's global RNG with
    derive_seed(run, "init") (on the CPU, whatever device training uses). Training calls this,
    and the distance-from-initialisation measure calls it again (inside torch.random.fork_rng)
    instead of storing a second copy of every model; model.pt's `init_sha256` proves they agree.
    """
    from ascsharp.core.seeds import derive_seed

    torch.manual_seed(derive_seed(run, "init"))
    return build_model(arch, n_classes=n_classes, width=width, n_mels=n_mels)
