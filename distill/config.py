"""The distillation plan: a TOML file parsed into frozen dataclasses and checked before any model loads.

A plan is a chain of stages (teacher steps -> student steps); each stage is a list of phases (an objective
trained on LoRA or on the full UNet for a number of optimizer steps). Every refusal names the key and the reason.
"""

import math
import tomllib
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

from pipelines.errors import StudioError, capped

CONFIG_FOLDER = Path(__file__).with_name("configs")  # the packaged plans (package data in the wheel)

OBJECTIVES = ("mse", "conditional", "unconditional", "x0_convert")
ADVERSARIAL = ("conditional", "unconditional")
PARAMS = ("lora", "full")
TEACHERS = ("previous", "skip")
DATA_SOURCES = ("prompts", "folder", "tar", "cache")
MIXED_PRECISION = ("no", "bf16")
GAN_UPDATES = ("alternating", "simultaneous")


class ConfigError(StudioError, ValueError):
    """A plan that cannot run; the message starts with the offending key."""


@dataclass(frozen=True)
class ModelConfig:
    base: str = "tiny"  # "tiny", "random-sdxl", "shapes" (the embedded model), a hub id or a local diffusers SDXL folder
    seed: int = 0  # weights seed for the built-in models


@dataclass(frozen=True)
class DataConfig:
    source: str = "prompts"  # prompts: the base teacher generates the training latents
    path: str = ""  # image folder, tar shard glob, or cache folder (for "cache")
    prompts: tuple[str, ...] = ()
    prompts_file: str = ""  # one prompt per line; adds to `prompts`
    resolution: int = 1024
    on_bad: str = "skip"  # skip (and count) or stop at an unreadable image / missing caption
    generate_steps: int = 32  # prompts mode: teacher steps used to generate each latent
    generate_guidance: float = 6.0
    samples_per_prompt: int = 1
    shard_size: int = 256  # samples per cached safetensors shard (rounded up to whole encode batches)


@dataclass(frozen=True)
class TrainConfig:
    output_dir: str = "runs/distill"
    seed: int = 0
    batch_size: int = 1
    gradient_accumulation_steps: int = 1
    mixed_precision: str = "bf16"
    gradient_checkpointing: bool = True
    max_grad_norm: float = 1.0
    lora_rank: int = 64
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 10
    validation_prompts: tuple[str, ...] = ()
    validation_seeds: tuple[int, ...] = (0,)
    # "alternating" (the paper): the student steps, then D steps on the updated student's fresh fake. "simultaneous":
    # D steps on the fake the student's step started from (one student forward fewer per step).
    gan_updates: str = "alternating"
    # D-only optimizer steps whenever a fresh D is built, so G's first steps follow an informed D: on the shapes 2-step
    # stage a D whose G barely moved reached 62-68 % accuracy within 20-40 steps (docs/distill.md).
    d_warmup_steps: int = 20
    # Batches of fresh teacher/student pairs on which D's held-out accuracy is measured after every adversarial phase.
    probe_batches: int = 4


@dataclass(frozen=True)
class PhaseConfig:
    objective: str  # mse | conditional | unconditional | x0_convert
    params: str  # lora | full
    steps: int
    lr: float
    betas: tuple[float, float] = (0.0, 0.99)
    d_lr: float | None = None  # discriminator lr; defaults to lr
    # D optimizer steps per G step in adversarial phases; each after the first on a fresh batch (D-only, the student as
    # it is), so D can keep up with a student that moves fast (a full-UNet phase); 1 = the paper's alternation.
    d_steps: int = 1
    guidance_scale: float = 1.0  # teacher CFG (the paper uses 6 in the MSE stage only)
    teacher: str = "previous"  # previous stage's student, or "skip": the stage before that
    renoise_weights: tuple[float, ...] = ()  # empty: D sees x_{t-ns} itself; else weights over renoise levels
    trainable_backbone: bool = True  # discriminator backbone trained (paper) or frozen
    # Adversarial phases: lambda of a teacher-regression anchor, lambda (1 - k / steps) MSE(student's jump, teacher's
    # target) added to G's loss and annealed to 0 over the phase (ADD/LADD-style teacher alignment); 0 = off.
    anchor_weight: float = 0.0

    @property
    def adversarial(self) -> bool:
        return self.objective in ADVERSARIAL


