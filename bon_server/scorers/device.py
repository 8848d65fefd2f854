"""Where a verifier runs: CUDA when there is one, else CPU; its dtype by ``dtypes``."""

from __future__ import annotations

from typing import Any

from ..dtypes import resolve_dtype


def resolve_device(device: str = "auto", dtype: str = "auto") -> tuple[Any, Any]:
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("verifier device 'cuda' was asked for, but no CUDA device is available")
    chosen = resolve_dtype(dtype, device=device, what="verifier", component="verifier")
    torch_dtype = getattr(torch, chosen)
    return torch.device(device), torch_dtype
