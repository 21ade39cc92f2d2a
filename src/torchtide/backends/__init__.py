"""Backends: how a model file becomes something that executes a batch.

Heavy frameworks are imported only when a model of that backend loads.
"""

from __future__ import annotations

from torchtide.backends.base import Backend
from torchtide.errors import ServerError, Status


def get_backend(name: str) -> Backend:
    if name == "python":
        from torchtide.backends.python import PythonBackend

        return PythonBackend()
    if name == "pytorch":
        from torchtide.backends.pytorch import PyTorchBackend

        return PyTorchBackend()
    if name == "onnxruntime":
        try:
            from torchtide.backends.onnx import OnnxBackend
        except ImportError as e:  # the [onnx] extra is optional
            raise ServerError(
                Status.UNAVAILABLE,
                f"backend 'onnxruntime' needs the onnx extra: pip install 'torchtide[onnx]' ({e})",
            ) from None
        return OnnxBackend()
    if name == "openvino":
        try:
            from torchtide.backends.openvino import OpenVinoBackend
        except ImportError as e:  # the [openvino] extra is optional
            raise ServerError(
                Status.UNAVAILABLE,
                f"backend 'openvino' needs the openvino extra: pip install 'torchtide[openvino]' "
                f"({e})",
            ) from None
        return OpenVinoBackend()
    raise ServerError(
        Status.INVALID_ARG,
        f"unknown backend '{name}' (supported: python, pytorch, onnxruntime, openvino)",
    )