@dataclass(frozen=True)
class StageConfig:
    name: str
    teacher_steps: int
    student_steps: int
    phases: tuple[PhaseConfig, ...]
    prediction_type: str = "epsilon"  # the student's; "sample" (x0) needs an x0_convert phase first
    pure_noise: bool = True  # train at t = 999 on pure noise (the paper's schedule fix); false only to ablate it
    terminal_share: float | None = None  # share of draws at t = 999, the rest over the grid below; None: uniform grid


@dataclass(frozen=True)
class Config:
    model: ModelConfig
    data: DataConfig
    train: TrainConfig
    stages: tuple[StageConfig, ...]
    path: str = field(default="", compare=False)

    def to_dict(self) -> dict:
        """Plain, comparable form (what a checkpoint records); `path` is where it was read from, not the plan."""
        data = asdict(self)
        data.pop("path")
        return data


# Keys whose change does not alter the trained weights: a checkpoint stays valid across them.
RESUME_NEUTRAL = {
    "train.output_dir",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.log_every",
    "train.validation_prompts",
    "train.validation_seeds",
    "train.probe_batches",  # the D probe only measures
}
# Phase keys added after runs were saved: a checkpoint or stage without one was trained as with this default.
ADDED_LATER = {"d_steps": 1}


def packaged_configs() -> dict[str, Path]:
    """The plans shipped in the package (distill/configs/*.toml), by name: 'tiny', 'shapes', ..."""
    return {path.stem: path for path in sorted(CONFIG_FOLDER.glob("*.toml"))}


def config_path(value) -> Path:
    """--config value -> a file: an existing path as given, else a packaged plan's name (with or without .toml, so the
    documented distill/configs/tiny.toml works from any directory), else ConfigError listing the names."""
    path = Path(value)
    if path.is_file():
        return path
    shipped = packaged_configs()
    if path.stem in shipped and (path.parent == Path(".") or path.parent.parts[-2:] == ("distill", "configs")):
        return shipped[path.stem]
    raise ConfigError(f"{capped(value)}: no such config file; packaged plans (name them, e.g. --config tiny): {', '.join(shipped)}")


def config_summary(path: Path) -> str:
    """A plan file's first comment line: what `python -m distill plan --list` shows beside its name."""
    first = path.read_text().splitlines()[0] if path.stat().st_size else ""
    return first.removeprefix("#").strip() if first.startswith("#") else ""


def precision_name(mixed_precision: str) -> str:
    """accelerate's mixed_precision ("no", "bf16") as the precision it means: "fp32" or "bf16"."""
    return "fp32" if mixed_precision == "no" else mixed_precision


def read_toml(path) -> dict:
    """A TOML file's tables (found by config_path), or ConfigError naming the file and what is wrong with it."""
    path = config_path(path)
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None


def load_config(path) -> Config:
    return parse_config(read_toml(path), config_name(config_path(path)))


def config_name(path: Path) -> str:
    """How a plan is recorded (Config.path: in `plan`'s output and an export's manifest): a packaged plan by its place
    in the repository, distill/configs/<name>.toml, the same wherever the package is installed; another as given."""
    return f"distill/configs/{path.name}" if path.parent.resolve() == CONFIG_FOLDER.resolve() else str(path)


def parse_config(raw: dict, path: str = "") -> Config:
    raw = dict(raw)
    stages_raw = raw.pop("stages", None)
    no_unknown(raw, {"model", "data", "train"}, "")
    if not stages_raw:
        raise ConfigError("stages: the plan needs at least one [[stages]] table")
    stages = tuple(_stage(s, f"stages[{i}]") for i, s in enumerate(stages_raw))
    config = Config(
        section(ModelConfig, raw.get("model", {}), "model"),
        section(DataConfig, raw.get("data", {}), "data"),
        section(TrainConfig, raw.get("train", {}), "train"),
        stages,
        path,
    )
    validate(config)
    return config


def no_unknown(table: dict, known, where: str):
    """ConfigError naming the first key of `table` that is not in `known` (or `where` itself if it is no table)."""
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: expected a table, got {type(table).__name__}")
    unknown = sorted(set(table) - set(known))
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(f"{prefix}{unknown[0]}: unknown key (known: {', '.join(sorted(known))})")


