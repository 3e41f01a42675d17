"""cnnf.switches: the scoped on/off settings behind use_kernels, use_native and straight_through_gates."""

from __future__ import annotations

import threading

import pytest

from cnnf import functional, fused, native
from cnnf.switches import Switch


def test_scopes_nest_and_restore_the_default() -> None:
    switch = Switch("test_switch", default=None)
    assert switch.scoped() is None
    with switch.scope(True):
        assert switch.scoped() is True
        with switch.scope(False):
            assert switch.scoped() is False
        assert switch.scoped() is True
    assert switch.scoped() is None


def test_a_scope_is_restored_when_its_block_raises() -> None:
    switch = Switch("test_switch_raise", default=False)
    with pytest.raises(RuntimeError):
        with switch.scope(True):
            raise RuntimeError("boom")
    assert switch.scoped() is False


def test_a_scope_does_not_reach_other_threads() -> None:
    switch = Switch("test_switch_thread", default=False)
    seen: list[object] = []
    with switch.scope(True):
        worker = threading.Thread(target=lambda: seen.append(switch.scoped()))
        worker.start()
        worker.join()
    assert seen == [False]


@pytest.mark.parametrize(("value", "expected"), [
    (None, None), ("", None), ("  ", None), ("0", False), ("false", False), (" OFF ", False), ("No", False),
    ("1", True), ("yes", True), ("on", True), ("anything", True),
])
def test_environment_values(monkeypatch: pytest.MonkeyPatch, value: str | None, expected: bool | None) -> None:
    if value is None:
        monkeypatch.delenv("CNNF_TEST_SWITCH", raising=False)
    else:
        monkeypatch.setenv("CNNF_TEST_SWITCH", value)
    assert Switch("test_switch_env", default=None, env="CNNF_TEST_SWITCH").from_env() is expected
    assert Switch("test_switch_no_env", default=None).from_env() is None  # no variable: the scope alone decides


def test_fused_environment_overrides_scopes_both_ways(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(fused.ENV, raising=False)
    assert fused._requested() is False  # off outside every scope
    with fused.use_kernels(True):
        assert fused._requested() is True
        monkeypatch.setenv(fused.ENV, "0")
        assert fused._requested() is False
    monkeypatch.setenv(fused.ENV, "1")
    assert fused._requested() is True


def test_native_environment_can_only_turn_the_kernels_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(native.ENV, raising=False)
    assert native._requested() is True  # on by default, inside the fused path
    with native.use_native(False):
        assert native._requested() is False
        monkeypatch.setenv(native.ENV, "1")
        assert native._requested() is False  # a scope that says off stays off
    assert native._requested() is True
    monkeypatch.setenv(native.ENV, "off")
    assert native._requested() is False


def test_straight_through_gates_scope() -> None:
    assert functional.straight_through_enabled() is False
    with functional.straight_through_gates():
        assert functional.straight_through_enabled() is True
        with functional.straight_through_gates(False):
            assert functional.straight_through_enabled() is False
    assert functional.straight_through_enabled() is False
