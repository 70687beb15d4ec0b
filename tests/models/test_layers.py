import math

import pytest
import torch

from dmlight.perturbation.engine import perturb
from dmlight.models.layers import (Abs, Neg, OffsetL2, offset_l2, offset_l2_block_rows,
                            stacked_input_grad, stacked_linear, stacked_weight_grad)


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


def test_perturb_formula_per_unit_on_features_and_conv_channels():
    inf = math.inf
    scale, offset = torch.tensor([2.0, 1.0, 1.0, 1.0]), torch.ones(4)
    lower, upper = torch.full((4,), -inf), torch.tensor([9.0, 9.0, 9.0, 0.5])
    assert perturb(torch.ones(1, 4), scale, offset, lower, upper).tolist() == [[3.0, 2.0, 2.0, 0.5]]
    # A conv map (n, channels, h, w): channel c gets unit c's values at every position.
    maps = torch.ones(2, 4, 3, 5)
    out = perturb(maps, scale, offset, lower, upper)
    assert out.shape == maps.shape
    assert [out[:, c].unique().tolist() for c in range(4)] == [[3.0], [2.0], [2.0], [0.5]]


def test_perturb_at_identity_values_is_exact():
    # A sweep computes scale*x+offset even at the identity point: it must give x bit for bit.
    x = torch.randn(100, 3) * 1e3
    identity = (torch.ones(3), torch.zeros(3), torch.full((3,), -math.inf), torch.full((3,), math.inf))
    assert torch.equal(perturb(x, *identity), x)


def _linear_grads(x, weight, bias, grad_out, input_grad: bool):
    """Output and gradients of nn.Linear's own ops (F.linear) for one member."""
    x, weight = x.clone().requires_grad_(input_grad), weight.clone().requires_grad_()
    bias = None if bias is None else bias.clone().requires_grad_()
    out = torch.nn.functional.linear(x, weight, bias)
    out.backward(grad_out)
    return out, x.grad, weight.grad, None if bias is None else bias.grad


@pytest.mark.parametrize("n", [7, 700])  # 7 rows: where MKL's batched and single products round apart
@pytest.mark.parametrize("shared", [True, False], ids=["shared-input", "stacked-input"])
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no-bias"])
def test_stacked_linear_is_bit_identical_to_each_members_linear(shared, with_bias, n):
    """On a CPU every member's output and gradients are exactly nn.Linear's: an ensemble member
    then trains to the very numbers of its solo run."""
    g = torch.Generator().manual_seed(0)
    members, d_in, d_out = 3, 784 if shared else 128, 128 if shared else 10
    x = torch.rand(n, d_in, generator=g) * 255 if shared else torch.relu(torch.randn(members, n, d_in, generator=g))
    x.requires_grad_(not shared)
    weight = (torch.randn(members, d_out, d_in, generator=g) * 0.05).requires_grad_()
    bias = (torch.randn(members, d_out, generator=g) * 0.1).requires_grad_() if with_bias else None
    grad_out = torch.randn(members, n, d_out, generator=g) * 1e-3
    out = stacked_linear(x, weight, bias)
    out.backward(grad_out)
    assert out.shape == (members, n, d_out)
    for m in range(members):
        want, want_dx, want_dw, want_db = _linear_grads(x if shared else x[m].detach(), weight[m].detach(),
                                                        None if bias is None else bias[m].detach(), grad_out[m],
                                                        input_grad=not shared)
        assert torch.equal(out[m], want) and torch.equal(weight.grad[m], want_dw)
        if with_bias:
            assert torch.equal(bias.grad[m], want_db)
        if not shared:
            assert torch.equal(x.grad[m], want_dx)
    assert shared == (x.grad is None)  # the shared input (the data) gets no gradient


def test_the_batched_gradients_used_on_a_gpu_agree_with_the_exact_ones():
    """GPUs take one batched product per gradient: the same numbers up to rounding."""
    g = torch.Generator().manual_seed(1)
    grad = torch.randn(4, 500, 10, generator=g)
    for h in (torch.randn(500, 128, generator=g), torch.randn(4, 500, 128, generator=g)):
        exact, batched = stacked_weight_grad(grad, h, exact=True), stacked_weight_grad(grad, h, exact=False)
        assert exact.shape == batched.shape == (4, 10, 128)
        torch.testing.assert_close(batched, exact, rtol=1e-5, atol=1e-4)  # sums of 500 terms ~ 20
    weight = torch.randn(4, 10, 128, generator=g)
    exact, batched = stacked_input_grad(grad, weight, exact=True), stacked_input_grad(grad, weight, exact=False)
    assert exact.shape == (4, 500, 128)
    torch.testing.assert_close(batched, exact, rtol=1e-5, atol=1e-5)