def section(cls, table: dict, where: str):
    """Build a dataclass from a table, checking key names and value types against the field defaults."""
    known = {f.name: f for f in fields(cls)}
    no_unknown(table, known, where)
    for name, f in known.items():
        if f.default is MISSING and f.default_factory is MISSING and name not in table:
            raise ConfigError(f"{where}.{name}: required key is missing")
    return cls(**{name: _typed(value, known[name].type, f"{where}.{name}") for name, value in table.items()})


def _typed(value, expected, key):
    """Check a TOML value against a field annotation; lists become tuples so configs stay hashable."""
    text = expected if isinstance(expected, str) else expected.__name__ if isinstance(expected, type) else str(expected)
    if text.startswith("tuple"):
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        item = float if "float" in text else int if "int" in text else str
        return tuple(_typed(v, item.__name__, f"{key}[{i}]") for i, v in enumerate(value))
    if text.startswith("float"):  # "float" or "float | None"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    kinds = {"int": int, "str": str, "bool": bool}
    kind = kinds[text]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{key}: expected {text}, got {value!r}")
    return value


def _stage(table: dict, where: str) -> StageConfig:
    table = dict(table)
    phases_raw = table.pop("phases", None)
    if not phases_raw:
        raise ConfigError(f"{where}.phases: a stage needs at least one [[stages.phases]] table")
    phases = tuple(section(PhaseConfig, p, f"{where}.phases[{i}]") for i, p in enumerate(phases_raw))
    stage = section(_StageFields, table, where)
    return StageConfig(stage.name, stage.teacher_steps, stage.student_steps, phases, stage.prediction_type, stage.pure_noise, stage.terminal_share)


@dataclass(frozen=True)
class _StageFields:  # the scalar keys of a [[stages]] table, checked like any other section
    name: str
    teacher_steps: int
    student_steps: int
    prediction_type: str = "epsilon"
    pure_noise: bool = True
    terminal_share: float | None = None


def _power_of_two(n: int) -> bool:
    return n >= 1 and (n & (n - 1)) == 0


def check(ok: bool, key: str, reason: str):
    """ConfigError "key: reason" unless ok: how every TOML reader of distill refuses a value."""
    if not ok:
        raise ConfigError(f"{key}: {reason}")


def validate(c: Config):
    d, t = c.data, c.train
    check(d.source in DATA_SOURCES, "data.source", f"must be one of {DATA_SOURCES}, got {d.source!r}")
    check(d.on_bad in ("skip", "stop"), "data.on_bad", f"must be 'skip' or 'stop', got {d.on_bad!r}")
    check(d.resolution >= 8 and d.resolution % 8 == 0, "data.resolution", "must be a positive multiple of 8 (the VAE downscale)")
    check(d.source == "prompts" or bool(d.path), "data.path", f"source {d.source!r} needs a path")
    check(d.source != "prompts" or bool(d.prompts or d.prompts_file), "data.prompts", "prompts mode needs prompts or prompts_file")
    check(d.generate_steps >= 1, "data.generate_steps", "must be >= 1")
    check(d.samples_per_prompt >= 1, "data.samples_per_prompt", "must be >= 1")
    check(d.shard_size >= 1, "data.shard_size", "must be >= 1")
    # fp16 would need the student's gradient through D to pass accelerate's loss scaler, which the G step bypasses
    # (it backpropagates D's input gradient by hand); bf16 needs no scaler and is what the paper trains in.
    check(
        t.mixed_precision in MIXED_PRECISION,
        "train.mixed_precision",
        f"must be one of {MIXED_PRECISION} (fp16 is refused: its loss scaling does not cover the adversarial G step; use bf16)",
    )
    for key in ("batch_size", "gradient_accumulation_steps", "lora_rank", "checkpoint_every", "keep_checkpoints", "log_every"):
        check(getattr(t, key) >= 1, f"train.{key}", "must be >= 1")
    check(t.max_grad_norm > 0, "train.max_grad_norm", "must be > 0")
    check(t.d_warmup_steps >= 0, "train.d_warmup_steps", "must be >= 0")
    check(t.probe_batches >= 1, "train.probe_batches", "must be >= 1")
    check(t.gan_updates in GAN_UPDATES, "train.gan_updates", f"must be one of {GAN_UPDATES}, got {t.gan_updates!r}")

    names = [s.name for s in c.stages]
    for i, s in enumerate(c.stages):
        where = f"stages[{i}]"
        check(
            s.name not in names[:i] and s.name.replace("-", "").replace("_", "").isalnum(),
            f"{where}.name",
            f"{s.name!r} must be unique and made of letters, digits, - and _ (it names folders)",
        )
        check(_power_of_two(s.student_steps), f"{where}.student_steps", f"{s.student_steps} is not a power of two (trailing grids must nest)")
        check(s.student_steps < s.teacher_steps, f"{where}.student_steps", f"{s.student_steps} must be fewer than teacher_steps {s.teacher_steps}")
        ratio = s.teacher_steps / s.student_steps
        check(
            ratio == int(ratio) and _power_of_two(int(ratio)),
            f"{where}.teacher_steps",
            f"{s.teacher_steps} does not halve into student_steps {s.student_steps} (the ratio must be a power of two)",
        )
        if i > 0:
            previous = c.stages[i - 1]
            check(
                s.teacher_steps == previous.student_steps,
                f"{where}.teacher_steps",
                f"{s.teacher_steps} must equal the previous stage's student_steps {previous.student_steps} (progressive chain)",
            )
        check(s.terminal_share is None or 0 <= s.terminal_share <= 1, f"{where}.terminal_share", "must be in [0, 1]")
        check(s.prediction_type in ("epsilon", "sample"), f"{where}.prediction_type", "must be 'epsilon' or 'sample'")
        _validate_phases(s, i, where)


