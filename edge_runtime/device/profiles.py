"""Device profiles: loading them, picking the one that fits this box, resolving settings over it."""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from edge_runtime import config
from edge_runtime.device.info import ARM_ISA, X86_ISA, DeviceInfo, normalise_arch, probe
from edge_runtime.errors import ConfigError

_FROM_CONFIG = "device.profile in config"


@dataclass(frozen=True)
class Profile:
    """One device profile: which boxes it fits and the settings it lays under the config."""

    name: str
    description: str
    priority: int
    arch: tuple[str, ...]
    isa: frozenset[str]
    board: tuple[str, ...]
    settings: Mapping[str, Any] = field(hash=False)
    file: Path

    def board_match(self, info: DeviceInfo) -> str | None:
        """The board name or compatible entry one of our substrings names, if any."""
        for candidate in (info.board, *info.compatible):
            if any(needle.lower() in candidate.lower() for needle in self.board):
                return candidate
        return None

    def mismatch(self, info: DeviceInfo) -> str | None:
        """Why this profile does not fit ``info``, or None when it does."""
        if self.arch and info.arch not in self.arch:
            return f"arch {info.arch} is not {' or '.join(self.arch)}"
        missing = sorted(self.isa - info.isa)
        if missing:
            return f"the CPU lacks {', '.join(missing)}"
        if self.board and self.board_match(info) is None:
            return f"board {info.board or 'unknown'!r} is not {' or '.join(self.board)}"
        return None


@dataclass(frozen=True)
class ProfileChoice:
    """The profile that applies and a sentence saying why."""

    profile: Profile
    reason: str


@dataclass(frozen=True)
class Resolved:
    """Settings resolved for this box: the config file over the chosen profile."""

    settings: config.Settings
    device: DeviceInfo
    choice: ProfileChoice
    config_path: Path | None

    @property
    def threads(self) -> int:
        """Compute threads to run: the configured number, or the box's own when it is 0."""
        return self.settings.runtime.threads or self.device.effective_threads


def load_profiles(extra_dir: Path | None = None) -> list[Profile]:
    """The packaged profiles, replaced by name by any in ``extra_dir``; sorted by name."""
    by_name = {profile.name: profile for profile in _load_dir(_packaged_profiles())}
    if extra_dir is not None:
        if not extra_dir.is_dir():
            raise ConfigError("profiles directory not found", file=extra_dir)
        by_name.update((profile.name, profile) for profile in _load_dir(extra_dir))
    return sorted(by_name.values(), key=lambda profile: profile.name)


def choose_profile(
    info: DeviceInfo,
    profiles: Iterable[Profile],
    forced: str = "auto",
    *,
    config_file: Path | None = None,
    forced_by: str = _FROM_CONFIG,
) -> ProfileChoice:
    """Pick the profile for ``info``: ``forced`` by name, or the best match by priority.

    ``forced_by`` says where a forced name came from, for the reason and the errors.
    """
    profiles = list(profiles)
    known = ", ".join(profile.name for profile in profiles)
    if forced != "auto":
        for profile in profiles:
            if profile.name == forced:
                reason = f"forced by {forced_by}"
                why_not = profile.mismatch(info)
                if why_not:
                    reason += f" (it would not match this box: {why_not})"
                return ProfileChoice(profile, reason)
        if forced_by == _FROM_CONFIG:
            raise ConfigError(
                f"unknown profile {forced!r}; known profiles: {known}",
                file=config_file,
                key="device.profile",
            )
        raise ConfigError(f"unknown profile {forced!r} from {forced_by}; known profiles: {known}")
    matching = sorted(
        (profile for profile in profiles if profile.mismatch(info) is None),
        key=lambda profile: (-profile.priority, profile.name),
    )
    if not matching:
        raise ConfigError(
            f"no device profile matches arch {info.arch}; set device.profile to one of: {known}",
            file=config_file,
            key="device.profile",
        )
    return ProfileChoice(matching[0], _match_reason(info, matching[0], matching[1:]))


def resolve_settings(
    config_path: Path | None,
    info: DeviceInfo | None = None,
    *,
    profile: str | None = None,
) -> Resolved:
    """Read ``config_path``, pick the device profile and validate the config over it.

    ``profile`` (the command line's ``--profile``) overrides device.profile in the file.
    """
    user = config.read_toml(config_path) if config_path is not None else {}
    # The user file is validated on its own first: that checks device.* before it is used
    # and anchors device.profiles_dir to the file's directory.
    own = config.build_settings(user, user_file=config_path)
    device = info if info is not None else probe()
    profiles_dir = own.device.profiles_dir
    if profiles_dir is not None and not profiles_dir.is_dir():
        raise ConfigError(
            f"profiles directory not found: {profiles_dir}",
            file=config_path,
            key="device.profiles_dir",
        )
    profiles = load_profiles(profiles_dir)
    if profile is None:
        choice = choose_profile(device, profiles, own.device.profile, config_file=config_path)
    else:
        choice = choose_profile(device, profiles, profile, forced_by="--profile")
    settings = config.build_settings(
        user,
        user_file=config_path,
        overlay=choice.profile.settings,
        overlay_file=choice.profile.file,
    )
    return Resolved(settings, device, choice, config_path)


