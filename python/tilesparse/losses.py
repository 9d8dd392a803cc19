"""Distillation losses for Hugging Face encoders (BERT, MiniLM, RoBERTa, ViT, ...).

:class:`EncoderDistillLoss` compares a student's outputs with its teacher's:
the sentence embedding (mean of the last hidden states over the real tokens,
L2-normalised, as sentence-transformers embeds), every layer's hidden states
(MSE normalised by the teacher's mean square, so each layer weighs the same
whatever its scale) and, when both outputs carry ``logits``, the
temperature-scaled KL divergence of the predictions (Hinton et al.).
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["mean_pool", "EncoderDistillLoss"]


def _get(out: Any, name: str):
    if isinstance(out, dict):
        return out.get(name)
    return getattr(out, name, None)


def mean_pool(hidden: Tensor, attention_mask: Optional[Tensor] = None) -> Tensor:
    """Mean of ``hidden [B, T, H]`` over the real tokens, L2-normalised ``[B, H]``."""
    if attention_mask is None:
        return F.normalize(hidden.mean(1), dim=-1)
    m = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return F.normalize((hidden * m).sum(1) / m.sum(1).clamp_min(1e-9), dim=-1)


class EncoderDistillLoss(nn.Module):
    """``embedding_weight * (1 - cos(e_s, e_t)) + hidden_weight * mean_l nMSE(h_s^l, h_t^l)
    + logit_weight * T^2 KL(p_t^T || p_s^T)``.

    ``forward(student_out, teacher_out, attention_mask=None)`` takes model
    outputs with ``last_hidden_state`` and (for the hidden-state term)
    ``hidden_states`` (run the models with ``output_hidden_states=True``); the
    embedding layer's output (``hidden_states[0]``) is left out. Only real
    tokens count when ``attention_mask [B, T]`` is given.

    Args:
        embedding_weight, hidden_weight, logit_weight: weights of the terms (0 drops one).
        temperature: of the logit term.
        layer_map: ``layer_map[j]`` is the teacher layer (0-based, after the
            embeddings) that student layer ``j`` matches; default the same
            index (a student with as many layers as its teacher).
    """

    def __init__(self, embedding_weight: float = 1.0, hidden_weight: float = 1.0, logit_weight: float = 1.0,
                 temperature: float = 2.0, layer_map: Optional[Sequence[int]] = None) -> None:
        super().__init__()
        for name, v in (("embedding_weight", embedding_weight), ("hidden_weight", hidden_weight),
                        ("logit_weight", logit_weight)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise ValueError(f"{name} must be a float >= 0, got {v!r}")
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or temperature <= 0:
            raise ValueError(f"temperature must be a float > 0, got {temperature!r}")
        if layer_map is not None and (not isinstance(layer_map, (list, tuple)) or
                                      not all(isinstance(i, int) and i >= 0 for i in layer_map)):
            raise ValueError(f"layer_map must be a list of teacher layer indices, got {layer_map!r}")
        self.embedding_weight, self.hidden_weight = float(embedding_weight), float(hidden_weight)
        self.logit_weight, self.temperature = float(logit_weight), float(temperature)
        self.layer_map = None if layer_map is None else list(layer_map)

    def forward(self, student_out: Any, teacher_out: Any, attention_mask: Optional[Tensor] = None) -> Tensor:
        terms = []
        last_s, last_t = _get(student_out, "last_hidden_state"), _get(teacher_out, "last_hidden_state")
        if self.embedding_weight:
            if last_s is None or last_t is None:
                raise ValueError("EncoderDistillLoss: the outputs have no last_hidden_state (embedding term)")
            e_s, e_t = mean_pool(last_s, attention_mask), mean_pool(last_t.to(last_s.dtype), attention_mask)
            terms.append(self.embedding_weight * (1 - (e_s * e_t).sum(-1)).mean())
        if self.hidden_weight:
            hs, ht = _get(student_out, "hidden_states"), _get(teacher_out, "hidden_states")
            if hs is None or ht is None:
                raise ValueError("EncoderDistillLoss: the outputs have no hidden_states: run both models with "
                                 "output_hidden_states=True, or set hidden_weight=0")
            hs, ht = list(hs[1:]), list(ht[1:])
            ht = [ht[i] for i in self.layer_map] if self.layer_map is not None else ht
            if len(hs) != len(ht):
                raise ValueError(f"EncoderDistillLoss: the student has {len(hs)} layers, the teacher {len(ht)}: "
                                 "pass layer_map")
            m = None if attention_mask is None else attention_mask.unsqueeze(-1).to(hs[0].dtype)
            layer_terms = []
            for h, t in zip(hs, ht):
                t = t.to(h.dtype)
                d, e = (h - t) ** 2, t ** 2
                if m is not None:
                    d, e = d * m, e * m
                layer_terms.append(d.sum() / e.sum().clamp_min(1e-12))
            terms.append(self.hidden_weight * torch.stack(layer_terms).mean())
        if self.logit_weight:
            ls, lt = _get(student_out, "logits"), _get(teacher_out, "logits")
            if ls is not None and lt is not None:
                T = self.temperature
                terms.append(self.logit_weight * T * T * F.kl_div(F.log_softmax(ls / T, -1),
                                                                  F.log_softmax(lt.to(ls.dtype) / T, -1),
                                                                  log_target=True, reduction="batchmean"))
        if not terms:
            raise ValueError("EncoderDistillLoss: every term has weight 0")
        return torch.stack(terms).sum()
