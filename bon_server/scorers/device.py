"""Where a verifier runs: CUDA in bf16 when there is one, else CPU in float32."""

from __future__ import annotations

from typing import Any


def resolve_device(device: str = "auto", dtype: str = "auto") -> tuple[Any, Any]:
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("verifier device 'cuda' was asked for, but no CUDA device is available")
    if dtype == "auto":
        torch_dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    else:
        torch_dtype = getattr(torch, dtype)
    return torch.device(device), torch_dtype
