"""Small real models written into a temporary repository by the tests (Python, TorchScript,
torch.export, ONNX exported from torch)."""

from __future__ import annotations

import textwrap
from pathlib import Path

ADD_SUB_CONFIG = """
backend: "python"
max_batch_size: 64
input [{ name: "INPUT0" data_type: TYPE_INT32 dims: [16] },
       { name: "INPUT1" data_type: TYPE_INT32 dims: [16] }]
output [{ name: "OUTPUT0" data_type: TYPE_INT32 dims: [16] },
        { name: "OUTPUT1" data_type: TYPE_INT32 dims: [16] }]
dynamic_batching {}
"""

# Written the way Triton's python_backend docs write add_sub.
ADD_SUB_PY = '''
import json
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.model_config = model_config = json.loads(args["model_config"])
        output0_config = pb_utils.get_output_config_by_name(model_config, "OUTPUT0")
        output1_config = pb_utils.get_output_config_by_name(model_config, "OUTPUT1")
        self.output0_dtype = pb_utils.triton_string_to_numpy(output0_config["data_type"])
        self.output1_dtype = pb_utils.triton_string_to_numpy(output1_config["data_type"])

    def execute(self, requests):
        responses = []
        for request in requests:
            in_0 = pb_utils.get_input_tensor_by_name(request, "INPUT0")
            in_1 = pb_utils.get_input_tensor_by_name(request, "INPUT1")
            out_0, out_1 = (in_0.as_numpy() + in_1.as_numpy(), in_0.as_numpy() - in_1.as_numpy())
            out_tensor_0 = pb_utils.Tensor("OUTPUT0", out_0.astype(self.output0_dtype))
            out_tensor_1 = pb_utils.Tensor("OUTPUT1", out_1.astype(self.output1_dtype))
            responses.append(pb_utils.InferenceResponse(output_tensors=[out_tensor_0, out_tensor_1]))
        return responses

    def finalize(self):
        pass
'''

# Identity over every datatype, for wire tests: OUT_<T> = IN_<T>.
IDENTITY_TYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32",
                  "INT64", "FP16", "FP32", "FP64", "BYTES", "BF16"]


def _config_type(wire: str) -> str:
    return "TYPE_STRING" if wire == "BYTES" else f"TYPE_{wire}"


def identity_config() -> str:
    ins = ",\n".join(
        f'{{ name: "IN_{t}" data_type: {_config_type(t)} dims: [-1] optional: true }}'
        for t in IDENTITY_TYPES
    )
    outs = ",\n".join(
        f'{{ name: "OUT_{t}" data_type: {_config_type(t)} dims: [-1] }}' for t in IDENTITY_TYPES
    )
    return f'backend: "python"\nmax_batch_size: 8\ninput [{ins}]\noutput [{outs}]\n'


IDENTITY_PY = '''
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            outs = []
            for t in request.inputs():
                name = "OUT_" + t.name()[3:]
                if t.triton_dtype() == 14:  # BF16: pass the dlpack tensor through
                    outs.append(pb_utils.Tensor.from_dlpack(name, t.to_dlpack()))
                else:
                    outs.append(pb_utils.Tensor(name, t.as_numpy()))
            wanted = set(request.requested_output_names())
            responses.append(pb_utils.InferenceResponse([o for o in outs if o.name() in wanted]))
        return responses
'''


def write_model(repo: Path, name: str, config: str | None, files: dict[str, str | bytes]) -> Path:
    d = repo / name
    d.mkdir(parents=True, exist_ok=True)
    if config is not None:
        (d / "config.pbtxt").write_text(textwrap.dedent(config))
    for rel, content in files.items():
        p = d / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            p.write_bytes(content)
        else:
            p.write_text(textwrap.dedent(content))
    return d


def write_add_sub(repo: Path, name: str = "add_sub") -> Path:
    return write_model(repo, name, ADD_SUB_CONFIG, {"1/model.py": ADD_SUB_PY})


def write_identity(repo: Path, name: str = "identity") -> Path:
    return write_model(repo, name, identity_config(), {"1/model.py": IDENTITY_PY})


def write_torchscript_linear(repo: Path, name: str = "linear", max_batch_size: int = 8) -> Path:
    import torch

    torch.manual_seed(0)
    d = write_model(
        repo,
        name,
        f"""
        platform: "pytorch_libtorch"
        max_batch_size: {max_batch_size}
        input [{{ name: "INPUT__0" data_type: TYPE_FP32 dims: [4] }}]
        output [{{ name: "OUTPUT__0" data_type: TYPE_FP32 dims: [2] }}]
        dynamic_batching {{ max_queue_delay_microseconds: 1000 }}
        """,
        {},
    )
    (d / "1").mkdir(exist_ok=True)
    torch.jit.script(torch.nn.Linear(4, 2).eval()).save(str(d / "1" / "model.pt"))
    return d


def standard_repository(repo: Path) -> Path:
    """The repository most wire tests serve: add_sub, identity, linear."""
    repo.mkdir(parents=True, exist_ok=True)
    write_add_sub(repo)
    write_identity(repo)
    write_torchscript_linear(repo)
    return repo
