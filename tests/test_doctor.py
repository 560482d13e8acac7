"""The doctor report on this machine: exit codes and the lines that explain them."""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

from edge_runtime import doctor
from edge_runtime.device import DeviceInfo, probe

MIB = 1024 * 1024
# Built by `edge-runtime model build-tiny` and kept in the repository.
TINY_MODEL = Path(__file__).resolve().parents[1] / "models" / "glm-tiny"


def run(config_path: Path | None, device: DeviceInfo | None = None) -> tuple[int, str]:
    out = io.StringIO()
    code = doctor.run(config_path, out, device=device)
    return code, out.getvalue()


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "edge-runtime.toml"
    path.write_text(text)
    return path


def make_model(tmp_path: Path, size: int) -> Path:
    directory = tmp_path / "model"
    directory.mkdir()
    (directory / "model.onnx").write_bytes(b"\0" * size)
    return directory


def test_missing_model_dir_fails_and_names_the_path(tmp_path: Path) -> None:
    config = write_config(tmp_path, '[model]\npath = "no-such-model"\n')
    code, text = run(config)
    assert code == 1
    assert f"FAIL  model    {tmp_path / 'no-such-model'}: not found" in text
    # The rest of the report is still there.
    info = probe()
    assert f"arch                 {info.arch}" in text
    assert "ok    config" in text
    assert "ok    profile" in text
    assert "ok    disk" in text
    assert "result: 1 required check(s) failed" in text


def test_report_describes_device_profile_and_settings(tmp_path: Path) -> None:
    config = write_config(tmp_path, '[model]\npath = "m"\n[runtime]\nthreads = 1\n')
    _, text = run(config)
    for label in (
        "cpu",
        "int8 ISA found",
        "int8 ISA missing",
        "cores",
        "cgroup cpu limit",
        "memory total",
        "memory available",
        "cgroup memory limit",
        "why",
        "context length",
        "int8 scheme",
        "concurrency",
        "memory bound",
    ):
        assert f"\n  {label} " in text
    assert "threads              1\n" in text


def test_memory_bound_below_model_size_fails(tmp_path: Path) -> None:
    make_model(tmp_path, 2 * MIB)
    config = write_config(tmp_path, '[model]\npath = "model"\n[limits]\nmemory_max_mb = 1\n')
    code, text = run(config)
    assert code == 1
    assert "FAIL  memory   limits.memory_max_mb = 1 MiB is below the model's size (2.0 MiB)" in text


def test_low_available_memory_warns(tmp_path: Path) -> None:
    make_model(tmp_path, 2 * MIB)
    config = write_config(tmp_path, '[model]\npath = "model"\n[limits]\nmemory_max_mb = 64\n')
    device = replace(probe(), memory_available_bytes=3 * MIB, cgroup_memory_limit=None)
    _, text = run(config, device)
    assert "ok    memory   bound of 64 MiB holds the model (2.0 MiB)" in text
    assert "warn  ram      3.0 MiB available for a 2.0 MiB model" in text


def test_cgroup_memory_limit_counts_as_available(tmp_path: Path) -> None:
    make_model(tmp_path, 2 * MIB)
    config = write_config(tmp_path, '[model]\npath = "model"\n')
    device = replace(probe(), memory_available_bytes=1024 * MIB, cgroup_memory_limit=3 * MIB)
    _, text = run(config, device)
    assert "warn  ram      3.0 MiB available" in text


def test_load_failure_is_reported(tmp_path: Path) -> None:
    # A directory with a graph but no model config or tokenizer cannot be served.
    make_model(tmp_path, 1024)
    config = write_config(tmp_path, '[model]\npath = "model"\nverify = "off"\n')
    code, text = run(config)
    assert code == 1
    assert "FAIL  load" in text
    assert str(tmp_path / "model") in text.split("FAIL  load", 1)[1]


def test_real_model_loads_and_warnings_do_not_fail(tmp_path: Path) -> None:
    config = write_config(tmp_path, f'[model]\npath = "{TINY_MODEL}"\n[runtime]\nthreads = 1\n')
    # Pretend the box is short of memory: that is a warning, not a failure.
    device = replace(probe(), memory_available_bytes=5 * MIB, cgroup_memory_limit=None)
    code, text = run(config, device)
    assert code == 0, text
    assert "warn  ram      5.0 MiB available for a " in text
    assert f"ok    load     {TINY_MODEL} loads (threads: 1)" in text
    assert "result: all passed, 1 warning(s)" in text


def test_real_model_with_room_passes_clean(tmp_path: Path) -> None:
    config = write_config(tmp_path, f'[model]\npath = "{TINY_MODEL}"\n')
    code, text = run(config)
    assert code == 0, text
    assert "FAIL" not in text
    assert "ok    load" in text


def test_invalid_config_fails_naming_file_and_key(tmp_path: Path) -> None:
    config = write_config(tmp_path, "[limits]\nmax_concurrent = 0\n")
    code, text = run(config)
    assert code == 1
    assert f"FAIL  config   {config}: limits.max_concurrent: " in text


def test_missing_config_file_fails(tmp_path: Path) -> None:
    code, text = run(tmp_path / "absent.toml")
    assert code == 1
    assert f"FAIL  config   {tmp_path / 'absent.toml'}: file not found" in text


def test_no_matching_profile_fails(tmp_path: Path) -> None:
    config = write_config(tmp_path, '[model]\npath = "m"\n')
    device = replace(probe(), arch="riscv64", isa=frozenset())
    code, text = run(config, device)
    assert code == 1
    assert "FAIL  profile" in text
    assert "no device profile matches arch riscv64" in text
    assert "int8 ISA missing     no int8 features known for riscv64" in text


def test_forced_profile_that_does_not_fit_warns(tmp_path: Path) -> None:
    config = write_config(tmp_path, '[model]\npath = "m"\n[device]\nprofile = "raspberry-pi-5"\n')
    device = replace(probe(), arch="x86_64", board="", compatible=())
    _, text = run(config, device)
    assert "warn  profile  raspberry-pi-5 is forced but does not fit: arch x86_64 is not" in text
