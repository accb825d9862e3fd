"""The plan: shipped configs parse, every impossible plan is refused with its key and reason before models load."""

import copy
import tomllib
from pathlib import Path

import pytest

from distill import __main__ as cli
from distill.config import ConfigError, config_diff, describe, lineage, load_config, parse_config, teacher_of

CONFIGS = Path(__file__).resolve().parents[2] / "distill" / "configs"


def tiny_raw():
    return tomllib.loads((CONFIGS / "tiny.toml").read_text())


def test_paper_plan_is_the_papers():
    c = load_config(CONFIGS / "sdxl_lightning.toml")
    assert [(s.teacher_steps, s.student_steps) for s in c.stages] == [(128, 32), (32, 8), (8, 4), (4, 2), (2, 1)]
    mse = c.stages[0].phases[0]
    assert (mse.objective, mse.guidance_scale, mse.lr, mse.betas) == ("mse", 6.0, 1e-5, (0.9, 0.999))
    for stage in c.stages[1:4]:
        assert [(p.objective, p.params) for p in stage.phases] == [("conditional", "lora"), ("unconditional", "lora"), ("unconditional", "full")]
        assert [p.lr for p in stage.phases] == [1e-6, 1e-6, 5e-7] and all(p.betas == (0.0, 0.99) for p in stage.phases)
        assert all(p.guidance_scale == 1.0 for p in stage.phases)  # CFG only in the MSE stage
    two, one = c.stages[3], c.stages[4]
    assert [p.teacher for p in two.phases] == ["previous", "skip", "skip"] and teacher_of(c, 3, 1) == ("8step", 8)
    assert one.prediction_type == "sample" and one.phases[0].objective == "x0_convert"
    assert two.phases[0].renoise_weights == (1, 1, 1, 1) and two.phases[1].renoise_weights == (5, 1, 1, 1)


def test_tiny_plan_covers_every_phase_type():
    c = load_config(CONFIGS / "tiny.toml")
    kinds = {(p.objective, p.params) for s in c.stages for p in s.phases}
    assert {
        ("mse", "full"),
        ("conditional", "lora"),
        ("unconditional", "lora"),
        ("unconditional", "full"),
        ("x0_convert", "full"),
        ("conditional", "full"),
    } <= kinds
    assert any(p.teacher == "skip" for s in c.stages for p in s.phases)
    assert c.model.base == "tiny" and c.data.source == "prompts"


def _set(raw, path, value):
    node = raw
    for key in path[:-1]:
        node = node[key]
    if value is DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value


