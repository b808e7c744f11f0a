from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hemaflow.core.errors import HemaflowError
from hemaflow.lib.nets import (
    FTTransformer,
    ImageNet,
    MaskGuided,
    MultiModalNet,
    TabularNet,
    create_backbone,
    first_conv,
    mask_channels,
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _batch(seed=0, size=32):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(2, 3, size, size, generator=g)
    m = torch.randint(0, 3, (2, size, size), generator=g, dtype=torch.uint8)
    return x, m


@pytest.mark.parametrize("name", ["test_resnet", "test_vit", "test_convnext"])
@pytest.mark.parametrize("mode", ["valve", "channel", "spatial"])
def test_mask_attention_is_an_exact_noop_at_init(name, mode):
    x, m = _batch()
    torch.manual_seed(0)
    plain = create_backbone(name, num_classes=3, img_size=32).eval()
    guided = MaskGuided(create_backbone(name, num_classes=3, img_size=32), mode).eval()
    guided.backbone.load_state_dict(plain.state_dict())
    with torch.no_grad():
        a = plain(x)
        b = guided(x, m)
        c = guided(x, torch.zeros_like(m))
    assert torch.equal(a, b)  # bit for bit, whatever the mask
    assert torch.equal(a, c)


def test_valve_learns_and_then_uses_the_mask():
    x, m = _batch()
    torch.manual_seed(0)
    net = MaskGuided(create_backbone("test_resnet", num_classes=2), "valve")
    loss = F.cross_entropy(net(x, m), torch.tensor([0, 1]))
    loss.backward()
    assert net.mask_conv.weight.grad.abs().sum() > 0  # zero init is not a dead end
    with torch.no_grad():
        net.mask_conv.weight.normal_()
    net.eval()
    with torch.no_grad():
        assert not torch.equal(net(x, m), net(x, torch.zeros_like(m)))


def test_channel_mode_equals_mask_as_extra_input_channels():
    """``channel`` is the same function as a first conv with 3 + 2 input channels."""
    x, m = _batch()
    torch.manual_seed(0)
    net = MaskGuided(create_backbone("test_resnet", num_classes=2), "channel").eval()
    with torch.no_grad():
        net.mask_conv.weight.normal_()
    _, conv = first_conv(net.backbone)
    wide = torch.nn.Conv2d(5, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=False)
    with torch.no_grad():
        wide.weight.copy_(torch.cat([conv.weight, net.mask_conv.weight], 1))
        seen = {}
        h = conv.register_forward_hook(lambda mod, a, out: seen.setdefault("out", out))
        net(x, m)
        h.remove()
        expected = wide(torch.cat([x, mask_channels(m)], 1))
    torch.testing.assert_close(seen["out"], expected, rtol=1e-5, atol=1e-5)


def test_mask_guided_requires_a_mask():
    net = MaskGuided(create_backbone("test_resnet", num_classes=2), "valve")
    with pytest.raises(ValueError, match="mask attention 'valve' needs a mask"):
        net(torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match="mask attention mode must be one of"):
        MaskGuided(create_backbone("test_resnet", num_classes=2), "nope")


def test_mask_channels():
    m = torch.tensor([[[0, 1, 2]]], dtype=torch.uint8)
    assert mask_channels(m).tolist() == [[[[0.0, 1.0, 1.0]], [[0.0, 0.0, 1.0]]]]


def test_ft_transformer_attention_over_features():
    torch.manual_seed(0)
    enc = FTTransformer(5, dim=8, depth=2, heads=2)
    z = enc(torch.randn(4, 5))
    assert z.shape == (4, 8)
    assert enc.last_attention.shape == (4, 5)
    torch.testing.assert_close(enc.last_attention.sum(1), torch.ones(4))
    with pytest.raises(ValueError, match="token dim 10 must be divisible by heads 4"):
        FTTransformer(3, dim=10, heads=4)


def test_tabular_net_encoders():
    torch.manual_seed(0)
    x = torch.randn(3, 7)
    att = TabularNet(7, 4, encoder="attention", dim=8, heads=2)
    assert att(x).shape == (3, 4) and att.feature_attention.shape == (3, 7)
    mlp = TabularNet(7, 4, encoder="mlp", hidden=16)
    assert mlp(x).shape == (3, 4) and mlp.feature_attention is None


@pytest.mark.parametrize("fusion", ["concat", "gated", "attention"])
def test_multimodal_fusions(fusion):
    torch.manual_seed(0)
    x, m = _batch()
    net = MultiModalNet("test_vit", 5, 3, fusion=fusion, tabular="attention", hidden=16, token_dim=8, heads=2,
                        img_size=32, mask_attention="spatial")
    out = net(x, torch.randn(2, 5), m)
    assert out.shape == (2, 3)
    out.sum().backward()
    assert net.tab.weight.grad is not None  # trained end to end: gradients reach the tabular tokens
    if fusion == "concat":
        assert net.modality_weights is None
    else:
        torch.testing.assert_close(net.modality_weights.sum(1), torch.ones(2))


def test_image_net_forward():
    torch.manual_seed(0)
    net = ImageNet("test_convnext", 4, img_size=32)
    assert net(torch.rand(2, 3, 32, 32)).shape == (2, 4)


def test_unknown_model_and_offline_errors(tmp_path):
    with pytest.raises(HemaflowError, match=r"unknown timm model 'densenet12'; did you mean 'densenet121'"):
        create_backbone("densenet12", num_classes=2)
    with pytest.raises(HemaflowError, match=r"pretrained weights for 'test_vit' cannot be downloaded"):
        create_backbone("test_vit", num_classes=2, pretrained=True)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"garbage")
    with pytest.raises(HemaflowError, match=r"bad.safetensors: cannot read safetensors checkpoint"):
        create_backbone("test_resnet", num_classes=2, pretrained=str(bad))
