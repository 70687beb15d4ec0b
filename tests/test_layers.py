import math

import pytest
import torch

from dmlight.layers import Abs, Neg, OffsetL2, Perturbation


def test_abs_and_neg():
    x = torch.tensor([[-2.0, 0.0, 3.5]])
    assert Abs()(x).tolist() == [[2.0, 0.0, 3.5]]
    assert Neg()(x).tolist() == [[2.0, -0.0, -3.5]]


def test_offset_l2_matches_its_formula_computed_by_hand():
    torch.manual_seed(0)
    layer = OffsetL2(5, 3)
    with torch.no_grad():
        layer.alpha.copy_(torch.rand(3, 5) + 0.5)
    x = torch.randn(4, 5)
    out = layer(x)
    for n in range(4):
        for j in range(3):
            s = sum(layer.alpha[j, i].item() * (x[n, i].item() - layer.mu[j, i].item()) ** 2 for i in range(5))
            assert out[n, j].item() == pytest.approx(math.sqrt(max(s, 1e-12)), rel=1e-5)


def test_offset_l2_weights_by_alpha_not_alpha_squared_and_floors_at_1e_minus_12():
    layer = OffsetL2(2, 1)
    with torch.no_grad():
        layer.mu.zero_()
        layer.alpha.fill_(4.0)
    assert layer(torch.tensor([[1.0, 0.0]])).item() == pytest.approx(2.0)  # sqrt(4*1), not sqrt(16*1)
    assert layer(torch.zeros(1, 2)).item() == pytest.approx(1e-6)  # sqrt(1e-12): the gradient stays finite


def test_offset_l2_init():
    torch.manual_seed(0)
    layer = OffsetL2(128, 10)
    assert torch.equal(layer.alpha, torch.ones(10, 128))
    assert layer.mu.std().item() == pytest.approx(0.1, abs=0.01)
    assert abs(layer.mu.mean().item()) < 0.01


def test_perturbation_is_exactly_identity_until_set():
    p = Perturbation(4)
    x = torch.randn(10, 4) * 1e3
    assert p.is_identity and torch.equal(p(x), x)
    p.set(scale=torch.tensor([2.0, 1.0, 1.0, 1.0]), offset=1.0, upper=torch.tensor([9.0, 9.0, 9.0, 0.5]))
    y = p(torch.ones(1, 4))
    assert y.tolist() == [[3.0, 2.0, 2.0, 0.5]]
    p.reset()
    assert p.is_identity and torch.equal(p(x), x)


def test_perturbation_arithmetic_at_identity_values_is_also_exact():
    # The sweep computes scale*x+offset even at the identity point: it must give x bit for bit.
    p = Perturbation(3)
    p.set(scale=1.0, offset=0.0)
    x = torch.randn(100, 3)
    assert not p.is_identity and torch.equal(p(x), x)


def test_perturbation_rejects_unknown_values():
    with pytest.raises(ValueError, match="accepted: .*offset"):
        Perturbation(2).set(shift=1.0)


def test_perturbation_buffers_stay_out_of_checkpoints():
    assert Perturbation(3).state_dict() == {}
