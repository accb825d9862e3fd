"""The pre-training config of the shapes world (distill/configs/shapes_pretrain.toml), parsed and checked like
distill's plans: unknown keys and wrong types are refused naming the key."""

from dataclasses import asdict, dataclass, field

from ..config import check, no_unknown, read_toml, section


@dataclass(frozen=True)
class WorldConfig:
    resolution: int = 128
    train_scenes: int = 60_000  # scenes rendered for the autoencoder and cached as latents for the UNet
    seed: int = 0


@dataclass(frozen=True)
class JudgeConfig:
    steps: int = 1500
    batch_size: int = 64
    lr: float = 2e-3
    eval_images: int = 2000


@dataclass(frozen=True)
class VaeConfig:
    block_out_channels: tuple[int, ...] = (16, 32, 64, 64)
    layers_per_block: int = 1
    norm_num_groups: int = 8
    steps: int = 3000
    batch_size: int = 16
    crop: int = 64  # the autoencoder is convolutional: train on crops, use at full size
    lr: float = 1e-3
    object_weight: float = 10.0  # L1 weight of object pixels relative to background (colour fidelity lives there)
    edge_weight: float = 1.0  # L1 on image gradients, against blur
    kl_weight: float = 1e-6


@dataclass(frozen=True)
class DecoderConfig:
    """More training for the autoencoder's decoder alone, encoder frozen: latents (and a UNet trained on them) stay
    valid while pictures get sharper and truer in colour."""

    steps: int = 1500
    batch_size: int = 32
    lr: float = 5e-4
    object_weight: float = 10.0
    edge_weight: float = 2.0


@dataclass(frozen=True)
class VaeTinyConfig:
    encoder_block_out_channels: tuple[int, ...] = (16, 16, 16, 16)
    decoder_block_out_channels: tuple[int, ...] = (16, 16, 16, 16)
    steps: int = 800
    batch_size: int = 32
    lr: float = 1e-3


@dataclass(frozen=True)
class TextConfig:
    hidden_size: int = 32
    intermediate_size: int = 64
    num_attention_heads: int = 4
    num_hidden_layers: int = 2


@dataclass(frozen=True)
class UnetConfig:
    block_out_channels: tuple[int, ...] = (32, 64, 128)
    layers_per_block: int = 1
    transformer_layers_per_block: tuple[int, ...] = (1, 1, 1)
    attention_head_dim: tuple[int, ...] = (2, 4, 8)
    addition_time_embed_dim: int = 16
    norm_num_groups: int = 8
    steps: int = 12_000
    batch_size: int = 64
    lr: float = 1e-3
    warmup_steps: int = 200
    caption_dropout: float = 0.1
    ema_decay: float = 0.999
    sample_every: int = 1000
    sample_steps: int = 25
    guidance_scale: float = 5.0
    # Offset noise: the training noise plus offset x N(0, 1) per (sample, channel), constant over the picture, so the
    # noise's mean at t = 999 is random and the base cannot read the background from it (16x16 latents make that mean
    # readable: std 1/16). 0 = SDXL's base recipe as shipped here; 0.0357 is kohya sd-scripts' SDXL default.
    noise_offset: float = 0.0
    # Continue from a model folder's UNet and text encoders (e.g. "assets/models/shapes") instead of fresh weights:
    # a fine-tune. "" = train from scratch, as the shipped base was.
    init_from: str = ""
    # False keeps the text encoders as they are: a fine-tuned base then still shares them with the students shipped
    # beside it, whose conditioning they produce.
    train_text_encoders: bool = True


@dataclass(frozen=True)
class TrainConfig:
    output_dir: str = "runs/shapes"
    seed: int = 0
    checkpoint_every: int = 250
    keep_checkpoints: int = 2
    log_every: int = 10


@dataclass(frozen=True)
class PretrainConfig:
    world: WorldConfig = field(default_factory=WorldConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    vae: VaeConfig = field(default_factory=VaeConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    vae_tiny: VaeTinyConfig = field(default_factory=VaeTinyConfig)
    text: TextConfig = field(default_factory=TextConfig)
    unet: UnetConfig = field(default_factory=UnetConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def section(self, name: str) -> dict:
        """What a part's checkpoints must agree with: its own section, the world and the parts it builds on."""
        needs = {
            "judge": ("world", "judge"),
            "vae": ("world", "vae"),
            "decoder": ("world", "vae", "decoder"),
            "vae_tiny": ("world", "vae", "decoder", "vae_tiny"),
            "latents": ("world", "vae"),
            "unet": ("world", "vae", "text", "unet"),
        }[name]
        data = asdict(self)
        return {key: data[key] for key in needs} | {"seed": self.train.seed}


SECTIONS = {f: t for f, t in PretrainConfig.__annotations__.items()}


def parse(raw: dict) -> PretrainConfig:
    no_unknown(raw, SECTIONS, "")
    built = {}
    for name, cls in ((n, globals()[t] if isinstance(t, str) else t) for n, t in SECTIONS.items()):
        built[name] = section(cls, raw.get(name, {}), name)
    config = PretrainConfig(**built)
    validate(config)
    return config


def load(path) -> PretrainConfig:
    return parse(read_toml(path))


def validate(c: PretrainConfig) -> None:
    check(c.world.resolution % 32 == 0 and c.world.resolution >= 64, "world.resolution", "must be a multiple of 32, at least 64")
    check(len(c.vae.block_out_channels) == 4, "vae.block_out_channels", "needs four levels (SDXL's 8x downscale)")
    check(c.vae.crop % 8 == 0 and 16 <= c.vae.crop <= c.world.resolution, "vae.crop", "must be a multiple of 8 within the resolution")
    check(
        len(c.vae_tiny.encoder_block_out_channels) == 4 and len(c.vae_tiny.decoder_block_out_channels) == 4,
        "vae_tiny.encoder_block_out_channels",
        "AutoencoderTiny needs four levels (8x)",
    )
    n = len(c.unet.block_out_channels)
    for key in ("transformer_layers_per_block", "attention_head_dim"):
        check(len(getattr(c.unet, key)) == n, f"unet.{key}", f"needs {n} entries (one per block)")
    check(0 <= c.unet.caption_dropout < 1, "unet.caption_dropout", "must be in [0, 1)")
    check(0 < c.unet.ema_decay < 1, "unet.ema_decay", "must be in (0, 1)")
    check(c.unet.noise_offset >= 0, "unet.noise_offset", "must be >= 0")
    for part in ("judge", "vae", "decoder", "vae_tiny", "unet"):
        for key in ("steps", "batch_size"):
            check(getattr(getattr(c, part), key) >= 1, f"{part}.{key}", "must be >= 1")
        check(getattr(c, part).lr > 0, f"{part}.lr", "must be > 0")
    for key in ("checkpoint_every", "keep_checkpoints", "log_every"):
        check(getattr(c.train, key) >= 1, f"train.{key}", "must be >= 1")
