"""Settings: TOML loading, validation errors that name file and key, paths, the shipped config."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_runtime.config import Settings, build_settings, load_settings, merge
from edge_runtime.errors import ConfigError
from edge_runtime.model import dataset
from edge_runtime.orchestrator.tools import Tool

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "edge-runtime.toml"
    path.write_text(text)
    return path


def test_defaults_without_a_file() -> None:
    settings = load_settings(None)
    assert settings == Settings()
    assert settings.model_provider == "onnx"


def test_shipped_config_is_valid() -> None:
    settings = load_settings(ROOT / "edge-runtime.toml")
    assert settings.model.path == ROOT / "models" / "glm-edge-mini"


def test_the_shipped_model_is_offered_the_tools_it_was_trained_with() -> None:
    # glm-edge-mini reads the system block it was trained on only if the config declares the
    # dataset's tools, in its order, to the letter.
    settings = load_settings(ROOT / "edge-runtime.toml")
    offered = [Tool(spec).schema() for spec in settings.tools if spec.offer_to_model]
    assert offered == dataset.tool_schemas()


def test_unknown_key_names_file_and_key(tmp_path: Path) -> None:
    path = write(tmp_path, "[model]\nmax_new_token = 3\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert str(info.value) == f"{path}: model.max_new_token: unknown key"


def test_bad_value_names_file_key_and_value(tmp_path: Path) -> None:
    path = write(tmp_path, "[runtime]\nthreads = -2\n")
    with pytest.raises(ConfigError, match=r"edge-runtime.toml: runtime.threads: .*-2"):
        load_settings(path)


def test_wrong_literal(tmp_path: Path) -> None:
    path = write(tmp_path, 'model_provider = "cloud"\n')
    with pytest.raises(ConfigError, match="model_provider"):
        load_settings(path)


def test_toml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "[model\npath = 1\n")
    with pytest.raises(ConfigError, match=r"edge-runtime.toml: invalid TOML: .*line 1"):
        load_settings(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_settings(tmp_path / "nope.toml")


def test_relative_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[model]\npath = "models/x"\n')
    assert load_settings(path).model.path == tmp_path / "models" / "x"


def test_overlay_is_under_the_user_file(tmp_path: Path) -> None:
    overlay = {"model": {"context_length": 4096, "max_new_tokens": 64}}
    settings = build_settings({"model": {"max_new_tokens": 8}}, overlay=overlay)
    assert (settings.model.context_length, settings.model.max_new_tokens) == (4096, 8)


def test_bad_overlay_value_names_the_overlay_file(tmp_path: Path) -> None:
    profile = tmp_path / "profile.toml"
    with pytest.raises(ConfigError, match=r"profile.toml: limits.max_concurrent"):
        build_settings({}, overlay={"limits": {"max_concurrent": 0}}, overlay_file=profile)


def test_settings_are_frozen() -> None:
    settings = Settings()
    with pytest.raises(ValueError):
        settings.model.max_new_tokens = 3  # type: ignore[misc]


def test_merge_is_deep_and_leaves_inputs_alone() -> None:
    base = {"a": {"b": 1, "c": 2}}
    merged = merge(base, {"a": {"c": 3}})
    assert merged == {"a": {"b": 1, "c": 3}}
    assert base == {"a": {"b": 1, "c": 2}}


def test_filter_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[filter_host]\ncache_dir = "cache"\n'
        '[[filters]]\nname = "a"\nmodule = "f.wasm"\nconfig_file = "c.json"\n'
        '[[filters]]\nname = "b"\nmodule = "/abs/g.wasm"\n',
    )
    settings = load_settings(path)
    assert settings.filter_host.cache_dir == tmp_path / "cache"
    assert settings.filters[0].module == tmp_path / "f.wasm"
    assert settings.filters[0].config_file == tmp_path / "c.json"
    assert settings.filters[1].module == Path("/abs/g.wasm")


def test_config_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_bytes(b"a = '\xff'\n")
    with pytest.raises(ConfigError, match="bad.toml: not UTF-8"):
        load_settings(path)


def test_inference_threads_spin_unless_told_not_to(tmp_path: Path) -> None:
    from edge_runtime.model.runtime import session_options

    def spinning(allow: bool) -> str:
        options = session_options(2, allow_spinning=allow)
        return str(options.get_session_config_entry("session.intra_op.allow_spinning"))

    # onnxruntime-genai's default too: a decode step is a hundred short kernels.
    assert load_settings(None).runtime.allow_spinning is True
    assert (
        spinning(True) == "1"
        and session_options(2).get_session_config_entry("session.intra_op.allow_spinning") == "1"
    )
    quiet = load_settings(write(tmp_path, "[runtime]\nallow_spinning = false\n"))
    assert spinning(quiet.runtime.allow_spinning) == "0"
