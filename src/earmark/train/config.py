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

from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

STAGES = ("mae", "finetune", "psl")
# the waveform augmentations of AcousticAugment (their probability fields: the names of
# earmark.audio.augment.EFFECTS, written out so that the CLI parser imports no torch; a test
# keeps the two equal), and every field that configures it
ACOUSTIC = ("speed", "pitch", "noise", "reverb", "eq", "band_limit", "clipping")
ACOUSTIC_FIELDS = (*ACOUSTIC, "speed_range", "pitch_semitones", "noise_snr", "noise_dir",
                   "reverb_rt60", "rir_dir", "eq_db")


# Option groups of ``earmark train`` and ``earmark cv`` (the options come from the fields below)
GROUPS = {
    "training": None,
    "augmentation": "augmentation (each effect: a probability per item, 0 = off; ranges as "
                    "LOW,HIGH)",
    "stages": "stages of \"Streaming Audio Transformers for Online Audio Tagging\" (MAE -> "
              "full-context finetune -> SAT by pseudo-strong labels)",
    "fine-tuning": "fine-tuning from a model or a released checkpoint",
    "groups": "speakers and synthetic voices (an item's group: its speaker or voice)",
    "codebook": "codebook model of \"Attention is all you need? Good embeddings with statistics "
                "are enough\": the stages before the head; --epochs, --lr, --batch-size are "
                "the head's",
}


def option(default=MISSING, help: str = "", group: str = "training", *, factory=None,
           flag: str | None = None, metavar: str | None = None,
           choices: tuple | None = None, cli: bool = True, required: bool = False):
    """A :class:`TrainConfig` field (no default: a required argument) and what its
    command-line option needs: the help text, the option group, another spelling (``flag``),
    a metavar, choices; ``cli=False`` for the fields the command line sets its own way."""
    meta = {"help": help, "group": group, "flag": flag, "metavar": metavar,
            "choices": choices, "cli": cli, "required": required}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def option_flag(name: str) -> str:
    """The command-line flag of the :class:`TrainConfig` field ``name``: its ``flag``, else
    its name with dashes.

        >>> option_flag("rir_dir"), option_flag("epochs"), option_flag("model_args")
        ('--rir', '--epochs', '--model-arg')
    """
    meta = {f.name: f.metadata for f in fields(TrainConfig)}[name]
    return meta["flag"] or "--" + name.replace("_", "-")


def option_flags() -> dict[str, str]:
    """Every flag that sets a :class:`TrainConfig` field -> the field: the ``--no-`` form of a
    switch too.

        >>> flags = option_flags()
        >>> flags["--rir"], flags["--no-cache"], flags["--model-arg"]
        ('rir_dir', 'cache', 'model_args')
    """
    out = {}
    for f in fields(TrainConfig):
        if f.metadata.get("cli") or f.metadata.get("flag"):
            flag = option_flag(f.name)
            out[flag] = f.name
            if str(f.type).replace(" | None", "") == "bool":
                out["--no-" + flag[2:]] = f.name
    return out


def _pair(low: float, high: float):
    return lambda: [low, high]


