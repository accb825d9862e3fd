import copy
import sys
from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel

from distill.lora import (
    LORA_TARGET_MODULES,
    add_lora,
    lora_layers,
    lora_state_dict_diffusers,
    merge_lora,
    teacher_context,
    without_lora,
)
from distill.losses import mse_loss
from distill.schedule import alphas_cumprod
from distill.solver import teacher_solve
from distill.student import student_step
from pipelines.architectures import tiny_components
from pipelines.denoiser import unet_output

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the shared tiny inputs beside this file
from tiny_inputs import make_cond  # noqa: E402

ALPHAS_BAR = alphas_cumprod()
EXCLUDED = ("conv_in", "conv_out", "time_embedding", "add_embedding")


@pytest.fixture(scope="module")
def base():
    return tiny_components(0)["unet"]


@pytest.fixture
def lora_unet(base):
    """A copy of the tiny UNet with a rank-4 LoRA whose B is random, so the adapter changes the output."""
    unet = copy.deepcopy(base)
    torch.manual_seed(0)
    add_lora(unet, rank=4, init_lora_weights=False)
    return unet


@pytest.fixture(scope="module")
def inputs():
    return torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1)), make_cond(1)


def test_lora_wraps_every_conv_and_linear_except_the_excluded_ones(base, lora_unet):
    layers = {name for name, m in base.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))}
    expected = {name for name in layers if not name.startswith(EXCLUDED)}
    wrapped = {name for name, _ in lora_layers(lora_unet)}
    assert wrapped == expected
    assert {"conv_in", "conv_out", "time_embedding.linear_1", "add_embedding.linear_2"} <= layers - wrapped
    assert all(any(name == t or name.endswith("." + t) for t in LORA_TARGET_MODULES) for name in wrapped)
    assert len(LORA_TARGET_MODULES) == 14


