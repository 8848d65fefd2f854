"""``dtype="auto"``: the dtype the hardware runs natively, chosen from injected facts."""

import logging

import pytest

from bon_server.dtypes import choose_dtype, cpu_flags, resolve_dtype

NO_BF16 = ["fpu", "sse2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni"]


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (NO_BF16, "float32"),  # AVX-512 alone does not do bfloat16 arithmetic
        ([], "float32"),  # flags unreadable: the safe choice
        ([*NO_BF16, "avx512_bf16"], "bfloat16"),
        ([*NO_BF16, "amx_tile", "amx_bf16", "amx_int8"], "bfloat16"),
        (["amx_tile"], "float32"),  # AMX tiles without the bf16 unit
    ],
)
def test_cpu_auto_follows_native_bfloat16(flags, expected):
    choice = choose_dtype("auto", device="cpu", flags=flags)
    assert choice.dtype == expected
    assert choice.reason.startswith("CPU has native") == (expected == "bfloat16")


@pytest.mark.parametrize(("bf16", "expected"), [(True, "bfloat16"), (False, "float16")])
def test_cuda_auto(bf16, expected):
    # the CPU's flags say nothing about a GPU
    assert choose_dtype("auto", device="cuda:0", flags=NO_BF16, cuda_bf16=bf16).dtype == expected


@pytest.mark.parametrize("asked", ["float32", "bfloat16", "float16"])
def test_explicit_dtype_wins(asked):
    for flags in (NO_BF16, [*NO_BF16, "amx_bf16"]):
        choice = choose_dtype(asked, device="cpu", flags=flags)
        assert choice.dtype == asked and "explicitly" in choice.reason


def test_cpu_flags_parse_x86_and_arm(tmp_path):
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16\n\nprocessor\t: 1\n")
    assert cpu_flags(x86) == {"fpu", "avx512f", "avx512_bf16"}
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd bf16\n")
    assert cpu_flags(arm) == {"fp", "asimd", "bf16"}
    assert cpu_flags(tmp_path / "missing") == frozenset()


def test_resolve_logs_the_choice_and_why(caplog):
    with caplog.at_level(logging.INFO, logger="bon_server.dtypes"):
        dtype = resolve_dtype("auto", device="cpu", what="policy engine")
    expected = choose_dtype("auto", device="cpu", flags=cpu_flags()).dtype
    assert dtype == expected
    [record] = caplog.records
    assert record.getMessage().startswith(f"policy engine dtype on cpu: {expected} (")


def test_a_verifier_on_cpu_stays_float32_and_on_cuda_follows_the_device():
    bf16 = [*NO_BF16, "avx512_bf16", "amx_bf16"]
    assert choose_dtype("auto", device="cpu", flags=bf16, component="verifier").dtype == "float32"
    assert choose_dtype("bfloat16", device="cpu", flags=bf16, component="verifier").dtype == (
        "bfloat16")
    cuda = choose_dtype("auto", device="cuda", cuda_bf16=True, component="verifier")
    assert cuda.dtype == "bfloat16"
