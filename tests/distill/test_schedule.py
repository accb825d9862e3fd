import pytest
import torch

from distill.schedule import add_noise, alpha_sigma, alphas_cumprod, student_jump, teacher_grid, training_timesteps

ALPHAS_BAR = alphas_cumprod()


def test_grids_match_reference_and_nest():
    assert teacher_grid(1) == [999]
    assert teacher_grid(2) == [999, 499]
    assert teacher_grid(4) == [999, 749, 499, 249]
    assert teacher_grid(8) == [999, 874, 749, 624, 499, 374, 249, 124]
    for steps in (1, 2, 4, 8, 16, 32, 64):
        assert set(teacher_grid(steps)) <= set(teacher_grid(2 * steps)), steps


@pytest.mark.parametrize("teacher, student", [(128, 32), (32, 8), (8, 4), (4, 2), (2, 1), (8, 2), (4, 1)])
def test_student_jump_is_n_teacher_steps_on_the_grid(teacher, student):
    grid = teacher_grid(teacher)
    n = teacher // student
    for t in teacher_grid(student):
        j = grid.index(t) + n
        assert student_jump(t, teacher, student) == (grid[j] if j < len(grid) else -1)


def test_student_jump_values_and_off_grid_start():
    assert student_jump(999, 8, 4) == 749
    assert student_jump(749, 4, 2) == 249
    assert student_jump(249, 4, 2) == -1
    assert student_jump(749, 2, 1) == -1  # 1-step stage trains at 749, which a 2-step teacher's grid lacks
    assert student_jump(968, 128, 32) == 937  # T/32 = 31.25: the snap keeps it on the rounded grid
    with pytest.raises(ValueError):
        student_jump(999, 4, 4)
    with pytest.raises(ValueError):
        student_jump(999, 8, 3)


def test_training_timesteps():
    assert training_timesteps(1) == training_timesteps(2) == [999, 749, 499, 249]
    assert training_timesteps(4) == [999, 749, 499, 249]
    assert training_timesteps(8) == teacher_grid(8)


def test_alpha_sigma_shape_and_clean_level():
    alpha, sigma = alpha_sigma(ALPHAS_BAR, torch.tensor([0, 500, 999, -1]))
    assert alpha.shape == sigma.shape == (4, 1, 1, 1)
    assert torch.allclose(alpha**2 + sigma**2, torch.ones(4, 1, 1, 1))
    assert torch.allclose(alpha[1].squeeze() ** 2, ALPHAS_BAR[500])
    assert alpha[3].item() == 1.0 and sigma[3].item() == 0.0


def test_add_noise_is_pure_noise_at_terminal_t_only():
    x0, noise = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    t = torch.tensor([999, 500, 10])
    x_t = add_noise(x0, noise, t, ALPHAS_BAR)
    assert torch.equal(x_t[0], noise[0])
    alpha, sigma = alpha_sigma(ALPHAS_BAR, t)
    assert torch.allclose(x_t[1:], (alpha * x0 + sigma * noise)[1:])
    # The stock schedule at 999 would still leak signal: the fix is what makes x_t[0] differ from it.
    assert not torch.allclose(x_t[0], (alpha * x0 + sigma * noise)[0])


def test_add_noise_keeps_the_input_dtype():
    x0, eps = torch.randn(1, 4, 8, 8, dtype=torch.bfloat16), torch.randn(1, 4, 8, 8, dtype=torch.bfloat16)
    assert add_noise(x0, eps, 500, ALPHAS_BAR).dtype == torch.bfloat16