def _match_reason(info: DeviceInfo, best: Profile, rest: list[Profile]) -> str:
    facts = f"arch {info.arch}"
    if best.isa:
        facts += f" with {', '.join(sorted(best.isa))}"
    board = best.board_match(info)
    if board:
        facts += f", board {board!r}"
    if not rest:
        return f"{facts}; the only matching profile"
    ties = [profile.name for profile in rest if profile.priority == best.priority]
    beaten = [f"{p.name} (priority {p.priority})" for p in rest if p.priority < best.priority]
    parts = [facts]
    if ties:
        parts.append(f"priority {best.priority} ties with {', '.join(ties)}; first by name")
    if beaten:
        parts.append(f"priority {best.priority} beats {', '.join(beaten)}")
    return "; ".join(parts)


def _packaged_profiles() -> Traversable:
    try:
        return resources.files("edge_runtime.device_profiles")
    except ModuleNotFoundError:
        # A source checkout that is not installed: the directory is mapped into the package
        # only by setuptools.
        return Path(__file__).resolve().parents[2] / "device_profiles"


def _load_dir(directory: Traversable) -> list[Profile]:
    seen: dict[str, Path] = {}
    profiles: list[Profile] = []
    for entry in sorted(directory.iterdir(), key=lambda entry: entry.name):
        if not entry.name.endswith(".toml") or not entry.is_file():
            continue
        file = Path(str(entry))
        try:
            table = tomllib.loads(entry.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"invalid TOML: {exc}", file=file) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read: {exc}", file=file) from None
        profile = _parse_profile(table, file)
        if profile.name in seen:
            raise ConfigError(
                f"profile {profile.name!r} is also defined in {seen[profile.name]}",
                file=file,
                key="profile.name",
            )
        seen[profile.name] = file
        profiles.append(profile)
    return profiles


def _parse_profile(table: Mapping[str, Any], file: Path) -> Profile:
    _only(table, ("profile", "match", "settings"), "", file)
    if "profile" not in table:
        raise ConfigError("missing table", file=file, key="profile")
    head = _table(table, "profile", file)
    match = _table(table, "match", file)
    settings = _table(table, "settings", file)
    _only(head, ("name", "description", "priority"), "profile.", file)
    _only(match, ("arch", "isa", "board"), "match.", file)
    name = head.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ConfigError("must be a non-empty string", file=file, key="profile.name")
    description = head.get("description", "")
    if not isinstance(description, str):
        raise ConfigError("must be a string", file=file, key="profile.description")
    priority = head.get("priority", 0)
    if not isinstance(priority, int) or isinstance(priority, bool):
        raise ConfigError("must be an integer", file=file, key="profile.priority")
    isa = _strings(match, "isa", file)
    unknown = sorted(set(isa) - X86_ISA - ARM_ISA)
    if unknown:
        known = ", ".join(sorted(X86_ISA | ARM_ISA))
        message = f"unknown ISA feature {unknown[0]!r}; known: {known}"
        raise ConfigError(message, file=file, key="match.isa")
    if "device" in settings:
        raise ConfigError("a profile cannot choose profiles", file=file, key="settings.device")
    try:
        config.build_settings({}, overlay=settings, overlay_file=file)
    except ConfigError as exc:
        # Keys inside a profile live under [settings]; name them as the file spells them.
        key = f"settings.{exc.key}" if exc.key else "settings"
        raise ConfigError(exc.reason, file=file, key=key) from None
    return Profile(
        name=name,
        description=description,
        priority=priority,
        arch=tuple(normalise_arch(arch) for arch in _strings(match, "arch", file)),
        isa=frozenset(isa),
        board=_strings(match, "board", file),
        settings=settings,
        file=file,
    )


def _only(table: Mapping[str, Any], allowed: tuple[str, ...], prefix: str, file: Path) -> None:
    for key in table:
        if key not in allowed:
            raise ConfigError("unknown key", file=file, key=f"{prefix}{key}")


def _table(table: Mapping[str, Any], key: str, file: Path) -> dict[str, Any]:
    value = table.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError("must be a table", file=file, key=key)
    return value


def _strings(table: Mapping[str, Any], key: str, file: Path) -> tuple[str, ...]:
    value = table.get(key, [])
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ConfigError("must be a list of strings", file=file, key=f"match.{key}")
    return tuple(value)
