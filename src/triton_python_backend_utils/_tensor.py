"""``Tensor``: a named tensor wrapping a numpy array in place (no copies)."""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import numpy.typing as npt

from ._dtypes import TRITONSERVER_TYPE_BF16, TRITONSERVER_TYPE_BYTES, _dtype_code
from ._errors import TritonModelException

__all__ = ["Tensor"]

_DL_CPU = 1
_DL_CUDA_HOST = 3
_NOT_CONTIGUOUS = (
    "DLPack tensor is not contiguous. Only contiguous DLPack tensors that are "
    "stored in C-Order are supported."
)


def _is_capsule(obj: object) -> bool:
    return type(obj).__name__ == "PyCapsule"


def _is_torch_tensor(obj: object) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.Tensor)


def _readonly_safe_capsule(array: npt.NDArray[Any]) -> Any:
    """A DLPack capsule for ``array``; read-only arrays need a versioned capsule."""
    if array.flags.writeable:
        return array.__dlpack__()
    return array.__dlpack__(max_version=(1, 0))


class Tensor:
    """A named tensor.  ``data`` is kept as given (C-contiguous arrays are not copied).

    BYTES tensors are object arrays of ``bytes`` (``S`` arrays are accepted too).
    BF16 tensors are stored as a uint16 array of raw bits; ``as_numpy`` refuses
    them, use ``to_dlpack``/``from_dlpack`` (torch) instead.
    """

    __slots__ = ("_array", "_dtype", "_name")

    def __init__(self, name: str, data: npt.ArrayLike) -> None:
        if not isinstance(name, str):
            raise TypeError(f"Tensor name must be a str, got {type(name).__name__}")
        if name == "":
            raise TritonModelException("Tensor name cannot be an empty string.")
        array = data if isinstance(data, np.ndarray) else np.asarray(data)
        code = _dtype_code(array.dtype)
        if code is None:
            raise TritonModelException("NumPy dtype is not supported.")
        if not array.flags.c_contiguous:
            # Triton makes non C-contiguous arrays contiguous as well.
            array = np.ascontiguousarray(array)
        self._name = name
        self._array: npt.NDArray[Any] = array
        self._dtype = code

    @classmethod
    def _from_bf16_bits(cls, name: str, bits: npt.NDArray[np.uint16]) -> Tensor:
        """A BF16 tensor over ``bits`` (uint16 raw bfloat16 bits, not copied)."""
        if name == "":
            raise TritonModelException("Tensor name cannot be an empty string.")
        if not isinstance(bits, np.ndarray) or bits.dtype != np.uint16:
            raise TypeError("BF16 bits must be a numpy uint16 array")
        if not bits.flags.c_contiguous:
            bits = np.ascontiguousarray(bits)
        tensor = cls.__new__(cls)
        tensor._name = name
        tensor._array = bits
        tensor._dtype = TRITONSERVER_TYPE_BF16
        return tensor

    def _bf16_bits(self) -> npt.NDArray[np.uint16]:
        """The raw uint16 bits of a BF16 tensor (shares memory)."""
        if self._dtype != TRITONSERVER_TYPE_BF16:
            raise TritonModelException(f"Tensor '{self._name}' is not a BF16 tensor.")
        return self._array

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> npt.NDArray[Any]:
        """The wrapped array itself (not a copy)."""
        if self._dtype == TRITONSERVER_TYPE_BF16:
            raise TritonModelException(
                "Tensor dtype is BF16 and cannot be converted to NumPy. Use "
                "to_dlpack() and from_dlpack() instead."
            )
        return self._array

    def shape(self) -> list[int]:
        return list(self._array.shape)

    def triton_dtype(self) -> int:
        """The TRITONSERVER_DataType code."""
        return self._dtype

    def is_cpu(self) -> bool:
        return True

    def _torch_bf16(self) -> Any:
        import torch
        from torch.utils.dlpack import from_dlpack

        int16 = from_dlpack(_readonly_safe_capsule(self._array.view(np.int16)))
        return int16.view(torch.bfloat16)

    def to_dlpack(self) -> Any:
        """A DLPack capsule sharing this tensor's memory (BF16 as torch.bfloat16)."""
        if self._dtype == TRITONSERVER_TYPE_BYTES:
            raise TritonModelException("DLPack does not have support for string tensors.")
        if self._dtype == TRITONSERVER_TYPE_BF16:
            return self._torch_bf16().__dlpack__()
        return _readonly_safe_capsule(self._array)

    def __dlpack__(self, stream: Any = None, **kwargs: Any) -> Any:
        if self._dtype == TRITONSERVER_TYPE_BYTES:
            raise TritonModelException("DLPack does not have support for string tensors.")
        if self._dtype == TRITONSERVER_TYPE_BF16:
            return self._torch_bf16().__dlpack__(stream=stream, **kwargs)
        return self._array.__dlpack__(stream=stream, **kwargs)

    def __dlpack_device__(self) -> tuple[int, int]:
        return (_DL_CPU, 0)

    @staticmethod
    def from_dlpack(name: str, dlpack_tensor: Any) -> Tensor:
        """A Tensor sharing memory with a DLPack capsule or ``__dlpack__`` object."""
        if name == "":
            raise TritonModelException("Tensor name cannot be an empty string.")
        if _is_capsule(dlpack_tensor):
            from torch.utils.dlpack import from_dlpack

            return _from_torch(name, from_dlpack(dlpack_tensor))
        if not hasattr(dlpack_tensor, "__dlpack__") or not hasattr(
            dlpack_tensor, "__dlpack_device__"
        ):
            raise TritonModelException(
                "Provided tensor is not supported. Tensor must be a DLPack capsule "
                "or have `__dlpack__` and `__dlpack_device__` attributes"
            )
        device_type = int(dlpack_tensor.__dlpack_device__()[0])
        if device_type not in (_DL_CPU, _DL_CUDA_HOST):
            raise TritonModelException(
                f"DLDevice type {device_type} is not supported by torchtide's Python "
                "backend; only CPU tensors are."
            )
        if _is_torch_tensor(dlpack_tensor):
            return _from_torch(name, dlpack_tensor)
        try:
            array = np.from_dlpack(dlpack_tensor)
        except (RuntimeError, BufferError, TypeError):
            # numpy cannot represent it (e.g. bfloat16): go through torch.
            from torch.utils.dlpack import from_dlpack

            return _from_torch(name, from_dlpack(dlpack_tensor))
        return _from_array(name, array)


def _from_array(name: str, array: npt.NDArray[Any]) -> Tensor:
    if not array.flags.c_contiguous:
        raise TritonModelException(_NOT_CONTIGUOUS)
    return Tensor(name, array)


def _from_torch(name: str, tensor: Any) -> Tensor:
    import torch

    tensor = tensor.detach()
    if tensor.device.type != "cpu":
        raise TritonModelException(
            f"Tensor on device '{tensor.device}' is not supported by torchtide's Python "
            "backend; only CPU tensors are."
        )
    if not tensor.is_contiguous():
        raise TritonModelException(_NOT_CONTIGUOUS)
    if tensor.dtype == torch.bfloat16:
        bits = tensor.view(torch.int16).numpy().view(np.uint16)
        return Tensor._from_bf16_bits(name, bits)
    return _from_array(name, np.from_dlpack(tensor))
