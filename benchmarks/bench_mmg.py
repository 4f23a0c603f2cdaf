"""Memory and speed of MMG (VideoCrafter2 lvdm video U-Net + Auffusion audio U-Net + six CMT pairs).

    nice -n 10 env OMP_NUM_THREADS=1 python benchmarks/bench_mmg.py [--out benchmarks/mmg_results.json]

Method
- Full size (2,529,874,824 parameters) is never materialised: the model is built on the ``meta``
  device, where tensors have shapes but no storage, and run there at MMG's clip (40 frames of 40x64
  latents, audio latent 4x32x40, 77 text tokens):
  * FLOPs: the formulas of ``torch.utils.flop_counter`` (matmuls, convolutions, attention; an exact
    count of those, elementwise work not included) applied to every op;
  * activation memory: a dispatch mode that adds up the bytes of every tensor an op creates and
    subtracts them when the tensor is freed (views and in-place results share their source's bytes);
    the peak is the most activation memory alive at once, weights excluded. Attention runs as a fused
    kernel (``_scaled_dot_product_flash_attention``: scores never stored), as on a GPU with
    flash/memory-efficient attention; meta would otherwise decompose it and store every score matrix.
  Sampler step: batch 2 (CFG's unconditional and conditional passes run as one batch) in float16.
  Training step: ``mmg_training.mmg_loss`` (paired + audio-distillation + video-distillation rows,
  batch_size 1 = 3 clips, couplers trainable) forward and backward, float32 as the trainer runs.
- Reduced sizes (every width divided by 10 and by 5, short clip) run for real on this CPU: peak RSS
  of loading a checkpoint written to a temporary folder (the pack's loader, ``mmg_loading.load_mmg``),
  seconds per joint forward and per training step (``mmg_training.train_mmg``, couplers only). The
  same meta analysis at these sizes gives their FLOPs (so FLOP/s achieved here) and their predicted
  activation peak, which is checked against the RSS the real forward adds. The full-size CPU time is
  the full-size FLOPs divided by the FLOP/s achieved at the larger reduced size.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import platform
import sys
import tempfile
import time
import weakref
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import flop_registry

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mmg_core.compat.mmg import config_from_reference, full_size_reference_config  # noqa: E402
from mmg_core.mmg_loading import load_mmg, peak_rss_bytes, save_mmg, track_peak_rss  # noqa: E402
from mmg_core.mmg_training import (  # noqa: E402
    AVBatch, LossWeights, MMGTrainConfig, NoiseSchedules, Run, StepData, Teachers, build_model, data_source,
    mmg_loss, new_state, train_step,
)
from mmg_core.models.mmg_coupled import MMGConfig, MMGCoupledUNet  # noqa: E402
from mmg_core.training import Dist  # noqa: E402

FULL_PARAMS = 2_529_874_824  # tests/fixtures/mmg/full_keys.json
GB, MB = 1e9, 1e6
PARTS = ("video_unet", "audio_unet", "video_cmt", "audio_cmt")


@dataclass(frozen=True)
class Clip:
    """Latent sizes of one clip: video (4, frames, height, width), audio (4, mel, columns)."""

    frames: int
    height: int
    width: int
    mel: int
    columns: int
    text_tokens: int = 77


FULL_CLIP = Clip(40, 40, 64, 32, 40)  # 3.2 s: 40 frames of 320x512 px, 320 mel frames
REDUCED_CLIP = Clip(8, 8, 16, 16, 8)  # 8 frames of 64x128 px, 0.64 s of audio


def reduced_config(divisor: int, head: int) -> MMGConfig:
    """The full-size reference config with every width divided by ``divisor`` (heads of ``head``)."""
    ref = full_size_reference_config()
    ref["video_unet"] = dict(ref["video_unet"], model_channels=320 // divisor, num_head_channels=head)
    ref["audio_unet"] = dict(ref["audio_unet"], block_out_channels=[w // divisor for w in (320, 640, 1280, 1280)])
    ref["cross_modal_config"] = {"layer_channels": [w // divisor for w in ref["cross_modal_config"]["layer_channels"]],
                                 "d_head": head}
    return config_from_reference(ref)


def param_counts(model: torch.nn.Module) -> dict[str, int]:
    counts = {part: sum(p.numel() for p in getattr(model, part).parameters()) for part in PARTS}
    return {**counts, "couplers": counts["video_cmt"] + counts["audio_cmt"], "total": sum(counts.values())}


# ----------------------------------------------------------------------------------------------
# Shape-only analysis (meta device)
# ----------------------------------------------------------------------------------------------
class MetaProfile(TorchDispatchMode):
    """FLOPs of every op (``torch.utils.flop_counter``'s formulas, without its per-module bookkeeping) and
    the peak bytes of tensors created by ops and still alive (weights and inputs are not counted)."""

    def __init__(self):
        super().__init__()
        self.flop = self.live = self.peak = 0
        self.owner: dict[int, list[int]] = {}  # id(tensor) -> [bytes, number of live tensors sharing them]

    def _release(self, key: int, shared: list[int]) -> None:
        self.owner.pop(key, None)
        shared[1] -= 1
        if shared[1] == 0:
            self.live -= shared[0]

    def _track(self, tensor: torch.Tensor, shared: list[int]) -> None:
        shared[1] += 1
        self.owner[id(tensor)] = shared
        weakref.finalize(tensor, self._release, id(tensor), shared)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func._overloadpacket in flop_registry:
            self.flop += flop_registry[func._overloadpacket](*args, **kwargs, out_val=out)
        aliasing = func.is_view or func._schema.is_mutable  # views and in-place ops return existing bytes
        source = next((a for a in tree_flatten(args)[0] if isinstance(a, torch.Tensor)), None)
        for tensor in (o for o in tree_flatten(out)[0] if isinstance(o, torch.Tensor)):
            if id(tensor) in self.owner:
                continue
            if aliasing:
                if source is not None and id(source) in self.owner:
                    self._track(tensor, self.owner[id(source)])
                continue
            shared = [tensor.untyped_storage().nbytes(), 0]
            self.live += shared[0]
            self.peak = max(self.peak, self.live)
            self._track(tensor, shared)
        return out


class FusedAttention(TorchFunctionMode):
    """Route ``F.scaled_dot_product_attention`` to the fused flash-attention op (no stored scores)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention and not kwargs and len(args) == 3:
            return torch.ops.aten._scaled_dot_product_flash_attention(*args)[0]
        return func(*args, **kwargs)


@dataclass
class Analysis:
    flop: float  # whole pass (forward, or forward + backward for training)
    forward_flop: float
    activation_peak_bytes: int


def meta_inputs(clip: Clip, config: MMGConfig, batch: int, dtype: torch.dtype):
    """(audio, t, audio text, video, t, video text, fps) on meta, the coupled model's argument order."""
    with torch.device("meta"):
        t = torch.full((batch,), 500)
        return (torch.empty(batch, 4, clip.mel, clip.columns, dtype=dtype), t,
                torch.empty(batch, clip.text_tokens, config.audio.cross_attention_dim, dtype=dtype),
                torch.empty(batch, 4, clip.frames, clip.height, clip.width, dtype=dtype), t,
                torch.empty(batch, clip.text_tokens, config.video.context_dim, dtype=dtype),
                torch.full((batch,), 12.5))


def analyse_forward(model: MMGCoupledUNet, clip: Clip, batch: int, dtype: torch.dtype) -> Analysis:
    inputs = meta_inputs(clip, model.config, batch, dtype)
    profile = MetaProfile()
    with torch.no_grad(), FusedAttention(), profile:
        outputs = model(*inputs)
        del outputs
    return Analysis(profile.flop, profile.flop, profile.peak)


def meta_step_data(clip: Clip, config: MMGConfig) -> StepData:
    """One clip of each kind (batch_size 1), as the trainer's data source would give them."""
    audio, _, audio_text, video, _, video_text, _ = meta_inputs(clip, config, 1, torch.float32)
    return StepData(AVBatch(audio, video, audio_text, video_text), AVBatch(audio, None, audio_text, video_text),
                    AVBatch(None, video, audio_text, video_text))


def analyse_training_step(model: MMGCoupledUNet, clip: Clip) -> Analysis:
    """mmg_loss + backward with only the couplers trainable (the trainer's default)."""
    for name, param in model.named_parameters():
        param.requires_grad_(name.startswith(("video_cmt.", "audio_cmt.")))
    teachers = Teachers.of(model, ("couplers",))
    data = meta_step_data(clip, model.config)
    null_video_text = torch.empty(clip.text_tokens, model.config.video.context_dim, device="meta")
    profile = MetaProfile()
    with FusedAttention(), profile:
        losses = mmg_loss(model, teachers, data, null_video_text, NoiseSchedules.videocrafter2_auffusion(),
                          LossWeights(cond_dropout=0.0), torch.Generator().manual_seed(0))
        forward_flop = profile.flop
        losses["loss"].backward()
        del losses
    model.zero_grad(set_to_none=True)
    return Analysis(profile.flop, forward_flop, profile.peak)


def meta_model(config: MMGConfig, dtype: torch.dtype = torch.float32) -> MMGCoupledUNet:
    with torch.device("meta"):
        return MMGCoupledUNet(config).to(dtype).eval()


# ----------------------------------------------------------------------------------------------
# Real runs at reduced sizes (CPU)
# ----------------------------------------------------------------------------------------------
def exact_rss_malloc() -> bool:
    """glibc: serve every allocation of 64 KiB or more with its own mapping, returned to the OS when
    freed (a fixed threshold also stops glibc from raising it as memory is freed). RSS then follows the
    live tensors, so the peak RSS of a step measures its activations. False where this is not glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_mmap_threshold = -3
    return bool(libc.mallopt(m_mmap_threshold, 64 * 1024))


def trim_malloc() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def real_inputs(clip: Clip, config: MMGConfig, generator: torch.Generator):
    audio, t, audio_text, video, _, video_text, fps = meta_inputs(clip, config, 1, torch.float32)
    fill = lambda x: torch.randn(x.shape, generator=generator)  # noqa: E731
    return (fill(audio), torch.tensor([500]), fill(audio_text), fill(video), torch.tensor([500]), fill(video_text),
            torch.tensor([12.5]))


def measure_load(config: MMGConfig, folder: Path) -> dict:
    """Peak RSS the pack's loader (``load_mmg``) adds for a checkpoint stored in float16 and one stored in
    float32, each loaded in its own type. The loader maps the file, so pages become resident only as
    weights are read: measured after reading every weight once (what a forward, or a copy to the GPU,
    does). Returns the float32 model for the next measurements."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = MMGCoupledUNet(config)
    params = param_counts(model)
    result = {"params": params, "weight_mb_fp32": params["total"] * 4 / MB}
    for name, dtype in (("fp16", torch.float16), ("fp32", torch.float32)):
        path = folder / f"mmg_{name}.safetensors"
        save_mmg(model, path, dtype=dtype)
        result[f"file_{name}_mb"] = path.stat().st_size / MB
    del model
    for name, dtype in (("fp16", torch.float16), ("fp32", torch.float32)):
        trim_malloc()
        with track_peak_rss() as rss:
            loaded = load_mmg(coupled=folder / f"mmg_{name}.safetensors", dtype=dtype)
        result[f"load_{name}_peak_rss_extra_mb"] = rss.extra_bytes / MB
        touch(loaded.model)
        result[f"load_{name}_then_read_peak_rss_extra_mb"] = (peak_rss_bytes() - rss.start_bytes) / MB
        result["rss_peak_exact"] = rss.exact
        model = loaded.model.eval()
        del loaded
    result["model"] = model
    return result


def touch(model: torch.nn.Module) -> None:
    """Read every weight once (mapped pages become resident)."""
    with torch.no_grad():
        for param in model.parameters():
            param.sum()


def measure_forward(model: MMGCoupledUNet, clip: Clip) -> dict:
    """Seconds (wall and CPU) of a joint forward at batch 1, and the RSS the first one adds above the
    resident weights (later forwards reuse memory malloc kept, so only the first shows activations)."""
    inputs = real_inputs(clip, model.config, torch.Generator().manual_seed(0))
    touch(model)
    trim_malloc()
    with torch.no_grad():
        with track_peak_rss() as rss:
            model(*inputs)
        wall, cpu = time.perf_counter(), time.process_time()
        model(*inputs)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"forward_s": wall, "forward_cpu_s": cpu, "first_forward_rss_extra_mb": rss.extra_bytes / MB}


