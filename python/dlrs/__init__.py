"""dlrs: DLRM-class recommendation models on CPU, from Python.

Load a model directory and predict on NumPy arrays or torch CPU tensors (read in place,
not copied; the GIL is released while it computes)::

    import numpy as np, dlrs
    model = dlrs.Model.load("my-model", threads=2)
    dense = np.random.rand(4, model.n_dense).astype(np.float32)
    ids = np.array([3, 7, 1, 0], dtype=np.int64)           # one id per sample
    offsets = np.arange(5, dtype=np.int64)                  # B + 1 entries
    scores = model.predict(dense, [(ids, offsets)] * len(model.table_rows))

Move a PyTorch DLRM over with :func:`from_torch`, convert or check a model directory with
:func:`quantize` and :func:`verify`, and train with :class:`Trainer` (the engine of
``dlrs train``). Errors are ``ValueError`` (bad inputs), ``FileNotFoundError`` and
:class:`ModelError`, with messages that name the field, line, tensor or table.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Mapping, Union

from ._dlrs import Model, ModelError, Trainer, quantize, verify, _write_model

__all__ = ["Model", "ModelError", "Trainer", "from_torch", "quantize", "verify"]

_LINEAR = re.compile(r"^(bot_l|top_l)\.(\d+)\.weight$")
_EMB = re.compile(r"^emb_l\.(\d+)\.weight$")


def _flags(config_or_flags: Any) -> dict:
    """The reference flags as a dict, from a dict, an ``argparse.Namespace`` or a path to a
    ``config.json``."""
    if config_or_flags is None:
        return {}
    if isinstance(config_or_flags, (str, os.PathLike)):
        with open(config_or_flags) as f:
            return json.load(f)
    if isinstance(config_or_flags, Mapping):
        return dict(config_or_flags)
    if hasattr(config_or_flags, "__dict__"):  # argparse.Namespace of dlrm_s_pytorch.py
        return {k: v for k, v in vars(config_or_flags).items() if k.startswith("arch_")}
    raise TypeError(
        "config_or_flags: expected a dict of config.json fields, an argparse.Namespace "
        f"or a path to config.json, got {type(config_or_flags).__name__}"
    )


def _widths(state: Mapping[str, Any], prefix: str) -> list[int]:
    """Layer widths of an MLP ``bot_l`` / ``top_l`` from its Linear weights [out, in]."""
    layers = sorted(
        (int(m.group(2)), tuple(v.shape))
        for k, v in state.items()
        if (m := _LINEAR.match(k)) and m.group(1) == prefix
    )
    if not layers:
        raise ValueError(f"state dict: no `{prefix}.N.weight` tensors (a reference DLRM_Net has them)")
    return [layers[0][1][1]] + [shape[0] for _, shape in layers]


def _interaction_width(op: str, itself: bool, n_tables: int, dim: int, bot_out: int) -> int:
    f = n_tables + 1
    if op == "cat":
        return bot_out + n_tables * dim
    return bot_out + (f * (f + 1) // 2 if itself else f * (f - 1) // 2)


def from_torch(module: Any, config_or_flags: Any, out_dir: Union[str, os.PathLike]) -> str:
    """Writes a model directory from a live reference ``DLRM_Net``-style module.

    ``module`` has the reference state-dict keys (``emb_l.{t}.weight``,
    ``bot_l.{2i}.weight/bias``, ``top_l.{2i}.weight/bias``): embedding bags pooled by sum,
    ReLU after every bottom layer and every top layer but the last, sigmoid after it.
    ``config_or_flags`` is a dict of ``config.json`` fields (the reference flag names, e.g.
    ``{"arch_interaction_op": "dot"}``), the reference script's ``argparse.Namespace``, a
    path to a ``config.json``, or None; the table sizes, embedding dimension and MLP widths are
    read from the state dict when not given, and the interaction when only one fits the
    top MLP's input width. Writes ``out_dir/model.safetensors`` (the state dict, float32,
    with dlrs's checksum manifest) and ``out_dir/config.json``; never pickles. Returns
    ``out_dir``. Raises ``dlrs.ModelError`` naming a tensor that does not fit the config.
    """
    import torch  # only needed here

    flags = _flags(config_or_flags)
    with torch.no_grad():
        state = {k: v.detach() for k, v in module.state_dict().items()}
    emb = sorted((int(m.group(1)), tuple(v.shape)) for k, v in state.items() if (m := _EMB.match(k)))
    if not emb:
        raise ValueError("state dict: no `emb_l.N.weight` tensors (a reference DLRM_Net has them)")
    bot, top = _widths(state, "bot_l"), _widths(state, "top_l")
    rows = [shape[0] for _, shape in emb]
    dim = emb[0][1][1]
    flags.setdefault("arch_embedding_size", "-".join(map(str, rows)))
    flags.setdefault("arch_sparse_feature_size", dim)
    flags.setdefault("arch_mlp_bot", "-".join(map(str, bot)))
    flags.setdefault("arch_mlp_top", "-".join(map(str, top[1:])))
    if "arch_interaction_op" not in flags:
        fits = [
            (op, itself)
            for op, itself in (("cat", False), ("dot", False), ("dot", True))
            if _interaction_width(op, itself, len(rows), dim, bot[-1]) == top[0]
        ]
        if len(fits) != 1:
            raise ValueError(
                "config_or_flags: give arch_interaction_op (and arch_interaction_itself): "
                f"{'none' if not fits else 'more than one'} of cat, dot fits the top MLP's input width {top[0]}"
            )
        flags["arch_interaction_op"], flags["arch_interaction_itself"] = fits[0]
    for k in ("arch_mlp_bot", "arch_mlp_top", "arch_embedding_size"):
        if isinstance(flags[k], (list, tuple)):
            flags[k] = "-".join(map(str, flags[k]))
    tensors = []
    for name, t in state.items():
        if t.dtype != torch.float32:
            t = t.to(torch.float32)
        tensors.append((name, t.cpu().contiguous().numpy()))
    _write_model(json.dumps(flags), tensors, os.fspath(out_dir))
    return os.fspath(out_dir)
