"""Probe a server's access control and print one JSON line per probe, to diff tritonserver
against torchtide started with the same flags:

    FLAGS=(--http-restricted-api=inference:infer-key=ik
      --http-restricted-api=statistics,model-repository,logging,shared-memory,trace:admin-key=secret
      --grpc-restricted-protocol=health:hkey=hv
      --grpc-restricted-protocol=model-repository,metadata,logging,trace,shared-memory,model-config:\
admin-key=secret
      --grpc-restricted-protocol=inference:infer-key=ik
      --grpc-restricted-protocol=statistics:Ukey=uv)
    python scripts/access_probe.py HTTP_PORT GRPC_PORT > server.jsonl

(the repository: add_sub with `instance_group [{ kind: KIND_CPU }]`; tritonserver from
/work/shared/reference/triton-start.sh). Observed with tritonserver 2.51: identical answers except
the upper-case gRPC key (`g_stats_ukey_lower`: tritonserver never matches it).
"""

import http.client
import json
import queue
import sys

import grpc
import numpy as np
import tritonclient.grpc as grpcclient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.utils import InferenceServerException

hp, gp = int(sys.argv[1]), int(sys.argv[2])
out = {}


def req(method, path, headers=None, body=None):
    c = http.client.HTTPConnection("127.0.0.1", hp, timeout=30)
    c.request(method, path, body=body, headers=headers or {})
    r = c.getresponse()
    data = r.read()
    c.close()
    return [r.status, data.decode(errors="replace")]


BODY = json.dumps(
    {
        "inputs": [
            {"name": n, "shape": [1, 16], "datatype": "INT32", "data": list(range(16))}
            for n in ("INPUT0", "INPUT1")
        ]
    }
)
out["infer_nohdr"] = req("POST", "/v2/models/add_sub/infer", body=BODY)
out["infer_wrongval"] = req("POST", "/v2/models/add_sub/infer", {"infer-key": "nope"}, BODY)
out["infer_ok"] = req("POST", "/v2/models/add_sub/infer", {"infer-key": "ik"}, BODY)[0]
out["infer_upper_hdr"] = req("POST", "/v2/models/add_sub/infer", {"INFER-KEY": "ik"}, BODY)[0]
out["infer_value_case"] = req("POST", "/v2/models/add_sub/infer", {"infer-key": "IK"}, BODY)[0]
out["infer_get_nohdr"] = req("GET", "/v2/models/add_sub/infer")
out["infer_get_hdr"] = req("GET", "/v2/models/add_sub/infer", {"infer-key": "ik"})[0]
out["infer_badjson_nohdr"] = req("POST", "/v2/models/add_sub/infer", body="nope")[0]
out["stats_all_nohdr"] = req("GET", "/v2/models/stats")
out["stats_model_nohdr"] = req("GET", "/v2/models/add_sub/stats")[0]
out["stats_ok"] = req("GET", "/v2/models/stats", {"admin-key": "secret"})[0]
out["repo_index_nohdr"] = req("POST", "/v2/repository/index")
out["repo_index_get_nohdr"] = req("GET", "/v2/repository/index")[0]
out["unknown_path"] = req("GET", "/v2/nope")[0]
out["metadata_open"] = req("GET", "/v2/models/add_sub")[0]
out["ready_open"] = req("GET", "/v2/health/ready")[0]
out["logging_nohdr"] = req("GET", "/v2/logging")
out["shm_nohdr"] = req("GET", "/v2/systemsharedmemory/status")
out["config_nohdr"] = req("GET", "/v2/models/add_sub/config")[0]
out["trace_nohdr"] = req("GET", "/v2/trace/setting")

c = grpcclient.InferenceServerClient(f"127.0.0.1:{gp}")


def g(name, fn):
    try:
        fn()
        out[name] = "OK"
    except InferenceServerException as e:
        out[name] = [e.status(), e.message()]


data = np.arange(16, dtype=np.int32).reshape(1, 16)
ins = []
for n in ("INPUT0", "INPUT1"):
    i = grpcclient.InferInput(n, [1, 16], "INT32")
    i.set_data_from_numpy(data)
    ins.append(i)
g("g_live_nohdr", lambda: c.is_server_live())
g("g_live_hdr", lambda: c.is_server_live(headers={"triton-grpc-protocol-hkey": "hv"}))
g("g_live_hdr_nopfx", lambda: c.is_server_live(headers={"hkey": "hv"}))
g("g_meta_nohdr", lambda: c.get_server_metadata())
g("g_stats_nohdr", lambda: c.get_inference_statistics())
g("g_index_nohdr", lambda: c.get_model_repository_index())
g(
    "g_index_hdr",
    lambda: c.get_model_repository_index(headers={"triton-grpc-protocol-admin-key": "secret"}),
)
g("g_infer_nohdr", lambda: c.infer("add_sub", ins))
g("g_infer_hdr", lambda: c.infer("add_sub", ins, headers={"triton-grpc-protocol-infer-key": "ik"}))
g("g_log_nohdr", lambda: c.get_log_settings())
g("g_trace_nohdr", lambda: c.get_trace_settings())
g("g_cfg_nohdr", lambda: c.get_model_config("add_sub"))
g("g_shm_nohdr", lambda: c.get_system_shared_memory_status())
# upper-case key configured: "Ukey" on shared-memory? (configured as statistics below)
g(
    "g_stats_ukey_lower",
    lambda: c.get_inference_statistics(headers={"triton-grpc-protocol-ukey": "uv"}),
)
results = queue.Queue()
c.start_stream(callback=lambda result, error: results.put(error))
try:
    err = results.get(timeout=5)
    out["g_stream_open"] = ["refused at open", err.status(), err.message()]
except queue.Empty:
    c.async_stream_infer("add_sub", ins)
    err = results.get(timeout=30)
    out["g_stream_open"] = ["after first request", err and err.status(), err and err.message()]
c.stop_stream()
with grpc.insecure_channel(f"127.0.0.1:{gp}") as ch:
    stub = health_pb2_grpc.HealthStub(ch)
    try:
        stub.Check(health_pb2.HealthCheckRequest(), timeout=10)
        out["g_health_check"] = "OK"
    except grpc.RpcError as e:
        out["g_health_check"] = [str(e.code()), e.details()]
for k, v in out.items():
    print(json.dumps([k, v]))
