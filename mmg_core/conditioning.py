"""Prompts → the text context a text-conditioned coupled U-Net attends to, and guidance settings.

Each modality has its own prompt (the audio prompt defaults to the video prompt) and its own negative
prompt; the empty prompt "" is the null condition the model learned through condition dropout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from .models.mmdiffusion import TextContext
from .world.captions import vocabulary_notes


class EncodedText(Protocol):
    tokens: torch.Tensor  # (B, T, D)
    mask: torch.Tensor  # (B, T) bool
    pooled: torch.Tensor  # (B, D)


class TextEncoderLike(Protocol):
    def encode(self, texts: list[str], device=None) -> EncodedText: ...


class TruncatingEncoder(Protocol):
    def unread_text(self, text: str) -> str: ...


@dataclass(frozen=True)
class Conditioning:
    """What the MMG_CONDITIONING socket carries: positive and negative contexts for one clip."""

    positive: TextContext
    negative: TextContext
    video_prompt: str
    audio_prompt: str
    negative_video_prompt: str = ""
    negative_audio_prompt: str = ""


def text_context(video: EncodedText, audio: EncodedText) -> TextContext:
    return TextContext(
        video_tokens=video.tokens, video_mask=video.mask, video_pooled=video.pooled,
        audio_tokens=audio.tokens, audio_mask=audio.mask, audio_pooled=audio.pooled,
    )


def encode_prompts(
    encoder: TextEncoderLike,
    video_prompt: str,
    audio_prompt: str | None = None,
    negative_video_prompt: str = "",
    negative_audio_prompt: str | None = None,
) -> Conditioning:
    """Encode the four prompts in one batch. ``None`` audio prompts fall back to the video ones."""
    for name, value in (("video_prompt", video_prompt), ("negative_video_prompt", negative_video_prompt)):
        if not isinstance(value, str):
            raise ValueError(f"{name} must be text, got {type(value).__name__}")
    audio_prompt = video_prompt if audio_prompt is None or audio_prompt.strip() == "" else audio_prompt
    negative_audio_prompt = negative_video_prompt if negative_audio_prompt is None else negative_audio_prompt
    encoded = encoder.encode([video_prompt, audio_prompt, negative_video_prompt, negative_audio_prompt])

    return Conditioning(
        positive=text_context(TextRows.of(encoded, 0, 1), TextRows.of(encoded, 1, 2)),
        negative=text_context(TextRows.of(encoded, 2, 3), TextRows.of(encoded, 3, 4)),
        video_prompt=video_prompt,
        audio_prompt=audio_prompt,
        negative_video_prompt=negative_video_prompt,
        negative_audio_prompt=negative_audio_prompt,
    )


PROMPT_FIELDS = ("video_prompt", "audio_prompt", "negative_video_prompt", "negative_audio_prompt")


def unread_prompt_notes(encoder: TruncatingEncoder, conditioning: Conditioning) -> list[str]:
    """One warning per prompt whose end the text encoder cuts off (TextEncoder.unread_text): the model
    never sees those words, and nothing else would tell the user. A prompt that only repeats an earlier
    one (the audio prompt defaulting to the video prompt) is not reported twice."""
    notes, seen = [], set()
    for name in PROMPT_FIELDS:
        text = getattr(conditioning, name)
        if text in seen:
            continue
        seen.add(text)
        tail = encoder.unread_text(text)
        if tail:
            notes.append(f"{name} is longer than the text encoder reads: the model ignores its end, "
                         f"{tail!r}; shorten the prompt to keep those words")
    return notes


def prompt_notes(encoder: TruncatingEncoder, conditioning: Conditioning, world_vocabulary: bool = False) -> list[str]:
    """Every warning about the prompts: words past the encoder's limit, and, for a model trained on the
    synthetic world (``world_vocabulary``), what the video prompt leaves to chance (captions.vocabulary_notes)."""
    notes = unread_prompt_notes(encoder, conditioning)
    if world_vocabulary:
        notes += [f"video_prompt: {note}" for note in vocabulary_notes(conditioning.video_prompt)]
    return notes


@dataclass(frozen=True)
class TextRows:
    """Rows [start, stop) of an encoded batch of prompts."""

    tokens: torch.Tensor
    mask: torch.Tensor
    pooled: torch.Tensor

    @classmethod
    def of(cls, encoded: EncodedText, start: int, stop: int) -> "TextRows":
        return cls(encoded.tokens[start:stop], encoded.mask[start:stop], encoded.pooled[start:stop])


def repeat_context(ctx: TextContext, batch: int, device=None, dtype=None) -> TextContext:
    """Broadcast a batch-1 context to ``batch`` rows (and move it)."""

    def fit(x: torch.Tensor, is_mask: bool = False) -> torch.Tensor:
        if x.shape[0] == 1 and batch != 1:
            x = x.expand(batch, *x.shape[1:])
        elif x.shape[0] != batch:
            raise ValueError(f"text context has batch {x.shape[0]}, expected 1 or {batch}")
        return x.to(device=device) if is_mask else x.to(device=device, dtype=dtype)

    return TextContext(
        video_tokens=fit(ctx.video_tokens), video_mask=fit(ctx.video_mask, True), video_pooled=fit(ctx.video_pooled),
        audio_tokens=fit(ctx.audio_tokens), audio_mask=fit(ctx.audio_mask, True), audio_pooled=fit(ctx.audio_pooled),
    )


def concat_contexts(contexts: list[TextContext]) -> TextContext:
    fields = ("video_tokens", "video_mask", "video_pooled", "audio_tokens", "audio_mask", "audio_pooled")
    return TextContext(**{name: torch.cat([getattr(c, name) for c in contexts]) for name in fields})


@dataclass(frozen=True)
class Guidance:
    """Classifier-free guidance per modality, plus modality guidance (LTX-2 style): an extra prediction
    with the audio-video exchange switched off, pushed away from, which needs no training."""

    video_cfg: float = 1.0
    audio_cfg: float = 1.0
    modality: float = 0.0

    def validate(self) -> None:
        for name in ("video_cfg", "audio_cfg", "modality"):
            value = getattr(self, name)
            if not -1.0 <= value <= 30.0:
                raise ValueError(f"{name} must be between -1 and 30, got {value}")

    @property
    def needs_unconditional(self) -> bool:
        return self.video_cfg != 1.0 or self.audio_cfg != 1.0

    @property
    def needs_uncoupled(self) -> bool:
        return self.modality != 0.0
