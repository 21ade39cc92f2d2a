"""What every harness shares: instrumenting torchtide's modules and starting libFuzzer.

Importable without atheris (the harnesses' `test_one_input` then runs uninstrumented), so the
seed corpus can be replayed by a plain test.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from typing import Any

try:
    import atheris
except ImportError:  # replaying inputs without the fuzzer
    atheris = None

# Coverage feedback comes from these packages; numpy, protobuf and orjson are C code atheris
# cannot see into, and instrumenting the rest of the stack only slows every run.
INSTRUMENTED = ("torchtide", "hpack")


def instrumented() -> Any:
    """Import the code under test inside this block so atheris instruments it."""
    if atheris is None:
        return contextlib.nullcontext()
    return atheris.instrument_imports(include=list(INSTRUMENTED))


# libFuzzer's -malloc_limit_mb needs a sanitizer's malloc hooks, which a Python process lacks,
# and -rss_limit_mb only sees pages touched (numpy maps large arrays lazily). So the address
# space itself is capped this far above what the harness holds after its imports: any one input
# that makes the code under test reserve more fails with MemoryError, which is a crash.
ADDRESS_SPACE_HEADROOM = 2 << 30


def limit_address_space(headroom: int = ADDRESS_SPACE_HEADROOM) -> None:
    """RLIMIT_AS = the current virtual size + `headroom` (Linux; elsewhere nothing)."""
    import os
    import resource

    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[0])
    except OSError:
        return
    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = pages * os.sysconf("SC_PAGE_SIZE") + headroom
    if hard == resource.RLIM_INFINITY or limit < hard:
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def main(test_one_input: Callable[[bytes], None]) -> None:
    """Hand `sys.argv` (libFuzzer's flags and corpus folders) to atheris and fuzz."""
    if atheris is None:
        raise SystemExit("atheris is not installed: pip install -e '.[dev]'")
    limit_address_space()
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


REGION = "r0"
REGION_BYTES = 64


def shm_registry() -> Any:
    """A SharedMemoryRegistry holding one 64-byte system region "r0", so shared-memory inputs
    and outputs reach the bounds checks. (Call it after the instrumented imports.)"""
    import os

    from torchtide.shm import SharedMemoryRegistry

    registry = SharedMemoryRegistry()
    key = f"/torchtide_fuzz_{os.getpid()}"
    path = f"/dev/shm{key}"
    fd = os.open(path, os.O_CREAT | os.O_RDWR | os.O_EXCL, 0o600)
    try:
        os.ftruncate(fd, REGION_BYTES)
        registry.register(REGION, key, 0, REGION_BYTES)
    finally:
        os.close(fd)
        os.unlink(path)  # the mapping outlives the name
    return registry


def echo(request: Any) -> Any:
    """What an identity model answers an InferRequest: each requested output (each input when
    none is named) carries an input's data, and the request's parameters come back."""
    from torchtide.types import InferResponse, InferTensor

    inputs = request.inputs
    names = [o.name for o in request.outputs] if request.outputs else [t.name for t in inputs]
    outputs = [
        InferTensor(name, inputs[i % len(inputs)].datatype, inputs[i % len(inputs)].data)
        for i, name in enumerate(names)
        if inputs
    ]
    return InferResponse(
        request.model_name, request.model_version, request.id, outputs, dict(request.parameters)
    )