def _validate_phases(s: StageConfig, index: int, where: str):
    seen_full = False
    for j, p in enumerate(s.phases):
        key = f"{where}.phases[{j}]"
        check(p.objective in OBJECTIVES, f"{key}.objective", f"must be one of {OBJECTIVES}, got {p.objective!r}")
        check(p.params in PARAMS, f"{key}.params", f"must be 'lora' or 'full', got {p.params!r}")
        check(p.teacher in TEACHERS, f"{key}.teacher", f"must be one of {TEACHERS}, got {p.teacher!r}")
        check(p.steps >= 1, f"{key}.steps", "must be >= 1")
        check(p.lr > 0 and math.isfinite(p.lr), f"{key}.lr", "must be a positive number")
        check(p.d_lr is None or p.d_lr > 0, f"{key}.d_lr", "must be a positive number")
        check(p.d_steps >= 1 and (p.d_steps == 1 or p.adversarial), f"{key}.d_steps", "must be >= 1, and above 1 only on adversarial phases")
        check(len(p.betas) == 2 and all(0 <= b < 1 for b in p.betas), f"{key}.betas", "must be two numbers in [0, 1)")
        check(p.guidance_scale >= 1, f"{key}.guidance_scale", "must be >= 1 (1 = no CFG)")
        check(p.teacher == "previous" or index > 0, f"{key}.teacher", "'skip' needs a stage two levels up; the first stage's only teacher is the base model")
        check(not p.renoise_weights or p.adversarial, f"{key}.renoise_weights", "only adversarial phases re-noise D's inputs")
        check(
            not p.renoise_weights or (len(p.renoise_weights) == 4 and min(p.renoise_weights) >= 0 and sum(p.renoise_weights) > 0),
            f"{key}.renoise_weights",
            "must be four non-negative weights for t* = 10, 250, 500, 750, not all zero",
        )
        check(p.anchor_weight >= 0 and (p.anchor_weight == 0 or p.adversarial), f"{key}.anchor_weight", "must be >= 0, and only on adversarial phases")
        if p.params == "full":
            seen_full = True
        check(
            not (p.params == "lora" and seen_full),
            f"{key}.params",
            "a LoRA phase cannot follow a full-UNet phase in the same stage (LoRA is merged before the full phases)",
        )
        if s.prediction_type == "sample":
            check((j == 0) == (p.objective == "x0_convert"), f"{key}.objective", "an x0 ('sample') student starts with exactly one x0_convert phase")
        else:
            check(p.objective != "x0_convert", f"{key}.objective", "x0_convert needs the stage's prediction_type = 'sample'")


