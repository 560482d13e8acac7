"""`bench model` on a small GLM: every row measured, ratios consistent, output JSON-ready."""

from __future__ import annotations

import importlib.util
import io
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import pytest

from edge_runtime.bench import model_dir
from edge_runtime.bench.model import (
    ROWS,
    ModelBenchArgs,
    _runs,
    merge_passes,
    model_shape,
    render,
    run,
)
from edge_runtime.errors import EdgeRuntimeError

NEW_TOKENS = 8


def test_default_shape_is_the_mid_size_glm() -> None:
    shape = model_shape(1024, 8)
    assert (shape.heads, shape.kv_heads, shape.head_dim) == (16, 2, 64)
    assert shape.intermediate_size == 2816


@pytest.mark.parametrize(
    "overrides",
    [
        {"hidden": 96},
        {"new_tokens": 1},
        {"repeats": 0},
        {"threads": -1},
        {"prompt_tokens": 2047},
        {"long_prompt_tokens": 2000},
        {"concurrency": (0,)},
        {"passes": 0},
        {"concurrency": (1, 4, 4)},
    ],
)
def test_arguments_are_checked(overrides: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        ModelBenchArgs(json=True, **overrides)


def test_passes_merge_into_one_row() -> None:
    def measured(ttft: float, runs: list[float], rss: int, four: float) -> dict[str, Any]:
        return {
            "ttft_s": ttft,
            "ttft_long_s": None,
            "decode_tok_s": statistics.median(runs),
            "decode_tok_s_runs": runs,
            "tokens": [1, 2, 3],
            "concurrent_tok_s": {"1": 10.0, "4": four},
            "concurrent_vs_single": {"1": 1.0, "4": four / 10},
            "peak_rss_bytes": rss,
        }

    merged = merge_passes([measured(0.02, [100, 110, 90], 5, 30), measured(0.04, [50, 60], 7, 34)])
    # Every repeat of both passes counts for decode; the passes' own medians for the rest.
    assert merged["decode_tok_s"] == 90 and merged["decode_tok_s_runs"] == [100, 110, 90, 50, 60]
    assert merged["ttft_s"] == pytest.approx(0.03) and merged["ttft_long_s"] is None
    assert merged["concurrent_tok_s"]["4"] == 32 and merged["concurrent_vs_single"]["4"] == 3.2
    assert merged["peak_rss_bytes"] == 7
    changed = {**measured(0.02, [1.0], 5, 30), "tokens": [1, 2, 4]}
    with pytest.raises(EdgeRuntimeError, match="different greedy tokens"):
        merge_passes([measured(0.02, [1.0], 5, 30), changed])


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    cache = tmp_path_factory.mktemp("bench-model")
    args = ModelBenchArgs(
        json=True,
        cache_dir=cache,
        prompt_tokens=16,
        new_tokens=NEW_TOKENS,
        repeats=1,
        threads=1,
        hidden=128,
        layers=2,
        long_prompt_tokens=48,
        concurrency=(1, 3),
    )
    out = io.StringIO()
    measured = run(args, out)
    assert out.getvalue() == "", "with json=True the caller prints the one JSON object"
    return measured


@pytest.mark.export
def test_every_row_is_measured(result: dict[str, Any]) -> None:
    rows = result["rows"]
    assert list(rows) == [row.name for row in ROWS]
    for name, row in rows.items():
        assert row["decode_tok_s"] > 0, name
        assert row["ttft_ms"] > 0, name
        assert row["peak_rss_bytes"] > 0, name
        assert row["weights_bytes"] > 0, name
        assert row["ceiling_tok_s"] == pytest.approx(
            result["bandwidth"]["read_gb_s"] * 1e9 / row["weights_bytes"], rel=0.01
        )
        assert row["of_ceiling"] == pytest.approx(
            row["decode_tok_s"] / row["ceiling_tok_s"], rel=0.01, abs=0.001
        )


@pytest.mark.export
def test_ratios_are_consistent(result: dict[str, Any]) -> None:
    rows, ratios = result["rows"], result["ratios"]
    fp32, int8 = rows["ours-fp32"], rows["ours-int8"]
    assert ratios["int8_size_of_fp32"] < 0.5
    assert ratios["int8_size_of_fp32"] == pytest.approx(
        int8["weights_bytes"] / fp32["weights_bytes"], abs=0.001
    )
    assert ratios["int8_vs_fp32_decode"] == pytest.approx(
        int8["decode_tok_s"] / fp32["decode_tok_s"], abs=0.001
    )
    assert ratios["ours_fp32_vs_optimum_fp32"] == pytest.approx(
        fp32["decode_tok_s"] / rows["optimum-fp32"]["decode_tok_s"], abs=0.001
    )
    assert fp32["vs_ours_fp32"] == 1.0
    # The same FP32 graph on the same onnxruntime, one thread: the same greedy tokens; and
    # the rewritten FP32 graph computes what optimum's does.
    assert rows["optimum-fp32"]["same_tokens_as_ours_fp32"] == NEW_TOKENS
    assert rows["ours-opt-fp32"]["same_tokens_as_ours_fp32"] == NEW_TOKENS
    assert ratios["opt_int8_vs_int8_decode"] == pytest.approx(
        rows["ours-opt-int8"]["decode_tok_s"] / int8["decode_tok_s"], abs=0.001
    )


@pytest.mark.export
def test_every_row_is_compared_with_onnxruntime_genai(result: dict[str, Any]) -> None:
    rows = result["rows"]
    assert result["skipped"] == {}
    genai = rows["genai-int8"]
    assert genai["engine"] == "genai" and genai["vs_genai"]["decode"] == 1.0
    for name, row in rows.items():
        versus = row["vs_genai"]
        assert versus["decode"] == round(row["decode_tok_s"] / genai["decode_tok_s"], 3), name
        assert versus["ttft_long"] == round(row["ttft_long_ms"] / genai["ttft_long_ms"], 3)
        assert row["ttft_long_ms"] > 0, name


@pytest.mark.export
def test_concurrent_requests_are_measured_for_ours_and_genai(result: dict[str, Any]) -> None:
    for name, row in result["rows"].items():
        concurrent = row["concurrent_tok_s"]
        if row["engine"] in ("ours", "genai"):
            assert set(concurrent) == {"1", "3"} and min(concurrent.values()) > 0, name
            paired = row["concurrent_vs_single"]
            assert paired["1"] == 1.0 and set(paired) == {"1", "3"}, name
            # Each round's own ratio, so not the ratio of the medians; 3 requests batched
            # cannot be slower than one, nor more than 3 times its throughput by much.
            assert 0.5 < paired["3"] < 4, name
            assert f"{name} 1: 1.00x, 3: {paired['3']:.2f}x" in render(result)
        else:
            assert concurrent == {}, name


def test_the_genai_row_needs_its_environment(tmp_path: Path) -> None:
    assert not _runs(None)
    assert not _runs(tmp_path / "python")
    assert _runs(Path(sys.executable)) == (
        importlib.util.find_spec("onnxruntime_genai") is not None
    )


@pytest.mark.export
def test_result_is_json_and_renders_a_table(result: dict[str, Any]) -> None:
    assert json.loads(json.dumps(result)) == result
    machine = result["machine"]
    assert machine["threads"] == 1
    assert {"onnxruntime", "torch", "transformers"} <= set(machine["versions"])
    assert result["model"]["parameters"] > 0
    assert Path(result["model"]["directory"]).is_dir()
    table = render(result)
    for row in ROWS:
        assert f"| {row.name} " in table
    assert result["settings"]["passes"] == 2
    assert "in each of 2 passes (the second in reverse row order)" in table


def test_a_model_directory_is_measured_beside_optimum() -> None:
    out = io.StringIO()
    root = Path(__file__).resolve().parent.parent
    args = ModelBenchArgs(json=False, prompt_tokens=8, new_tokens=16, repeats=1)
    found = model_dir.run(args, root / "models" / "glm-tiny", out)
    rows = found["rows"]
    assert set(rows) == {"ours-int8", "optimum-int8"}
    assert rows["optimum-int8"]["vs_optimum_int8"] == 1.0
    ours = rows["ours-int8"]
    assert ours["decode_tok_s"] > 0 and ours["peak_rss_bytes"] > 0
    assert ours["vs_optimum_int8"] == round(
        ours["decode_tok_s"] / rows["optimum-int8"]["decode_tok_s"], 3
    )
    assert "| ours-int8" in out.getvalue()
    json.dumps(found)
