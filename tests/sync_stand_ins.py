"""Stand-ins the sync tests share: an untrained classifier file, and a loudness "classifier".

The shipped audio event classifier (``models/sync/audio_events.safetensors``) is trained by
``scripts/train_audio_classifier.py`` and may be absent from a checkout; a server that runs the
shipped sync workflow then gets an untrained ``AudioEventNet`` under the same name in its
``models/mmg_sync`` folder, so the graph executes end to end (its scores mean nothing).
"""

from __future__ import annotations

from pathlib import Path

import torch
from einops import reduce
from torch import nn

from mmg_core.sync import AudioEventNet, save_audio_classifier
from mmg_core.sync.backbones import DEFAULT_AUDIO_CLASSIFIER


def write_audio_classifier(path: Path, seed: int = 0) -> Path:
    """An untrained AudioEventNet as save_audio_classifier writes it (same format as the shipped one)."""
    torch.manual_seed(seed)
    return save_audio_classifier(AudioEventNet().eval(), path, extra={"mmg.note": "untrained test stand-in"})


def ensure_default_audio_classifier(models_dir: Path) -> Path:
    """The shipped classifier if the pack has it, else a stand-in at models_dir/<its name>."""
    if DEFAULT_AUDIO_CLASSIFIER.is_file():
        return DEFAULT_AUDIO_CLASSIFIER
    target = Path(models_dir) / DEFAULT_AUDIO_CLASSIFIER.name
    return target if target.is_file() else write_audio_classifier(target)


class LoudnessNet(nn.Module):
    """A one-class audio "classifier" whose evidence is loudness, plugged in through the CamClassifier
    interface: its Grad-CAM is the log-mel above a floor 50 dB under the clip's peak.

    Why the CAM-Sync offset test uses it rather than an AudioEventNet: the Grad-CAM of a randomly
    initialised net follows where sound is but not where it starts (on 4-s world clips its offsets
    were off by 0.16 s in the median, against 0.005 s for loudness), and a 50-step net still misses
    impacts; the shipped classifier is trained later (scripts/train_audio_classifier.py).
    """

    def __init__(self):
        super().__init__()
        self.front = AudioEventNet()  # only its log-mel front end is used
        self.config, self.class_names = self.front.config, ("loud",)
        self.frames_per_second = self.front.frames_per_second
        self.weight = nn.Parameter(torch.ones(1, 1))

    def log_mel(self, waveform):
        return self.front.log_mel(waveform)

    def features(self, waveform):
        x = self.log_mel(waveform)  # log_std = 5 units per neper: 2.3 units = 50 dB
        return torch.relu(x - (x.amax(dim=(2, 3), keepdim=True) - 2.3))

    def head(self, features):
        return reduce(features, "b c m t -> b c", "mean") @ self.weight.T
