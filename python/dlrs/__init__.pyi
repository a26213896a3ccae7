"""Type stubs of dlrs (the Rust extension dlrs._dlrs and dlrs.from_torch)."""

import os
from typing import Any, Literal, Optional, Protocol, Sequence, Tuple, Union

import numpy as np
import numpy.typing as npt

_Path = Union[str, os.PathLike[str]]
#: a NumPy array, a torch CPU tensor, or anything with the buffer protocol or DLPack
_Array = Any

class _KeyedJaggedTensor(Protocol):
    """TorchRec's KeyedJaggedTensor surface: keys in table order, values of all keys,
    lengths [n_keys * B] (key-major)."""

    def keys(self) -> Sequence[str]: ...
    def values(self) -> _Array: ...
    def lengths(self) -> _Array: ...

_Sparse = Union[Sequence[Tuple[_Array, _Array]], _KeyedJaggedTensor]

class ModelError(Exception):
    """A model directory, config or tensor is wrong (the message names it), or the library
    failed."""

class Model:
    """A DLRM loaded from a model directory, ready to predict (thread-safe; releases the
    GIL while it computes)."""

    @staticmethod
    def load(dir: _Path, tables: Literal["mmap", "ram"] = "mmap", threads: Optional[int] = None) -> Model:
        """Loads `dir` (config.json + model.safetensors); `threads` per call, default all
        cores."""
    def predict(
        self, dense: _Array, sparse: _Sparse, *, bags: Literal["offsets", "lengths"] = "offsets"
    ) -> npt.NDArray[np.float32]:
        """Click probabilities, float32 (B,). `dense`: float32 (B, n_dense); `sparse`: one
        (values, offsets) pair per table (offsets B + 1 or B entries; with
        bags="lengths", (values, lengths)), or a KeyedJaggedTensor. int64 or int32 ids;
        C-contiguous; read in place (do not write to them during the call)."""
    @property
    def config(self) -> dict[str, Any]:
        """config.json as a dict."""
    @property
    def n_dense(self) -> int: ...
    @property
    def table_rows(self) -> list[int]: ...
    @property
    def threads(self) -> int: ...
    def _time_forward(
        self, dense: _Array, sparse: _Sparse, *, bags: Literal["offsets", "lengths"] = "offsets"
    ) -> float: ...
    def _input_addresses(
        self, dense: _Array, sparse: _Sparse, *, bags: Literal["offsets", "lengths"] = "offsets"
    ) -> dict[str, Any]: ...

class Trainer:
    """Trains a model directory's weights batch by batch: the engine of `dlrs train`."""

    def __init__(
        self,
        model_dir: _Path,
        optimizer: Literal["sgd", "adagrad", "rowwise-adagrad"] = "sgd",
        dense_optimizer: Literal["sgd", "adagrad", "adam"] = "sgd",
        lr: float = 0.01,
        sparse_lr: Optional[float] = None,
        dense_lr: Optional[float] = None,
        threads: int = 1,
    ) -> None: ...
    def step(
        self,
        dense: _Array,
        sparse: _Sparse,
        labels: _Array,
        *,
        bags: Literal["offsets", "lengths"] = "offsets",
    ) -> float:
        """One optimizer step; returns the batch's mean log loss before the update."""
    def save(self, dir: _Path) -> None:
        """Writes the model and optimizer state (a dlrs train checkpoint) atomically."""
    @property
    def steps(self) -> int: ...
    @property
    def config(self) -> dict[str, Any]: ...

def quantize(
    model_dir: _Path,
    out_dir: _Path,
    dtype: Optional[Literal["fp32", "fp16", "int8", "int4"]] = None,
    *,
    tables: Optional[Sequence[int]] = None,
    mlp_dtype: Optional[Literal["fp32", "bf16"]] = None,
) -> dict[str, Any]:
    """Converts tables and/or MLP weights; writes out_dir; returns each conversion's error."""

def verify(model_dir: _Path, *, require_manifest: bool = False) -> dict[str, Any]:
    """Checks config, shapes and every checksum; raises ModelError naming what fails."""

def from_torch(module: Any, config_or_flags: Any, out_dir: _Path) -> str:
    """Writes a model directory (safetensors + config.json, never pickle) from a reference
    DLRM_Net-style module; returns out_dir."""

def _write_model(config_json: str, tensors: Sequence[Tuple[str, _Array]], out_dir: _Path) -> None: ...

__all__: list[str]