def measure_training_step(config: MMGConfig, clip: Clip, folder: Path) -> dict:
    """Seconds (wall and CPU) of the trainer's step (paired + both distillations, batch_size 1, couplers
    only, AdamW, EMA), after one warm-up step that allocates Adam's state."""
    train = MMGTrainConfig.from_dict({"out_dir": str(folder / "train"), "model": config.to_dict(), "steps": 2,
                                      "data": {"kind": "synthetic", **asdict(clip)}, "warmup_steps": 0,
                                      "device": "cpu"})
    model = build_model(train, config)
    run = Run(train, Dist(), model, Teachers.of(model, train.trainable), data_source(train, config),
              NoiseSchedules.videocrafter2_auffusion(), torch.device("cpu"), folder)
    state = new_state(train, model)
    train_step(run, state)
    trim_malloc()
    with track_peak_rss() as rss:
        wall, cpu = time.perf_counter(), time.process_time()
        train_step(run, state)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"training_step_s": wall, "training_step_cpu_s": cpu, "training_step_rss_extra_mb": rss.extra_bytes / MB}


def reduced_size(name: str, divisor: int, head: int) -> dict:
    config = reduced_config(divisor, head)
    with tempfile.TemporaryDirectory() as tmp:
        loaded = measure_load(config, Path(tmp))
        model = loaded.pop("model")
        measured = measure_forward(model, REDUCED_CLIP)
        del model
        gc.collect()
        measured.update(measure_training_step(config, REDUCED_CLIP, Path(tmp)))
    forward = analyse_forward(meta_model(config), REDUCED_CLIP, 1, torch.float32)
    step = analyse_training_step(meta_model(config), REDUCED_CLIP)
    return {
        "name": name, "width_divisor": divisor, "head_dim": head, "clip": asdict(REDUCED_CLIP), **loaded, **measured,
        "forward_gflop": forward.flop / 1e9, "forward_gflop_per_cpu_s": forward.flop / 1e9 / measured["forward_cpu_s"],
        "predicted_forward_activation_peak_mb": forward.activation_peak_bytes / MB,
        "training_step_gflop": step.flop / 1e9,
        "training_gflop_per_cpu_s": step.flop / 1e9 / measured["training_step_cpu_s"],
        "predicted_training_activation_peak_mb": step.activation_peak_bytes / MB,
    }


