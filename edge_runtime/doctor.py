"""The ``doctor`` report: what this box is, which profile fits it and whether the model loads."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TextIO

from edge_runtime.config import Settings
from edge_runtime.device import DeviceInfo, Resolved, disk_free_bytes, probe, resolve_settings
from edge_runtime.errors import ConfigError, EdgeRuntimeError

Status = Literal["ok", "warn", "FAIL"]

_MIB = 1024 * 1024


@dataclass
class _Report:
    out: TextIO
    failures: int = 0
    warnings: int = 0

    def section(self, title: str) -> None:
        self.out.write(f"\n{title}\n")

    def fact(self, label: str, value: str) -> None:
        self.out.write(f"  {label:<20} {value}\n")

    def check(self, status: Status, name: str, reason: str) -> None:
        if status == "FAIL":
            self.failures += 1
        elif status == "warn":
            self.warnings += 1
        self.out.write(f"  {status:<4}  {name:<8} {reason}\n")

    def finish(self) -> int:
        failed = f"{self.failures} required check(s) failed" if self.failures else "all passed"
        self.out.write(f"\nresult: {failed}, {self.warnings} warning(s)\n")
        return 1 if self.failures else 0


def run(config_path: Path | None, out: TextIO, *, device: DeviceInfo | None = None) -> int:
    """Print the report to ``out``; 0 when no required check fails, 1 otherwise."""
    report = _Report(out)
    info = device if device is not None else probe()
    _describe_device(report, info)
    try:
        resolved = resolve_settings(config_path, info)
    except ConfigError as exc:
        report.section("Checks")
        is_profile = exc.key is not None and exc.key.startswith("device.")
        report.check("FAIL", "profile" if is_profile else "config", str(exc))
        return report.finish()
    _describe_settings(report, resolved)
    report.section("Checks")
    source = str(config_path) if config_path is not None else "no config file, defaults"
    report.check("ok", "config", f"{source}: valid")
    profile = resolved.choice.profile
    why_not = profile.mismatch(info)
    if why_not:
        report.check("warn", "profile", f"{profile.name} is forced but does not fit: {why_not}")
    else:
        report.check("ok", "profile", profile.name)
    _check_model(report, resolved)
    return report.finish()


def _describe_device(report: _Report, info: DeviceInfo) -> None:
    report.section("Device")
    report.fact("arch", info.arch or "unknown")
    report.fact("cpu", info.cpu_model or "unknown")
    report.fact("board", info.board or "unknown")
    if info.compatible:
        report.fact("compatible", ", ".join(info.compatible))
    wanted = info.wanted_isa
    report.fact("int8 ISA found", " ".join(sorted(info.isa & wanted)) or "none")
    if wanted:
        report.fact("int8 ISA missing", " ".join(sorted(wanted - info.isa)) or "none")
    else:
        report.fact("int8 ISA missing", f"no int8 features known for {info.arch or 'this arch'}")
    report.fact("cores", f"{info.physical_cores} physical, {info.logical_cpus} logical")
    report.fact("usable cpus", str(info.usable_cpus))
    quota = info.cgroup_cpu_limit
    report.fact("cgroup cpu limit", "none" if quota is None else f"{quota:g} CPUs")
    report.fact("memory total", _size(info.memory_total_bytes))
    report.fact("memory available", _size(info.memory_available_bytes))
    limit = info.cgroup_memory_limit
    report.fact("cgroup memory limit", "none" if limit is None else _size(limit))


def _describe_settings(report: _Report, resolved: Resolved) -> None:
    choice = resolved.choice
    report.section("Profile")
    report.fact("name", choice.profile.name)
    report.fact("description", choice.profile.description)
    report.fact("file", str(choice.profile.file))
    report.fact("why", choice.reason)
    settings = resolved.settings
    report.section("Settings")
    auto = " (auto: physical cores within affinity and cpu quota)"
    report.fact("threads", f"{resolved.threads}{auto if not settings.runtime.threads else ''}")
    report.fact("model", str(settings.model.path))
    report.fact("context length", str(settings.model.context_length))
    report.fact("int8 scheme", _scheme(settings))
    limits = settings.limits
    report.fact("concurrency", f"{limits.max_concurrent} at once, {limits.max_queue} queued")
    bound = f"{limits.memory_max_mb} MiB" if limits.memory_max_mb else "none"
    report.fact("memory bound", bound)


def _scheme(settings: Settings) -> str:
    q = settings.quantization
    if q.scheme == "dynamic":
        flags = f"{q.weight_type} weights, reduce_range={str(q.reduce_range).lower()}"
        return f"quantize_dynamic ({flags}, per_channel={str(q.per_channel).lower()})"
    return f"MatMulNBits (block_size={q.block_size}, accuracy_level={q.accuracy_level})"


def _check_model(report: _Report, resolved: Resolved) -> None:
    settings, info = resolved.settings, resolved.device
    path = settings.model.path
    free = disk_free_bytes(path)
    if free > 0:
        report.check("ok", "disk", f"{_size(free)} free where the model lives ({path})")
    else:
        report.check("FAIL", "disk", f"no free space on the filesystem holding {path}")
    if not path.exists():
        report.check("FAIL", "model", f"{path}: not found")
        return
    size = _model_bytes(path)
    bound_mb = settings.limits.memory_max_mb
    if bound_mb and bound_mb * _MIB < size:
        report.check(
            "FAIL",
            "memory",
            f"limits.memory_max_mb = {bound_mb} MiB is below the model's size ({_size(size)})",
        )
    elif bound_mb and bound_mb * _MIB > info.memory_total_bytes > 0:
        report.check(
            "warn",
            "memory",
            f"limits.memory_max_mb = {bound_mb} MiB is more than this box has "
            f"({_size(info.memory_total_bytes)})",
        )
    elif bound_mb:
        report.check("ok", "memory", f"bound of {bound_mb} MiB holds the model ({_size(size)})")
    room = info.memory_available_bytes
    if info.cgroup_memory_limit is not None:
        room = min(room, info.cgroup_memory_limit)
    if room < 2 * size:
        report.check(
            "warn",
            "ram",
            f"{_size(room)} available for a {_size(size)} model; less than twice its size",
        )
    else:
        report.check("ok", "ram", f"{_size(room)} available for a {_size(size)} model")
    _check_load(report, resolved)


def _check_load(report: _Report, resolved: Resolved) -> None:
    path = resolved.settings.model.path
    try:
        # Imported here: onnxruntime takes a while to import and the rest of the report
        # must not depend on it.
        from edge_runtime.model.runtime import load_model
    except ImportError as exc:
        report.check("FAIL", "load", f"the model runtime cannot be imported: {exc}")
        return
    try:
        model = load_model(path, threads=resolved.threads, verify=resolved.settings.model.verify)
    except EdgeRuntimeError as exc:
        report.check("FAIL", "load", str(exc))
        return
    model.close()
    report.check("ok", "load", f"{path} loads (threads: {resolved.threads})")


def _model_bytes(path: Path) -> int:
    try:
        if path.is_file():
            return path.stat().st_size
        return sum(entry.stat().st_size for entry in path.rglob("*") if entry.is_file())
    except OSError:
        return 0


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"
