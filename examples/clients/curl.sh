#!/usr/bin/env bash
# The V2 REST API with curl: health, metadata, JSON inference on each example model, statistics,
# metrics.   bash examples/clients/curl.sh [HOST:HTTP_PORT] [HOST:METRICS_PORT]
set -euo pipefail
H=${1:-localhost:8000}
M=${2:-localhost:8002}
echo "ready: $(curl -s -o /dev/null -w '%{http_code}' "$H/v2/health/ready")"
curl -sf "$H/v2" ; echo
curl -sf "$H/v2/models/add_sub" ; echo
curl -sf "$H/v2/models/add_sub/infer" -H 'Content-Type: application/json' -d '{
  "id": "curl-1",
  "inputs": [
    {"name": "INPUT0", "datatype": "INT32", "shape": [1, 16], "data": [0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15]},
    {"name": "INPUT1", "datatype": "INT32", "shape": [1, 16], "data": [1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1]}
  ]}' ; echo
# Long answers are read whole, then cut for display: `curl | head -c` would close the pipe while
# curl may still be writing, and curl then fails (exit 23) under pipefail.
embedding=$(curl -sf "$H/v2/models/minilm/infer" -d '{
  "inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [1, 1], "data": ["Triton speaks V2."]}],
  "outputs": [{"name": "EMBEDDING"}]}')
echo "${embedding:0:200} ..."
stats=$(curl -sf "$H/v2/models/add_sub/stats")
echo "${stats:0:300} ..."
metrics=$(curl -sf "$M/metrics")
grep '^nv_inference_count' <<<"$metrics"
