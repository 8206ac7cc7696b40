"""Read a torch state dict saved in torch's legacy (pre-1.6, non-zip) format into numpy arrays,
without torch: a restricted unpickler allows only the globals a plain state dict needs, so no
code from the file can run."""

from __future__ import annotations

import os
import pickle
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from animalcls.core.errors import WeightsUnavailableError

# torch's legacy-format magic number and protocol version (torch/serialization.py).
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
_STORAGE_DTYPES: dict[str, np.dtype] = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


@dataclass(frozen=True)
class _StorageRef:
    key: str
    dtype: np.dtype
    numel: int


@dataclass(frozen=True)
class _TensorRef:
    storage: _StorageRef
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


@dataclass(frozen=True)
class _StorageType:
    name: str


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad=False, backward_hooks=None, *rest) -> _TensorRef:
    if not isinstance(storage, _StorageRef):
        raise pickle.UnpicklingError("tensor without a storage")
    return _TensorRef(storage, int(offset), tuple(int(s) for s in size), tuple(int(s) for s in stride))


class _StateDictUnpickler(pickle.Unpickler):
    """Allows only the handful of globals a plain state dict needs; everything else is refused."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")

    def persistent_load(self, pid: Any) -> _StorageRef:
        # Legacy id: ('storage', storage_type, key, location, numel, view_metadata).
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        _, storage_type, key, _location, numel, view = pid
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f"unsupported storage type {storage_type!r}")
        if view is not None:  # storage views only come from very old torch; this file has none.
            raise pickle.UnpicklingError(f"storage views are not supported (storage {key})")
        return _StorageRef(str(key), _STORAGE_DTYPES[storage_type.name], int(numel))


def _restricted_load(f) -> Any:
    return _StateDictUnpickler(f).load()


def read_torch_legacy_state_dict(path: Path, fix: str = "") -> dict[str, np.ndarray]:
    """Read a legacy-format torch state dict into numpy arrays (names kept as in torch).

    Raises WeightsUnavailableError naming the file if it is missing, truncated or not a plain
    legacy state dict.
    """
    try:
        with open(path, "rb") as f:
            return _read_legacy(f, os.fstat(f.fileno()).st_size)
    except FileNotFoundError:
        raise WeightsUnavailableError(f"Weights file not found: {path}") from None
    except (
        pickle.UnpicklingError,
        EOFError,
        OSError,
        ValueError,
        TypeError,
        KeyError,
        IndexError,
        AttributeError,
    ) as exc:
        raise WeightsUnavailableError(
            f"{path} is not a readable torch (legacy format) state dict: {exc or type(exc).__name__}. {fix}"
        ) from exc


def _read_legacy(f, file_size: int) -> dict[str, np.ndarray]:
    if _restricted_load(f) != _LEGACY_MAGIC:
        raise ValueError("wrong magic number (a zip-format or non-torch file?)")
    if _restricted_load(f) != _LEGACY_PROTOCOL:
        raise ValueError("unsupported legacy protocol version")
    sys_info = _restricted_load(f)
    if not (isinstance(sys_info, dict) and sys_info.get("little_endian") is True):
        raise ValueError("only little-endian files are supported")  # the raw bytes are read as such
    state = _restricted_load(f)
    keys = _restricted_load(f)
    if not isinstance(state, dict) or not isinstance(keys, list):
        raise ValueError("file does not hold a state dict")
    refs = {name: t for name, t in state.items() if isinstance(t, _TensorRef)}
    if len(refs) != len(state):
        raise ValueError(f"non-tensor entries: {sorted(set(state) - set(refs))}")
    by_key = {t.storage.key: t.storage for t in refs.values()}
    storages: dict[str, np.ndarray] = {}
    for key in keys:
        ref = by_key.get(str(key))
        if ref is None:
            raise ValueError(f"storage {key} is not used by any tensor")
        header = f.read(8)
        numel = int.from_bytes(header, "little", signed=True) if len(header) == 8 else -1
        if numel != ref.numel:
            raise ValueError(f"storage {key}: expected {ref.numel} elements, file says {numel} (truncated?)")
        nbytes = numel * ref.dtype.itemsize
        if nbytes > file_size - f.tell():  # checked first so a corrupt count cannot ask for a huge read
            raise ValueError(f"storage {key} is truncated")
        data = f.read(nbytes)
        storages[ref.key] = np.frombuffer(data, dtype=ref.dtype)
    if f.read(1):
        raise ValueError("trailing bytes after the last storage")
    return {name: _materialise(name, t, storages) for name, t in refs.items()}


def _materialise(name: str, t: _TensorRef, storages: dict[str, np.ndarray]) -> np.ndarray:
    flat = storages.get(t.storage.key)
    if flat is None:
        raise ValueError(f"{name}: storage {t.storage.key} missing from the file")
    if len(t.size) != len(t.stride) or any(s < 0 for s in t.size + t.stride) or t.offset < 0:
        raise ValueError(f"{name}: invalid size/stride {t.size}/{t.stride}")
    last = t.offset + sum((n - 1) * s for n, s in zip(t.size, t.stride)) if all(t.size) else t.offset - 1
    if last >= flat.size:
        raise ValueError(f"{name}: view reaches past its storage")
    item = flat.itemsize
    view = np.lib.stride_tricks.as_strided(
        flat[t.offset :], shape=t.size, strides=tuple(s * item for s in t.stride), writeable=False
    )
    return np.array(view, dtype=flat.dtype.newbyteorder("="))  # a native-order copy we own.
