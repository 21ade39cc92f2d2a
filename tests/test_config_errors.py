"""A broken model never stops the others: each is UNAVAILABLE with a reason that names the
file, the field and what is wrong. Exact messages, checked through the real loader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.models import ADD_SUB_PY, write_add_sub, write_model
from torchtide.cli import main
from torchtide.server import InferenceServer, ServerOptions

IO = """
input [{ name: "INPUT0" data_type: TYPE_INT32 dims: [16] }]
output [{ name: "OUTPUT0" data_type: TYPE_INT32 dims: [16] }]
"""
PY = {"1/model.py": ADD_SUB_PY}

# (model name, config.pbtxt, files, expected reason; {cfg} = the config path, {dir} = model dir)
CASES = [
    (
        "unknown_field",
        'backend: "python"\nmax_batch: 4\n' + IO,
        PY,
        "{cfg}: line 2:1: unknown field 'max_batch' in inference.ModelConfig "
        "(did you mean 'max_batch_size'?)",
    ),
    (
        "unknown_nested_field",
        'backend: "python"\nmax_batch_size: 4\ndynamic_batching { max_queue_delay_microsecond: 100 }\n'
        + IO,
        PY,
        "{cfg}: line 3:20: unknown field 'max_queue_delay_microsecond' in "
        "inference.ModelDynamicBatching (did you mean 'max_queue_delay_microseconds'?)",
    ),
    (
        "misspelled_enum",
        'backend: "python"\ninput [{ name: "A" data_type: TYPE_FP23 dims: [1] }]',
        PY,
        "{cfg}: line 2:31: invalid value 'TYPE_FP23' for inference.DataType "
        "(did you mean 'TYPE_FP32'?)",
    ),
    (
        "no_config_no_inputs",
        None,
        {"1/model.py": "class TritonPythonModel:\n    def execute(self, requests):\n        return []\n"},
        "{dir} (no config.pbtxt): input: the model has no inputs (give them in config.pbtxt or a "
        "model file that names them)",
    ),
    (
        "bad_enum",
        'backend: "python"\ninput [{ name: "A" data_type: TYPE_FOO dims: [1] }]',
        PY,
        "{cfg}: line 2:31: invalid value 'TYPE_FOO' for inference.DataType "
        "(did you mean 'TYPE_BOOL'?)",
    ),
    (
        "syntax",
        'backend: "python"\ninput [{ name: "A" ',
        PY,
        '{cfg}: line 2:16: syntax error: Expected "}}".',
    ),
    (
        "zero_dim",
        'backend: "python"\n' + IO.replace("dims: [16] }]\noutput", "dims: [0] }]\noutput"),
        PY,
        "{cfg}: input 'INPUT0' dims: dimension 0 is invalid (use a positive size or -1)",
    ),
    (
        "no_dtype",
        'backend: "python"\ninput [{ name: "A" dims: [1] }]\n'
        'output [{ name: "B" data_type: TYPE_FP32 dims: [1] }]',
        PY,
        "{cfg}: input 'A' data_type: is missing or TYPE_INVALID",
    ),
    (
        "missing_file",
        'backend: "python"\n' + IO,
        {"1/other.py": "x = 1\n"},
        "{cfg}: default_model_filename: model file '1/model.py' not found",
    ),
    (
        "batching_no_mbs",
        'backend: "python"\ndynamic_batching {}\n' + IO,
        PY,
        "{cfg}: dynamic_batching: requires max_batch_size > 0 (max_batch_size is 0: batching is off)",
    ),
    (
        "preferred_too_big",
        'backend: "python"\nmax_batch_size: 4\n'
        "dynamic_batching { preferred_batch_size: [8] }\n" + IO,
        PY,
        "{cfg}: dynamic_batching.preferred_batch_size: 8 is outside 1..max_batch_size (4)",
    ),
    (
        "bad_priority",
        'backend: "python"\nmax_batch_size: 4\n'
        "dynamic_batching { priority_levels: 2 default_priority_level: 3 }\n" + IO,
        PY,
        "{cfg}: dynamic_batching.default_priority_level: must be in 1..priority_levels (2), got 3",
    ),
    (
        "name_mismatch",
        'name: "other"\nbackend: "python"\n' + IO,
        PY,
        "{cfg}: name: 'other' does not match the model's folder name 'name_mismatch'",
    ),
    (
        "bad_platform",
        'platform: "tensorflow_savedmodel"\n' + IO,
        {"1/model.savedmodel": "x"},
        "{cfg}: platform: unsupported platform 'tensorflow_savedmodel' (supported: onnxruntime_onnx, "
        "python, pytorch_libtorch, torch_aoti, torch_export)",
    ),
    (
        "unknown_backend",
        'backend: "tensorflow"\n' + IO,
        PY,
        "{cfg}: backend: unknown backend 'tensorflow' (supported: python, pytorch, onnxruntime, openvino)",
    ),
    (
        "gpu_without_gpu",
        'backend: "python"\ninstance_group [{ kind: KIND_GPU }]\n' + IO,
        PY,
        "{cfg}: instance_group 'gpu_without_gpu_0' kind: KIND_GPU requested but no CUDA GPU is "
        "available",
    ),
    (
        "no_versions",
        'backend: "python"\n' + IO,
        {"0/model.py": ADD_SUB_PY, "v1/model.py": ""},
        "{cfg}: no version folder (e.g. '1/') holds the model",
    ),
    (
        "negative_mbs",
        'backend: "python"\nmax_batch_size: -2\n' + IO,
        PY,
        "{cfg}: max_batch_size: must be >= 0, got -2",
    ),
    (
        "specific_missing",
        'backend: "python"\nversion_policy { specific { versions: [1, 3] } }\n' + IO,
        PY,
        "{cfg}: version_policy.specific: version(s) [3] have no folder (found: [1])",
    ),
    (
        "duplicate_input",
        'backend: "python"\ninput [{ name: "A" data_type: TYPE_FP32 dims: [1] },'
        '{ name: "A" data_type: TYPE_FP32 dims: [1] }]\n'
        'output [{ name: "B" data_type: TYPE_FP32 dims: [1] }]',
        PY,
        "{cfg}: input 'A': is declared twice",
    ),
    (
        "bad_reshape",
        'backend: "python"\ninput [{ name: "A" data_type: TYPE_FP32 dims: [4] '
        'reshape { shape: [3] } }]\noutput [{ name: "B" data_type: TYPE_FP32 dims: [1] }]',
        PY,
        "{cfg}: input 'A' reshape: has 3 elements but dims [4] have 4",
    ),
    (
        "missing_labels",
        'backend: "python"\ninput [{ name: "A" data_type: TYPE_FP32 dims: [4] }]\n'
        'output [{ name: "B" data_type: TYPE_FP32 dims: [4] label_filename: "labels.txt" }]',
        PY,
        "{cfg}: output 'B' label_filename: file '{dir}/labels.txt' not found",
    ),
    (
        "no_inputs",
        'backend: "python"\noutput [{ name: "B" data_type: TYPE_FP32 dims: [1] }]',
        PY,
        "{cfg}: input: the model has no inputs (give them in config.pbtxt or a model file that "
        "names them)",
    ),
    (
        "import_error",
        'backend: "python"\n' + IO,
        {"1/model.py": "import not_a_module_xyz\n"},
        "{dir}/1/model.py: import failed: ModuleNotFoundError: No module named 'not_a_module_xyz'",
    ),
    (
        "no_class",
        'backend: "python"\n' + IO,
        {"1/model.py": "x = 1\n"},
        "{dir}/1/model.py: defines no class TritonPythonModel",
    ),
    (
        "init_raises",
        'backend: "python"\n' + IO,
        {
            "1/model.py": (
                "class TritonPythonModel:\n    def initialize(self, args):\n"
                "        raise ValueError('weights missing')\n"
            )
        },
        "{dir}/1/model.py: initialize() failed: ValueError: weights missing",
    ),
    (
        "sequence",
        'backend: "python"\nmax_batch_size: 2\nsequence_batching {}\n' + IO,
        PY,
        "{cfg}: sequence_batching: the sequence batcher is not supported by torchtide yet",
    ),
]


@pytest.fixture(scope="module")
def broken_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("broken")
    write_add_sub(repo)  # a good model among the broken ones
    for name, config, files, _ in CASES:
        write_model(repo, name, config, files)
    return repo


@pytest.fixture(scope="module")
def index(broken_repo: Path) -> dict[str, dict[str, str]]:
    import asyncio

    async def run() -> dict[str, dict[str, str]]:
        s = InferenceServer(ServerOptions([broken_repo]))
        await s.start()
        try:
            one = np.ones((1, 16), np.int32)
            out = await s.infer_numpy("add_sub", {"INPUT0": one, "INPUT1": one})
            assert out["OUTPUT0"].tolist() == [[2] * 16]  # the good model serves
            assert not s.is_ready()  # strict readiness: broken models make the server unready
            return {e["name"]: e for e in s.repository_index()}
        finally:
            await s.stop()

    return asyncio.run(run())


def test_enough_distinct_cases() -> None:
    assert len({c[3] for c in CASES}) >= 12


@pytest.mark.parametrize("name,config,files,expected", CASES, ids=[c[0] for c in CASES])
def test_broken_config_reason(
    index: dict[str, dict[str, str]],
    broken_repo: Path,
    name: str,
    config: str,
    files: dict[str, str],
    expected: str,
) -> None:
    entry = index[name]
    assert entry["state"] == "UNAVAILABLE"
    d = broken_repo / name
    assert entry["reason"] == expected.format(cfg=d / "config.pbtxt", dir=d)


def test_good_model_ready_beside_broken(index: dict[str, dict[str, str]]) -> None:
    assert index["add_sub"]["state"] == "READY"


def test_check_command_exit_codes(
    broken_repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", str(broken_repo)]) == 1
    out = capsys.readouterr().out
    assert "unknown_field" in out and "UNAVAILABLE" in out
    good = tmp_path / "good"
    write_add_sub(good)
    assert main(["check", str(good)]) == 0
    assert "1 ready, 0 broken" in capsys.readouterr().out
    assert main(["check", str(tmp_path / "missing")]) == 2


# ------------------------------------------------------------------ configs that contradict
# the model file: refused at load (Triton's onnxruntime backend refuses them too), with the
# file, the tensor and both values named. {file} = the model file.

BATCH_NOTE = "after the batch dimension that max_batch_size > 0 adds"


def onnx_config(mbs: int, inputs: str, output: str = 'name: "y" data_type: TYPE_FP32 dims: [4]') -> str:
    return (
        f'backend: "onnxruntime"\nmax_batch_size: {mbs}\ninput [{inputs}]\noutput [{{ {output} }}]'
    )


X4 = '{ name: "x" data_type: TYPE_FP32 dims: [4] }'
CONTRADICTIONS = [
    (
        "onnx_dims",
        onnx_config(4, '{ name: "x" data_type: TYPE_FP32 dims: [5] }'),
        {"x": [None, 4]},
        [None, 4],
        f"{{file}}: input 'x': the model expects shape [-1,4] but the configuration specifies "
        f"[-1,5] (dims [5] {BATCH_NOTE})",
    ),
    (
        "onnx_dtype",
        onnx_config(4, '{ name: "x" data_type: TYPE_INT32 dims: [4] }'),
        {"x": [None, 4]},
        [None, 4],
        "{file}: input 'x': configuration expects datatype TYPE_INT32, the model provides "
        "TYPE_FP32",
    ),
    (
        "onnx_output_dims",
        onnx_config(4, X4, 'name: "y" data_type: TYPE_FP32 dims: [3]'),
        {"x": [None, 4]},
        [None, 4],
        f"{{file}}: output 'y': the model expects shape [-1,4] but the configuration specifies "
        f"[-1,3] (dims [3] {BATCH_NOTE})",
    ),
    (
        "onnx_fixed_batch",
        onnx_config(4, X4),
        {"x": [1, 4]},
        [1, 4],
        "{file}: input 'x': max_batch_size is 4, so the model's first dimension must be a "
        "variable batch dimension, but the model's shape is [1,4]",
    ),
    (
        "onnx_rank",
        onnx_config(0, X4, 'name: "y" data_type: TYPE_FP32 dims: [-1, 4]'),
        {"x": [None, 4]},
        [None, 4],
        "{file}: input 'x': the model expects shape [-1,4] but the configuration specifies [4]",
    ),
    (
        "onnx_missing_input",
        onnx_config(4, X4),
        {"x": [None, 4], "z": [None, 4]},
        [None, 4],
        "{file}: the model's input 'z' is not in the configuration (configuration inputs: x)",
    ),
]


@pytest.fixture(scope="module")
def contradicting(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict[str, str]]]:
    """ONNX graphs, a torch.export program and TorchScript modules under configs that
    contradict them (and one TorchScript model that loads), served once."""
    import asyncio

    import torch

    from tests.models import onnx_graph

    class TwoArgs(torch.nn.Module):
        def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return x * 2 + y, x - y

    repo = tmp_path_factory.mktemp("contradicting")
    for name, config, ins, out, _ in CONTRADICTIONS:
        write_model(repo, name, config, {"1/model.onnx": onnx_graph(ins, out)})

    batch = torch.export.Dim("batch", min=1, max=64)
    ep = torch.export.export(
        TwoArgs(),
        (torch.randn(2, 3), torch.randn(2, 3)),
        dynamic_shapes={"x": {0: batch}, "y": {0: batch}},
    )
    for name, x_type, out_dims in (
        ("export_dtype", "TYPE_INT64", "[3]"),
        ("export_output_dims", "TYPE_FP32", "[2]"),
    ):
        d = write_model(repo, name, f"""
            platform: "torch_export"
            max_batch_size: 8
            input [{{ name: "x" data_type: {x_type} dims: [3] }},
                   {{ name: "y" data_type: TYPE_FP32 dims: [3] }}]
            output [{{ name: "OUTPUT__0" data_type: TYPE_FP32 dims: [3] }},
                    {{ name: "OUTPUT__1" data_type: TYPE_FP32 dims: {out_dims} }}]
            """, {})
        (d / "1").mkdir()
        torch.export.save(ep, str(d / "1" / "model.pt2"))

    torch.manual_seed(0)
    scripted = {
        # the example: config [-1,2], the model returns [N,3]
        "ts_output_shape": (torch.nn.Linear(4, 3), 0, "[-1, 4]", "[-1, 2]", ""),
        # every size is the config's own: a failure is conclusive
        "ts_fixed_fails": (torch.nn.Linear(4, 2), 8, "[5]", "[2]", ""),
        # a -1 dimension had to be guessed (1): a failure is logged, the model loads
        "ts_guessed_fails": (torch.nn.Linear(4, 2), 8, "[-1]", "[2]", ""),
        # model_warmup replaces the zero-data check
        "ts_warmup": (torch.nn.Linear(4, 3), 8, "[4]", "[2]", """
            model_warmup [{ name: "w" batch_size: 1
                            inputs { key: "INPUT__0" value { data_type: TYPE_FP32 dims: [4]
                                                              zero_data: true } } }]"""),
        "ts_good": (torch.nn.Linear(4, 2), 8, "[4]", "[2]", ""),
    }
    for name, (module, mbs, in_dims, out_dims, extra) in scripted.items():
        d = write_model(repo, name, f"""
            platform: "pytorch_libtorch"
            max_batch_size: {mbs}
            input [{{ name: "INPUT__0" data_type: TYPE_FP32 dims: {in_dims} }}]
            output [{{ name: "OUTPUT__0" data_type: TYPE_FP32 dims: {out_dims} }}]
            {extra}
            """, {})
        (d / "1").mkdir()
        torch.jit.script(module).save(str(d / "1" / "model.pt"))

    async def run() -> dict[str, dict[str, str]]:
        s = InferenceServer(ServerOptions([repo], gpu_count=0))
        await s.start()
        try:
            return {e["name"]: e for e in s.repository_index()}
        finally:
            await s.stop()

    return repo, asyncio.run(run())


@pytest.mark.parametrize(
    "name,expected", [(c[0], c[4]) for c in CONTRADICTIONS], ids=[c[0] for c in CONTRADICTIONS]
)
def test_config_contradicting_onnx_graph_is_refused(
    contradicting: tuple[Path, dict[str, dict[str, str]]], name: str, expected: str
) -> None:
    repo, index = contradicting
    assert index[name]["state"] == "UNAVAILABLE"
    assert index[name]["reason"] == expected.format(file=repo / name / "1" / "model.onnx")


def test_config_contradicting_export_signature_is_refused(
    contradicting: tuple[Path, dict[str, dict[str, str]]],
) -> None:
    repo, index = contradicting
    assert index["export_dtype"]["reason"] == (
        f"{repo}/export_dtype/1/model.pt2: input 'x': configuration expects datatype "
        "TYPE_INT64, the model provides TYPE_FP32"
    )
    assert index["export_output_dims"]["reason"] == (
        f"{repo}/export_output_dims/1/model.pt2: output 'OUTPUT__1': the model expects shape "
        f"[-1,3] but the configuration specifies [-1,2] (dims [2] {BATCH_NOTE})"
    )


def test_torchscript_checked_by_one_zero_data_request(
    contradicting: tuple[Path, dict[str, dict[str, str]]],
) -> None:
    repo, index = contradicting
    assert index["ts_output_shape"]["state"] == "UNAVAILABLE"
    assert index["ts_output_shape"]["reason"] == (
        f"{repo}/ts_output_shape/1/model.pt: output 'OUTPUT__0': for a zero-filled request "
        "(INPUT__0 [1,4]) the model returned shape [1,3], but the configuration specifies "
        "[-1,2]"
    )
    reason = index["ts_fixed_fails"]["reason"]
    assert reason.startswith(
        f"{repo}/ts_fixed_fails/1/model.pt: a zero-filled request (INPUT__0 [1,5]) of the "
        "configured shapes failed: RuntimeError: "
    ), reason
    assert "\n" not in reason and "Traceback" not in reason
    assert reason.endswith("(give model_warmup samples the model accepts to check it with them instead)")
    for name in ("ts_guessed_fails", "ts_warmup", "ts_good"):
        assert index[name]["state"] == "READY", index[name]
