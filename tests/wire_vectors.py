"""Bad requests and what each must answer, shared by the HTTP and gRPC tests so the same bad
request means the same thing on both protocols.

Each inference vector (`VECTORS`) names the model (from tests' shared repository fixture), the
inputs to send (name -> (datatype, numpy array)), optional requested outputs, and the expected
neutral status (torchtide.errors.Status name) plus a substring of the message.

Each management vector (`CALLS`) names a call (load, unload, metadata, ready, stats, and the
system shared-memory calls), its model or region name, the parameters the call carries (typed
as the core receives them: `bytes` is a file's content, sent as base64 over HTTP and as a
bytes_param over gRPC), and the answer: a Status name, or "OK".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Vector:
    id: str
    model: str
    inputs: dict[str, tuple[str, Any]]
    status: str  # Status name: INVALID_ARG, NOT_FOUND, UNAVAILABLE, INTERNAL, ...
    message: str  # a substring the error message must contain
    outputs: list[str] | None = None
    version: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)


_I = np.arange(16, dtype=np.int32).reshape(1, 16)

VECTORS = [
    Vector("unknown-model", "nope", {"INPUT0": ("INT32", _I)}, "NOT_FOUND",
           "Request for unknown model: 'nope' is not found"),
    Vector("unknown-version", "add_sub", {"INPUT0": ("INT32", _I), "INPUT1": ("INT32", _I)},
           "NOT_FOUND", "Request for unknown model: 'add_sub' version 7 is not found", version="7"),
    Vector("wrong-shape", "add_sub",
           {"INPUT0": ("INT32", _I[:, :15]), "INPUT1": ("INT32", _I[:, :15])}, "INVALID_ARG",
           "unexpected shape for input 'INPUT0' for model 'add_sub'. Expected [-1,16], got [1,15]"),
    Vector("wrong-datatype", "add_sub",
           {"INPUT0": ("FP32", _I.astype(np.float32)), "INPUT1": ("INT32", _I)}, "INVALID_ARG",
           "inference input 'INPUT0' data-type is 'FP32', but model 'add_sub' expects 'INT32'"),
    Vector("missing-input", "add_sub", {"INPUT0": ("INT32", _I)}, "INVALID_ARG",
           "missing required input(s) ['INPUT1']"),
    Vector("unknown-input", "add_sub",
           {"INPUT0": ("INT32", _I), "INPUT1": ("INT32", _I), "EXTRA": ("INT32", _I)},
           "INVALID_ARG", "unexpected inference input 'EXTRA' for model 'add_sub'"),
    Vector("unknown-output", "add_sub", {"INPUT0": ("INT32", _I), "INPUT1": ("INT32", _I)},
           "INVALID_ARG", "unexpected inference output 'NOPE' for model 'add_sub'",
           outputs=["NOPE"]),
    Vector("batch-too-large", "add_sub",
           {"INPUT0": ("INT32", np.zeros((65, 16), np.int32)),
            "INPUT1": ("INT32", np.zeros((65, 16), np.int32))}, "INVALID_ARG",
           "inference request batch-size must be <= 64 for 'add_sub'"),
    # "0" is a well-formed version that is never served: not found, as Triton answers
    Vector("version-zero", "add_sub", {"INPUT0": ("INT32", _I), "INPUT1": ("INT32", _I)},
           "NOT_FOUND", "Request for unknown model: 'add_sub' version 0 is not found",
           version="0"),
]


@dataclass(frozen=True)
class Call:
    id: str
    call: str  # load | unload | metadata | ready | stats | shm_status | shm_register | shm_unregister
    name: str  # the model, or the shared-memory region
    status: str  # "OK", or a Status name
    message: str = ""  # a substring the error message must contain
    parameters: dict[str, Any] = field(default_factory=dict)
    version: str = ""


_BAD_NAME = "invalid model name"

# Served by a server in explicit model-control mode with client shared memory disabled, whose
# repository holds add_sub (loaded at start-up).
CALLS = [
    Call("load-unknown-parameter", "load", "add_sub", "INVALID_ARG",
         "unrecognized load parameter 'nope'", {"nope": "1"}),
    Call("load-config-not-a-string", "load", "add_sub", "INVALID_ARG",
         "invalid value type for load parameter 'config'", {"config": 5}),
    Call("load-file-outside-the-model", "load", "add_sub", "INVALID_ARG",
         "escapes the model folder", {"file:../../evil.py": b"x = 1\n"}),
    Call("unload-dependents-a-string", "unload", "never_loaded", "INVALID_ARG",
         "invalid value type for 'unload_dependents' parameter", {"unload_dependents": "yes"}),
    Call("unload-dependents-a-number", "unload", "never_loaded", "INVALID_ARG",
         "invalid value type for 'unload_dependents' parameter", {"unload_dependents": 1}),
    Call("unload-dependents-a-bool", "unload", "never_loaded", "OK", "",
         {"unload_dependents": True}),
    Call("load-name-climbs-out", "load", "../../x", "INVALID_ARG", f"{_BAD_NAME} '../../x'",
         {"file:1/model.py": b"x = 1\n"}),
    Call("load-name-backslash", "load", "a\\b", "INVALID_ARG", _BAD_NAME),
    Call("load-name-dot-dot", "load", "..", "INVALID_ARG", _BAD_NAME),
    Call("load-name-too-long", "load", "m" * 256, "INVALID_ARG", _BAD_NAME),
    Call("unload-name-climbs-out", "unload", "../add_sub", "INVALID_ARG", _BAD_NAME),
    Call("unload-name-nul", "unload", "add\x00sub", "INVALID_ARG", _BAD_NAME),
    Call("metadata-name-climbs-out", "metadata", "../add_sub", "INVALID_ARG", _BAD_NAME),
    Call("ready-name-climbs-out", "ready", "../add_sub", "INVALID_ARG", _BAD_NAME),
    Call("stats-name-climbs-out", "stats", "../add_sub", "INVALID_ARG", _BAD_NAME),
    Call("metadata-version-zero", "metadata", "add_sub", "NOT_FOUND",
         "Request for unknown model: 'add_sub' version 0 is not found", version="0"),
    Call("stats-version-zero", "stats", "add_sub", "INVALID_ARG",
         "requested model version is not available for model 'add_sub'", version="0"),
    # Client shared memory disabled: status answers (there is nothing registered), the calls
    # that would register or unregister are refused -- as tritonserver does on both protocols.
    Call("shm-status-when-disabled", "shm_status", "", "OK"),
    Call("shm-register-when-disabled", "shm_register", "r", "UNSUPPORTED", "--allow-client-shm",
         {"key": "/k", "byte_size": 64}),
    Call("shm-unregister-when-disabled", "shm_unregister", "", "UNSUPPORTED",
         "--allow-client-shm"),
]
