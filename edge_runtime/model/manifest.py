"""manifest.json: what a model directory holds, the hash of each file, and its parity figures."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge_runtime.errors import ModelFileError

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1
_CHUNK = 1 << 20


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class FileEntry(_Frozen):
    """Size and SHA-256 of one file of the directory."""

    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)


class Quantization(_Frozen):
    """How the graph's weights were quantized."""

    scheme: Literal["dynamic", "matmul_nbits"]
    weight_type: str = "int8"
    reduce_range: bool = False
    per_channel: bool = False
    block_size: int | None = None
    accuracy_level: int | None = None


class Parity(_Frozen):
    """Agreement of the served graph with its reference, measured at export time."""

    reference: str
    graph: str
    prompts: int
    tokens: int
    # Teacher-forced: the share of positions where both graphs pick the same next token.
    top1_agreement: float
    # Free-running: the share of prompts whose greedy continuations are identical.
    greedy_match: float


class Source(_Frozen):
    """Where the weights came from."""

    model: str
    architecture: str
    model_type: str


class Manifest(_Frozen):
    """The contents of manifest.json."""

    format: int = FORMAT_VERSION
    name: str
    graph: str
    source: Source
    quantization: Quantization | None = None
    files: dict[str, FileEntry]
    parity: list[Parity] = []
    tools: dict[str, str] = {}
    options: dict[str, Any] = {}

    def write(self, directory: Path) -> Path:
        """Write the manifest into ``directory``."""
        path = directory / MANIFEST_NAME
        text = json.dumps(self.model_dump(mode="json"), indent=2, ensure_ascii=False)
        path.write_text(text + "\n", encoding="utf-8")
        return path


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def describe_files(directory: Path, names: list[str]) -> dict[str, FileEntry]:
    """FileEntry for each named file of ``directory``."""
    return {
        name: FileEntry(
            sha256=sha256_file(directory / name), size=(directory / name).stat().st_size
        )
        for name in sorted(names)
    }


def read_manifest(directory: Path) -> Manifest:
    """Parse manifest.json; a missing or malformed manifest names the file."""
    path = directory / MANIFEST_NAME
    if not path.is_file():
        raise ModelFileError(path, "missing (every served model directory carries a manifest)")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(path, f"unreadable: {exc}") from None
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        raise ModelFileError(path, f"invalid at {key}: {first['msg']}") from None
    if manifest.format != FORMAT_VERSION:
        raise ModelFileError(path, f"format {manifest.format} is not {FORMAT_VERSION}")
    if manifest.graph not in manifest.files:
        raise ModelFileError(path, f"graph {manifest.graph!r} is not among its files")
    root = directory.resolve()
    for name in manifest.files:
        # A manifest names files inside its own directory, nothing else: no absolute paths,
        # no "..", no links that lead out.
        candidate = Path(name)
        if candidate.is_absolute() or ".." in candidate.parts or len(candidate.parts) != 1:
            raise ModelFileError(path, f"file {name!r} is not a plain name in the directory")
        if not (directory / name).resolve().is_relative_to(root):
            raise ModelFileError(path, f"file {name!r} leads outside the model directory")
    required = {"config.json", "tokenizer.json", "tokenizer_config.json"}
    required |= {
        name
        for name in ("generation_config.json", "chat_template.jinja")
        if (directory / name).exists()
    }
    data_files = {p.name for p in directory.glob(f"{manifest.graph}*_data")} | {
        p.name for p in directory.glob(f"{manifest.graph}.data")
    }
    missing = sorted((required | data_files) - set(manifest.files))
    if missing:
        raise ModelFileError(path, f"does not list {', '.join(missing)}; every file is hashed")
    return manifest


def verify_files(
    directory: Path, manifest: Manifest, mode: Literal["full", "size", "off"] = "full"
) -> None:
    """Check every listed file exists with the recorded size (and hash, when ``mode`` is full)."""
    if mode == "off":
        return
    for name, entry in manifest.files.items():
        path = directory / name
        if not path.is_file():
            raise ModelFileError(path, "missing (listed in manifest.json)")
        size = path.stat().st_size
        if size != entry.size:
            raise ModelFileError(path, f"size {size} bytes, manifest says {entry.size}")
        if mode == "full" and sha256_file(path) != entry.sha256:
            raise ModelFileError(path, "sha256 does not match manifest.json (corrupt or replaced)")
