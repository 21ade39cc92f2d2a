"""The contract between the scheduler and a backend.

The scheduler hands an instance a list of `Work` items (one per request, in queue order);
the instance returns one result per item: its outputs, or a ServerError for that item alone.
Instances run on their own thread; nothing here touches the event loop.
"""

from __future__ import annotations

import logging
import re
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from torchtide import batching
from torchtide.config import ModelConfig, ModelSpec
from torchtide.errors import ServerError, Status, internal

log = logging.getLogger("torchtide.backends")

Array = np.ndarray[Any, Any]
Outputs = dict[str, Array]
Result = Outputs | ServerError


@dataclass(slots=True, eq=False)
class Work:
    """One request as an instance sees it."""

    inputs: dict[str, Array]
    rows: int  # rows along the batch dimension (1 when the model does not batch)
    output_names: list[str]
    request_id: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)
    cancelled: bool = False


@dataclass(slots=True)
class Timing:
    """Nanoseconds spent in each stage of one execution (Triton's compute_* split), and when
    the stages began and ended (monotonic ns, for traces: COMPUTE_START ... COMPUTE_END)."""

    input_ns: int = 0
    infer_ns: int = 0
    output_ns: int = 0
    start_ns: int = 0
    input_end_ns: int = 0
    output_start_ns: int = 0
    end_ns: int = 0

    def mark(self, start: int, input_end: int, output_start: int, end: int) -> None:
        """Add one run's stages (perf_counter_ns values); a retried batch keeps its first
        start and its last end."""
        self.input_ns += input_end - start
        self.infer_ns += output_start - input_end
        self.output_ns += end - output_start
        if not self.start_ns:
            self.start_ns, self.input_end_ns = start, input_end
        self.output_start_ns, self.end_ns = output_start, end


@dataclass(frozen=True, slots=True)
class InstanceInfo:
    name: str  # Triton's "<group>_<index>", e.g. "add_sub_0_0"
    kind: str  # "CPU" or "GPU"
    device_id: int

    @property
    def device(self) -> str:
        return f"cuda:{self.device_id}" if self.kind == "GPU" else "cpu"


@dataclass(frozen=True, slots=True)
class LoadContext:
    config: ModelConfig
    spec: ModelSpec
    model_dir: Path  # <repository>/<model>
    version: int
    model_file: Path
    instance: InstanceInfo


class ModelInstance(ABC):
    """One loaded copy of a model on one device."""

    # What `torchtide profile` runs around execute(): "torch" (torch.profiler: operators) or
    # "python" (cProfile: Python functions).
    profiler: str = "python"

    @abstractmethod
    def execute(self, work: list[Work], timing: Timing) -> list[Result]: ...

    def finalize(self) -> None:  # noqa: B027 - optional hook
        pass


class Backend(ABC):
    name: str
    completes_from = "the model file"  # what auto_complete reads, for messages

    def auto_complete(self, cfg: ModelConfig, model_file: Path, model_dir: Path) -> None:  # noqa: B027
        """Fill missing inputs/outputs (and batching) from the model file."""

    @abstractmethod
    def load(self, ctx: LoadContext) -> ModelInstance: ...


class TensorInstance(ModelInstance):
    """Backends that run one merged batch: merge, run, split — and when a batch of several
    requests fails, retry each alone so only the culprits fail (beyond Triton)."""

    batched: bool = True
    label: str = ""  # "<model> instance <name>", for the server log

    @abstractmethod
    def run(self, inputs: dict[str, Array], output_names: list[str]) -> Outputs: ...

    def execute(self, work: list[Work], timing: Timing) -> list[Result]:
        live = [w for w in work if not w.cancelled]
        if not live:
            return [_cancelled() for _ in work]
        names = _union_outputs(live)
        try:
            results: list[Result] = list(self._run_batch(live, names, timing))
        except Exception as e:
            if len(live) == 1:
                results = [self._as_error(e)]
            else:
                results = []
                for w in live:
                    try:
                        results.extend(self._run_batch([w], names, timing))
                    except Exception as e1:
                        results.append(self._as_error(e1))
        it = iter(results)
        return [_cancelled() if w.cancelled else next(it) for w in work]

    def _run_batch(self, work: list[Work], names: list[str], timing: Timing) -> list[Outputs]:
        t0 = time.perf_counter_ns()
        merged = batching.merge([w.inputs for w in work]) if self.batched else work[0].inputs
        t1 = time.perf_counter_ns()
        out = self.run(merged, names)
        t2 = time.perf_counter_ns()
        parts = batching.split(out, [w.rows for w in work]) if self.batched else [out]
        timing.mark(t0, t1, t2, time.perf_counter_ns())
        return parts

    def _as_error(self, e: Exception) -> ServerError:
        if isinstance(e, ServerError):
            return e
        log.debug("%s: execute failed", self.label or type(self).__name__, exc_info=e)
        return internal(one_line(e))


def _union_outputs(work: list[Work]) -> list[str]:
    names: dict[str, None] = {}
    for w in work:
        names.update(dict.fromkeys(w.output_names))
    return list(names)


def _cancelled() -> ServerError:
    return ServerError(Status.CANCELLED, "request cancelled")


MAX_MESSAGE = 1000  # characters of a model's error message sent to a client
_EXC_NAME = re.compile(r"^(?:builtins\.)?([A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt)): ")


def one_line(e: BaseException) -> str:
    """What went wrong, in one line for a client; the traceback belongs in the server log.

    A TorchScript error carries the script's traceback (with the server's file paths) and
    ends with the line that matters, "builtins.ValueError: negative input"; a C++ error may
    carry "Exception raised from ..." frames. Those keep only the message; other multi-line
    messages (ONNX Runtime's) are joined into one line.
    """
    text = str(e).split("Exception raised from ", 1)[0]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return type(e).__name__
    if "Traceback" in text:
        lines = lines[-1:]
    message = " ".join(lines)
    named = _EXC_NAME.match(message)
    if named:
        message = f"{named.group(1).rsplit('.', 1)[-1]}: {message[named.end() :]}"
    elif not isinstance(e, ServerError):
        message = f"{type(e).__name__}: {message}"
    if len(message) > MAX_MESSAGE:
        message = message[: MAX_MESSAGE - 3] + "..."
    return message
