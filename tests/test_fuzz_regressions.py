"""Inputs the fuzzers (fuzz/, atheris) found that made a decoder raise something other than its
documented error; each test fails before its fix. Replaying them needs no fuzzer."""

from __future__ import annotations

import pytest

from tests.http_util import request
from torchtide.app import AppThread
from torchtide.errors import ServerError, Status
from torchtide.frontends.http.decode import ShmAccess, decode_request, header_length
from torchtide.shm import SharedMemoryRegistry

NO_SHM = ShmAccess(SharedMemoryRegistry(), allowed=False)

# ---------------------------------------------------------------------------- HTTP


@pytest.mark.parametrize("value", ["\u00b2", "6\u00b3\u00b3\u00b30", "\u00b9\u00b9"])
def test_header_length_superscript_digits_are_a_bad_request(value: str) -> None:
    # fuzz/http_infer: str.isdigit() accepts superscripts (a latin-1 header byte 0xB2, 0xB3 or
    # 0xB9 decodes to one), which int() then refuses with a ValueError.
    with pytest.raises(ServerError) as e:
        header_length(value, 100)
    assert e.value.status is Status.INVALID_ARG
    assert "Inference-Header-Content-Length must be a non-negative integer" in e.value.message


def test_header_length_superscript_over_http_is_400(served: AppThread) -> None:
    reply = request(
        served.app.port("http"),
        "POST",
        "/v2/models/add_sub/infer",
        b'{"inputs": []}',
        {"Inference-Header-Content-Length": "\u00b2"},  # sent as the byte 0xB2
    )
    assert reply.status == 400, reply.body
    assert "Inference-Header-Content-Length must be a non-negative integer" in reply.error


@pytest.mark.parametrize("datatype", ["INT64", "UINT64", "INT8"])
def test_json_ints_past_int64_and_negative_are_out_of_range(datatype: str) -> None:
    # fuzz/http_infer: a negative value beside one past int64 max made the exact integer retry
    # ask numpy for int64, which raised OverflowError.
    body = (
        b'{"inputs":[{"name":"i","shape":[2],"datatype":"%s","data":[-1,9223372036854775808]}]}'
        % datatype.encode()
    )
    with pytest.raises(ServerError) as e:
        decode_request(body, None, "m", "", NO_SHM)
    value = "-1" if datatype == "UINT64" else "9223372036854775808"
    assert e.value.message == f"input 'i': value {value} is out of range for {datatype}"