# ----------------------------------------------------------------------------------------------
# Full size
# ----------------------------------------------------------------------------------------------
def full_size(reduced: list[dict]) -> dict:
    config = config_from_reference(full_size_reference_config())
    model = meta_model(config)
    params = param_counts(model)
    if params["total"] != FULL_PARAMS:
        raise AssertionError(f"full-size model has {params['total']:,} parameters, expected {FULL_PARAMS:,}")
    step = analyse_training_step(model, FULL_CLIP)
    sampler = analyse_forward(meta_model(config, torch.float16), FULL_CLIP, 2, torch.float16)
    forward_flop = sampler.flop / 2  # batch 1
    weights = {name: params["total"] * size / GB for name, size in (("fp32", 4), ("fp16", 2), ("bf16", 2))}
    # Couplers-only training state in float32: gradient + Adam's two moments + EMA, 16 B per parameter.
    coupler_state = params["couplers"] * 16 / GB
    rates = reduced[-1]
    return {
        "params": params, "clip": asdict(FULL_CLIP), "weights_gb": weights,
        "forward_tflop_batch1": forward_flop / 1e12,
        "sampler_step": {"batch": 2, "dtype": "float16", "tflop": sampler.flop / 1e12,
                         "activation_peak_gb": sampler.activation_peak_bytes / GB},
        "training_step": {"clips": 3, "dtype": "float32", "tflop": step.flop / 1e12,
                          "forward_tflop": step.forward_flop / 1e12,
                          "activation_peak_gb": step.activation_peak_bytes / GB,
                          "coupler_grad_adam_ema_gb": coupler_state},
        "gpu_memory_gb": {
            "sampler_fp16_or_bf16": weights["fp16"] + sampler.activation_peak_bytes / GB,
            "sampler_fp32": weights["fp32"] + 2 * sampler.activation_peak_bytes / GB,
            "training_fp32": weights["fp32"] + coupler_state + step.activation_peak_bytes / GB,
        },
        "cpu_ram_to_load_gb": {  # RSS after loading and reading every weight, scaled by weight bytes
            "fp32": weights["fp32"] * rates["load_fp32_then_read_peak_rss_extra_mb"] / rates["file_fp32_mb"],
            "fp16": weights["fp16"] * rates["load_fp16_then_read_peak_rss_extra_mb"] / rates["file_fp16_mb"],
        },
        "cpu_estimate_here": {  # one core; FLOPs / the FLOP rate per CPU-second at the larger reduced size
            "based_on": rates["name"],
            "cpu_seconds_per_forward": forward_flop / 1e9 / rates["forward_gflop_per_cpu_s"],
            "cpu_seconds_per_training_step": step.flop / 1e9 / rates["training_gflop_per_cpu_s"],
            "cpu_hours_per_clip_25_steps_cfg": 25 * sampler.flop / 1e9 / rates["forward_gflop_per_cpu_s"] / 3600,
        },
    }