@dataclass
class TrainConfig:
    data: str = option(help="data SPEC, e.g. fsdd:DIR, esc50:DIR, synth:DIR", required=True)
    out: str = option("runs/run", "run directory to create", required=True)
    model: str | None = option(None, "registry name (earmark profile --list; default: the "
                                     "--init model's, else vit-tiny)")
    model_args: dict = option(factory=dict, cli=False, flag="--model-arg")  # create_model's
    epochs: int = option(30, "training epochs")
    batch_size: int = option(32, "clips per step")
    lr: float = option(5e-4, "peak learning rate (AdamW)")
    weight_decay: float = option(0.05, "AdamW weight decay")
    warmup_epochs: float = option(2.0, "linear warm-up, then cosine decay to lr * min-lr-ratio")
    min_lr_ratio: float = option(0.01, "final learning rate as a fraction of --lr")
    clip_seconds: float | None = option(None, "clip length in s (default: the model's own)")
    fit: str = option("repeat", "how clips are fitted to --clip-seconds",
                      choices=("crop", "pad", "repeat"))
    cache: bool | None = option(None, "keep decoded audio in memory (default: when the set is "
                                      "under --cache-hours)")
    cache_hours: float = option(2.0, "largest data set kept in memory by default, in hours")
    mixup: float = option(0.0, "mixup alpha, Beta(alpha, alpha) (0 = off; single- or "
                               "multi-label)", "augmentation")
    lr_schedule: str = option("cosine", "warm-up then cosine, or the HTS-AT paper's steps",
                              choices=("cosine", "htsat"))
    time_mask: int = option(0, "SpecAugment: most masked frames per mask (the streaming paper "
                               "uses 192 on 10 s clips)", "augmentation")
    freq_mask: int = option(0, "SpecAugment: most masked mel bins per mask (24 there)",
                            "augmentation")
    time_masks: int = option(1, "SpecAugment: time masks per clip", "augmentation")
    freq_masks: int = option(1, "SpecAugment: frequency masks per clip", "augmentation")
    gain_db: float = option(0.0, "random gain within +- dB", "augmentation")
    shift: float = option(0.0, "random circular shift, a fraction of the clip", "augmentation")
    polarity: float = option(0.0, "probability of inverting the sign", "augmentation")
    # Acoustic augmentation for new speakers, rooms and microphones (earmark.audio.augment):
    # each a probability per training item (0 = off) and the range it draws from.
    speed: float = option(0.0, "speed perturbation: tempo and pitch together", "augmentation")
    speed_range: list = option(help="speed factors", group="augmentation",
                               factory=_pair(0.85, 1.15), metavar="LOW,HIGH")
    pitch: float = option(0.0, "pitch shift at the same tempo (phase vocoder)", "augmentation")
    pitch_semitones: float = option(2.0, "largest pitch shift in semitones, up or down",
                                    "augmentation")
    vtlp: float = option(0.0, "vocal-tract-length perturbation: the mel axis warped (Jaitly & "
                              "Hinton 2013)", "augmentation")
    vtlp_range: list = option(help="VTLP warp factors", group="augmentation",
                              factory=_pair(0.9, 1.1), metavar="LOW,HIGH")
    noise: float = option(0.0, "background noise at a random SNR", "augmentation")
    noise_snr: list = option(help="signal-to-noise ratios in dB", group="augmentation",
                             factory=_pair(5.0, 30.0), metavar="LOW,HIGH")
    noise_dir: str | None = option(None, "noise recordings of any length, read in random "
                                         "segments (default: earmark's synthetic coloured "
                                         "noises)", "augmentation", metavar="DIR")
    reverb: float = option(0.0, "reverberation with room impulse responses", "augmentation")
    reverb_rt60: list = option(help="RT60 of simulated rooms in s", group="augmentation",
                               factory=_pair(0.2, 0.8), metavar="LOW,HIGH")
    rir_dir: str | None = option(None, "room impulse response files (default: simulated "
                                       "shoebox rooms)", "augmentation", flag="--rir",
                                 metavar="DIR")
    eq: float = option(0.0, "random smooth equaliser (microphone colouration)", "augmentation")
    eq_db: float = option(6.0, "largest EQ gain, +- dB at six log-spaced frequencies",
                          "augmentation")
    band_limit: float = option(0.0, "telephone band, about 300-3400 Hz", "augmentation")
    clipping: float = option(0.0, "hard clipping at 30-80 %% of the peak", "augmentation")
    top_k_average: int = option(1, "average the weights of the k best checkpoints (the "
                                   "streaming paper: 4)")
    early_stopping: int = option(0, "patience in epochs (0 = off)")
    multi_label: bool | None = option(None, "sigmoid outputs and BCE (default: as the data)")
    balanced: bool | None = option(None, "balanced sampling (default: on for multi-label data)")
    seed: int = option(0, "seed of every random choice of the run")
    num_workers: int = option(0, "data loading processes")
    devices: int = option(1, "devices (processes) to train on, per machine")
    num_nodes: int = option(1, "machines, each running --devices processes (Lightning DDP; "
                               "launch one earmark train per machine with torchrun or srun)")
    shuffle_buffer: int = option(1000, "shards: data: clips in each loader's shuffle buffer "
                                       "(the shards are read in order, shuffled per epoch)")
    accelerator: str = option("auto", "cpu, gpu or auto")
    precision: str = option("32-true", "Lightning precision, e.g. 16-mixed")
    fold: int | None = option(None, cli=False)  # held out (fold-based sets); None: the test split
    max_minutes: float | None = option(None, "stop training after this wall time")
    progress: bool = option(True, cli=False)  # progress bars (--no-progress)
    stage: str = option("finetune", "mae: masked-autoencoder pretraining (no labels); finetune: "
                                    "supervised training; psl: a sat-* student learns "
                                    "--teacher's scores on crops of two chunks", "stages",
                        choices=STAGES)
    init: str | None = option(None, "start from the weights of a model or run directory, a "
                                    ".ckpt or a released checkpoint's name (earmark models "
                                    "--pretrained), with its architecture, sample rate and "
                                    "front end; the head keeps its rows for the data's labels "
                                    "it knows by name, new rows for the others",
                              "fine-tuning", metavar="NAME_OR_DIR")
    backbone_lr_scale: float = option(1.0, "learning rate of everything but the head, as a "
                                           "fraction of --lr (e.g. 0.1 from a released "
                                           "checkpoint)", "fine-tuning", metavar="F")
    layer_decay: float = option(1.0, "layer-wise learning-rate decay: block i of L learns at "
                                     "F^(L+1-i) of the backbone's rate, the embeddings at "
                                     "F^(L+1) (1 = off; 0.65-0.75 in MAE-style fine-tuning)",
                                "fine-tuning", metavar="F")
    freeze_backbone: bool = option(False, "train the head only: the backbone keeps the --init "
                                          "weights (and its batch-norm statistics)",
                                   "fine-tuning")
    teacher: str | None = option(None, "psl: the model (directory) whose scores the student "
                                       "learns", "stages", metavar="MODEL")
    teacher_scores: bool = option(False, "psl: learn the scores earmark psl-scores stored "
                                         "beside the shards (shards: data) instead of running "
                                         "--teacher", "stages")
    # ViT regularisers of the streaming paper, 4.3 (finetune there: 0.25, 0.25, 0.1)
    time_patch_out: float | None = option(None, "ViT/SAT: fraction of time patches dropped in "
                                                "training (paper: 0.25)", "stages")
    freq_patch_out: float | None = option(None, "ViT/SAT: fraction of frequency patches dropped "
                                                "(paper: 0.25)", "stages")
    drop_path_rate: float | None = option(None, "ViT/SAT: stochastic depth of the last block "
                                                "(paper: 0.1)", "stages")
    # mae: the official SAT code's decoder is 512 wide with 8 heads, depth 4 behind ViT-T and
    # 8 behind ViT-S/B
    mask_ratio: float = option(0.75, "mae: fraction of patches masked", "stages")
    decoder_dim: int = option(512, "mae: decoder width", "stages")
    decoder_depth: int | None = option(None, "mae: decoder blocks (default: 4 behind ViT-T, 8 "
                                             "behind ViT-S/B)", "stages")
    decoder_heads: int = option(8, "mae: decoder heads", "stages")
    # codebook: the paper gives no optimiser for its autoencoders; Adam with a cosine decay is
    # earmark's choice
    codebook_chunks: int = option(20000, "1 s chunks of the training split that fit the "
                                         "autoencoders and code books", "codebook")
    ae_steps: int = option(3000, "autoencoder updates (each updates all four families)",
                           "codebook")
    ae_batch: int = option(256, "slices per family and update", "codebook")
    ae_lr: float = option(1e-3, "autoencoder learning rate", "codebook")
    kmeans_batch: int = option(4096, "mini-batch k-means: vectors per update", "codebook")
    kmeans_epochs: int = option(3, "passes of mini-batch k-means over the bottlenecks",
                                "codebook")
    stages_from: str | None = option(None, "reuse another codebook run's stages where their "
                                           "settings match", "codebook", metavar="RUN")
    feature_views: int = option(1, "histograms per training clip: the clip, then randomly "
                                   "shifted copies (with --gain-db and the augmentations)",
                                "codebook")
    # Real recordings and synthetic voices (earmark voices) together, and a model that is
    # kept from telling the speakers apart (earmark.train.adversarial)
    synthetic: str | None = option(None, "data SPEC of synthetic items (e.g. manifest:DIR/"
                                         "manifest.csv of earmark voices), all added to the "
                                         "training split only; their labels must be among "
                                         "the data's", "groups", metavar="SPEC")
    synthetic_share: float | None = option(None, "expected share of synthetic items in every "
                                                 "batch, each speaker and voice drawn equally "
                                                 "often within its part; an epoch is as many "
                                                 "draws as there are real training items "
                                                 "(default: one pool, every item once per "
                                                 "epoch)", "groups", metavar="P")
    group_adversarial: float = option(0.0, "weight W of a group head on the pooled embedding, "
                                           "trained through gradient reversal so the "
                                           "embedding forgets the speaker or voice (0 = off; "
                                           "Ganin & Lempitsky 2015)", "groups", metavar="W")
    group_adversarial_ramp: bool = option(True, "raise the reversal weight from 0 to W over "
                                                "training as Ganin & Lempitsky do (2 / (1 + "
                                                "exp(-10 p)) - 1)", "groups")

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"unknown stage {self.stage!r}; known: {', '.join(STAGES)}")
        if self.stage == "psl" and not (self.teacher or self.teacher_scores):
            raise ValueError("stage 'psl' needs a teacher model (--teacher MODEL_DIR) or "
                             "stored teacher scores (--teacher-scores)")
        if (self.teacher or self.teacher_scores) and self.stage != "psl":
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
        for name in ("epochs", "batch_size", "devices", "num_nodes", "shuffle_buffer"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.synthetic_share is not None:
            if not self.synthetic:
                raise ValueError("synthetic_share is the share of --synthetic items in each "
                                 "batch; give --synthetic SPEC too")
            if not 0.0 <= self.synthetic_share <= 1.0:
                raise ValueError(f"synthetic_share is a fraction between 0 and 1, got "
                                 f"{self.synthetic_share}")
        if self.group_adversarial < 0:
            raise ValueError(f"group_adversarial is a weight of 0 or more, got "
                             f"{self.group_adversarial}")
        if self.group_adversarial and self.stage != "finetune":
            raise ValueError(f"group_adversarial trains with the labels of stage 'finetune', "
                             f"not {self.stage!r}")
        if not 0.0 <= self.backbone_lr_scale:
            raise ValueError(f"backbone_lr_scale is a factor of 0 or more, got "
                             f"{self.backbone_lr_scale}")
        if not 0.0 < self.layer_decay <= 1.0:
            raise ValueError(f"layer_decay is a factor in (0, 1], got {self.layer_decay}")
        if self.freeze_backbone and not self.init:
            raise ValueError("freeze_backbone keeps the backbone of --init: give --init "
                             "NAME_OR_DIR too")
        tuned = [name for name in ("backbone_lr_scale", "layer_decay")
                 if getattr(self, name) != 1.0] + (["freeze_backbone"]
                                                   if self.freeze_backbone else [])
        if tuned and self.stage == "mae":
            raise ValueError("stage 'mae' pretrains the whole encoder; unset "
                             + ", ".join(tuned))
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
