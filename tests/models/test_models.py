import pytest
import torch

from dmlight.models.layers import OffsetL2
from dmlight.models.networks import ACTIVATIONS, ARCHS, ConfigError, build_model, paper_name, unit_counts

PAPER_MODELS = {  # (arch, activation, head_bias) -> the name the papers use
    ("mlp", "relu", True): "ReLU_Bias", ("mlp", "abs", True): "Abs_Bias",  # USE
    ("mlp", "relu", False): "ReLU", ("mlp", "abs", False): "Abs",  # LEARN six
    ("mlp2", "relu", False): "ReLU2", ("mlp2", "abs", False): "Abs2",
    ("mlp2_neg", "relu", False): "ReLU2-Neg", ("mlp2_neg", "abs", False): "Abs2-Neg",
    ("mlp2", "relu", True): "ReLU2_Bias", ("mlp2_neg", "abs", True): "Abs2-Neg_Bias",  # bias ablation
    ("offset_l2", "relu", False): "ReLU-L2", ("offset_l2_neg", "relu", False): "ReLU-L2-Neg",
    ("offset_l2", "abs", False): "Abs-L2", ("offset_l2_neg", "abs", False): "Abs-L2-Neg",
}


@pytest.mark.parametrize("point,name", PAPER_MODELS.items(), ids=PAPER_MODELS.values())
def test_paper_models_build_with_their_names(point, name):
    net = build_model(*point)
    assert net.name == name == paper_name(*point)
    assert net(torch.rand(7, 784) * 255).shape == (7, 10)


def test_parts_are_composed_not_copied():
    relu2neg = build_model("mlp2_neg", "relu", False)
    assert [n for n, _ in relu2neg.named_children()] == [
        "hidden", "activation", "head", "output_activation", "neg"]
    assert relu2neg.head.bias is None
    assert build_model("mlp", "relu", True).head.bias is not None
    post = build_model("offset_l2", "abs", site="post_activation")
    assert [n for n, _ in post.named_children()] == ["hidden", "activation", "head"]
    assert post.site == "post_activation" and isinstance(post.head, OffsetL2)


def test_negated_output_is_non_positive_and_intensity_output_non_negative():
    torch.manual_seed(0)
    x = torch.rand(50, 784) * 255
    assert (build_model("mlp2", "abs")(x) >= 0).all()
    assert (build_model("mlp2_neg", "relu")(x) <= 0).all()
    assert (build_model("offset_l2_neg", "relu")(x) < 0).all()


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_every_activation_works_in_every_arch(activation):
    for arch in ARCHS:
        assert build_model(arch, activation)(torch.zeros(2, 784)).shape == (2, 10)


def test_unknown_names_list_the_accepted_ones():
    with pytest.raises(ConfigError, match=r"unknown arch 'mlp3'; accepted: mlp, mlp2, mlp2_neg, offset_l2"):
        build_model("mlp3", "relu")
    with pytest.raises(ConfigError, match=r"unknown activation 'swish'; accepted: relu, abs"):
        build_model("mlp", "swish")
    with pytest.raises(ConfigError, match="head_bias=false"):
        build_model("offset_l2", "relu", head_bias=True)


def test_unit_counts_dead_and_rare_on_a_hand_made_layer():
    net = build_model("mlp", "relu", hidden=4)
    with torch.no_grad():
        net.hidden.weight.zero_()
        net.hidden.bias.copy_(torch.tensor([1.0, -1.0, 0.0, 0.0]))
        net.hidden.weight[3, 0] = 1.0  # unit 3 fires only where x[:, 0] > 0
    x = torch.zeros(200, 784)
    x[0, 0] = 1.0  # 1 of 200 samples = 0.5% < 1%: rare
    counts = unit_counts(net, x)["activation"]
    assert counts == {"n": 4, "dead": 2, "rare": 1}  # units 1 (negative) and 2 (zero) are dead