def table(results: dict) -> str:
    full = results["full_size"]
    lines = ["size      parameters  load+read RSS MB   forward s       GFLOP  GFLOP per  activations MB",
             "                      fp16 file  fp32   wall (cpu)             cpu-s      predicted / RSS"]
    for r in results["reduced"]:
        lines.append(
            f"{r['name']:<9} {r['params']['total']:>11,} {r['load_fp16_then_read_peak_rss_extra_mb']:>7.0f} "
            f"{r['load_fp32_then_read_peak_rss_extra_mb']:>7.0f}   {r['forward_s']:>6.2f} ({r['forward_cpu_s']:>5.2f})"
            f" {r['forward_gflop']:>8.1f} {r['forward_gflop_per_cpu_s']:>8.1f}   "
            f"{r['predicted_forward_activation_peak_mb']:>6.0f} / {r['first_forward_rss_extra_mb']:.0f}")
    lines += ["", "size      training step s   GFLOP  GFLOP per  activations+grads MB",
              "          wall (cpu)                 cpu-s      predicted / RSS"]
    for r in results["reduced"]:
        lines.append(
            f"{r['name']:<9} {r['training_step_s']:>6.2f} ({r['training_step_cpu_s']:>5.2f}) "
            f"{r['training_step_gflop']:>8.1f} "
            f"{r['training_gflop_per_cpu_s']:>8.1f}   {r['predicted_training_activation_peak_mb']:>6.0f} / "
            f"{r['training_step_rss_extra_mb']:.0f}")
    lines.append("")
    p, w, g, c = full["params"], full["weights_gb"], full["gpu_memory_gb"], full["cpu_estimate_here"]
    lines += [
        f"full size: {p['total']:,} params (video U-Net {p['video_unet']:,}, audio U-Net {p['audio_unet']:,}, "
        f"couplers {p['couplers']:,})",
        f"weights: fp32 {w['fp32']:.2f} GB, fp16/bf16 {w['fp16']:.2f} GB; CPU RAM to load (est.): "
        f"fp32 {full['cpu_ram_to_load_gb']['fp32']:.1f} GB, fp16 {full['cpu_ram_to_load_gb']['fp16']:.1f} GB",
        f"joint forward (batch 1): {full['forward_tflop_batch1']:.2f} TFLOP; sampler step (CFG batch 2, fp16): "
        f"{full['sampler_step']['tflop']:.2f} TFLOP, activations {full['sampler_step']['activation_peak_gb']:.2f} GB",
        f"training step (3 clips, fp32, couplers only, no activation checkpointing): "
        f"{full['training_step']['tflop']:.1f} TFLOP, activations {full['training_step']['activation_peak_gb']:.1f} GB",
        f"GPU memory: sampler fp16/bf16 {g['sampler_fp16_or_bf16']:.1f} GB, fp32 {g['sampler_fp32']:.1f} GB; "
        f"training fp32 {g['training_fp32']:.1f} GB",
        f"this CPU, one core (est.): {c['cpu_seconds_per_forward'] / 3600:.1f} h per forward, "
        f"{c['cpu_seconds_per_training_step'] / 3600:.1f} h per training step, "
        f"{c['cpu_hours_per_clip_25_steps_cfg']:.0f} h per clip (25 steps, CFG)",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(Path(__file__).with_name("mmg_results.json")))
    args = parser.parse_args(argv)
    started, cpu_started = time.perf_counter(), time.process_time()
    load_before = os.getloadavg()
    exact_malloc = exact_rss_malloc()
    reduced = [reduced_size("width/10", 10, 32), reduced_size("width/5", 5, 64)]
    results = {
        "command": "nice -n 10 env OMP_NUM_THREADS=1 python benchmarks/bench_mmg.py",
        "torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
        "torch_threads": torch.get_num_threads(), "load_average_before": load_before,
        "malloc_returns_freed_tensors": exact_malloc,
        "reduced": reduced, "full_size": full_size(reduced),
    }
    results["wall_s"] = time.perf_counter() - started
    results["cpu_s"] = time.process_time() - cpu_started
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    print(table(results))
    print(f"wall {results['wall_s']:.0f} s, cpu {results['cpu_s']:.0f} s, load average before "
          f"{load_before[0]:.1f}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
