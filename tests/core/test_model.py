"""The fusion heads by hand, and the concatenation head's parameter names and initialisation."""

import pytest
import torch
from torch import nn


@pytest.mark.parametrize("fusion", ["concat", "sum", "gated", "film"])
def test_fusion_heads_by_hand(tiny, fusion):
    from dus_gym.core.model import MultimodalNet

    torch.manual_seed(0)
    net = MultimodalNet(tiny, fusion=fusion)
    h_a, h_b = torch.randn(4, 5), torch.randn(4, 5)
    f = net.fusion
    if fusion == "concat":
        want = torch.cat([h_a, h_b], 1) @ f.weight.T + f.bias
    elif fusion == "sum":
        want = h_a @ f.parts[0].weight.T + f.parts[0].bias + h_b @ f.parts[1].weight.T + f.parts[1].bias
    elif fusion == "gated":  # W_o (sigmoid(W_g h_a + b_g) * (W_v h_b + b_v)) + b_o
        gate = 1 / (1 + torch.exp(-(h_a @ f.gate.weight.T + f.gate.bias)))
        want = (gate * (h_b @ f.value.weight.T + f.value.bias)) @ f.out.weight.T + f.out.bias
    else:  # (gamma, beta) = W_f h_a + b_f; W_o (gamma * h_b + beta) + b_o
        film = h_a @ f.film.weight.T + f.film.bias
        want = (film[:, :5] * h_b + film[:, 5:]) @ f.out.weight.T + f.out.bias
    assert torch.allclose(net.fuse([h_a, h_b]), want, atol=1e-6)


def test_concat_keeps_its_parameter_names_and_initialisation(tiny):
    from dus_gym.core.model import MultimodalNet

    torch.manual_seed(5)
    net = MultimodalNet(tiny)
    torch.manual_seed(5)
    encoders = [tiny.encoders[m]() for m in tiny.modalities]
    heads = [nn.Linear(5, 3) for _ in tiny.modalities]
    fusion = nn.Linear(10, 3)  # the order of construction (and so of the random draws) is unchanged
    assert torch.equal(net.fusion.weight, fusion.weight) and torch.equal(net.heads["b"].bias, heads[1].bias)
    assert torch.equal(net.encoders["a"].lin.weight, encoders[0].lin.weight)
    assert {"fusion.weight", "fusion.bias"} <= set(net.state_dict())
