"""Reference networks for training: a time-conditioned MLP for vectors and a small UNet for images.

Both take ``(x, t)`` with ``x`` of shape ``[B, *data_shape]`` and ``t`` a ``[B]`` tensor of network
times (whatever :class:`pfode.Denoiser`'s ``time_input`` hands them) and return a tensor shaped like
``x``. Both expose ``data_shape`` so a trainer can check a dataset against them, and ``config()``
(a JSON-serialisable dict) so :func:`build` can rebuild them from a checkpoint's configuration.
"""

from __future__ import annotations

from .embed import SinusoidalEmbedding
from .mlp import MLP
from .unet import UNet

__all__ = ["SinusoidalEmbedding", "MLP", "UNet", "build", "NETS"]

NETS = {"mlp": MLP, "unet": UNet}


def _register_mean_reverting():
    from ..mean_reverting import MuConcat  # (x_t, mu) concatenated for a wrapped network

    NETS[MuConcat.name] = MuConcat


_register_mean_reverting()


def _register_ctm():
    from .ctm import TwoTimeMLP, TwoTimeUNet  # (x, t, s): the networks of a consistency trajectory model

    NETS[TwoTimeMLP.name] = TwoTimeMLP
    NETS[TwoTimeUNet.name] = TwoTimeUNet


_register_ctm()


def build(name: str, **options):
    """Build a reference network by name (``"mlp"`` or ``"unet"``) with keyword options."""
    if not isinstance(name, str) or name not in NETS:
        raise ValueError(f"network name={name!r} is unknown; valid names: {', '.join(sorted(NETS))}")
    import inspect

    params = inspect.signature(NETS[name].__init__).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        valid = [k for k in params if k != "self"]
        bad = sorted(set(options) - set(valid))
        if bad:
            raise ValueError(
                f"network {name!r} has no option {', '.join(map(repr, bad))}; valid options: {', '.join(valid)}"
            )
    return NETS[name](**options)
