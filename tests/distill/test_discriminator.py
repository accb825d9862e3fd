import copy
import sys
from pathlib import Path

import pytest
import torch

from distill.discriminator import Discriminator, HeadBlock, group_count, renoise_timesteps
from distill.lora import add_lora
from distill.losses import d_loss_nonsaturating, g_loss_nonsaturating
from distill.schedule import alphas_cumprod
from distill.student import student_step
from pipelines.architectures import tiny_components

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the shared tiny inputs beside this file
from tiny_inputs import make_cond  # noqa: E402

ALPHAS_BAR = alphas_cumprod()
ENCODER = ("conv_in", "time_embedding", "add_embedding", "down_blocks", "mid_block")


@pytest.fixture(scope="module")
def teacher():
    return tiny_components(0)["unet"].requires_grad_(False)


def encoder_state(module):
    return {k: v for k, v in module.state_dict().items() if k.startswith(ENCODER)}


def test_backbone_starts_as_the_teachers_encoder_and_heads_are_fresh(teacher):
    d1, d2 = Discriminator.from_unet(teacher), Discriminator.from_unet(teacher)
    expected = encoder_state(teacher)
    for disc in (d1, d2):
        got = encoder_state(disc)
        assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in expected)
        assert not any(k.startswith(("up_blocks", "conv_out", "conv_norm_out")) for k in disc.state_dict())
    head1, head2 = d1.head.state_dict(), d2.head.state_dict()
    weights = [k for k in head1 if k.endswith("conv.weight")]
    assert weights and all(not torch.equal(head1[k], head2[k]) for k in weights)
    # A copy, not shared storage: training D must never move the teacher.
    assert d1.conv_in.weight.data_ptr() != teacher.conv_in.weight.data_ptr()


def test_backbone_features_are_the_unets_mid_block_output(teacher):
    captured = {}
    hook = teacher.mid_block.register_forward_hook(lambda module, args, out: captured.update(mid=out))
    x, cond = torch.randn(2, 4, 8, 8), make_cond(2)
    t = torch.tensor([749, 10])
    with torch.no_grad():
        teacher(x, t, encoder_hidden_states=cond["encoder_hidden_states"], added_cond_kwargs={"text_embeds": cond["text_embeds"], "time_ids": cond["time_ids"]})
        hook.remove()
        features = Discriminator.from_unet(teacher).features(x, t, cond)
    torch.testing.assert_close(features, captured["mid"])


def test_backbone_from_a_lora_unet_uses_the_base_weights(teacher):
    with_lora = copy.deepcopy(teacher)
    add_lora(with_lora, rank=4, init_lora_weights=False)
    disc = Discriminator.from_unet(with_lora)
    expected, got = encoder_state(teacher), encoder_state(disc)
    assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in expected)


@pytest.mark.parametrize("size", [8, 32])
@pytest.mark.parametrize("conditional", [True, False])
def test_logits_per_sample_at_tiny_and_larger_latents(teacher, size, conditional):
    disc = Discriminator.from_unet(teacher, conditional=conditional)
    x_next, x_t = torch.randn(3, 4, size, size), torch.randn(3, 4, size, size)
    logits = disc(x_next, torch.tensor([249, -1, 499]), make_cond(3), x_t=x_t, t=999)
    assert logits.shape == (3,) and torch.isfinite(logits).all()
    if conditional:  # x_t is part of the question a conditional D answers
        assert not torch.allclose(logits, disc(x_next, torch.tensor([249, -1, 499]), make_cond(3), x_t=x_t + 1, t=999))
        with pytest.raises(ValueError, match="x_t"):
            disc(x_next, 249, make_cond(3))


def test_d_step_trains_every_d_parameter_and_never_the_student(teacher):
    """D step: student output detached; all D parameters (head blocks included at 8x8) receive gradients."""
    student = copy.deepcopy(teacher).requires_grad_(True)
    disc = Discriminator.from_unet(teacher)
    x_t, cond = torch.randn(2, 4, 8, 8), make_cond(2)
    fake, _ = student_step(student, x_t, 999, 499, cond, ALPHAS_BAR)
    real = torch.randn(2, 4, 8, 8)
    logits = disc(torch.cat([real, fake.detach()]), 499, {k: torch.cat([v, v]) for k, v in cond.items()}, x_t=torch.cat([x_t, x_t]), t=999)
    d_loss_nonsaturating(*logits.chunk(2)).backward()
    assert all(p.grad is not None for p in disc.parameters())
    assert all(p.grad is None for p in student.parameters())
    assert all(p.grad is None for p in teacher.parameters())


def test_g_step_reaches_the_student_through_a_frozen_d(teacher):
    student = copy.deepcopy(teacher).requires_grad_(True)
    disc = Discriminator.from_unet(teacher, conditional=False).requires_grad_(False)
    x_t, cond = torch.randn(2, 4, 8, 8), make_cond(2)
    fake, _ = student_step(student, x_t, 999, 499, cond, ALPHAS_BAR)
    g_loss_nonsaturating(disc(fake, 499, cond)).backward()
    assert all(p.grad is not None for p in student.parameters())
    assert all(p.grad is None for p in disc.parameters())


def test_frozen_backbone_option_trains_only_the_head(teacher):
    disc = Discriminator.from_unet(teacher, trainable_backbone=False)
    trainable = {n.split(".")[0] for n, p in disc.named_parameters() if p.requires_grad}
    assert trainable == {"head", "to_logit"}
    logits = disc(torch.randn(1, 4, 8, 8), 249, make_cond(1), x_t=torch.randn(1, 4, 8, 8), t=499)
    logits.sum().backward()
    assert all((p.grad is not None) == p.requires_grad for p in disc.parameters())


def test_head_block_halves_until_the_minimum_size_then_keeps_it():
    block = HeadBlock(8, 16, min_size=4)
    assert block(torch.randn(1, 8, 16, 16)).shape == (1, 16, 8, 8)
    assert block(torch.randn(1, 8, 8, 8)).shape == (1, 16, 4, 4)
    assert block(torch.randn(1, 8, 4, 4)).shape == (1, 16, 4, 4)
    assert block(torch.randn(1, 8, 2, 2)).shape == (1, 16, 2, 2)


def test_group_count():
    assert group_count(1280) == 32 and group_count(64) == 32 and group_count(48) == 16 and group_count(4) == 4


def test_renoise_timesteps_follow_the_weights():
    g = torch.Generator().manual_seed(0)
    t = renoise_timesteps(4000, weights=(5, 1, 1, 1), generator=g)
    assert t.shape == (4000,) and set(t.tolist()) == {9, 249, 499, 749}
    assert abs((t == 9).float().mean().item() - 5 / 8) < 0.03
    assert set(renoise_timesteps(50, weights=(0, 0, 1, 0)).tolist()) == {499}
    with pytest.raises(ValueError):
        renoise_timesteps(4, weights=(1, 1))
