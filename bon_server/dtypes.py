"""What ``dtype="auto"`` means here: the dtype the hardware runs natively.

vLLM's own ``auto`` is bfloat16 on CPU whatever the CPU, and a CPU without bfloat16 units
emulates it (measured 1.7-3x slower than float32 on such a CPU for the embedded policy). So
``auto`` is resolved here, once, for the policy engine and the verifier, in the server and in
``verifier_training``:

- CUDA: bfloat16 where the device supports it, else float16;
- CPU: bfloat16 only with AMX (``amx_bf16``) or AVX512-BF16 (``avx512_bf16``), else float32;
  but a transformers verifier on CPU stays float32 (``component="verifier"``): in bfloat16 its
  process grew with every new batch shape (the soak test: 1012 -> 1344 MiB in 3 minutes on a
  CPU with AVX512-BF16, against 625 -> 626 MiB in float32), and its scores moved with padding
  by more than 1e-5.

An explicit dtype always wins. ``choose_dtype`` takes the CPU flags and the CUDA facts as
arguments so the rule can be tested without the hardware; ``resolve_dtype`` reads them off
this machine and logs what it chose and why.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

DTYPES = ("auto", "float32", "bfloat16", "float16")
CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


@dataclass(frozen=True, slots=True)
class DtypeChoice:
    dtype: str  # float32 | bfloat16 | float16 (or whatever was asked for explicitly)
    reason: str

    def __str__(self) -> str:
        return f"{self.dtype} ({self.reason})"


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> frozenset[str]:
    """The first CPU's feature flags (empty where /proc/cpuinfo cannot be read)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def choose_dtype(
    requested: str,
    *,
    device: str,
    flags: Iterable[str] = (),
    cuda_bf16: bool = False,
    component: str = "engine",
) -> DtypeChoice:
    """The dtype for ``requested`` on ``device`` ("cpu" or "cuda...") for a ``component``
    ("engine": a vLLM engine; "verifier": a transformers model), with the reason."""
    if requested != "auto":
        return DtypeChoice(requested, "asked for explicitly")
    if component == "verifier" and not device.startswith("cuda"):
        return DtypeChoice(
            "float32", "a verifier on CPU: bfloat16 grows memory with every batch shape"
        )
    if device.startswith("cuda"):
        if cuda_bf16:
            return DtypeChoice("bfloat16", "CUDA device supports bfloat16")
        return DtypeChoice("float16", "CUDA device without bfloat16")
    found = sorted(set(flags) & set(CPU_BF16_FLAGS))
    if found:
        return DtypeChoice("bfloat16", f"CPU has native bfloat16 ({', '.join(found)})")
    return DtypeChoice(
        "float32", "CPU has no native bfloat16 (no amx_bf16, no avx512_bf16): it would be emulated"
    )


def resolve_dtype(
    requested: str = "auto", *, device: str = "auto", what: str = "engine",
    component: str = "engine",
) -> str:
    """``choose_dtype`` on this machine's facts, logged; ``device="auto"``: CUDA if present."""
    cuda_bf16 = False
    if device == "auto" or device.startswith("cuda"):
        try:
            import torch

            has_cuda = torch.cuda.is_available()
            if device == "auto":
                device = "cuda" if has_cuda else "cpu"
            cuda_bf16 = has_cuda and torch.cuda.is_bf16_supported()
        except ImportError:  # pragma: no cover - torch is a dependency
            device = "cpu" if device == "auto" else device
    flags = cpu_flags() if not device.startswith("cuda") else ()
    choice = choose_dtype(
        requested, device=device, flags=flags, cuda_bf16=cuda_bf16, component=component
    )
    log.info("%s dtype on %s: %s", what, device, choice)
    return choice.dtype


def resolve_engine_dtype(requested: str = "auto", *, what: str = "engine") -> str:
    """``resolve_dtype`` for a vLLM engine on vLLM's own platform (CPU or CUDA)."""
    from vllm.platforms import current_platform

    device = "cpu" if current_platform.is_cpu() else "cuda"
    return resolve_dtype(requested, device=device, what=what)
