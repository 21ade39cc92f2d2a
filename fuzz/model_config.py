"""Model configuration loading: config.pbtxt text (or the JSON config of a load request) ->
parsed, auto-completed with Triton's defaults, validated, and turned into what loading uses
(the version selection, ModelSpec, the scheduler's BatchPolicy, warmup samples, the JSON the
config endpoint returns).

Input: the file's bytes; one starting with `{` is read as a load request's JSON config. The
model folder holds version 1 with a `model.py`. Allowed out: ConfigError.
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path

from fuzz._harness import instrumented, main

with instrumented():
    from torchtide import config as cfgmod
    from torchtide.config import ConfigError
    from torchtide.repository import select_versions
    from torchtide.scheduler import BatchPolicy
    from torchtide.warmup import sample_inputs

MODEL_DIR = Path(tempfile.mkdtemp(prefix="torchtide_fuzz_")) / "m"
(MODEL_DIR / "1").mkdir(parents=True)
(MODEL_DIR / "1" / "model.py").write_text("")
SOURCE = str(MODEL_DIR / cfgmod.CONFIG_FILE)


def parse(data: bytes) -> cfgmod.ModelConfig:
    """As repository.prepare reads the file (or server.load the request's JSON config)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{SOURCE}: cannot read: {e}") from None
    if text.startswith("{"):
        return cfgmod.parse_json(text, "load request: config")
    return cfgmod.parse_text(text, SOURCE)


def load(data: bytes, gpu_count: int) -> None:
    cfg = parse(data)
    backend = cfgmod.resolve_backend(cfg, MODEL_DIR, [1])
    cfgmod.complete_defaults(cfg, "m", backend, gpu_count, 2)
    select_versions(cfg, [1], SOURCE)
    cfgmod.validate(cfg, SOURCE, gpu_count)
    cfgmod.ModelSpec.of(cfg)
    BatchPolicy.of(cfg)
    for w in cfg.model_warmup:
        sample_inputs(cfg, w, MODEL_DIR)
    cfgmod.to_json_dict(cfg)


def test_one_input(data: bytes) -> None:
    with contextlib.suppress(ConfigError):
        load(data, len(data) % 2)


if __name__ == "__main__":
    main(test_one_input)
