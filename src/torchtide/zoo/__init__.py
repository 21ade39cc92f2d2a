"""Example models used by the bundled model repository and the benchmarks.

* :func:`torchtide.zoo.resnet.resnet18` -- ResNet-18 in plain torch (torchvision's layout).
* :class:`torchtide.zoo.minilm.MiniLMEmbedder` -- all-MiniLM-L6-v2 sentence embeddings, offline.

Submodules are imported lazily so that ``import torchtide.zoo`` stays cheap.
"""

__all__ = ["minilm", "resnet"]