DELETE = object()
BAD = [
    (("bogus",), 1, "bogus: unknown key"),
    (("train", "learning_rate"), 1e-3, "train.learning_rate: unknown key"),
    (("stages", 1, "phases", 0, "loss"), "mse", "stages[1].phases[0].loss: unknown key"),
    (("stages", 0, "student_steps"), 128, "stages[0].student_steps: 128 must be fewer than teacher_steps 128"),
    (("stages", 0, "student_steps"), 256, "stages[0].student_steps: 256 must be fewer"),
    (("stages", 1, "teacher_steps"), 24, "stages[1].teacher_steps: 24 does not halve into student_steps 8"),
    (("stages", 2, "teacher_steps"), 16, "stages[2].teacher_steps: 16 must equal the previous stage's student_steps 8"),
    (("stages", 2, "student_steps"), 3, "stages[2].student_steps: 3 is not a power of two"),
    (("stages", 1, "phases", 0, "lr"), -1.0, "stages[1].phases[0].lr: must be a positive number"),
    (("stages", 1, "phases", 0, "lr"), "fast", "stages[1].phases[0].lr: expected a number"),
    (("stages", 1, "phases", 0, "steps"), 0, "stages[1].phases[0].steps: must be >= 1"),
    (("stages", 1, "phases", 0, "objective"), "gan", "stages[1].phases[0].objective: must be one of"),
    (("stages", 1, "phases", 0, "betas"), [0.9], "stages[1].phases[0].betas: must be two numbers"),
    (("stages", 1, "phases", 2, "params"), "lora", None),  # lora after lora is fine: control case
    (("stages", 0, "phases", 0, "teacher"), "skip", "stages[0].phases[0].teacher: 'skip' needs a stage two levels up"),
    (("stages", 0, "phases", 0, "renoise_weights"), [1, 1, 1, 1], "stages[0].phases[0].renoise_weights: only adversarial"),
    (("stages", 3, "phases", 0, "renoise_weights"), [1, 1], "stages[3].phases[0].renoise_weights: must be four"),
    (("stages", 4, "prediction_type"), "epsilon", "stages[4].phases[0].objective: x0_convert needs"),
    (("stages", 4, "prediction_type"), "v", "stages[4].prediction_type: must be 'epsilon' or 'sample'"),
    (("stages", 1, "name"), "32step", "stages[1].name: '32step' must be unique"),
    (("stages", 1, "student_steps"), DELETE, "stages[1].student_steps: required key is missing"),
    (("data", "on_bad"), "ignore", "data.on_bad: must be 'skip' or 'stop'"),
    (("data", "resolution"), 100, "data.resolution: must be a positive multiple of 8"),
    (("data", "source"), "folder", "data.path: source 'folder' needs a path"),
    (("train", "mixed_precision"), "fp8", "train.mixed_precision: must be one of"),
    (("train", "mixed_precision"), "fp16", "fp16 is refused: its loss scaling does not cover the adversarial G step"),
    (("train", "batch_size"), True, "train.batch_size: expected int"),
    (("train", "gan_updates"), "both", "train.gan_updates: must be one of ('alternating', 'simultaneous'), got 'both'"),
    (("train", "d_warmup_steps"), -1, "train.d_warmup_steps: must be >= 0"),
    (("train", "probe_batches"), 0, "train.probe_batches: must be >= 1"),
    (("stages", 4, "terminal_share"), 1.5, "stages[4].terminal_share: must be in [0, 1]"),
    (("stages", 0, "phases", 0, "anchor_weight"), 1.0, "stages[0].phases[0].anchor_weight: must be >= 0, and only on adversarial phases"),
    (("stages", 3, "phases", 0, "anchor_weight"), -1.0, "stages[3].phases[0].anchor_weight: must be >= 0"),
    (("stages", 0, "phases", 0, "d_steps"), 2, "stages[0].phases[0].d_steps: must be >= 1, and above 1 only on adversarial phases"),
    (("stages", 3, "phases", 0, "d_steps"), 0, "stages[3].phases[0].d_steps: must be >= 1"),
]


@pytest.mark.parametrize("path,value,message", BAD, ids=[".".join(map(str, b[0])) + "=" + repr(b[1]) for b in BAD])
def test_bad_values_are_refused_naming_key_and_reason(path, value, message):
    raw = tiny_raw()
    _set(raw, path, value)
    if message is None:
        assert parse_config(raw).stages[1].phases[2].params == "lora"
        return
    with pytest.raises(ConfigError) as e:
        parse_config(raw)
    assert message in str(e.value)


def test_lora_after_full_phase_is_refused():
    raw = tiny_raw()
    raw["stages"][1]["phases"].append(copy.deepcopy(raw["stages"][1]["phases"][0]))
    with pytest.raises(ConfigError, match=r"stages\[1\]\.phases\[3\]\.params: a LoRA phase cannot follow a full-UNet phase"):
        parse_config(raw)


def test_bad_config_is_refused_before_any_model_loads(tmp_path, monkeypatch, capsys):
    from distill import train

    def forbidden(*args, **kwargs):
        raise AssertionError("a model was loaded for a config that should have been refused")

    monkeypatch.setattr(train, "load_components", forbidden)
    bad = tmp_path / "bad.toml"
    bad.write_text((CONFIGS / "tiny.toml").read_text().replace("student_steps = 8", "student_steps = 64", 1))
    for command in (["train", "--config", str(bad)], ["precompute", "--config", str(bad)], ["plan", "--config", str(bad)]):
        with pytest.raises(SystemExit) as e:
            cli.main(command)
        assert e.value.code == 2
        assert "stages[1].student_steps: 64 must be fewer than teacher_steps 32" in capsys.readouterr().err