def test_offset_l2_stacked_over_members_equals_each_members_layer():
    torch.manual_seed(0)
    layers = [OffsetL2(6, 3) for _ in range(2)]
    with torch.no_grad():
        for layer in layers:
            layer.alpha.uniform_(0.5, 2.0)
    h = torch.randn(2, 9, 6)
    stacked = offset_l2(h, torch.stack([l.mu for l in layers]), torch.stack([l.alpha for l in layers]))
    assert stacked.shape == (2, 9, 3)
    assert all(torch.equal(stacked[m], layers[m](h[m])) for m in range(2))


@pytest.mark.parametrize("block_rows", [1, 7, None])
def test_offset_l2_gradients_match_finite_differences(block_rows):
    """The blocked layer writes its own backward pass: check it against finite differences."""
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(23, 6, generator=g, dtype=torch.float64) * 3).requires_grad_()
    mu = torch.randn(4, 6, generator=g, dtype=torch.float64).requires_grad_()
    alpha = (torch.rand(4, 6, generator=g, dtype=torch.float64) + 0.5).requires_grad_()
    assert torch.autograd.gradcheck(lambda *t: offset_l2(*t, block_rows), (x, mu, alpha))
    stacked = [t.detach()[None].expand(3, *t.shape).clone().requires_grad_() for t in (x, mu, alpha)]
    assert torch.autograd.gradcheck(lambda *t: offset_l2(*t, block_rows), stacked)


def test_offset_l2_blocks_give_the_plain_formulas_numbers():
    """Rows are independent: blocking leaves the output exact; gradients agree with autograd
    through the plain formula up to float rounding (the sums over rows are grouped by block)."""
    torch.manual_seed(0)
    x = (torch.relu(torch.randn(1000, 128)) * 40).requires_grad_()
    mu, alpha = (torch.randn(10, 128) * 0.1).requires_grad_(), (torch.rand(10, 128) + 0.5).requires_grad_()
    grad_y = torch.randn(1000, 10)
    diff = x.unsqueeze(-2) - mu
    plain = torch.sqrt(torch.clamp((alpha * diff * diff).sum(-1), min=1e-12))
    want = torch.autograd.grad(plain, (x, mu, alpha), grad_y)
    for block_rows in (64, 1000):
        out = offset_l2(x, mu, alpha, block_rows)
        assert torch.equal(out, plain)
        for got, ref in zip(torch.autograd.grad(out, (x, mu, alpha), grad_y), want):
            torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6 * ref.abs().max().item())


def test_offset_l2_has_a_zero_gradient_where_the_distance_is_floored():
    mu, alpha = torch.zeros(1, 3, requires_grad=True), torch.ones(1, 3, requires_grad=True)
    x = torch.zeros(2, 3, requires_grad=True)
    offset_l2(x, mu, alpha).sum().backward()
    assert torch.equal(x.grad, torch.zeros(2, 3)) and torch.equal(mu.grad, torch.zeros(1, 3))


def test_offset_l2_blocks_fit_a_cpu_cache_and_bound_gpu_memory():
    row = 4 * 10 * 128  # one row's float32 terms for 10 prototypes of 128 units
    assert offset_l2_block_rows("cpu", row) == 204  # ~1 MB
    assert offset_l2_block_rows("cuda:0", row) == 52428  # ~256 MB: full MNIST's 60,000 rows in two blocks
    assert offset_l2_block_rows("cuda", 20 * row) == 2621  # a 20-member stack: blocks shrink, memory stays bounded
    assert offset_l2_block_rows("cpu", 10**9) == 1


@pytest.mark.parametrize("exact", [True, False], ids=["cpu-per-member", "gpu-batched"])
def test_stacked_linear_gradients_match_finite_differences(exact, monkeypatch):
    """Both backward branches, for a shared input that needs a gradient too (the sum over
    members) and for a stacked one, against float64 finite differences."""
    import dmlight.models.layers as layers

    real = layers.stacked_weight_grad, layers.stacked_input_grad
    monkeypatch.setattr(layers, "stacked_weight_grad", lambda g, h, _: real[0](g, h, exact))
    monkeypatch.setattr(layers, "stacked_input_grad", lambda g, w, _: real[1](g, w, exact))
    g = torch.Generator().manual_seed(2)
    weight = torch.randn(3, 4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    for h in (torch.randn(6, 5, generator=g, dtype=torch.float64, requires_grad=True),
              torch.randn(3, 6, 5, generator=g, dtype=torch.float64, requires_grad=True)):
        assert torch.autograd.gradcheck(stacked_linear, (h, weight, bias))
        assert torch.autograd.gradcheck(lambda h, w: stacked_linear(h, w, None), (h, weight))
