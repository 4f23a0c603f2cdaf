"""A procedural world of captioned, time-aligned audio-video clips, and the analysis that judges clips.

The pack trains its own small text-to-audio-video model on this world and evaluates generated clips
with ``analysis``. Everything is deterministic given a seed: randomness comes only from explicitly
seeded numpy generators (``sample_spec`` also accepts a torch.Generator or an int).

Clip format (``WorldConfig``, frozen; defaults = MM-Diffusion's):
  16 frames at 10 fps (1.6 s), 64 x 64 RGB, 16 kHz mono, 25600 samples.
  ``Clip.video`` (F, C, H, W) float32 in [-1, 1] (mmg_core.av's per-sample layout),
  ``Clip.audio`` (1, T) float32 in [-1, 1], peak <= 0.85, hiss at about -54 dBFS.

Scenes (drawn in a 64-pixel layout, scaled with ``size``; every prop is PROP_GREY (96, 96, 96)):
  ball    a coloured ball (radius 7) bounces on a grey floor; each floor contact makes an impact
          (5 ms noise burst + resonance decaying with tau 45 ms).
  drum    a grey stick swings down onto a coloured drum (32 x 18 box); each strike makes a thump
          (membrane tone gliding down to its base pitch, tau 60 ms, plus a 3 ms click).
  lamp    a bulb (radius 11) on a grey stand is lit in the object colour, grey when off; a sine beep
          sounds exactly while it is lit (4 ms raised-cosine ramps inside the lit interval).
  slider  a coloured bar (28 x 6) moves up and down a grey track, height h(t) = 0.5 + 0.45 a
          sin(2 pi f t + phi); a phase-continuous tone at base * 2 ** h(t) follows it (one octave).

Attributes:
  colour      COLOURS (sRGB):  red (230, 30, 30)   green (30, 190, 60)   blue (20, 110, 250)
              yellow (245, 220, 30)   purple (180, 30, 200)   orange (250, 140, 0)
              white (250, 250, 250); every pair >= 40 apart in CIELAB (lightness weighted 0.75).
  background  BACKGROUNDS: dark (18, 18, 22), light (168, 168, 168). "light" is a mid-light grey,
              not white, so a white object stays visible on it without outlines.
  tempo       slow: events every 0.9/1.0/1.1 s (1-2 per clip); fast: every 0.3/0.4 s, each
              interval drawn anew (3-5 per clip). Slider: 0.7-1.1 Hz vs 2.2-2.8 Hz oscillation.
  pitch       PITCH_HZ base frequencies, low / high: impact 300 / 1200, drum 200 / 800,
              beep 330 / 1320, slider 220-440 / 800-1600; times a per-clip detune of +-6 %.
Per clip: rhythm phase (first event frame) and intervals, horizontal position, motion amplitude,
detune, slider frequency and phase, noise seed: all in ``ClipSpec``.

Timing rules (exact, checked by tests/test_world.py):
  An event at frame k (k >= 1; never frame 0) happens at time k / fps: frame k shows the ball on the
  floor / the stick on the drum / the lamp lit, and its sound starts at sample
  ``config.frame_sample(k)`` = k * sr / fps (1600 k by default). Between events the ball and the
  stick follow a parabola 4u(1-u) (u: fraction of the interval). The lamp stays lit for half the
  interval to the next switch-on (at least one frame); its beep spans exactly those frames. Ground
  truth: ``Clip.events`` (s), ``Clip.event_frames``, ``Clip.off_events`` (lamp switch-offs) and
  ``Clip.motion`` (per-frame ball height / stick lift / lit state / bar height).

Captions (``captions.py``): templates with slots {subject} {tempo} {pitch} {sound} {sync}
{background}, e.g. "A red ball bouncing quickly, a high click at every bounce, on a dark
background". Six training templates and two held-out "eval" templates; every slot has training
paraphrases and disjoint held-out ones. Colour words are always the canonical names.
``caption_attributes`` reads attributes back from any caption.

Splits: ``EVAL_HOLDOUT_COMBOS`` holds 8 (scene, colour, tempo) triples that sample_spec never
draws for split "train"; ``WorldDataset`` splits: "train" (other triples, training captions),
"eval" (held-out triples, held-out captions), "eval_seen" (training triples, held-out captions).

Analysis (``analysis.py``) measures decoded clips only (frames (F, H, W, 3) uint8, audio (T,)):
object colour, background, scene, tempo, pitch, audio onsets, visual events, onset-to-event
distances and the slider's height-pitch correlation. On rendered clips after an H.264/AAC round
trip it reads every attribute correctly and finds onsets within ~3 ms of the events.
Events sit on the frame grid, so another clip's audio of the same (fast) tempo shares most event
frames by chance in about 1 pair in 5: compare a clip's onset distance with the average over
several other clips' audio rather than with a single one.
"""

from .analysis import (
    ClipAnalysis,
    SyncStats,
    analyse_clip,
    audio_onsets,
    audio_texture,
    classify_scene,
    detect_background,
    estimate_pitch,
    estimate_tempo,
    object_colour,
    slider_pitch_correlation,
    sync_offset_stats,
    visual_events,
)
from .captions import ATTRIBUTE_WORDS, TEMPLATES, caption_attributes, caption_for
from .config import (
    ALL_COMBOS,
    BACKGROUNDS,
    COLOURS,
    DEFAULT_CONFIG,
    EVAL_HOLDOUT_COMBOS,
    PITCH_HZ,
    PITCHES,
    PROP_GREY,
    SCENES,
    TEMPOS,
    TRAIN_COMBOS,
    WorldConfig,
)
from .dataset import DATASET_SPLITS, WorldDataset
from .render import Clip, render_batch, render_clip
from .spec import ClipSpec, make_spec, sample_spec

__all__ = [
    "ALL_COMBOS",
    "ATTRIBUTE_WORDS",
    "BACKGROUNDS",
    "COLOURS",
    "DEFAULT_CONFIG",
    "Clip",
    "ClipAnalysis",
    "ClipSpec",
    "DATASET_SPLITS",
    "EVAL_HOLDOUT_COMBOS",
    "PITCHES",
    "PITCH_HZ",
    "PROP_GREY",
    "SCENES",
    "SyncStats",
    "TEMPLATES",
    "TEMPOS",
    "TRAIN_COMBOS",
    "WorldConfig",
    "WorldDataset",
    "analyse_clip",
    "audio_onsets",
    "audio_texture",
    "caption_attributes",
    "caption_for",
    "classify_scene",
    "detect_background",
    "estimate_pitch",
    "estimate_tempo",
    "make_spec",
    "object_colour",
    "render_batch",
    "render_clip",
    "sample_spec",
    "slider_pitch_correlation",
    "sync_offset_stats",
    "visual_events",
]