def test_plan_prints_the_resolved_plan(capsys):
    cli.main(["plan", "--config", str(CONFIGS / "tiny.toml")])
    out = capsys.readouterr().out
    assert "stage 3 2step: 4 -> 2 steps" in out and "teacher: 8step at 8 steps" in out and "merge LoRA" in out
    assert out.strip() == describe(load_config(CONFIGS / "tiny.toml")).strip()


def test_packaged_plans_are_named_from_any_directory_and_listed(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no distill/configs here
    for name in ("tiny", "tiny.toml", "distill/configs/tiny.toml"):
        cli.main(["plan", "--config", name])
        out = capsys.readouterr().out
        assert "config distill/configs/tiny.toml" in out
        assert "batch 2 x accumulation 1, fp32, LoRA rank 4" in out  # accelerate's "no" printed as the precision it means
    cli.main(["plan", "--list"])
    listed = dict(line.split(maxsplit=1) for line in capsys.readouterr().out.splitlines())
    assert set(listed) == {p.stem for p in CONFIGS.glob("*.toml")} and listed["tiny"].startswith("The SDXL-Lightning plan on the tiny")
    with pytest.raises(SystemExit) as e:
        cli.main(["plan", "--config", "tinny"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: tinny: no such config file; packaged plans") and "shapes, " in err and err.count("\n") == 1


def test_config_diff_names_changed_keys_only():
    a = load_config(CONFIGS / "tiny.toml").to_dict()
    raw = tiny_raw()
    raw["stages"][2]["phases"][1]["lr"] = 0.5
    raw["train"]["output_dir"] = "elsewhere"  # where results go does not change what is trained
    b = parse_config(raw).to_dict()
    assert config_diff(a, b) == ["stages[2].phases[1].lr: checkpoint has 0.001, config has 0.5"]


def test_a_run_saved_before_d_steps_existed_stays_resumable_and_its_stages_reusable():
    """A checkpoint or finished stage recorded without `d_steps` was trained with one D step per G step."""
    config = load_config(CONFIGS / "tiny.toml")
    saved = config.to_dict()
    for stage in saved["stages"]:
        for phase in stage["phases"]:
            del phase["d_steps"]
    assert config_diff(saved, config.to_dict()) == []
    raw = tiny_raw()
    raw["stages"][1]["phases"][0]["d_steps"] = 3
    assert config_diff(saved, parse_config(raw).to_dict()) == ["stages[1].phases[0].d_steps: checkpoint has 1, config has 3"]


def test_gan_updates_decide_adversarial_stages_only():
    """An MSE-only stage trains the same student under either G/D update order, so branching shares it; an adversarial
    stage does not."""
    raw = tiny_raw()
    other = copy.deepcopy(raw)
    other["train"]["gan_updates"] = "simultaneous"
    a, b = parse_config(raw), parse_config(other)
    assert [s.phases[0].objective for s in a.stages[:2]] == ["mse", "conditional"]
    assert lineage(a, 0) == lineage(b, 0)
    assert lineage(a, 1) != lineage(b, 1)


@pytest.mark.parametrize("path", sorted(p.name for p in CONFIGS.glob("*.toml") if p.name not in ("shapes_pretrain.toml", "shapes_finetune.toml")))
def test_no_shipped_plan_lets_g_outrun_its_discriminator(path):
    """G's lr above D's drowns D (on the shapes 2-step stage: D at 2 ln 2 and chance for the whole phase)."""
    config = load_config(CONFIGS / path)
    for stage in config.stages:
        for phase in stage.phases:
            if phase.adversarial:
                assert phase.lr <= (phase.d_lr or phase.lr), (stage.name, phase)