def describe(c: Config) -> str:
    """The resolved plan, one line per phase: what `python -m distill plan` prints."""
    lines = [
        f"config {c.path or '<inline>'}",
        f"base model: {c.model.base}",
        f"data: {c.data.source} {c.data.path or ''} at {c.data.resolution}px, on_bad={c.data.on_bad}".replace("  ", " "),
        f"train: batch {c.train.batch_size} x accumulation {c.train.gradient_accumulation_steps}, {precision_name(c.train.mixed_precision)}, "
        f"LoRA rank {c.train.lora_rank}, {c.train.gan_updates} G/D updates, {c.train.d_warmup_steps} D-only steps per fresh D, "
        f"checkpoints every {c.train.checkpoint_every} steps (keep {c.train.keep_checkpoints}) in {c.train.output_dir}",
    ]
    total = 0
    for i, s in enumerate(c.stages):
        lines.append(
            f"stage {i} {s.name}: {s.teacher_steps} -> {s.student_steps} steps, student predicts {s.prediction_type}"
            + ("" if s.pure_noise else ", no pure noise at t = 999 (ablation)")
            + ("" if s.terminal_share is None else f", {s.terminal_share:.0%} of draws at t = 999")
        )
        for j, p in enumerate(s.phases):
            teacher = teacher_of(c, i, j)
            extra = f", CFG {p.guidance_scale:g}" if p.guidance_scale > 1 else ""
            extra += f", D lr {p.d_lr:g}" if p.adversarial and p.d_lr else ""
            extra += f", {p.d_steps} D steps per G step" if p.d_steps > 1 else ""
            extra += f", teacher anchor {p.anchor_weight:g} annealed to 0" if p.anchor_weight else ""
            extra += f", re-noise weights {':'.join(f'{w:g}' for w in p.renoise_weights)}" if p.renoise_weights else ""
            if j > 0 and p.params == "full" and s.phases[j - 1].params == "lora":
                lines.append("    merge LoRA into the UNet (fp32)")
            lines.append(
                f"  phase {j}: {p.objective:<13} {p.params:<4} {p.steps:>6} steps  lr {p.lr:g} betas {p.betas}  "
                f"teacher: {teacher[0]} at {teacher[1]} steps{extra}"
            )
            total += p.steps
    lines.append(f"total optimizer steps: {total}")
    return "\n".join(lines)


def teacher_of(c: Config, stage: int, phase: int) -> tuple[str, int]:
    """(source, steps) of a phase's teacher: "base", or the name of the stage whose final student teaches."""
    p = c.stages[stage].phases[phase]
    back = 2 if p.teacher == "skip" else 1
    if stage - back < 0:
        return "base", c.stages[0].teacher_steps
    source = c.stages[stage - back]
    return source.name, source.student_steps


def lineage(c: Config, stage: int) -> dict:
    """Everything that decides stage `stage`'s student: model, data, the weight-relevant training keys, and the plan's
    stages up to it. Two plans whose lineages agree at a stage train the same student there (a finished stage with
    the same lineage is reused instead of retrained, e.g. by a run branched from another)."""
    data = c.to_dict()
    data["train"] = {k: v for k, v in data["train"].items() if f"train.{k}" not in RESUME_NEUTRAL}
    data["stages"] = data["stages"][: stage + 1]
    if not any(p.adversarial for s in c.stages[: stage + 1] for p in s.phases):
        for key in ("gan_updates", "d_warmup_steps"):  # they decide adversarial phases only: MSE-only stages are shared across them
            del data["train"][key]
    return json_plain(data)


def json_plain(value):
    """Tuples as lists, recursively: the form a dict takes after a JSON round trip, so comparisons agree."""
    if isinstance(value, dict):
        return {k: json_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_plain(v) for v in value]
    return value


def config_diff(saved: dict, current: dict, prefix: str = "") -> list[str]:
    """Keys whose values differ between two `Config.to_dict()` forms, ignoring RESUME_NEUTRAL keys (an ADDED_LATER key
    absent from `saved` has its default)."""
    out = []
    for key in sorted(set(saved) | set(current), key=str):
        name = f"{prefix}{key}"
        a, b = saved.get(key, ADDED_LATER.get(key, "<absent>")), current.get(key, "<absent>")
        if name in RESUME_NEUTRAL:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_diff(a, b, f"{name}.")
        elif isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and a and isinstance(a[0], dict) and len(a) == len(b):
            for i, (x, y) in enumerate(zip(a, b)):
                out += config_diff(x, y, f"{name}[{i}].")
        elif json_plain(a) != json_plain(b):
            out.append(f"{name}: checkpoint has {a!r}, config has {b!r}")
    return out
