"""cnnf.runtime: the one place that says whether this CPU computes bf16 natively."""

from __future__ import annotations

import pytest
import torch

from cnnf.runtime import BF16_ENV, bf16_note, cpu_name, native_bf16


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(BF16_ENV, raising=False)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)


def test_detection_follows_the_cpu_flags_torch_reports() -> None:
    expected = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    assert native_bf16() is expected
    assert (bf16_note() == "") is expected
    assert native_bf16("cuda") and bf16_note("cuda:0") == "", "a GPU computes bf16 natively"


def test_the_environment_overrides_the_detection(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(BF16_ENV, "0")
    assert not native_bf16()
    note = bf16_note()
    assert cpu_name() in note and f"{BF16_ENV}=0" in note and "emulated" in note and "\n" not in note
    monkeypatch.setenv(BF16_ENV, "1")
    assert native_bf16() and bf16_note() == ""
    monkeypatch.setenv(BF16_ENV, "maybe")
    with pytest.raises(ValueError, match=BF16_ENV):
        native_bf16()


def test_onednn_capped_below_bf16_reads_as_emulated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert not native_bf16() and "ONEDNN_MAX_CPU_ISA=AVX2" in bf16_note()
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_AMX")
    assert native_bf16() is (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
