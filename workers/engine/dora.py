"""DoRA's per-output scale for one adapter slot, computed as PEFT computes it.

PEFT's DoRA output is ``g * (W x + scale * B A x)`` (plus the bias), with
``g = magnitude / ||W + scale * B A||``: the L2 norm of each output's row of
the combined [out, in] weight (PEFT's ``DoraLinearLayer.get_weight_norm``,
which it calls column-wise), in the weight's dtype and detached. ``g``
depends only on the base weight and the adapter, so it is computed once when
the adapter is copied into a slot, from the unmerged base weight; a forward
then costs one gather and two multiplies per row.
"""

from __future__ import annotations

import torch


def magnitude_scale(
    weight: torch.Tensor, a: torch.Tensor, b: torch.Tensor, *, scale: float, magnitude: torch.Tensor
) -> torch.Tensor:
    """``weight`` [out, in] (the base's, unmerged); ``a`` [in, r] (lora_A transposed); ``b`` [r, out]
    (lora_B transposed, *not* scaled); ``magnitude`` [out]. Returns ``g`` [out] in the weight's dtype."""
    lora_weight = (a.to(weight.dtype) @ b.to(weight.dtype)).t()  # B @ A, [out, in]
    norm = torch.linalg.norm(weight + scale * lora_weight, dim=1).to(weight.dtype)
    g: torch.Tensor = magnitude.to(weight.dtype) / norm
    return g
