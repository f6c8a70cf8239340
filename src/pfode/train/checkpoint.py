"""Optimizer state in the pickle-free checkpoint format of :mod:`pfode.checkpoint`.

:func:`flatten_optimizer` splits ``optimizer.state_dict()`` into tensors (stored in the safetensors file) and a
JSON structure; :func:`unflatten_optimizer` is its inverse. The format itself (saving, strict reading, weights)
lives in :mod:`pfode.checkpoint`; ``read_checkpoint`` is re-exported here for the command line.
"""

from __future__ import annotations

import torch

from ..checkpoint import CheckpointError, read_checkpoint

__all__ = ["flatten_optimizer", "unflatten_optimizer", "read_checkpoint"]


def _json_scalar(v):
    if isinstance(v, (bool, int, float, str)) or v is None:
        return v
    if isinstance(v, (list, tuple)):
        return [_json_scalar(x) for x in v]
    raise CheckpointError(f"optimizer state value of type {type(v).__name__} cannot be stored without pickle")


def flatten_optimizer(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Split ``optimizer.state_dict()`` into tensors ``optim/<pid>/<key>`` and a JSON-able structure."""
    tensors: dict[str, torch.Tensor] = {}
    state_meta: dict[str, dict] = {}
    for pid, st in state_dict["state"].items():
        entry = {}
        for k, v in st.items():
            if "/" in str(k):
                raise CheckpointError(f"optimizer state key {k!r} contains '/'")
            if isinstance(v, torch.Tensor):
                key = f"optim/{pid}/{k}"
                tensors[key] = v.detach()
                entry[k] = {"tensor": key}
            else:
                entry[k] = {"value": _json_scalar(v)}
        state_meta[str(pid)] = entry
    groups = []
    for g in state_dict["param_groups"]:
        groups.append({k: _json_scalar(v) for k, v in g.items()})
    return tensors, {"param_groups": groups, "state": state_meta}


def unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    """Inverse of :func:`flatten_optimizer`."""
    state = {}
    for pid, entry in meta["state"].items():
        st = {}
        for k, spec in entry.items():
            if "tensor" in spec:
                if spec["tensor"] not in tensors:
                    raise CheckpointError(
                        f"optimizer tensor {spec['tensor']!r} is missing from the tensor file"
                    )
                st[k] = tensors[spec["tensor"]]
            else:
                st[k] = tuple(spec["value"]) if isinstance(spec["value"], list) else spec["value"]
        state[int(pid)] = st
    groups = []
    for g in meta["param_groups"]:
        g = dict(g)
        for k, v in g.items():
            if isinstance(v, list) and k != "params":
                g[k] = tuple(v)
        groups.append(g)
    return {"state": state, "param_groups": groups}
