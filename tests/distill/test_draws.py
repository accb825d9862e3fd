"""What one training batch is made of: a timestep per sample (so one batch holds several), a jump target per sample,
the 1-step stage's share of t = 999, and the teacher's solves grouped by t, each sample getting its own group's."""

import sys
from pathlib import Path

import torch

from distill import solver as distill_solver
from distill import steps as distill_steps
from distill.config import StageConfig
from distill.schedule import alphas_cumprod, draw_timesteps, student_jump, training_timesteps
from pipelines.architectures import tiny_components

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiny_inputs import tiny_latents  # noqa: E402

ALPHAS_BAR = alphas_cumprod()


def test_a_batch_holds_several_timesteps_each_with_its_own_jump():
    stage = StageConfig("2step", 4, 2, ())
    x_t, t, t_next, cond = distill_steps.draw_batch(tiny_latents(), stage, 16, torch.Generator().manual_seed(0), ALPHAS_BAR, "cpu")
    assert t.shape == t_next.shape == (16,) and len(set(t.tolist())) > 1
    assert set(t.tolist()) <= set(training_timesteps(2))
    assert t_next.tolist() == [student_jump(s, 4, 2) for s in t.tolist()]
    assert all(v.shape[0] == 16 for v in cond.values())


def test_terminal_share_puts_that_share_of_draws_at_999_and_the_rest_on_the_grid_below():
    grid = training_timesteps(1)
    t = draw_timesteps(grid, 4000, torch.Generator().manual_seed(0), terminal_share=0.5)
    share = float((t == 999).float().mean())
    assert 0.47 < share < 0.53, share
    assert set(t[t != 999].tolist()) == {749, 499, 249}
    uniform = draw_timesteps(grid, 4000, torch.Generator().manual_seed(0))
    assert 0.22 < float((uniform == 999).float().mean()) < 0.28  # the paper's grid alone: a quarter at 999
    assert draw_timesteps(grid, 8, torch.Generator(), terminal_share=1.0).tolist() == [999] * 8


def test_the_teachers_solves_are_grouped_by_t_and_land_in_batch_order(monkeypatch):
    teacher = tiny_components(0)["unet"].eval()
    stage = StageConfig("2step", 4, 2, ())
    x_t, t, t_next, cond = distill_steps.draw_batch(tiny_latents(), stage, 12, torch.Generator().manual_seed(3), ALPHAS_BAR, "cpu")
    calls, solve = [], distill_solver.teacher_solve

    def counting(unet, x, start, end, *args):
        calls.append((start, end, len(x)))
        return solve(unet, x, start, end, *args)

    monkeypatch.setattr(distill_solver, "teacher_solve", counting)
    together = distill_solver.teacher_solve_per_sample(teacher, x_t, t, t_next, 4, cond, ALPHAS_BAR)
    assert sorted(c[:2] for c in calls) == sorted({(a, b) for a, b in zip(t.tolist(), t_next.tolist())})  # one solve per t
    assert sum(c[2] for c in calls) == 12
    for i in (0, 5, 11):  # each sample alone gets what it got in its group
        alone = solve(teacher, x_t[i : i + 1], int(t[i]), int(t_next[i]), 4, {k: v[i : i + 1] for k, v in cond.items()}, ALPHAS_BAR)
        torch.testing.assert_close(together[i : i + 1], alone, atol=1e-5, rtol=1e-4)
