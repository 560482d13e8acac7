"""Device probing against fake procfs/sysfs trees, and device-profile loading and choice."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from edge_runtime import config
from edge_runtime.device import (
    DeviceInfo,
    Profile,
    choose_profile,
    disk_free_bytes,
    load_profiles,
    normalise_arch,
    probe,
    resolve_settings,
)
from edge_runtime.errors import ConfigError

X86_FLAGS = (
    "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse "
    "sse2 ss ht syscall nx pdpe1gb rdtscp lm constant_tsc pni pclmulqdq ssse3 fma cx16 sse4_1 "
    "sse4_2 x2apic movbe popcnt aes xsave avx f16c rdrand hypervisor lahf_lm abm bmi1 avx2 bmi2"
)
VNNI_FLAGS = X86_FLAGS + " avx512f avx512dq avx512cd avx512bw avx512vl avx512_vnni avx512_bf16"
PI5_FEATURES = (
    "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop "
    "asimddp"
)
ORIN_FEATURES = PI5_FEATURES + " uscat ilrcpc flagm paca pacg"
MEMINFO_8G = (
    "MemTotal:        8058944 kB\nMemFree:         1000000 kB\nMemAvailable:    6500000 kB\n"
)


def write_tree(root: Path, files: dict[str, str | bytes]) -> Path:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    return root


def x86_cpuinfo(cores: int, threads_per_core: int, flags: str, model: str) -> str:
    blocks = []
    for cpu in range(cores * threads_per_core):
        blocks.append(
            f"processor\t: {cpu}\nvendor_id\t: GenuineIntel\nmodel name\t: {model}\n"
            f"physical id\t: 0\ncore id\t\t: {cpu % cores}\nflags\t\t: {flags}\n"
        )
    return "\n".join(blocks)


def arm_cpuinfo(cores: int, features: str, part: str) -> str:
    blocks = [
        f"processor\t: {cpu}\nBogoMIPS\t: 108.00\nFeatures\t: {features}\n"
        f"CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x4\nCPU part\t: {part}\n"
        for cpu in range(cores)
    ]
    return "\n".join(blocks)


def topology(core_sets: list[str], name: str = "core_cpus_list") -> dict[str, str | bytes]:
    files: dict[str, str | bytes] = {}
    for core, cpus in enumerate(core_sets):
        for cpu in cpus.split(","):
            files[f"sys/devices/system/cpu/cpu{cpu}/topology/{name}"] = f"{cpus}\n"
        files[f"sys/devices/system/cpu/cpu{core}/online"] = "1\n"
    return files


@pytest.fixture
def x86_vnni_box(tmp_path: Path) -> Path:
    files: dict[str, str | bytes] = {
        "proc/cpuinfo": x86_cpuinfo(2, 2, VNNI_FLAGS, "Intel(R) Xeon(R) Gold 6338N CPU @ 2.20GHz"),
        "proc/meminfo": "MemTotal:       16384000 kB\nMemAvailable:   12000000 kB\n",
        "proc/sys/kernel/arch": "x86_64\n",
        "sys/devices/system/cpu/online": "0-3\n",
        "sys/class/dmi/id/product_name": "PowerEdge XR11\n",
        **topology(["0,2", "1,3"]),
    }
    return write_tree(tmp_path / "vnni", files)


@pytest.fixture
def pi5_box(tmp_path: Path) -> Path:
    files: dict[str, str | bytes] = {
        "proc/cpuinfo": arm_cpuinfo(4, PI5_FEATURES, "0xd0b")
        + "\nRevision\t: d04170\nModel\t\t: Raspberry Pi 5 Model B Rev 1.0\n",
        "proc/meminfo": MEMINFO_8G,
        "proc/device-tree/model": b"Raspberry Pi 5 Model B Rev 1.0\0",
        "proc/device-tree/compatible": b"raspberrypi,5-model-b\0brcm,bcm2712\0",
        "sys/devices/system/cpu/online": "0-3\n",
        **topology(["0", "1", "2", "3"]),
    }
    return write_tree(tmp_path / "pi5", files)


def orin_tree(root: Path, model: bytes, compatible: bytes) -> Path:
    # No topology directory: physical cores must come from the fallbacks.
    files: dict[str, str | bytes] = {
        "proc/cpuinfo": arm_cpuinfo(6, ORIN_FEATURES, "0xd42"),
        "proc/meminfo": "MemTotal:        7650336 kB\nMemAvailable:    5123456 kB\n",
        "proc/sys/kernel/arch": "aarch64\n",
        "sys/firmware/devicetree/base/model": model,
        "sys/firmware/devicetree/base/compatible": compatible,
    }
    return write_tree(root, files)


@pytest.fixture
def orin_nano_box(tmp_path: Path) -> Path:
    return orin_tree(
        tmp_path / "orin",
        b"NVIDIA Jetson Orin Nano Developer Kit\0",
        b"nvidia,p3768-0000+p3767-0005\0nvidia,p3767-0005\0nvidia,tegra234\0",
    )


@pytest.fixture
def container_box(tmp_path: Path) -> Path:
    files: dict[str, str | bytes] = {
        "proc/cpuinfo": x86_cpuinfo(4, 1, X86_FLAGS, "AMD EPYC 7R13 Processor"),
        "proc/meminfo": "MemTotal:       32768000 kB\nMemAvailable:   30000000 kB\n",
        "proc/sys/kernel/arch": "x86_64\n",
        "proc/self/cgroup": "0::/\n",
        "sys/devices/system/cpu/online": "0-3\n",
        "sys/fs/cgroup/cpu.max": "150000 100000\n",
        "sys/fs/cgroup/memory.max": "2147483648\n",
        **topology(["0", "1", "2", "3"]),
    }
    return write_tree(tmp_path / "container", files)


@pytest.fixture
def profiles() -> list[Profile]:
    return load_profiles()


# --- probe -------------------------------------------------------------------------------


def test_probe_x86_vnni_box(x86_vnni_box: Path) -> None:
    info = probe(x86_vnni_box)
    assert info.arch == "x86_64"
    assert info.cpu_model == "Intel(R) Xeon(R) Gold 6338N CPU @ 2.20GHz"
    assert info.board == "PowerEdge XR11"
    assert info.compatible == ()
    assert info.isa == {"avx2", "avx512f", "avx512_vnni"}
    assert (info.logical_cpus, info.physical_cores, info.usable_cpus) == (4, 2, 4)
    assert info.cgroup_cpu_limit is None
    assert info.cgroup_memory_limit is None
    assert info.memory_total_bytes == 16384000 * 1024
    assert info.memory_available_bytes == 12000000 * 1024
    # Hyperthreads do not count: two cores, two threads.
    assert info.effective_threads == 2


def test_probe_raspberry_pi_5(pi5_box: Path) -> None:
    info = probe(pi5_box)
    # No /proc/sys/kernel/arch in this tree: the arch comes from the cpuinfo features.
    assert info.arch == "aarch64"
    assert info.cpu_model == "ARM Cortex-A76"
    assert info.board == "Raspberry Pi 5 Model B Rev 1.0"
    assert info.compatible == ("raspberrypi,5-model-b", "brcm,bcm2712")
    assert info.isa == {"neon", "dotprod"}
    assert (info.logical_cpus, info.physical_cores) == (4, 4)
    assert info.memory_available_bytes == 6500000 * 1024
    assert info.effective_threads == 4


def test_probe_jetson_orin_nano(orin_nano_box: Path) -> None:
    info = probe(orin_nano_box)
    assert info.arch == "aarch64"
    assert info.cpu_model == "ARM Cortex-A78AE"
    assert info.board == "NVIDIA Jetson Orin Nano Developer Kit"
    assert info.compatible == (
        "nvidia,p3768-0000+p3767-0005",
        "nvidia,p3767-0005",
        "nvidia,tegra234",
    )
    assert info.isa == {"neon", "dotprod"}
    assert (info.logical_cpus, info.physical_cores, info.usable_cpus) == (6, 6, 6)


def test_probe_cgroup_v2_limited_container(container_box: Path) -> None:
    info = probe(container_box)
    assert info.cgroup_cpu_limit == 1.5
    assert info.cgroup_memory_limit == 2 * 1024**3
    assert (info.physical_cores, info.usable_cpus) == (4, 4)
    assert info.effective_threads == 2


def test_cgroup_v2_max_means_no_limit(container_box: Path) -> None:
    (container_box / "sys/fs/cgroup/cpu.max").write_text("max 100000\n")
    (container_box / "sys/fs/cgroup/memory.max").write_text("max\n")
    info = probe(container_box)
    assert info.cgroup_cpu_limit is None
    assert info.cgroup_memory_limit is None
    assert info.effective_threads == 4


def test_cgroup_v2_limit_on_an_ancestor_binds(container_box: Path) -> None:
    write_tree(
        container_box,
        {
            "proc/self/cgroup": "0::/system.slice/edge-runtime.service\n",
            "sys/fs/cgroup/system.slice/cpu.max": "100000 100000\n",
            "sys/fs/cgroup/system.slice/edge-runtime.service/cpu.max": "max 100000\n",
            "sys/fs/cgroup/system.slice/edge-runtime.service/memory.max": "1073741824\n",
        },
    )
    info = probe(container_box)
    assert info.cgroup_cpu_limit == 1.0
    assert info.cgroup_memory_limit == 1024**3
    assert info.effective_threads == 1


def test_cgroup_v1_limits(tmp_path: Path) -> None:
    root = write_tree(
        tmp_path,
        {
            "proc/cpuinfo": x86_cpuinfo(8, 1, X86_FLAGS, "Intel(R) Core(TM) i7"),
            "proc/self/cgroup": "4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n0::/\n",
            "sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "250000\n",
            "sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n",
            "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us": "-1\n",
            "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us": "100000\n",
            "sys/fs/cgroup/memory/memory.limit_in_bytes": "9223372036854771712\n",
            "sys/fs/cgroup/memory/docker/abc/memory.limit_in_bytes": "536870912\n",
        },
    )
    info = probe(root)
    assert info.cgroup_cpu_limit == 2.5
    assert info.cgroup_memory_limit == 512 * 1024**2
    assert info.effective_threads == 3


def test_cgroup_v1_unlimited_is_none(tmp_path: Path) -> None:
    root = write_tree(
        tmp_path,
        {
            "sys/fs/cgroup/cpu/cpu.cfs_quota_us": "-1\n",
            "sys/fs/cgroup/cpu/cpu.cfs_period_us": "100000\n",
            "sys/fs/cgroup/memory/memory.limit_in_bytes": "9223372036854771712\n",
        },
    )
    info = probe(root)
    assert info.cgroup_cpu_limit is None
    assert info.cgroup_memory_limit is None


def test_affinity_bounds_threads(x86_vnni_box: Path) -> None:
    info = probe(x86_vnni_box, affinity={3})
    assert info.usable_cpus == 1
    assert info.effective_threads == 1


@pytest.mark.parametrize("name", ["core_cpus_list", "thread_siblings_list"])
def test_physical_cores_from_sysfs_topology(tmp_path: Path, name: str) -> None:
    # arm64 cpuinfo has no core ids, so only the topology files can reveal SMT siblings.
    root = write_tree(
        tmp_path,
        {
            "proc/cpuinfo": arm_cpuinfo(8, PI5_FEATURES, "0xd0c"),
            **topology(["0,1", "2,3", "4,5", "6,7"], name=name),
        },
    )
    info = probe(root)
    assert (info.logical_cpus, info.physical_cores) == (8, 4)
    assert info.cpu_model == "ARM Neoverse-N1"


def test_physical_cores_from_cpuinfo_core_ids(tmp_path: Path) -> None:
    root = write_tree(tmp_path, {"proc/cpuinfo": x86_cpuinfo(3, 2, X86_FLAGS, "x")})
    info = probe(root)
    assert (info.logical_cpus, info.physical_cores) == (6, 3)


def test_empty_tree_is_tolerated(tmp_path: Path) -> None:
    info = probe(tmp_path)
    assert info == DeviceInfo(
        arch="",
        cpu_model="",
        board="",
        compatible=(),
        isa=frozenset(),
        logical_cpus=1,
        physical_cores=1,
        usable_cpus=1,
        cgroup_cpu_limit=None,
        memory_total_bytes=0,
        memory_available_bytes=0,
        cgroup_memory_limit=None,
    )
    injected = probe(tmp_path, machine="arm64", cpu_count=8)
    assert (injected.arch, injected.logical_cpus, injected.effective_threads) == ("aarch64", 8, 8)


def test_unreadable_entries_are_tolerated(pi5_box: Path) -> None:
    # A directory where a file should be makes every read of it fail.
    shutil.rmtree(pi5_box / "proc/device-tree")
    (pi5_box / "proc/device-tree/model").mkdir(parents=True)
    (pi5_box / "proc/meminfo").unlink()
    (pi5_box / "proc/meminfo").mkdir()
    info = probe(pi5_box)
    assert info.board == ""
    assert info.memory_total_bytes == 0
    assert info.isa == {"neon", "dotprod"}


def test_live_probe_describes_this_process() -> None:
    import os

    info = probe()
    assert info.arch == normalise_arch(os.uname().machine)
    assert info.usable_cpus == len(os.sched_getaffinity(0))
    assert info.memory_total_bytes > 0
    assert 1 <= info.effective_threads <= info.usable_cpus


@pytest.mark.parametrize(
    ("machine", "arch"),
    [
        ("x86_64", "x86_64"),
        ("AMD64", "x86_64"),
        ("arm64", "aarch64"),
        ("aarch64", "aarch64"),
        ("armv7l", "armv7l"),
        ("i686", "i686"),
        ("riscv64", "riscv64"),
    ],
)
def test_normalise_arch(machine: str, arch: str) -> None:
    assert normalise_arch(machine) == arch


def test_disk_free_bytes_walks_up_to_an_existing_parent(tmp_path: Path) -> None:
    free = disk_free_bytes(tmp_path / "not" / "yet" / "there")
    assert free > 0
    assert abs(free - shutil.disk_usage(tmp_path).free) < 64 * 1024**2


# --- shipped profiles ----------------------------------------------------------------------


def test_shipped_profiles(profiles: list[Profile]) -> None:
    assert [p.name for p in profiles] == [
        "aarch64-generic",
        "jetson-orin-nano",
        "raspberry-pi-5",
        "x86_64-avx512-vnni",
        "x86_64-generic",
    ]
    for profile in profiles:
        assert profile.file.name == f"{profile.name}.toml"
        assert profile.file.read_text().startswith("# For ")


def test_every_shipped_profile_validates(profiles: list[Profile]) -> None:
    built = {
        p.name: config.build_settings({}, overlay=p.settings, overlay_file=p.file) for p in profiles
    }
    assert built["x86_64-generic"].quantization.scheme == "dynamic"
    assert built["x86_64-generic"].quantization.reduce_range is True
    assert built["x86_64-avx512-vnni"].quantization.reduce_range is False
    assert built["aarch64-generic"].quantization.scheme == "matmul_nbits"
    assert built["aarch64-generic"].quantization.accuracy_level == 4
    pi5, orin = built["raspberry-pi-5"], built["jetson-orin-nano"]
    assert (pi5.runtime.threads, pi5.model.context_length) == (4, 2048)
    assert (pi5.limits.max_concurrent, pi5.limits.memory_max_mb) == (2, 3072)
    # Each profile decodes as many requests together as it lets run at once.
    for name, settings in built.items():
        assert settings.runtime.max_batch == settings.limits.max_concurrent, name
    assert pi5.quantization.scheme == "matmul_nbits"
    assert (orin.runtime.threads, orin.model.context_length) == (6, 4096)
    assert (orin.limits.max_concurrent, orin.limits.memory_max_mb) == (2, 5120)
    assert orin.quantization.scheme == "matmul_nbits"


# --- choosing ------------------------------------------------------------------------------


def test_choose_x86_vnni(x86_vnni_box: Path, profiles: list[Profile]) -> None:
    choice = choose_profile(probe(x86_vnni_box), profiles)
    assert choice.profile.name == "x86_64-avx512-vnni"
    assert choice.reason == (
        "arch x86_64 with avx512_vnni; priority 20 beats x86_64-generic (priority 0)"
    )


def test_choose_raspberry_pi_5(pi5_box: Path, profiles: list[Profile]) -> None:
    choice = choose_profile(probe(pi5_box), profiles)
    assert choice.profile.name == "raspberry-pi-5"
    assert "board 'Raspberry Pi 5 Model B Rev 1.0'" in choice.reason
    assert "beats aarch64-generic (priority 0)" in choice.reason


def test_choose_pi_5_by_compatible_alone(pi5_box: Path, profiles: list[Profile]) -> None:
    (pi5_box / "proc/device-tree/model").unlink()
    choice = choose_profile(probe(pi5_box), profiles)
    assert choice.profile.name == "raspberry-pi-5"
    assert "board 'raspberrypi,5-model-b'" in choice.reason


def test_choose_jetson_orin_nano(orin_nano_box: Path, profiles: list[Profile]) -> None:
    choice = choose_profile(probe(orin_nano_box), profiles)
    assert choice.profile.name == "jetson-orin-nano"
    assert "Jetson Orin Nano" in choice.reason
    assert "beats aarch64-generic (priority 0)" in choice.reason


def test_jetson_orin_nx_is_not_a_nano(tmp_path: Path, profiles: list[Profile]) -> None:
    root = orin_tree(
        tmp_path,
        b"NVIDIA Jetson Orin NX Engineering Reference Developer Kit\0",
        b"nvidia,p3768-0000+p3767-0000\0nvidia,p3767-0000\0nvidia,tegra234\0",
    )
    choice = choose_profile(probe(root), profiles)
    assert choice.profile.name == "aarch64-generic"
    assert choice.reason == "arch aarch64; the only matching profile"


def test_choose_container_without_vnni(container_box: Path, profiles: list[Profile]) -> None:
    choice = choose_profile(probe(container_box), profiles)
    assert choice.profile.name == "x86_64-generic"
    assert choice.reason == "arch x86_64; the only matching profile"


def test_forced_profile(x86_vnni_box: Path, profiles: list[Profile]) -> None:
    choice = choose_profile(probe(x86_vnni_box), profiles, "x86_64-generic")
    assert choice.profile.name == "x86_64-generic"
    assert choice.reason == "forced by device.profile in config"


def test_forced_profile_that_does_not_fit_says_so(
    x86_vnni_box: Path, profiles: list[Profile]
) -> None:
    choice = choose_profile(probe(x86_vnni_box), profiles, "raspberry-pi-5")
    assert choice.profile.name == "raspberry-pi-5"
    assert choice.reason.startswith("forced by device.profile in config")
    assert "arch x86_64 is not aarch64" in choice.reason


def test_unknown_forced_profile_lists_known_names(
    x86_vnni_box: Path, profiles: list[Profile]
) -> None:
    with pytest.raises(ConfigError) as caught:
        choose_profile(probe(x86_vnni_box), profiles, "pi5")
    assert caught.value.key == "device.profile"
    message = str(caught.value)
    assert "'pi5'" in message
    for profile in profiles:
        assert profile.name in message


def test_no_profile_for_riscv(x86_vnni_box: Path, profiles: list[Profile]) -> None:
    info = replace(probe(x86_vnni_box), arch="riscv64", isa=frozenset())
    with pytest.raises(ConfigError, match="no device profile matches arch riscv64") as caught:
        choose_profile(info, profiles)
    assert "x86_64-generic" in str(caught.value)
    assert "raspberry-pi-5" in str(caught.value)


def test_equal_priorities_are_broken_by_name(pi5_box: Path) -> None:
    def make(name: str) -> Profile:
        return Profile(name, "", 5, ("aarch64",), frozenset(), (), {}, Path(f"{name}.toml"))

    choice = choose_profile(probe(pi5_box), [make("zeta"), make("alpha")])
    assert choice.profile.name == "alpha"
    assert "ties with zeta" in choice.reason


def test_board_match_ignores_case(pi5_box: Path) -> None:
    shouting = Profile("pi", "", 1, (), frozenset(), ("RASPBERRY PI 5",), {}, Path("pi.toml"))
    elsewhere = Profile("other", "", 1, (), frozenset(), ("Rock 5B",), {}, Path("o.toml"))
    info = probe(pi5_box)
    assert shouting.board_match(info) == "Raspberry Pi 5 Model B Rev 1.0"
    assert shouting.mismatch(info) is None
    assert elsewhere.board_match(info) is None
    assert elsewhere.mismatch(info) == ("board 'Raspberry Pi 5 Model B Rev 1.0' is not Rock 5B")


# --- loading -------------------------------------------------------------------------------

VALID = """\
[profile]
name = "{name}"
description = "test"
priority = 99
[match]
arch = ["aarch64"]
board = ["Raspberry Pi 5"]
[settings.runtime]
threads = 3
"""


def test_extra_dir_overrides_a_packaged_profile(tmp_path: Path, pi5_box: Path) -> None:
    (tmp_path / "mine.toml").write_text(VALID.format(name="raspberry-pi-5"))
    profiles = load_profiles(tmp_path)
    pi5 = next(p for p in profiles if p.name == "raspberry-pi-5")
    assert pi5.file == tmp_path / "mine.toml"
    assert pi5.settings == {"runtime": {"threads": 3}}
    assert len(profiles) == 5
    assert choose_profile(probe(pi5_box), profiles).profile.file == tmp_path / "mine.toml"


def test_missing_extra_dir(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_profiles(tmp_path / "nope")


@pytest.mark.parametrize(
    ("text", "key", "fragment"),
    [
        (VALID.replace("threads = 3", "thread = 3"), "settings.runtime.thread", "unknown key"),
        (VALID.replace("threads = 3", "threads = -1"), "settings.runtime.threads", "-1"),
        (VALID + "[settings.quantization]\nscheme = 'int4'\n", "settings.quantization.scheme", ""),
        (VALID.replace('board = ["', 'boards = ["'), "match.boards", "unknown key"),
        (VALID.replace("[match]", '[match]\nisa = ["avx512vnni"]'), "match.isa", "avx512vnni"),
        (VALID.replace("priority = 99", 'priority = "high"'), "profile.priority", "integer"),
        (VALID.replace('name = "{name}"\n', ""), "profile.name", "non-empty"),
        (VALID + "[settings.device]\nprofile = 'x'\n", "settings.device", ""),
        (VALID + "[extra]\n", "extra", "unknown key"),
    ],
)
def test_malformed_profile_names_file_and_key(
    tmp_path: Path, text: str, key: str, fragment: str
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text.replace("{name}", "bad"))
    with pytest.raises(ConfigError) as caught:
        load_profiles(tmp_path)
    assert caught.value.file == str(path)
    assert caught.value.key == key
    assert str(caught.value).startswith(f"{path}: {key}: ")
    assert fragment in str(caught.value)


def test_invalid_toml_profile_names_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("[profile\n")
    with pytest.raises(ConfigError, match="invalid TOML") as caught:
        load_profiles(tmp_path)
    assert caught.value.file == str(path)


def test_duplicate_names_in_one_dir(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text(VALID.format(name="same"))
    (tmp_path / "b.toml").write_text(VALID.format(name="same"))
    with pytest.raises(ConfigError, match="also defined in") as caught:
        load_profiles(tmp_path)
    assert caught.value.file == str(tmp_path / "b.toml")


# --- resolving -----------------------------------------------------------------------------


def test_user_config_wins_over_the_profile(tmp_path: Path, x86_vnni_box: Path) -> None:
    path = tmp_path / "edge-runtime.toml"
    path.write_text("[model]\ncontext_length = 1024\n")
    resolved = resolve_settings(path, probe(x86_vnni_box))
    assert resolved.choice.profile.name == "x86_64-avx512-vnni"
    assert resolved.settings.model.context_length == 1024
    # Keys the user did not set still come from the profile.
    assert resolved.settings.limits.max_concurrent == 4
    assert resolved.settings.runtime.threads == 0
    assert resolved.threads == 2
    assert resolved.config_path == path


def test_configured_threads_are_used_as_is(tmp_path: Path, pi5_box: Path) -> None:
    path = tmp_path / "edge-runtime.toml"
    path.write_text("[runtime]\nthreads = 3\n")
    resolved = resolve_settings(path, probe(pi5_box))
    assert resolved.choice.profile.name == "raspberry-pi-5"
    assert resolved.threads == 3
    assert resolve_settings(None, probe(pi5_box)).threads == 4


def test_bad_user_value_names_the_user_file(tmp_path: Path, x86_vnni_box: Path) -> None:
    path = tmp_path / "edge-runtime.toml"
    path.write_text("[limits]\nmax_concurrent = 0\n")
    with pytest.raises(ConfigError) as caught:
        resolve_settings(path, probe(x86_vnni_box))
    assert caught.value.file == str(path)
    assert caught.value.key == "limits.max_concurrent"


def test_forced_profile_and_profiles_dir_from_config(tmp_path: Path, x86_vnni_box: Path) -> None:
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "lab.toml").write_text(
        VALID.format(name="lab").replace('arch = ["aarch64"]', 'arch = ["x86_64"]')
    )
    path = tmp_path / "edge-runtime.toml"
    # profiles_dir is relative to the config file, not to the working directory.
    path.write_text('[device]\nprofile = "lab"\nprofiles_dir = "profiles"\n')
    resolved = resolve_settings(path, probe(x86_vnni_box))
    assert resolved.choice.profile.name == "lab"
    assert resolved.choice.reason == (
        "forced by device.profile in config"
        " (it would not match this box: board 'PowerEdge XR11' is not Raspberry Pi 5)"
    )
    assert resolved.settings.runtime.threads == 3


def test_unknown_profile_in_config_names_the_file(tmp_path: Path, x86_vnni_box: Path) -> None:
    path = tmp_path / "edge-runtime.toml"
    path.write_text('[device]\nprofile = "nope"\n')
    with pytest.raises(ConfigError, match="unknown profile 'nope'") as caught:
        resolve_settings(path, probe(x86_vnni_box))
    assert (caught.value.file, caught.value.key) == (str(path), "device.profile")


def test_missing_profiles_dir_in_config(tmp_path: Path, x86_vnni_box: Path) -> None:
    path = tmp_path / "edge-runtime.toml"
    path.write_text('[device]\nprofiles_dir = "gone"\n')
    with pytest.raises(ConfigError, match="profiles directory not found") as caught:
        resolve_settings(path, probe(x86_vnni_box))
    assert (caught.value.file, caught.value.key) == (str(path), "device.profiles_dir")


def test_profile_argument_overrides_the_config(tmp_path: Path, x86_vnni_box: Path) -> None:
    path = tmp_path / "edge-runtime.toml"
    path.write_text('[device]\nprofile = "x86_64-avx512-vnni"\n')
    resolved = resolve_settings(path, probe(x86_vnni_box), profile="aarch64-generic")
    assert resolved.choice.profile.name == "aarch64-generic"
    assert resolved.choice.reason.startswith("forced by --profile (it would not match")
    assert resolved.settings.quantization.scheme == "matmul_nbits"
    auto = resolve_settings(path, probe(x86_vnni_box), profile="auto")
    assert auto.choice.profile.name == "x86_64-avx512-vnni"
    assert "priority 20 beats" in auto.choice.reason


def test_unknown_profile_argument(x86_vnni_box: Path) -> None:
    with pytest.raises(ConfigError, match="unknown profile 'pi' from --profile") as caught:
        resolve_settings(None, probe(x86_vnni_box), profile="pi")
    assert (caught.value.file, caught.value.key) == (None, None)
    assert "jetson-orin-nano" in str(caught.value)
