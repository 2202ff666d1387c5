"""The training configuration: one dataclass, written resolved into every run directory.

``stage`` picks one of the three training stages of paper 003 (figure 1), each starting
from the previous one's model directory (``init``):

    mae       masked-autoencoder pretraining of a ViT encoder; no labels needed
    finetune  full-context supervised training (the default; any model family)
    psl       a streaming SAT student learns a teacher's scores on crops (pseudo-strong labels)

    >>> cfg = TrainConfig(data="synth:data", stage="psl", model="sat-tiny", teacher="runs/vit")
    >>> cfg.stage, cfg.mixup
    ('psl', 0.0)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

STAGES = ("mae", "finetune", "psl")
# the waveform augmentations of AcousticAugment (their probability fields: the names of
# earmark.audio.augment.EFFECTS, written out so that the CLI parser imports no torch; a test
# keeps the two equal), and every field that configures it
ACOUSTIC = ("speed", "pitch", "noise", "reverb", "eq", "band_limit", "clipping")
ACOUSTIC_FIELDS = (*ACOUSTIC, "speed_range", "pitch_semitones", "noise_snr", "noise_dir",
                   "reverb_rt60", "rir_dir", "eq_db")


@dataclass
class TrainConfig:
    data: str  # a data SPEC, e.g. "fsdd:/data/fsdd"
    out: str = "runs/run"
    model: str = "vit-tiny"
    model_args: dict = field(default_factory=dict)  # overrides for create_model
    epochs: int = 30
    batch_size: int = 32
    lr: float = 5e-4
    weight_decay: float = 0.05
    warmup_epochs: float = 2.0  # linear warm-up, then cosine decay to lr * min_lr_ratio
    min_lr_ratio: float = 0.01
    clip_seconds: float | None = None  # None: the model's own clip length
    fit: str = "repeat"  # how clips are fitted to clip_seconds: crop, pad or repeat
    cache: bool | None = None  # keep decoded audio in memory; None = when under cache_hours
    cache_hours: float = 2.0
    mixup: float = 0.0  # Beta(alpha, alpha); 0 turns mixup off
    lr_schedule: str = "cosine"  # "cosine" (warm-up then cosine) or "htsat" (paper 002's steps)
    time_mask: int = 0  # SpecAugment: max masked frames (paper 003 uses 192 on 10 s clips)
    freq_mask: int = 0  # SpecAugment: max masked mel bins (paper 003 uses 24)
    time_masks: int = 1  # number of time masks per clip
    freq_masks: int = 1  # number of frequency masks per clip
    gain_db: float = 0.0  # random gain in +-dB
    shift: float = 0.0  # random circular shift, fraction of the clip
    polarity: float = 0.0  # probability of inverting the sign
    # Acoustic augmentation for new speakers, rooms and microphones (earmark.audio.augment):
    # each a probability per training item (0 = off) and the range it draws from.
    speed: float = 0.0  # speed perturbation: tempo and pitch together
    speed_range: list = field(default_factory=lambda: [0.85, 1.15])  # factors
    pitch: float = 0.0  # pitch shift at the same tempo (phase vocoder)
    pitch_semitones: float = 2.0  # +- semitones
    vtlp: float = 0.0  # vocal-tract-length perturbation of the mel axis (Jaitly & Hinton 2013)
    vtlp_range: list = field(default_factory=lambda: [0.9, 1.1])  # warp factors
    noise: float = 0.0  # background noise at a random SNR
    noise_snr: list = field(default_factory=lambda: [5.0, 30.0])  # dB
    noise_dir: str | None = None  # noise files (any length); None = earmark's coloured noises
    reverb: float = 0.0  # convolution with a room impulse response
    reverb_rt60: list = field(default_factory=lambda: [0.2, 0.8])  # simulated rooms, seconds
    rir_dir: str | None = None  # impulse-response files; None = simulated shoebox rooms
    eq: float = 0.0  # random smooth equaliser (microphone colouration)
    eq_db: float = 6.0  # +- dB at six log-spaced frequencies
    band_limit: float = 0.0  # telephone band, about 300-3400 Hz
    clipping: float = 0.0  # hard clipping at 30-80 % of the peak
    top_k_average: int = 1  # average the weights of the k best checkpoints (paper 003: 4)
    early_stopping: int = 0  # patience in epochs; 0 = off
    multi_label: bool | None = None  # sigmoid + BCE even for single-label data (None: as data)
    balanced: bool | None = None  # balanced sampling; None = on for multi-label data
    seed: int = 0
    num_workers: int = 0
    devices: int = 1
    accelerator: str = "auto"
    precision: str = "32-true"
    fold: int | None = None  # hold this fold out (fold-based sets); None = the split's test set
    max_minutes: float | None = None  # stop training after this wall time
    progress: bool = True
    stage: str = "finetune"  # one of STAGES
    init: str | None = None  # model/run directory or .ckpt whose matching weights start the run
    teacher: str | None = None  # psl: the model whose scores on the crops are the targets
    # ViT regularisers of paper 003, 4.3 (finetune there: 0.25, 0.25, 0.1); None = model default
    time_patch_out: float | None = None  # fraction of time patches dropped in training
    freq_patch_out: float | None = None  # fraction of frequency patches dropped in training
    drop_path_rate: float | None = None  # stochastic depth of the last block
    # mae: masked fraction of patches and the decoder (official SAT code: width 512, 8 heads,
    # depth 4 behind ViT-T and 8 behind ViT-S/B; None = that rule)
    mask_ratio: float = 0.75
    decoder_dim: int = 512
    decoder_depth: int | None = None
    decoder_heads: int = 8
    # codebook (paper 001): the stages before the head (earmark.train.codebook). The paper
    # gives no optimiser for its autoencoders; Adam with a cosine decay is earmark's choice.
    codebook_chunks: int = 20000  # 1 s chunks of the training split that fit the autoencoders
    ae_steps: int = 3000  # autoencoder updates (each one updates all four families)
    ae_batch: int = 256  # slices per family and update
    ae_lr: float = 1e-3
    kmeans_batch: int = 4096  # mini-batch k-means: vectors per update
    kmeans_epochs: int = 3  # passes over the bottlenecks
    stages_from: str | None = None  # another codebook run whose matching stages are reused
    feature_views: int = 1  # histograms per training clip: as it is, then shifted copies

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"unknown stage {self.stage!r}; known: {', '.join(STAGES)}")
        if self.stage == "psl" and not self.teacher:
            raise ValueError("stage 'psl' needs a teacher model (--teacher MODEL_DIR)")
        if self.teacher and self.stage != "psl":
            raise ValueError(f"a teacher is only used by stage 'psl', not {self.stage!r}")
        if self.stage == "psl":
            augment = [name for name in ("mixup", "time_mask", "freq_mask", "gain_db", "shift",
                                         "polarity", *ACOUSTIC) if getattr(self, name)]
            if augment:  # paper 003, 4.4: the student learns the teacher's view of clean crops
                raise ValueError("stage 'psl' trains without augmentation and mixup; unset "
                                 + ", ".join(augment))
        if self.stage == "mae":
            spec = [name for name in ("mixup", "time_mask", "freq_mask") if getattr(self, name)]
            if spec:  # masking is the pretext task; mixed or masked inputs have no place there
                raise ValueError("stage 'mae' takes no mixup or SpecAugment; unset "
                                 + ", ".join(spec))
        for name in ("codebook_chunks", "ae_steps", "ae_batch", "kmeans_batch",
                     "kmeans_epochs", "feature_views"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("vtlp", *ACOUSTIC):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} is a probability between 0 and 1, "
                                 f"got {getattr(self, name)}")
        for name in ("speed_range", "vtlp_range", "noise_snr", "reverb_rt60"):
            lo, hi = getattr(self, name)
            if lo > hi or (name != "noise_snr" and lo <= 0):
                raise ValueError(f"{name} must be [low, high] with 0 < low <= high, "
                                 f"got {getattr(self, name)}")
        if not 0.0 < self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be between 0 and 1, got {self.mask_ratio}")

    def acoustic(self) -> dict:
        """The settings of :class:`earmark.audio.augment.AcousticAugment` (ranges as tuples)."""
        return {name: tuple(v) if isinstance(v := getattr(self, name), list) else v
                for name in ACOUSTIC_FIELDS}

    def regularisers(self) -> dict:
        """The patch-out and stochastic-depth options that are set, as model arguments."""
        return {name: getattr(self, name)
                for name in ("time_patch_out", "freq_patch_out", "drop_path_rate")
                if getattr(self, name) is not None}

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown training options: {sorted(unknown)}")
        return cls(**d)

    def write(self, path: str | Path) -> None:
        from earmark.files import write_json

        write_json(path, self.to_dict())
