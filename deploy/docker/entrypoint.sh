#!/bin/sh
# Image entrypoint (exec form in the Dockerfiles). Like NVIDIA's Triton images, it runs a command
# given as the first argument, so KServe's Triton runtime args `tritonserver --model-store=...` and
# ModelMesh's `/bin/sh -c 'exec tritonserver ...'` start unchanged; anything else is handed to
# `torchtide` (`docker run IMAGE serve ...`, `docker run IMAGE bench ...`). `exec` keeps the server
# as PID 1, so SIGTERM reaches it and it drains in-flight requests before exiting.
set -eu
case "${1:-}" in
  tritonserver | torchtide | python | python3 | sh | bash | /*)
    exec "$@"
    ;;
  *)
    exec torchtide "$@"
    ;;
esac
