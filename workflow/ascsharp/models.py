"""PANNs CNN10 and CNN14 (Kong et al. 2020), trained from scratch on stored log-mel features.

One definition, parametrised by a depth table, so that the two architectures cannot drift apart.
Module and parameter names follow PANNs exactly (`bn0`, `conv_block{k}.conv1`, ..., `fc1`,
`fc_audioset`) so that a PANNs checkpoint loads into it except for its 527-class head; the head
keeps the name `fc_audioset` for that reason even though it predicts 10 scenes here. PANNs'
waveform front end (`spectrogram_extractor`, `logmel_extractor`) and SpecAugment are not part of
the model: features are computed once by the workflow and no augmentation is used.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


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
        x = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(x)))


class PannsCnn(nn.Module):
    """PANNs CNN10/CNN14 on log-mel input of shape (batch, n_mels, frames); returns logits.

    Logits, not PANNs' sigmoid: the paper trains single-label scenes with cross-entropy.
    """

    def __init__(self, spec: ArchSpec, n_classes: int = 10, width: float = 1.0, n_mels: int = 64):
        super().__init__()
        self.spec, self.n_mels = spec, n_mels
        self.bn0 = nn.BatchNorm2d(n_mels)
        in_channels = 1
        for k, c in enumerate(spec.channels, start=1):
            out_channels = _scaled(c, width)
            self.add_module(f"conv_block{k}", ConvBlock(in_channels, out_channels))
            in_channels = out_channels
        fc = _scaled(spec.fc, width)
        self.fc1 = nn.Linear(in_channels, fc)
        self.fc_audioset = nn.Linear(fc, n_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # PANNs' init_layer / init_bn: Xavier-uniform weights, zero biases, BN as identity.
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
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
        x = x.transpose(1, 2).unsqueeze(1)  # (B, 1, time, mel) as PANNs
        # bn0 normalises each mel bin: move mel bins to the channel axis and back.
        x = self.bn0(x.transpose(1, 3)).transpose(1, 3)
        for k, pool in enumerate(self.spec.pools, start=1):
            x = getattr(self, f"conv_block{k}")(x)
            if pool != (1, 1):
                x = F.avg_pool2d(x, kernel_size=pool)
            x = F.dropout(x, p=0.2, training=self.training)
        x = x.mean(dim=3)  # over frequency
        x = x.amax(dim=2) + x.mean(dim=2)  # max + mean over time
        x = F.dropout(x, p=0.5, training=self.training)
        x = F.relu(self.fc1(x))
        x = F.dropout(x, p=0.5, training=self.training)
        return self.fc_audioset(x)


def build_model(arch: str, n_classes: int = 10, width: float = 1.0, n_mels: int = 64) -> nn.Module:
    """A freshly initialised CNN10/CNN14; `width` scales every channel count (the fast default)."""
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


def load_panns_weights(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> list[str]:
    """Load a PANNs checkpoint's matching tensors; return the keys skipped.

    The front end (`spectrogram_extractor.*`, `logmel_extractor.*`) and a head of another size
    are skipped; every other model tensor must be present with the right shape.
    """
    own = model.state_dict()
    skipped = [k for k, v in state_dict.items() if k not in own or own[k].shape != v.shape]
    missing = [k for k in own if k not in state_dict and not k.startswith("fc_audioset.")]
    if missing:
        raise ValueError(f"PANNs state dict lacks key {missing[0]!r}")
    wrong = [k for k in skipped if k in own and not k.startswith("fc_audioset.")]
    if wrong:
        raise ValueError(f"PANNs state dict key {wrong[0]!r} has the wrong shape")
    model.load_state_dict({k: v for k, v in state_dict.items() if k not in skipped}, strict=False)
    return skipped
