"""What box is this: arch, ISA flags, cores, memory and cgroup limits, from procfs and sysfs."""

from __future__ import annotations

import math
import os
import platform
import shutil
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path

# The features that change which int8 kernels onnxruntime's MLAS can use.
X86_ISA = frozenset({"avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8"})
ARM_ISA = frozenset({"neon", "dotprod", "i8mm", "sve", "sve2"})
_ARM_FEATURES = {
    "asimd": "neon",
    "neon": "neon",
    "asimddp": "dotprod",
    "i8mm": "i8mm",
    "sve": "sve",
    "sve2": "sve2",
}
_ARCH_ALIASES = {
    "amd64": "x86_64",
    "x64": "x86_64",
    "arm64": "aarch64",
    "armv8l": "armv7l",
    "armv7": "armv7l",
    "armhf": "armv7l",
    "i386": "i686",
    "i486": "i686",
    "i586": "i686",
    "x86": "i686",
}
# arm64 /proc/cpuinfo has no "model name"; these are the cores edge boxes actually ship with
# (ARM Ltd. part numbers from the kernel's asm/cputype.h).
_ARM_PARTS = {
    "0xd03": "Cortex-A53",
    "0xd04": "Cortex-A35",
    "0xd05": "Cortex-A55",
    "0xd07": "Cortex-A57",
    "0xd08": "Cortex-A72",
    "0xd09": "Cortex-A73",
    "0xd0a": "Cortex-A75",
    "0xd0b": "Cortex-A76",
    "0xd0c": "Neoverse-N1",
    "0xd0d": "Cortex-A77",
    "0xd40": "Neoverse-V1",
    "0xd41": "Cortex-A78",
    "0xd42": "Cortex-A78AE",
    "0xd46": "Cortex-A510",
    "0xd47": "Cortex-A710",
    "0xd49": "Neoverse-N2",
    "0xd4f": "Neoverse-V2",
    "0xd80": "Cortex-A520",
    "0xd81": "Cortex-A720",
}
# cgroup v1 reports "no limit" as a huge page-aligned number, not as "max".
_NO_MEMORY_LIMIT = 1 << 60


@dataclass(frozen=True)
class DeviceInfo:
    """The hardware and the limits this process runs under."""

    arch: str
    cpu_model: str
    board: str
    compatible: tuple[str, ...]
    isa: frozenset[str]
    logical_cpus: int
    physical_cores: int
    usable_cpus: int
    cgroup_cpu_limit: float | None
    memory_total_bytes: int
    memory_available_bytes: int
    cgroup_memory_limit: int | None

    @property
    def effective_threads(self) -> int:
        """Compute threads worth running: physical cores we may use, within the CPU quota."""
        bounds = [self.physical_cores, self.usable_cpus]
        if self.cgroup_cpu_limit is not None:
            bounds.append(math.ceil(self.cgroup_cpu_limit))
        return max(1, min(bounds))

    @property
    def wanted_isa(self) -> frozenset[str]:
        """The ISA features that matter for int8 inference on this arch family."""
        if self.arch in ("x86_64", "i686"):
            return X86_ISA
        if self.arch.startswith(("aarch64", "arm")):
            return ARM_ISA
        return frozenset()


def normalise_arch(machine: str) -> str:
    """Map the spellings of platform.machine() onto the kernel's names."""
    lowered = machine.strip().lower()
    return _ARCH_ALIASES.get(lowered, lowered)


