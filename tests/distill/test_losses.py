import math

import pytest
import torch

from distill.losses import d_loss_nonsaturating, g_loss_nonsaturating, grads_finite, mse_loss


def test_mse_loss():
    assert mse_loss(torch.ones(2, 3), torch.zeros(2, 3)).item() == 1.0
    assert mse_loss(torch.ones(2, dtype=torch.bfloat16), torch.ones(2)).dtype == torch.float32


def test_nonsaturating_losses_match_their_formulas():
    real, fake = torch.tensor([2.0, -1.0]), torch.tensor([0.5, -3.0])
    sig = torch.sigmoid
    expected_d = (-torch.log(sig(real))).mean() - torch.log(1 - sig(fake)).mean()
    torch.testing.assert_close(d_loss_nonsaturating(real, fake), expected_d)
    torch.testing.assert_close(g_loss_nonsaturating(fake), (-torch.log(sig(fake))).mean())
    # At D's indifference point (logit 0) both players pay log 2 per term.
    assert d_loss_nonsaturating(torch.zeros(3), torch.zeros(3)).item() == pytest.approx(2 * math.log(2))


def test_losses_stay_finite_for_confident_logits():
    """softplus, not log(sigmoid): a saturated D must not produce inf/NaN losses or gradients."""
    logits = torch.tensor([-200.0, 200.0], requires_grad=True)
    loss = d_loss_nonsaturating(logits, logits) + g_loss_nonsaturating(logits)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


def test_grads_finite_catches_nan_and_inf():
    params = [torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(1, dtype=torch.bfloat16))]
    params[0].grad = torch.ones(3)
    assert grads_finite(params)  # params without a grad are ignored
    params[1].grad = torch.tensor([1.0, float("nan")])
    assert not grads_finite(params)
    params[1].grad = torch.zeros(2)
    params[2].grad = torch.tensor([float("-inf")], dtype=torch.bfloat16)
    assert not grads_finite(params)
    assert grads_finite([])


def test_the_anchor_weight_falls_linearly_to_zero_over_the_phase():
    from distill.losses import annealed_weight

    assert [annealed_weight(2.0, k, 4) for k in range(4)] == [2.0, 1.5, 1.0, 0.5]
    assert annealed_weight(0.0, 0, 4) == 0.0
