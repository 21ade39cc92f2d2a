"""PyTorch backend: TorchScript `model.pt` (platform pytorch_libtorch), torch.export `model.pt2`
and AOTInductor packages (`model.pt2` too, platform torch_aoti).

Input names follow Triton's PyTorch backend: `<name>__<index>` binds by position, otherwise
forward-argument names bind by name (Triton's AOTI names `ARGS[<index>]` by position too).
Outputs `<name>__<index>` (or `RESULT[<index>]`) index the returned tuple; a dict return binds
by key; a single tensor is output 0. `INFERENCE_PRECISION` runs the model under autocast.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tritonclient.grpc import model_config_pb2 as mc

from torchtide import dtypes
from torchtide.backends import aoti, precision
from torchtide.backends.base import (
    Array,
    Backend,
    LoadContext,
    Outputs,
    TensorInstance,
    log,
    one_line,
)
from torchtide.backends.checks import (
    ModelTensor,
    check_produced,
    check_required,
    check_tensor,
)
from torchtide.config import ConfigError, ModelConfig, parameter
from torchtide.errors import ServerError, internal
from torchtide.wire import shape_str

_INDEXED = re.compile(r"^(.*)__(\d+)$|^(?:ARGS|RESULT)\[(\d+)\]$")
# torch.export.load keeps global deserializer state: instances loading at once must take turns.
_EXPORT_LOAD_LOCK = threading.Lock()


def _load_exported(path: Path) -> Any:
    with _EXPORT_LOAD_LOCK:
        return torch.export.load(str(path))  # type: ignore[no-untyped-call]


DEFAULT_AUTOCOMPLETE_MAX_BATCH = 4  # Triton's --backend-config default-max-batch-size


class PyTorchBackend(Backend):
    name = "pytorch"
    completes_from = "the torch.export program"

    def auto_complete(self, cfg: ModelConfig, model_file: Path, model_dir: Path) -> None:
        if cfg.input and cfg.output:
            return
        if aoti.is_aoti_package(model_file):
            if not cfg.input or not cfg.output:
                raise ConfigError(
                    f"{model_dir / 'config.pbtxt'}: input/output: an AOTInductor package does "
                    "not record its tensor names and shapes; list them in config.pbtxt"
                )
            return
        if model_file.suffix != ".pt2":
            if not cfg.input or not cfg.output:
                raise ConfigError(
                    f"{model_dir / 'config.pbtxt'}: input/output: a TorchScript model does not "
                    "record its tensor names and shapes; list them in config.pbtxt "
                    "(or serve a torch.export program, model.pt2, which does)"
                )
            return
        ep = _load_exported(model_file)
        _complete_from_export(cfg, ep)

    def load(self, ctx: LoadContext) -> PyTorchInstance:
        return PyTorchInstance(ctx)


@dataclass(frozen=True, slots=True)
class ExportSignature:
    """A torch.export program's user inputs (argument names, in order) and flat outputs, with
    the example values (fake tensors: dtype and shape, symbolic where dynamic) it recorded."""

    input_names: list[str]
    input_vals: list[Any]
    output_vals: list[Any]
    output_keys: list[str] | None  # the keys when forward returns a dict

    @classmethod
    def of(cls, ep: Any) -> ExportSignature:
        from torch.export.graph_signature import InputKind

        placeholders = {n.name: n for n in ep.graph.nodes if n.op == "placeholder"}
        user = [s for s in ep.graph_signature.input_specs if s.kind == InputKind.USER_INPUT]
        out_node = next(n for n in ep.graph.nodes if n.op == "output")
        out_spec = ep.call_spec.out_spec
        keys = list(out_spec.context) if getattr(out_spec, "type", None) is dict else None
        return cls(
            input_names=[s.arg.name for s in user],
            input_vals=[placeholders[s.arg.name].meta.get("val") for s in user],
            output_vals=[getattr(a, "meta", {}).get("val") for a in out_node.args[0]],
            output_keys=keys,
        )


def _complete_from_export(cfg: ModelConfig, ep: Any) -> None:
    sig = ExportSignature.of(ep)
    in_vals, out_vals = sig.input_vals, sig.output_vals
    vals = in_vals + out_vals
    batchable = bool(vals) and all(v.dim() > 0 and not isinstance(v.shape[0], int) for v in vals)
    if cfg.max_batch_size == 0 and batchable:
        cfg.max_batch_size = DEFAULT_AUTOCOMPLETE_MAX_BATCH
        if not cfg.HasField("dynamic_batching"):
            cfg.dynamic_batching.SetInParent()
    skip = 1 if cfg.max_batch_size > 0 else 0

    def fill(tensors: Any, name: str, val: Any) -> None:
        wire = dtypes.wire_of_torch(val.dtype)
        if wire is None:
            raise ConfigError(f"tensor '{name}': unsupported dtype {val.dtype}")
        dims = [d if isinstance(d, int) else -1 for d in val.shape[skip:]]
        tensors.add(name=name, data_type=mc.DataType.Value(dtypes.BY_WIRE[wire].config), dims=dims)

    if not cfg.input:
        for name, v in zip(sig.input_names, in_vals, strict=True):
            fill(cfg.input, name, v)
    if not cfg.output:
        for i, v in enumerate(out_vals):
            fill(cfg.output, f"OUTPUT__{i}", v)


class PyTorchInstance(TensorInstance):
    profiler = "torch"

    def __init__(self, ctx: LoadContext) -> None:
        cfg = ctx.config
        threads = parameter(cfg, "NUM_THREADS") or parameter(cfg, "INTRA_OP_THREAD_COUNT")
        # torch's thread count is shared across threads, so each instance re-applies its own
        # right before it computes (cheap), and models with different settings coexist.
        self.threads = int(threads) if threads else 0
        if self.threads:
            torch.set_num_threads(self.threads)
        self.device = torch.device(ctx.instance.device)
        self.batched = ctx.spec.max_batch_size > 0
        self.spec = ctx.spec
        self.label = f"model '{ctx.spec.name}' instance '{ctx.instance.name}'"
        path = ctx.model_file
        self.autocast = precision.autocast_dtype(
            cfg, self.device, str(ctx.model_dir / "config.pbtxt")
        )
        self.module: Any
        signature: ExportSignature | None = None
        if aoti.is_aoti_package(path):
            if self.autocast is not None:
                raise ConfigError(
                    f"{path}: {precision.PARAMETER}: an AOTInductor package runs as compiled; "
                    "compile it under torch.autocast instead"
                )
            self.module, n_args = aoti.load(path, self.device)
            arg_names = [f"ARGS[{i}]" for i in range(n_args)]
            required = list(range(n_args))
        elif path.suffix == ".pt2":
            program = _load_exported(path)
            signature = ExportSignature.of(program)
            self.module = program.module()
            arg_names = signature.input_names
            required = list(range(len(arg_names)))
            self.module.to(self.device)
        else:
            self.module = torch.jit.load(str(path), map_location=self.device)  # type: ignore[no-untyped-call]
            self.module.eval()
            args = self.module.forward.schema.arguments[1:]
            arg_names = [a.name for a in args]
            required = [i for i, a in enumerate(args) if not a.has_default_value()]
        self.positions = _bind_inputs(list(ctx.spec.inputs), arg_names, path)
        self.n_args = len(arg_names)
        self.output_index = {n: _index_of(n) for n in ctx.spec.outputs}
        bound = set(self.positions.values())
        check_required(
            str(path), [arg_names[i] for i in required if i not in bound], list(ctx.spec.inputs)
        )
        if signature is not None:
            self._check_signature(str(path), signature)
        elif not ctx.config.model_warmup:
            self._check_by_running(str(path))

    def _check_signature(self, source: str, sig: ExportSignature) -> None:
        """torch.export records every tensor's dtype and shape: check the config against them."""
        spec = self.spec
        for name, t in spec.inputs.items():
            val = sig.input_vals[self.positions[name]]
            check_tensor(source, "input", t, _model_tensor(val), spec.max_batch_size)
        for name, t in spec.outputs.items():
            if sig.output_keys is not None:
                pos = sig.output_keys.index(name) if name in sig.output_keys else None
            else:
                pos = self.output_index[name]
                if pos is None and len(sig.output_vals) == 1:
                    pos = 0
            if pos is None or pos >= len(sig.output_vals):
                names = sig.output_keys or [f"OUTPUT__{i}" for i in range(len(sig.output_vals))]
                raise ConfigError(
                    f"{source}: output '{name}' is not an output of the model "
                    f"(the program returns {len(sig.output_vals)}: {', '.join(names)})"
                )
            check_tensor(
                source, "output", t, _model_tensor(sig.output_vals[pos]), spec.max_batch_size
            )

    def _check_by_running(self, source: str) -> None:
        """TorchScript records no shapes: run one zero-filled request of the configured shapes
        (one item when the model batches; variable dimensions sized 1) and check the outputs'
        shapes. A model the config contradicts is refused. When the request fails, the reason
        is conclusive only if every size was the config's own: with a guessed size (a -1
        dimension) the failure is logged and the model loads. model_warmup replaces this."""
        spec = self.spec
        if any(t.datatype == "BYTES" for t in spec.inputs.values()):
            return  # a TorchScript model takes no BYTES tensors: requests would fail anyway
        inputs: dict[str, Array] = {}
        guessed = False
        for name, t in spec.inputs.items():
            guessed |= -1 in t.dims
            shape = [1 if d == -1 else d for d in t.dims]
            inputs[name] = np.zeros(
                [1, *shape] if self.batched else shape, dtypes.BY_WIRE[t.datatype].numpy
            )
        desc = ", ".join(f"{n} {shape_str(a.shape)}" for n, a in inputs.items())
        what = f"a zero-filled request ({desc})"
        try:
            out = self.run(inputs, list(spec.outputs))
        except Exception as e:
            log.debug("%s: %s failed at load", source, what, exc_info=e)
            if guessed and not isinstance(e, ServerError):
                log.warning(
                    "%s: load check skipped: %s, -1 dimensions sized 1, failed: %s",
                    source,
                    what,
                    one_line(e),
                )
                return
            raise ConfigError(
                f"{source}: {what} of the configured shapes failed: {one_line(e)} (give "
                "model_warmup samples the model accepts to check it with them instead)"
            ) from None
        for name, arr in out.items():
            check_produced(source, spec.outputs[name], arr.shape, self.batched, what)

    def run(self, inputs: dict[str, Array], output_names: list[str]) -> Outputs:
        args: list[Any] = [None] * self.n_args
        for name, arr in inputs.items():
            args[self.positions[name]] = self._to_torch(name, arr)
        if self.threads and torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
        with torch.inference_mode(), precision.autocast(self.device, self.autocast):
            result = self.module(*args)
        return self._outputs(result, output_names)

    def _to_torch(self, name: str, arr: Array) -> torch.Tensor:
        if self.spec.inputs[name].datatype == "BF16":
            t = torch.from_numpy(np.ascontiguousarray(arr)).view(torch.bfloat16)
        elif arr.dtype == np.object_:
            raise internal(f"input '{name}': BYTES tensors cannot be passed to a PyTorch model")
        else:
            t = torch.from_numpy(arr if arr.flags.writeable else arr.copy())
        return t.to(self.device, non_blocking=True) if self.device.type != "cpu" else t

    def _outputs(self, result: Any, names: list[str]) -> Outputs:
        out: Outputs = {}
        for name in names:
            if isinstance(result, dict):
                if name not in result:
                    raise internal(f"model returned no output '{name}' (keys: {sorted(result)})")
                t = result[name]
            elif isinstance(result, (tuple, list)):
                idx = self.output_index[name]
                if idx is None or idx >= len(result):
                    raise internal(
                        f"output '{name}' does not match the {len(result)} returned tensors"
                    )
                t = result[idx]
            else:
                if self.output_index[name] not in (0, None):
                    raise internal(f"model returned one tensor; output '{name}' has no match")
                t = result
            out[name] = _to_numpy(t, self.spec.outputs[name].datatype)
        return out