def test_only_lora_parameters_are_trainable_with_the_requested_rank(lora_unet):
    trainable = {name: p for name, p in lora_unet.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A.student." in n or ".lora_B.student." in n for n in trainable)
    assert all(p.shape[0] == 4 for n, p in trainable.items() if ".lora_A." in n)


def test_teacher_context_runs_the_base_unet_and_restores_the_student(base, lora_unet, inputs):
    x, cond = inputs
    with torch.no_grad():
        base_out = unet_output(base, x, 499, cond)
        student_out = unet_output(lora_unet, x, 499, cond)
        with teacher_context(lora_unet):
            teacher_out = unet_output(lora_unet, x, 499, cond)
        after = unet_output(lora_unet, x, 499, cond)
    assert not torch.allclose(student_out, base_out, atol=1e-3)
    torch.testing.assert_close(teacher_out, base_out)
    torch.testing.assert_close(after, student_out)
    assert all(p.requires_grad for n, p in lora_unet.named_parameters() if "lora_" in n)


def test_merged_equals_unmerged(lora_unet, inputs):
    x, cond = inputs
    with torch.no_grad():
        unmerged = unet_output(lora_unet, x, 749, cond)
        merged_unet = merge_lora(lora_unet)
        merged = unet_output(merged_unet, x, 749, cond)
    assert type(merged_unet) is UNet2DConditionModel
    assert not lora_layers(merged_unet) and not hasattr(merged_unet, "peft_config")
    assert not any("lora" in name for name in merged_unet.state_dict())
    torch.testing.assert_close(merged, unmerged, rtol=1e-4, atol=1e-5)


def test_merge_happens_in_fp32_for_bf16_weights(lora_unet):
    lora_unet.to(torch.bfloat16)
    layer = lora_unet.get_submodule("mid_block.attentions.0.transformer_blocks.0.attn1.to_q")
    w, a, b = (layer.base_layer.weight.float(), layer.lora_A["student"].weight.float(), layer.lora_B["student"].weight.float())
    merged = merge_lora(lora_unet).get_submodule("mid_block.attentions.0.transformer_blocks.0.attn1.to_q")
    assert merged.weight.dtype == torch.bfloat16
    assert torch.equal(merged.weight, (w + b @ a).to(torch.bfloat16))


def test_lora_state_dict_reloads_in_the_stock_pipeline_with_the_same_output(base, lora_unet, inputs, tmp_path):
    """Saved as the exporter does (save_lora_weights adds "unet."), loaded by load_lora_weights: every layer's
    adapter must come back at scale 1, attention layers included."""
    x, cond = inputs
    state = lora_state_dict_diffusers(lora_unet)
    assert len(state) == 2 * len(lora_layers(lora_unet))
    assert not any(key.startswith("unet.") for key in state) and all(".lora_" in key for key in state)
    StableDiffusionXLPipeline.save_lora_weights(tmp_path, unet_lora_layers=state)
    components = tiny_components(0)
    components.pop("vae_tiny")
    pipe = StableDiffusionXLPipeline(**{**components, "unet": copy.deepcopy(base)})
    pipe.load_lora_weights(tmp_path)
    assert {name for name, _ in lora_layers(pipe.unet)} == {name for name, _ in lora_layers(lora_unet)}
    with torch.no_grad():
        torch.testing.assert_close(unet_output(pipe.unet, x, 249, cond), unet_output(lora_unet, x, 249, cond))


def test_without_lora_restores_base_layers(base, lora_unet):
    stripped = without_lora(copy.deepcopy(lora_unet.mid_block))
    assert not lora_layers(stripped)
    stripped_state, base_state = stripped.state_dict(), base.mid_block.state_dict()
    assert list(stripped_state) == list(base_state)
    assert all(torch.equal(stripped_state[name], base_state[name]) for name in base_state)


def test_lora_phase_gradients_reach_only_the_lora(lora_unet, inputs):
    """LoRA phase: teacher = same UNet with adapters off (no grads), student = LoRA; only LoRA params get grads."""
    x, cond = inputs
    with teacher_context(lora_unet):
        target = teacher_solve(lora_unet, x, 999, 499, 4, cond, ALPHAS_BAR)
    x_next, _ = student_step(lora_unet, x, 999, 499, cond, ALPHAS_BAR)
    mse_loss(x_next, target).backward()
    with_grad = {n for n, p in lora_unet.named_parameters() if p.grad is not None}
    trainable = {n for n, p in lora_unet.named_parameters() if p.requires_grad}
    assert with_grad == trainable and all("lora_" in n for n in with_grad)


def test_merge_lands_on_the_stages_fp32_weights_not_their_bf16_rounding():
    """A LoRA phase runs its frozen base in bf16; the merge that follows must start from the fp32 weights the stage
    began with, or the previous full phase's small updates are rounded away at every stage boundary."""
    from distill.config import PhaseConfig, StageConfig
    from distill.stages import shape_student
    from pipelines.architectures import tiny_components

    student = tiny_components()["unet"].float()
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1e-4 * torch.randn_like(p))  # updates far below bf16's resolution at these magnitudes
    start = {k: v.clone() for k, v in student.state_dict().items()}
    stage = StageConfig("s", 8, 4, (PhaseConfig("conditional", "lora", 1, 1e-3), PhaseConfig("unconditional", "full", 1, 1e-3)))
    student, fp32_base = shape_student(student, stage, 0, 4, torch.bfloat16, seed=0)
    assert any(p.dtype == torch.bfloat16 for p in student.parameters())  # the LoRA phase's frozen base is bf16
    assert not hasattr(student, "fp32_base")  # kept by the caller, so a deepcopy of the student does not copy it
    merged, left = shape_student(student, stage, 1, 4, torch.bfloat16, seed=0, fp32_base=fp32_base)  # LoRA B starts at zero: merge adds nothing
    assert left is None
    after = merged.state_dict()
    assert set(after) == set(start)
    for key, value in start.items():
        torch.testing.assert_close(after[key], value, rtol=0, atol=0)


@pytest.mark.parametrize("shape", [(24, 40), (16, 8, 3, 3)])
def test_low_rank_factors_are_the_best_rank_r_approximation(shape):
    from distill.lora import low_rank_factors

    delta = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    matrix = delta.reshape(shape[0], -1)
    singular = torch.linalg.svdvals(matrix)
    for rank in (1, 4, 64):
        a, b = low_rank_factors(delta, rank)
        r = min(rank, singular.numel())
        assert a.shape[0] == r and b.shape[:2] == (shape[0], r)
        error = torch.linalg.matrix_norm(matrix - b.reshape(shape[0], r) @ a.reshape(r, -1))
        torch.testing.assert_close(error, singular[r:].pow(2).sum().sqrt(), atol=1e-4, rtol=1e-4)  # Eckart-Young
