"""The two-time networks of CTM (pfode.nets.ctm.TwoTimeUNet): shapes, the zero-initialised s branch, save/load
through pfode's checkpoints, the shipped digits config through the CLI."""

from pathlib import Path

import pytest
import torch
from torch import nn

import pfode
from pfode.checkpoint import read_checkpoint, save_checkpoint
from pfode.cli import main
from pfode.nets import NETS, UNet, build
from pfode.nets.ctm import CTMModel, TwoTimeUNet, jump_coefficients
from pfode.paths import get_path
from pfode.predictions import Denoiser

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _net(shape=(1, 8, 8), **kw):
    torch.manual_seed(0)
    net = TwoTimeUNet(shape, **{"base": 8, "mults": (1, 2), "time_dim": 16, **kw})
    nn.init.normal_(net.out.weight, std=0.2)  # a non-zero output layer, so the output depends on its inputs
    return net


def test_registered_shapes_and_config():
    assert NETS["ctm-unet"] is TwoTimeUNet and issubclass(TwoTimeUNet, UNet)
    net = build("ctm-unet", data_shape=(1, 8, 8), base=8, time_dim=16)
    assert net.config() == {
        "name": "ctm-unet",
        "data_shape": [1, 8, 8],
        "base": 8,
        "mults": [1, 2],
        "blocks": 1,
        "time_dim": 16,
        "groups": 8,
        "time_scale": 1000.0,
        "log_time": False,
    }
    for shape in ((1, 8, 8), (3, 7, 7)):  # odd sizes too, as the UNet
        net = _net(shape)
        x = torch.randn(4, *shape)
        t, s = torch.rand(4), torch.rand(4)
        y = net(x, t, s)
        assert y.shape == x.shape and bool(torch.isfinite(y).all())
        # one time for the whole batch is broadcast
        assert torch.allclose(net(x, t, s[:1]), net(x, t, s[:1].expand(4)), atol=1e-6)
    with pytest.raises(ValueError, match="s must hold one time or one per sample"):
        net(x, t, torch.rand(3))
    with pytest.raises(ValueError, match=r"built for images of shape \(3, 7, 7\)"):
        net(torch.randn(2, 1, 8, 8), torch.rand(2), torch.rand(2))


def test_without_s_is_a_type_error():
    net = _net()
    x, t = torch.randn(2, 1, 8, 8), torch.rand(2)
    with pytest.raises(TypeError, match="second time s"):
        net(x, t)
    with pytest.raises(TypeError, match="target time s"):
        CTMModel(net, "linear")(x, t)


@torch.no_grad()
def test_zero_initialised_s_branch():
    """At init the network ignores s, so G(x, t, s) = a(t, s) x + b(t, s) g(x, t): s enters through the DDIM
    coefficients only. Once the s branch's last layer moves, the network sees s."""
    p = get_path("linear")
    net = _net()
    model = CTMModel(net, p, sigma_data=0.5)
    x = torch.randn(5, 1, 8, 8)
    t = torch.full((5,), 0.8, dtype=torch.float64)
    g_tt = model(x, t, t, output="g")
    assert float(g_tt.abs().max()) > 0.1  # the estimate is not trivially zero
    for s_val in (0.6, 0.3, 1e-3):
        s = torch.full((5,), s_val, dtype=torch.float64)
        assert torch.equal(net(x, t.float(), s.float()), net(x, t.float(), t.float()))
        a, b = jump_coefficients(p, t, s)
        want = a.float().reshape(-1, 1, 1, 1) * x + b.float().reshape(-1, 1, 1, 1) * g_tt
        assert float((model(x, t, s) - want).abs().max()) < 1e-5
    nn.init.normal_(net.semb[2].weight, std=0.2)
    s = torch.full((5,), 0.3, dtype=torch.float64)
    assert float((model(x, t, s, output="g") - g_tt).abs().max()) > 1e-3


def test_save_load_round_trip(tmp_path):
    p = get_path("linear")
    net = _net()
    nn.init.normal_(net.semb[2].weight, std=0.2)  # every weight non-trivial, the s branch included
    model = CTMModel(net, p, sigma_data=0.5, spacing="uniform")
    tensors = {f"ema/{k}": v for k, v in model.state_dict().items()}
    meta = {"model_config": model.config(), "denoiser": Denoiser(model, p, "x0", "t").spec()}
    save_checkpoint(tmp_path, 3, tensors, meta)
    loaded = pfode.models.load(tmp_path)
    assert isinstance(loaded.net, CTMModel) and isinstance(loaded.net.net, TwoTimeUNet)
    assert loaded.net.config() == model.config() and loaded.data_shape == (1, 8, 8)
    x = torch.randn(3, 1, 8, 8)
    t = torch.tensor([0.9, 0.5, 0.2], dtype=torch.float64)
    s = torch.tensor([0.4, 0.1, 0.05], dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(loaded.net(x, t, s), model(x, t, s))
    with pytest.raises(TypeError, match="target time s"):
        loaded.denoiser(x, t)


def test_digits_config_trains_through_the_cli(tmp_path, monkeypatch):
    """configs/digits_ctm.yaml (teacher builtin:digits) runs through `pfode train`, a smaller UNet and batch."""
    monkeypatch.chdir(tmp_path)
    argv = ["train", str(CONFIGS / "digits_ctm.yaml"), "--out", "run", "--iterations", "2", "--batch-size", "8"]
    argv += ["--ckpt-every", "2", "--sample-every", "0", "--log-every", "0", "--no-tensorboard", "--quiet"]
    argv += ["--set", "model.base=8", "--set", "model.time_dim=16"]
    assert main(argv) == 0
    loaded = pfode.models.load(tmp_path / "run")
    assert isinstance(loaded.net.net, TwoTimeUNet)
    ck = read_checkpoint(tmp_path / "run" / "checkpoints")
    assert ck.step == 2 and ck.meta["model_config"]["net"]["name"] == "ctm-unet"
    z = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    x = pfode.sample(loaded.net, z, nfe=2)
    assert x.shape == z.shape and bool(torch.isfinite(x).all())
