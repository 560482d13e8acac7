"""The device registry: what a device may say about itself, and what it may not."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_runtime.devices import (
    MAX_DEVICES,
    Description,
    DescriptionError,
    DeviceRegistry,
    parse_json_description,
)


def test_descriptions() -> None:
    found = parse_json_description(
        '{"kind": "light", "capabilities": ["on_off"], "names": ["desk lamp", "台灯"]}'.encode()
    )
    assert found == Description("light", ("on_off",), ("desk lamp", "台灯"), True)
    assert parse_json_description(b'{"name": "porch"}').names == ("porch",)
    assert parse_json_description(b"offline") == Description(online=False)
    assert parse_json_description(b'{"status": "offline"}').online is False
    for bad in (b"", b"[1]", b"{", b'{"kind": 3}', b"[" * 100_000, b"x" * 20_000):
        with pytest.raises(DescriptionError):
            parse_json_description(bad)


def test_registration_survives_a_restart(tmp_path: Path) -> None:
    registry = DeviceRegistry(tmp_path / "devices.db")
    assert registry.register("lamp-1", "light", ("on_off",), source="mqtt", names=("desk lamp",))
    assert registry.register("hall", "sensor", (), source="coap")
    registry.close()
    again = DeviceRegistry(tmp_path / "devices.db")
    try:
        assert again.kind("lamp-1") == "light" and again.registered("lamp-1")
        assert again.kind("nobody") is None and not again.registered("nobody")
        # Names for the intent templates: a device without names is called by its id.
        assert again.names() == {
            "lamp-1": (("desk lamp",), "light"),
            "hall": (("hall",), "sensor"),
        }
    finally:
        again.close()


def test_offline_and_cleared_births(tmp_path: Path) -> None:
    registry = DeviceRegistry(tmp_path / "devices.db")
    try:
        # A will for a device never seen registers nothing.
        assert not registry.register("ghost", "", (), source="mqtt", online=False)
        assert not registry.registered("ghost") and len(registry) == 0
        registry.register("lamp-1", "lamp", ("on_off",), source="mqtt")
        registry.register("lamp-1", "", (), source="mqtt", online=False)
        # Offline keeps what it was, but it is no longer admitted as registered.
        assert registry.kind("lamp-1") == "lamp" and not registry.registered("lamp-1")
        registry.forget("lamp-1")
        assert registry.kind("lamp-1") is None and registry.all() == []
    finally:
        registry.close()


def test_ids_and_numbers_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import edge_runtime.devices as devices

    monkeypatch.setattr(devices, "MAX_DEVICES", 3)
    registry = DeviceRegistry(tmp_path / "devices.db")
    try:
        assert not registry.register("x" * 129, "lamp", (), source="mqtt")
        for n in range(3):
            assert registry.register(f"d{n}", "lamp", (), source="mqtt")
        assert not registry.register("d3", "lamp", (), source="mqtt")
        # A device already known may still update itself.
        assert registry.register("d0", "heater", (), source="coap")
        assert len(registry) == 3 and registry.kind("d0") == "heater"
    finally:
        registry.close()
    assert MAX_DEVICES == 10_000
