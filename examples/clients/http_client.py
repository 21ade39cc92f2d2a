"""Query the example models with tritonclient over HTTP, exactly as against Triton.

python examples/clients/http_client.py [--url localhost:8000]
"""

from __future__ import annotations

import argparse

import numpy as np
import tritonclient.http as httpclient


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default="localhost:8000")
    args = p.parse_args()
    client = httpclient.InferenceServerClient(url=args.url)
    assert client.is_server_ready(), "server not ready"

    # W1 add_sub
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    b = np.ones((1, 16), dtype=np.int32)
    inputs = [
        httpclient.InferInput("INPUT0", [1, 16], "INT32"),
        httpclient.InferInput("INPUT1", [1, 16], "INT32"),
    ]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b)
    result = client.infer("add_sub", inputs)
    print("add_sub OUTPUT0:", result.as_numpy("OUTPUT0").tolist())
    print("add_sub OUTPUT1:", result.as_numpy("OUTPUT1").tolist())

    # W2 resnet18: top-3 classes of a random image (classification extension)
    image = np.random.default_rng(0).random((1, 3, 224, 224), dtype=np.float32)
    x = httpclient.InferInput("INPUT__0", list(image.shape), "FP32")
    x.set_data_from_numpy(image)
    out = httpclient.InferRequestedOutput("OUTPUT__0", class_count=3)
    result = client.infer("resnet18", [x], outputs=[out])
    print("resnet18 top-3:", [s.decode() for s in result.as_numpy("OUTPUT__0").reshape(-1)])

    # W3 minilm: embeddings of two sentences and their cosine similarity
    texts = np.array(
        [["A cat sits on the mat."], ["A kitten is sitting on a rug."]], dtype=np.object_
    )
    t = httpclient.InferInput("TEXT", list(texts.shape), "BYTES")
    t.set_data_from_numpy(texts)
    emb = client.infer("minilm", [t]).as_numpy("EMBEDDING")
    print("minilm embedding shape:", emb.shape, "cosine:", round(float(emb[0] @ emb[1]), 4))


if __name__ == "__main__":
    main()
