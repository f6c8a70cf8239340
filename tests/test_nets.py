"""Reference networks: shapes, time conditioning, zero-initialised outputs, configs, clear shape errors."""

from __future__ import annotations

import math

import pytest
import torch

from pfode import paths
from pfode.nets import MLP, NETS, SinusoidalEmbedding, UNet, build
from pfode.nets.consistency import ConsistencyModel


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_sinusoidal_embedding_closed_form():
    emb = SinusoidalEmbedding(8, time_scale=10.0)
    t = torch.tensor([0.0, 0.3])
    e = emb(t)
    f = torch.exp(-math.log(10_000.0) * torch.arange(4) / 4)
    want = torch.cat([torch.sin(10 * t[:, None] * f), torch.cos(10 * t[:, None] * f)], 1)
    assert torch.allclose(e, want, atol=1e-6)
    log = SinusoidalEmbedding(8, time_scale=1.0, log_time=True)(torch.tensor([math.e**4]))
    assert torch.allclose(log[0, 0], torch.sin(torch.tensor(1.0)))
    with pytest.raises(ValueError, match="even integer"):
        SinusoidalEmbedding(7)


@pytest.mark.parametrize(
    "net,shape",
    [
        (lambda: MLP((2,), width=32, depth=2), (2,)),
        (lambda: MLP((1, 8, 8), width=32, depth=2), (1, 8, 8)),
        (lambda: UNet((1, 8, 8), base=16, mults=(1, 2)), (1, 8, 8)),
        (lambda: UNet((1, 28, 28), base=8, mults=(1, 2, 2)), (1, 28, 28)),
        (lambda: UNet((3, 7, 9), base=8, mults=(1, 2)), (3, 7, 9)),
    ],
)
def test_shapes_zero_init_and_time_conditioning(net, shape):
    torch.manual_seed(0)
    m = net()
    x = torch.randn(3, *shape)
    t = torch.tensor([0.1, 0.5, 0.9])
    out = m(x, t)
    assert out.shape == x.shape and torch.all(out == 0)  # zero-initialised output layer
    for p in m.parameters():
        if p.dim() > 1:
            torch.nn.init.normal_(p, std=0.1)
    same_x = x[:1].expand(3, *shape)
    o = m(same_x, t)
    assert not torch.allclose(o[0], o[1]) and not torch.allclose(o[1], o[2])  # the time matters
    assert torch.allclose(m(same_x, torch.tensor(0.5)), m(same_x, torch.full((3,), 0.5)))
    # rebuild from config: same parameter names and shapes
    twin = build(**m.config())
    shapes = {k: v.shape for k, v in m.state_dict().items()}
    assert {k: v.shape for k, v in twin.state_dict().items()} == shapes
    assert tuple(m.data_shape) == shape


def test_gradients_flow_and_sizes_are_small():
    m = UNet((1, 8, 8))
    x = torch.randn(4, 1, 8, 8)
    torch.nn.init.normal_(m.out.weight, std=0.1)
    m(x, torch.rand(4)).pow(2).mean().backward()
    assert all(p.grad is not None for p in m.parameters())
    assert sum(p.numel() for p in m.parameters()) < 1_000_000
    assert sum(p.numel() for p in MLP((2,), width=128, depth=3).parameters()) < 200_000


def test_shape_errors_are_clear():
    with pytest.raises(ValueError, match=r"MLP built for samples of shape \(2,\) got input of shape \(4, 3"):
        MLP((2,))(torch.randn(4, 3), torch.rand(4))
    with pytest.raises(ValueError, match=r"UNet built for images of shape \(1, 8, 8\)"):
        UNet((1, 8, 8))(torch.randn(2, 1, 28, 28), torch.rand(2))
    with pytest.raises(ValueError, match=r"UNet needs \(C, H, W\) images"):
        UNet((64,))
    with pytest.raises(ValueError, match="valid names: ctm-mlp, ctm-unet, mlp, mu-concat, unet"):
        build("resnet")
    # mu-concat: pfode.mean_reverting.MuConcat; ctm-mlp / ctm-unet: pfode.nets.ctm.TwoTimeMLP / TwoTimeUNet
    assert set(NETS) == {"ctm-mlp", "ctm-unet", "mlp", "mu-concat", "unet"}


def test_unknown_network_option_is_named():
    from pfode import nets

    with pytest.raises(ValueError, match="network 'unet' has no option 'widht'; valid options: .*base"):
        nets.build("unet", widht=16)


def test_embedding_frequencies_keep_float32_in_a_half_precision_module():
    t = torch.linspace(0.0, 1.0, 11)
    emb = SinusoidalEmbedding(64)
    want = emb(t)
    for dtype in (torch.float16, torch.bfloat16):
        half = SinusoidalEmbedding(64).to(dtype)
        assert half.freqs.dtype == torch.float32 and torch.equal(half(t), want)  # not rounded to the module's dtype
    double = SinusoidalEmbedding(64).double()
    assert double.freqs.dtype == torch.float64 and double(t.double()).dtype == torch.float64
    assert torch.allclose(double(t.double()).float(), want, atol=1e-4)


@pytest.mark.parametrize(
    "make",
    [
        lambda: MLP((2,), width=32, depth=2),
        lambda: UNet((1, 8, 8), base=8, mults=(1, 2)),
        lambda: ConsistencyModel(MLP((2,), width=32, depth=2), paths.EDM()),
    ],
    ids=["mlp", "unet", "consistency"],
)
def test_half_precision_networks_take_float32_times(make):
    """float16/bfloat16 weights with the float32 times pfode.Denoiser hands them (this raised "mat1 and mat2 must
    have the same dtype" in the time embedding): output in the weights' dtype, close to the float32 network's."""
    torch.manual_seed(0)
    net = make()
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.2)
    x = torch.randn(3, *net.data_shape)
    t = torch.tensor([0.1, 0.5, 0.9])
    net.requires_grad_(False)
    want = net(x, t)
    for dtype in (torch.float16, torch.bfloat16):
        half = make().to(dtype).requires_grad_(False)
        half.load_state_dict(net.state_dict())
        out = half(x.to(dtype), t)
        assert out.dtype == dtype
        err = float((out.float() - want).norm() / want.norm())
        assert err < 8 * torch.finfo(dtype).eps, (dtype, err)  # measured: up to 1.7 eps
        with pytest.raises(TypeError, match=f"has {str(dtype)[6:]} weights but got input x of dtype float32"):
            half(x, t)
