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


# A Python model whose helpers live beside it, as in real Triton repositories: utils.py (bare
# `import utils` and `from utils import ...` at module level and lazily in execute()), a
# relative import, a helper package, a shared file in the model folder, and a pickle of a
# class from utils.py read in initialize(). OUT = every helper's VALUE, then the instance's
# own initialize count (1 unless instances shared utils).
HELPERS_CONFIG = """
backend: "python"
input [{ name: "IN" data_type: TYPE_FP32 dims: [1] }]
output [{ name: "OUT" data_type: TYPE_FP32 dims: [-1] }]
instance_group [{ count: 2 kind: KIND_CPU }]
"""

HELPERS_PY = '''
import importlib
import os
import pickle

import numpy as np
import triton_python_backend_utils as pb_utils

import utils
from utils import VALUE
from . import utils as relative_utils
from helpers.inner import INNER
import shared

SCALE = 1


class TritonPythonModel:
    def initialize(self, args):
        utils.INITIALIZED.append(args["model_instance_name"])
        self.count = len(utils.INITIALIZED)
        folder = os.path.join(args["model_repository"], args["model_version"])
        with open(os.path.join(folder, "thing.pkl"), "rb") as f:
            self.thing = pickle.load(f)  # pickle imports the bare name "utils"
        self.by_name = importlib.import_module("utils").VALUE

    def execute(self, requests):
        import lazy_helper
        from utils import VALUE as lazy_value

        values = [VALUE * SCALE, utils.VALUE, relative_utils.VALUE, INNER, lazy_helper.VALUE,
                  lazy_value, self.thing.value(), self.by_name, shared.VALUE, self.count]
        out = np.array(values, dtype=np.float32)
        return [pb_utils.InferenceResponse([pb_utils.Tensor("OUT", out)]) for _ in requests]
'''

HELPERS_OUT_LEN = 10


def helper_files(value: int, version: str = "1") -> dict[str, str | bytes]:
    """The version folder's helpers, each giving `value` (same sizes for every one-digit value)."""
    return {
        f"{version}/model.py": HELPERS_PY,
        f"{version}/utils.py": f"VALUE = {value}\nINITIALIZED = []\n\n"
        "class Thing:\n    def value(self):\n        return VALUE\n",
        f"{version}/helpers/__init__.py": "",
        f"{version}/helpers/inner.py": f"INNER = {value}\n",
        f"{version}/lazy_helper.py": f"VALUE = {value}\n",
        f"{version}/thing.pkl": pickled_utils_thing(),
        "shared.py": f"VALUE = {value}\n",
    }


def pickled_utils_thing() -> bytes:
    """A pickle of `utils.Thing()`, made the way a training script beside utils.py makes it."""
    import pickle
    import sys
    import types

    module = types.ModuleType("utils")
    exec("class Thing:\n    pass\n", module.__dict__)
    module.Thing.__module__ = "utils"
    saved = sys.modules.get("utils")
    sys.modules["utils"] = module
    try:
        return pickle.dumps(module.Thing())
    finally:
        if saved is None:
            del sys.modules["utils"]
        else:
            sys.modules["utils"] = saved


def write_helpers_model(repo: Path, name: str, value: int) -> Path:
    return write_model(repo, name, HELPERS_CONFIG, helper_files(value))


def onnx_graph(
    inputs: dict[str, list[int | None]], output_shape: list[int | None], elem: str = "FLOAT"
) -> bytes:
    """A one-node ONNX graph: OUT = Relu(x), or Sum of every input; shapes as given (None:
    a symbolic dimension)."""
    from onnx import TensorProto, helper

    t = getattr(TensorProto, elem)
    names = list(inputs)
    node = (
        helper.make_node("Relu", names, ["y"])
        if len(names) == 1
        else helper.make_node("Sum", names, ["y"])
    )
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info(n, t, s) for n, s in inputs.items()],
        [helper.make_tensor_value_info("y", t, output_shape)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    return bytes(model.SerializeToString())
