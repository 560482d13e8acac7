"""What box is this, and which device profile fits it."""

from edge_runtime.device.info import (
    ARM_ISA,
    X86_ISA,
    DeviceInfo,
    disk_free_bytes,
    normalise_arch,
    probe,
)
from edge_runtime.device.profiles import (
    Profile,
    ProfileChoice,
    Resolved,
    choose_profile,
    load_profiles,
    resolve_settings,
)

__all__ = [
    "ARM_ISA",
    "X86_ISA",
    "DeviceInfo",
    "Profile",
    "ProfileChoice",
    "Resolved",
    "choose_profile",
    "disk_free_bytes",
    "load_profiles",
    "normalise_arch",
    "probe",
    "resolve_settings",
]
