"""Losses shared by the trainers."""

from __future__ import annotations

import torch


def log_exp_contrast(lq: torch.Tensor, hq: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """LRFR's feature contrast loss, averaged over the batch.

    L = 1 / (p D) · log(1 + Σ_i (exp(|x_i − y_i|^p) − 1)) per sample, x the LQ and y the HQ
    embedding (N, D). It grows like the p-norm for small differences and is dominated by the
    largest coordinate differences for large ones.
    """
    dimensions = lq.shape[1]
    difference = (lq.float() - hq.float()).abs() ** p
    per_sample = torch.log1p(torch.expm1(difference).sum(dim=1)) / (p * dimensions)
    return per_sample.mean()