def probe(
    root: Path = Path("/"),
    *,
    machine: str | None = None,
    cpu_count: int | None = None,
    affinity: Collection[int] | None = None,
) -> DeviceInfo:
    """Describe the box from procfs and sysfs under ``root``.

    ``machine``, ``cpu_count`` and ``affinity`` come from the running process only when
    ``root`` is the real root; for a fake tree they are derived from its files unless given.
    """
    live = root == Path("/")
    cpuinfo = _parse_cpuinfo(_read(root / "proc/cpuinfo"))
    if machine is None:
        kernel_arch = _read(root / "proc/sys/kernel/arch").strip()
        machine = platform.machine() if live else kernel_arch or _arch_from_cpuinfo(cpuinfo)
    if cpu_count is None and live:
        cpu_count = os.cpu_count()
    logical = _logical_cpus(root, cpuinfo) or cpu_count or 1
    if affinity is None and live and hasattr(os, "sched_getaffinity"):
        affinity = os.sched_getaffinity(0)
    meminfo = _parse_meminfo(_read(root / "proc/meminfo"))
    compatible = _read_device_tree(root, "compatible")
    return DeviceInfo(
        arch=normalise_arch(machine),
        cpu_model=_cpu_model(cpuinfo),
        board=_board(root),
        compatible=tuple(part for part in compatible.split("\0") if part),
        isa=_isa(cpuinfo),
        logical_cpus=logical,
        physical_cores=_physical_cores(root, cpuinfo) or logical,
        usable_cpus=len(affinity) if affinity else logical,
        cgroup_cpu_limit=_cgroup_cpu_limit(root),
        memory_total_bytes=meminfo.get("MemTotal", 0),
        memory_available_bytes=meminfo.get("MemAvailable", meminfo.get("MemFree", 0)),
        cgroup_memory_limit=_cgroup_memory_limit(root),
    )


def disk_free_bytes(path: Path) -> int:
    """Free bytes on the filesystem that holds ``path`` or would hold it once created."""
    current = path.absolute()
    while not current.exists() and current != current.parent:
        current = current.parent
    return shutil.disk_usage(current).free


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except (OSError, ValueError):
        return ""


def _parse_cpuinfo(text: str) -> list[dict[str, str]]:
    blocks: list[dict[str, str]] = []
    current: dict[str, str] = {}
    for line in [*text.splitlines(), ""]:
        if not line.strip():
            if current:
                blocks.append(current)
            current = {}
            continue
        key, sep, value = line.partition(":")
        if sep:
            current[key.strip()] = value.strip()
    return blocks


def _first(cpuinfo: list[dict[str, str]], key: str) -> str:
    return next((block[key] for block in cpuinfo if block.get(key)), "")


def _arch_from_cpuinfo(cpuinfo: list[dict[str, str]]) -> str:
    flags = _first(cpuinfo, "flags").split()
    if flags:
        return "x86_64" if "lm" in flags else "i686"
    features = _first(cpuinfo, "Features").split()
    if "asimd" in features or _first(cpuinfo, "CPU architecture") == "8":
        return "aarch64"
    if _first(cpuinfo, "CPU architecture") == "7":
        return "armv7l"
    return ""


def _cpu_model(cpuinfo: list[dict[str, str]]) -> str:
    name = _first(cpuinfo, "model name")
    if name:
        return name
    implementer, part = _first(cpuinfo, "CPU implementer"), _first(cpuinfo, "CPU part")
    if implementer == "0x41" and part in _ARM_PARTS:
        return f"ARM {_ARM_PARTS[part]}"
    if implementer or part:
        return f"ARM implementer {implementer or '?'} part {part or '?'}"
    return _first(cpuinfo, "Hardware")


def _isa(cpuinfo: list[dict[str, str]]) -> frozenset[str]:
    x86 = set(_first(cpuinfo, "flags").split()) & X86_ISA
    arm = {_ARM_FEATURES[f] for f in _first(cpuinfo, "Features").split() if f in _ARM_FEATURES}
    return frozenset(x86 | arm)


def _read_device_tree(root: Path, name: str) -> str:
    for base in ("proc/device-tree", "sys/firmware/devicetree/base"):
        text = _read(root / base / name)
        if text:
            return text
    return ""


def _board(root: Path) -> str:
    model = _read_device_tree(root, "model").replace("\0", "").strip()
    return model or _read(root / "sys/class/dmi/id/product_name").strip()


