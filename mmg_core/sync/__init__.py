"""Audio-video sync measures (REFERENCE.md section 4): CAM-Sync, its VideoCAM / AudioCAM energies,
AV-Align and a model-free onset-motion baseline, plus file evaluation and best-of-N ranking.

Sign convention for every offset: ``OFFSET_CONVENTION`` (positive = audio late).

    from mmg_core.sync import load_sync_models, score_clip
    models = load_sync_models()                      # EfficientNet-Lite0 (ImageNet) + audio event CNN
    scores = score_clip(models, video, audio, fps, sample_rate)  # video (F, 3, H, W) in [-1, 1], audio (C, T)
    scores.cam_sync.score, scores.cam_sync.offset_s, scores.av_align.score

Nothing here imports ComfyUI; models load only when asked for.
"""

from .backbones import (
    AudioEventNet,
    AudioNetConfig,
    CamClassifier,
    EfficientNetLite0,
    SyncModels,
    load_audio_classifier,
    load_frame_classifier,
    load_sync_models,
    save_audio_classifier,
)
from .camsync import (
    OFFSET_CONVENTION,
    TIMELINE_RATE,
    AVAlign,
    SyncResult,
    av_align,
    av_align_score,
    cam_sync,
    onset_motion_sync,
    pooled_sync,
    sync_energies,
)
from .evaluate import ClipScores, RankedCandidate, evaluate_files, rank_by_cam_sync, score_clip
from .gradcam import AudioCam, GradCam, VideoCam, audio_cam, grad_cam, video_cam

__all__ = [
    "AVAlign",
    "AudioCam",
    "AudioEventNet",
    "AudioNetConfig",
    "CamClassifier",
    "ClipScores",
    "EfficientNetLite0",
    "GradCam",
    "OFFSET_CONVENTION",
    "RankedCandidate",
    "SyncModels",
    "SyncResult",
    "TIMELINE_RATE",
    "VideoCam",
    "audio_cam",
    "av_align",
    "av_align_score",
    "cam_sync",
    "evaluate_files",
    "grad_cam",
    "load_audio_classifier",
    "load_frame_classifier",
    "load_sync_models",
    "onset_motion_sync",
    "pooled_sync",
    "rank_by_cam_sync",
    "save_audio_classifier",
    "score_clip",
    "sync_energies",
    "video_cam",
]
