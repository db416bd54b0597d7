"""A small GPT-style causal language model, built from its config (random initialisation, nothing downloaded).

Token and position embeddings, ``depth`` pre-norm transformer blocks with causal self-attention (the ViT's
blocks, :mod:`landscape.models.vit`, with the attention masked to the positions before), a final norm and a
head that shares the token embedding's weight (weight tying, as GPT-2 does). Attention is written out by
default, so exact Hessian-vector products work on one process; ``attention="sdpa"`` uses the fused kernel.
The forward takes token ids ``(batch, time)`` and returns next-token logits ``(batch, time, vocab)``.
"""

from __future__ import annotations

import torch
from torch import nn

from landscape.models.vit import Block, vit_norm


class GPT(nn.Module):
    def __init__(
        self,
        vocab: int = 256,
        context: int = 64,
        dim: int = 64,
        depth: int = 2,
        heads: int = 4,
        mlp_ratio: float = 4.0,
        norm: str = "layer",
        dropout: float = 0.0,
        attention: str = "explicit",
    ):
        super().__init__()
        self.context = context
        self.embed = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.zeros(1, context, dim))
        self.blocks = nn.Sequential(
            *[Block(dim, heads, mlp_ratio, norm, dropout, attention, causal=True) for _ in range(depth)]
        )
        self.norm = vit_norm(norm, dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.embed.weight  # tied: one parameter, reached twice
        nn.init.normal_(self.embed.weight, std=0.02)
        nn.init.normal_(self.pos, std=0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        t = tokens.shape[1]
        if t > self.context:
            raise ValueError(f"a sequence of {t} tokens is longer than the model's context of {self.context}")
        x = self.embed(tokens) + self.pos[:, :t]
        return self.head(self.norm(self.blocks(x)))


def next_token_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of every position's prediction of the token after it (mean over positions and sequences)."""
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