def _parse_cpu_list(text: str) -> frozenset[int]:
    cpus: set[int] = set()
    for part in text.strip().split(","):
        low, _, high = part.partition("-")
        try:
            cpus.update(range(int(low), int(high or low) + 1))
        except ValueError:
            continue
    return frozenset(cpus)


def _logical_cpus(root: Path, cpuinfo: list[dict[str, str]]) -> int:
    online = _parse_cpu_list(_read(root / "sys/devices/system/cpu/online"))
    return len(online) or sum(1 for block in cpuinfo if "processor" in block)


def _physical_cores(root: Path, cpuinfo: list[dict[str, str]]) -> int:
    cores: set[frozenset[int]] = set()
    cpu_dir = root / "sys/devices/system/cpu"
    try:
        cpus = [p for p in cpu_dir.iterdir() if p.name[3:].isdigit() and p.name[:3] == "cpu"]
    except OSError:
        cpus = []
    for cpu in cpus:
        for name in ("core_cpus_list", "thread_siblings_list"):
            siblings = _parse_cpu_list(_read(cpu / "topology" / name))
            if siblings:
                cores.add(siblings)
                break
    if cores:
        return len(cores)
    pairs = {
        (block["physical id"], block["core id"])
        for block in cpuinfo
        if "physical id" in block and "core id" in block
    }
    return len(pairs)


def _cgroup_dirs(root: Path, v1_names: Iterable[str]) -> list[Path]:
    """Every cgroup directory whose limits bind us, on both v2 and v1 hierarchies."""
    v1_names = tuple(v1_names)
    own: dict[str, str] = {}
    for line in _read(root / "proc/self/cgroup").splitlines():
        _, _, rest = line.partition(":")
        controllers, _, cgroup_path = rest.partition(":")
        for controller in controllers.split(",") if controllers else [""]:
            own[controller] = cgroup_path
    bases = [(root / "sys/fs/cgroup", ""), (root / "sys/fs/cgroup/unified", "")]
    bases += [(root / "sys/fs/cgroup" / name, name.split(",")[0]) for name in v1_names]
    dirs: list[Path] = []
    for base, controller in bases:
        # Limits set on an ancestor cgroup bind too, so walk up to the mount point. Inside a
        # cgroup namespace our own path is "/" and the mount point is our cgroup.
        relative = Path(own.get(controller, "/").lstrip("/"))
        for ancestor in [relative, *relative.parents]:
            candidate = base / ancestor
            if candidate.is_dir() and candidate not in dirs:
                dirs.append(candidate)
    return dirs


def _cgroup_cpu_limit(root: Path) -> float | None:
    limits: list[float] = []
    for directory in _cgroup_dirs(root, ("cpu", "cpu,cpuacct", "cpuacct,cpu")):
        quota, _, period = _read(directory / "cpu.max").partition(" ")
        if not quota:
            quota = _read(directory / "cpu.cfs_quota_us")
            period = _read(directory / "cpu.cfs_period_us")
        try:
            quota_us, period_us = int(quota), int(period)
        except ValueError:
            continue
        if quota_us > 0 and period_us > 0:
            limits.append(quota_us / period_us)
    return min(limits, default=None)


def _cgroup_memory_limit(root: Path) -> int | None:
    limits: list[int] = []
    for directory in _cgroup_dirs(root, ("memory",)):
        text = _read(directory / "memory.max") or _read(directory / "memory.limit_in_bytes")
        try:
            value = int(text)
        except ValueError:
            continue
        if 0 < value < _NO_MEMORY_LIMIT:
            limits.append(value)
    return min(limits, default=None)


def _parse_meminfo(text: str) -> dict[str, int]:
    values: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        fields = rest.split()
        if fields and fields[0].isdigit():
            scale = 1024 if fields[1:] == ["kB"] else 1
            values[key.strip()] = int(fields[0]) * scale
    return values