def _model_tensor(val: Any) -> ModelTensor:
    if not isinstance(val, torch.Tensor):
        return ModelTensor(None, None)
    shape = tuple(d if isinstance(d, int) else None for d in val.shape)
    return ModelTensor(dtypes.wire_of_torch(val.dtype), shape)


def _to_numpy(t: torch.Tensor, wire: str) -> Array:
    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    if wire == "BF16":
        return t.to(torch.bfloat16).contiguous().view(torch.uint16).numpy()
    if t.dtype == torch.bfloat16:  # autocast's outputs: back to the config's data type
        t = t.float()
    arr = t.numpy()
    want = dtypes.BY_WIRE[wire].numpy
    return arr if arr.dtype == want else arr.astype(want)


def _index_of(name: str) -> int | None:
    m = _INDEXED.match(name)
    return int(m.group(2) or m.group(3)) if m else None


def _bind_inputs(names: list[str], arg_names: list[str], path: Path) -> dict[str, int]:
    positions: dict[str, int] = {}
    for name in names:
        if name in arg_names:
            positions[name] = arg_names.index(name)
            continue
        idx = _index_of(name)
        if idx is None or idx >= len(arg_names):
            raise ConfigError(
                f"{path}: input '{name}' is not an input of the model "
                f"(forward arguments: {', '.join(arg_names) or 'none'}; "
                f"or use the <name>__<index> convention, index < {len(arg_names)})"
            )
        positions[name] = idx
    return positions
