"""Matryoshka BatchTopK SAE (Bussmann, Nabeshima, Karvonen, Nanda 2025, 2503.17547).

Latents are split into nested prefix groups of sizes s_1..s_G. One BatchTopK over the whole
dictionary gives f; each prefix j reconstructs b_dec + sum_{i < m_j} f_i d_i (a running sum of the
per-group decodes; b_dec counted once) and the loss averages their SSE (dictionary_learning's
1/G weights) + aux_alpha * AuxK. Inference/export: JumpReLU with the global threshold, as BatchTopK.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from jaxsae.dictionaries.batchtopk import BatchTopK

DEFAULT_FRACTIONS = (1 / 16, 1 / 16, 1 / 8, 1 / 4, 1 / 2)  # the paper's [m/16, m/16, m/8, m/4, m/2]


@dataclasses.dataclass(frozen=True)
class MatryoshkaBatchTopK(BatchTopK):
    group_fractions: tuple[float, ...] = DEFAULT_FRACTIONS

    name: ClassVar[str] = "matryoshka"

    def __post_init__(self):
        super().__post_init__()
        fr = tuple(self.group_fractions)
        if not fr or any(f <= 0 for f in fr) or abs(sum(fr) - 1.0) > 1e-6:
            raise ValueError(f"matryoshka: group_fractions must be positive and sum to 1, got {fr}")
        if any(s <= 0 for s in self.group_sizes):
            raise ValueError(f"matryoshka: d_sae={self.d_sae} too small for {len(fr)} groups {fr}")

    @property
    def group_sizes(self) -> tuple[int, ...]:
        """Sizes from the fractions; the remainder goes to the last group."""
        sizes = [int(f * self.d_sae) for f in self.group_fractions[:-1]]
        return tuple(sizes + [self.d_sae - sum(sizes)])

    def reconstruct_groups(self, params, x_bd, f_bf):
        acc = params["b_dec"] + self.skip_out(params, x_bd)
        outs, start = [], 0
        for size in self.group_sizes:
            end = start + size
            acc = acc + f_bf[..., start:end] @ params["W_dec"][start:end]
            outs.append(acc)
            start = end
        return outs
