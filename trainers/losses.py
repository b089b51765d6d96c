"""Losses shared by the trainers."""

from __future__ import annotations

import torch

# Largest |x_i − y_i|^p summed as written below: e^60 times 2^27 coordinates stays far inside
# float32 (e^88.7). Above it the loss is a log-sum-exp, which then differs from the exact value by
# less than (D − 1) e^−60 relative.
DIRECT_LIMIT = 60.0


def log_exp_contrast(lq: torch.Tensor, hq: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """LRFR's feature contrast loss, averaged over the batch.

    L = 1 / (p D) · log(1 + Σ_i (exp(|x_i − y_i|^p) − 1)) per sample, x the LQ and y the HQ
    embedding (N, D). It grows like the p-norm for small differences and is dominated by the
    largest coordinate differences for large ones. Finite for any finite embeddings: a sample
    whose largest |x_i − y_i|^p passes ``DIRECT_LIMIT`` (where e^(...) overflows float32 near 88)
    is summed as log Σ_i exp(|x_i − y_i|^p), the same value to float rounding.
    """
    dimensions = lq.shape[1]
    difference = (lq.float() - hq.float()).abs() ** p
    direct = torch.log1p(torch.expm1(difference.clamp(max=DIRECT_LIMIT)).sum(dim=1))
    shifted = torch.logsumexp(difference, dim=1)
    per_sample = torch.where(difference.amax(dim=1) > DIRECT_LIMIT, shifted, direct) / (p * dimensions)
    return per_sample.mean()
