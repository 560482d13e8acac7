"""The edge-runtime command as a user runs it: a real process, real output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXE = Path(sys.executable).parent / "edge-runtime"


def cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(EXE), *args], cwd=cwd, capture_output=True, text=True, timeout=300, check=False
    )


def test_generate_streams_an_answer_and_reports_usage() -> None:
    done = cli("generate", "--max-tokens", "12", "--seed", "4", "--stats", "Turn on the fan.")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()
    stats = dict(part.split("=") for part in done.stderr.strip().splitlines()[-1].split())
    assert int(stats["prompt_tokens"]) > 5
    assert 1 <= int(stats["completion_tokens"]) <= 12
    assert float(stats["ttft_ms"]) > 0


def test_generate_is_reproducible_with_a_seed() -> None:
    first = cli("generate", "--max-tokens", "16", "--seed", "9", "hello")
    second = cli("generate", "--max-tokens", "16", "--seed", "9", "hello")
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout


def test_python_dash_m_works() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "edge_runtime", "--version"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0
    assert done.stdout.startswith("edge-runtime ")


def test_check_config_prints_resolved_settings() -> None:
    done = cli("check-config", "edge-runtime.toml")
    assert done.returncode == 0, done.stderr
    body = "\n".join(line for line in done.stdout.splitlines() if not line.startswith("#"))
    resolved = json.loads(body)
    assert resolved["model"]["path"].endswith("models/glm-edge-mini")
    assert "profile" in done.stdout


def test_check_config_rejects_a_bad_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[model]\nverify = 'sometimes'\n")
    done = cli("check-config", str(bad))
    assert done.returncode == 1
    assert "bad.toml: model.verify" in done.stderr


def test_generate_with_a_missing_model_is_a_clear_error(tmp_path: Path) -> None:
    done = cli("generate", "--model", str(tmp_path / "none"), "hi")
    assert done.returncode == 1
    assert "no such model directory" in done.stderr
    assert "Traceback" not in done.stderr


def test_export_command(tmp_path: Path) -> None:
    from edge_runtime.model.tiny import TinyShape, make_checkpoint

    shape = TinyShape(hidden_size=64, intermediate_size=128, layers=1, heads=2, kv_heads=1)
    checkpoint = make_checkpoint(tmp_path / "hf", seed=0, shape=shape)
    out = tmp_path / "out"
    done = cli(
        "model", "export", "--model", str(checkpoint), "--out", str(out), "--scheme", "dynamic"
    )
    assert done.returncode == 0, done.stderr
    assert "model_int8.onnx vs onnx-fp32" in done.stdout
    assert "[7/7] writing manifest.json: done" in done.stderr
    assert "model.onnx vs onnx-unoptimized: top-1 agreement 100.0%" in done.stderr
    verified = cli("model", "verify", str(out))
    assert verified.returncode == 0, verified.stdout
