"""Command line: argv → settings → the command."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edge_runtime import __version__
from edge_runtime.config import DEFAULT_CONFIG_NAME, Settings
from edge_runtime.errors import EdgeRuntimeError

log = logging.getLogger("edge_runtime")

SYSTEM_CONFIG = Path("/etc/edge-runtime") / DEFAULT_CONFIG_NAME


def default_config() -> Path | None:
    """./edge-runtime.toml, else /etc/edge-runtime/edge-runtime.toml, else none (defaults)."""
    for candidate in (Path(DEFAULT_CONFIG_NAME), SYSTEM_CONFIG):
        if candidate.is_file():
            return candidate
    return None


def _config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help=f"config file (default: ./{DEFAULT_CONFIG_NAME}, then {SYSTEM_CONFIG})",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every command."""
    parser = argparse.ArgumentParser(
        prog="edge-runtime",
        description="Answer devices locally with an INT8 GLM on onnxruntime.",
    )
    parser.add_argument("--version", action="version", version=f"edge-runtime {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the daemon in the foreground")
    _config_arg(serve)
    serve.add_argument(
        "--log-format",
        choices=("text", "json"),
        help="text: one line per record with journald priorities; json: one object per line "
        "(default: log.format in the config)",
    )

    devices = commands.add_parser("devices", help="the devices that registered with this box")
    _config_arg(devices)
    devices.add_argument("--json", action="store_true", help="print one JSON list")

    ask = commands.add_parser("ask", help="send one request to a running daemon")
    where = ask.add_mutually_exclusive_group()
    where.add_argument("--mqtt", default="mqtt://127.0.0.1:1883", help="broker URL")
    where.add_argument("--coap", help="CoAP URL of the box, e.g. coap://[::1]")
    ask.add_argument("--prefix", default="edge", help="topic prefix")
    ask.add_argument("--device", default="ask", help="device id to send as")
    ask.add_argument("--stream", action="store_true", help="print the answer as it is written")
    ask.add_argument("--session", help="conversation id")
    ask.add_argument("--timeout", type=float, default=60.0)
    ask.add_argument("text", metavar="TEXT")

    gen = commands.add_parser("generate", help="one local generation, streamed to stdout")
    _config_arg(gen)
    gen.add_argument("--model", type=Path, help="model directory (default: model.path)")
    gen.add_argument("--max-tokens", type=int, help="most tokens to generate")
    gen.add_argument("--seed", type=int, help="seed for sampling (reproducible output)")
    gen.add_argument("--greedy", action="store_true", help="always take the most likely token")
    gen.add_argument("--temperature", type=float)
    gen.add_argument("--top-k", type=int)
    gen.add_argument("--top-p", type=float)
    gen.add_argument("--repetition-penalty", type=float)
    gen.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    gen.add_argument("--system", help="system message")
    gen.add_argument("--raw", action="store_true", help="TEXT is already a formatted prompt")
    gen.add_argument("--stats", action="store_true", help="print usage and timing to stderr")
    gen.add_argument("text", metavar="TEXT")

    model = commands.add_parser("model", help="export, build and verify model directories")
    model_commands = model.add_subparsers(dest="model_command", required=True, metavar="ACTION")
    export = model_commands.add_parser("export", help="optimum ONNX export + INT8")
    _config_arg(export)
    export.add_argument("--model", required=True, help="Hugging Face directory or hub id")
    export.add_argument("--out", required=True, type=Path)
    export.add_argument("--quantize", choices=("int8", "none"), default="int8")
    export.add_argument("--scheme", choices=("dynamic", "matmul_nbits"), help="INT8 scheme")
    export.add_argument(
        "--source-label", help="how manifest.json names the source (default: --model as given)"
    )
    export.add_argument("--profile", help="device profile whose INT8 scheme to use")
    export.add_argument("--keep-fp32", action="store_true", help="also keep model.onnx")
    export.add_argument(
        "--no-optimize",
        dest="optimize",
        action="store_false",
        help="keep optimum's graph as exported (no GroupQueryAttention rewrite)",
    )
    optimize = model_commands.add_parser(
        "optimize", help="rewrite an exported model's graph for CPU inference, in place"
    )
    _config_arg(optimize)
    optimize.add_argument("directory", type=Path, help="model directory (with manifest.json)")
    tiny = model_commands.add_parser("build-tiny", help="build the small GLM for tests")
    tiny.add_argument("--out", required=True, type=Path)
    tiny.add_argument("--seed", type=int, default=0)
    dataset = model_commands.add_parser(
        "dataset", help="synthetic assistant conversations (train and held-out splits) as JSONL"
    )
    dataset.add_argument("--out", required=True, type=Path)
    dataset.add_argument("--seed", type=int, default=0)
    dataset.add_argument("--train", type=int, default=20_000, help="training samples")
    dataset.add_argument("--eval", type=int, default=400, help="samples per held-out split")
    trainer = model_commands.add_parser(
        "train", help="train a small GLM on the assistant dataset (needs the export extra)"
    )
    trainer.add_argument("--out", required=True, type=Path)
    # Unset options take TrainSettings' defaults.
    for option, kind, about in (
        ("--seed", int, "random seed (data, weights, order)"),
        ("--minutes", float, "training time, the copy warm-up included"),
        ("--samples", int, "training conversations to generate"),
        ("--batch-tokens", int, "padded tokens per step, over all workers"),
        ("--learning-rate", float, "peak learning rate"),
        ("--workers", int, "data-parallel training processes (one per core)"),
        ("--invented-share", float, "share of conversations with made-up names"),
        (
            "--copy-warmup-steps",
            int,
            "copy drills before the conversations, at most (they stop once it copies)",
        ),
        ("--plain-share", float, "share of the time trained without the tool list"),
    ):
        trainer.add_argument(option, type=kind, help=about)
    evaluate = model_commands.add_parser(
        "eval", help="held-out assistant tasks: tool calls, slots, answers; grounded and not"
    )
    evaluate.add_argument("directory", type=Path)
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    evaluate.add_argument("--samples", type=int, default=100, help="samples per held-out split")
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument(
        "--failures",
        type=int,
        default=0,
        metavar="N",
        help="list up to N failing cases per split and decoding",
    )
    verify = model_commands.add_parser("verify", help="check files, hashes and parity figures")
    verify.add_argument("directory", type=Path)

    filters = commands.add_parser("filters", help="build and try Proxy-Wasm filters")
    filter_commands = filters.add_subparsers(
        dest="filters_command", required=True, metavar="ACTION"
    )
    build = filter_commands.add_parser("build", help="compile the filter sources (npm, clang)")
    build.add_argument("--source", type=Path, default=Path("filters"), help="filters directory")
    build.add_argument("--out", type=Path, help="where the .wasm files go (default: --source)")
    run = filter_commands.add_parser("run", help="one request and one response through a filter")
    run.add_argument("module", type=Path, metavar="FILTER.wasm")
    run.add_argument("--root-id", help="root context id (default: the file name)")
    run.add_argument("--config", default="", help="plugin configuration: TEXT or @FILE")
    run.add_argument("--request", type=Path, help='JSON {"headers": [[k, v]...], "body": "..."}')
    run.add_argument("--response", type=Path, help="same shape, for the response phase")
    run.add_argument("--log-level", default="trace", help="lowest filter log level recorded")
    run.add_argument("--json", action="store_true", help="print one JSON object")

    doctor = commands.add_parser("doctor", help="what this box is and whether the model loads")
    _config_arg(doctor)

    feedback = commands.add_parser("feedback", help="ratings devices gave to answers")
    feedback_commands = feedback.add_subparsers(
        dest="feedback_command", required=True, metavar="COMMAND"
    )
    export_pairs = feedback_commands.add_parser(
        "export", help="(request, answer, rating) pairs as JSON lines, for fine-tuning"
    )
    _config_arg(export_pairs)
    export_pairs.add_argument("--out", type=Path, help="write here instead of stdout")
    export_pairs.add_argument("--min-rating", type=int, default=1, choices=range(1, 6))
    export_pairs.add_argument("--max-rating", type=int, default=5, choices=range(1, 6))

    check = commands.add_parser("check-config", help="validate a config, print it resolved")
    check.add_argument("file", type=Path)

    bench = commands.add_parser("bench", help="benchmarks, side by side with baselines")
    bench_commands = bench.add_subparsers(dest="bench_command", required=True, metavar="NAME")
    bench_model = bench_commands.add_parser("model", help="decode speed, TTFT, memory")
    bench_model.add_argument("--json", action="store_true", help="print one JSON object")
    bench_model.add_argument("--new-tokens", type=int, default=64)
    bench_model.add_argument("--prompt-tokens", type=int, default=64)
    bench_model.add_argument("--repeats", type=int, default=3)
    bench_model.add_argument(
        "--passes",
        type=int,
        default=2,
        help="run every row this many times, each pass in the reverse order of the last",
    )
    bench_model.add_argument("--threads", type=int, default=0)
    bench_model.add_argument("--cache-dir", type=Path, default=Path(".cache/bench-model"))
    bench_model.add_argument(
        "--long-prompt-tokens", type=int, default=512, help="second prompt for TTFT (0: none)"
    )
    bench_model.add_argument(
        "--concurrency",
        default="1,4,8",
        help="requests at once for the aggregate throughput columns (comma-separated)",
    )
    bench_model.add_argument(
        "--anchors-python",
        type=Path,
        default=Path(".venv-anchors/bin/python"),
        help="Python with onnxruntime-genai for its row (make bench-anchors)",
    )
    bench_model.add_argument(
        "--model",
        type=Path,
        help="a model directory: our loop beside optimum on its INT8 file (default: a built GLM)",
    )
    bench_transport = bench_commands.add_parser("transport", help="MQTT echo, ours vs bare paho")
    bench_transport.add_argument("--json", action="store_true", help="print one JSON object")
    bench_transport.add_argument("--requests", type=int, default=600)
    bench_orch = bench_commands.add_parser(
        "orchestrator", help="rule+tool, cache hit and model miss latency, with baselines"
    )
    bench_orch.add_argument("--json", action="store_true", help="print one JSON object")
    bench_orch.add_argument("--model", type=Path, default=Path("models/glm-tiny"))
    bench_orch.add_argument(
        "--weather-service", type=Path, default=Path("examples/weather_service.py")
    )
    bench_orch.add_argument("--requests", type=int, default=200)
    bench_orch.add_argument("--model-requests", type=int, default=30)
    bench_startup = bench_commands.add_parser(
        "startup", help="start to READY (cold, cached), idle RSS and CPU, beside a bare load"
    )
    bench_startup.add_argument("--json", action="store_true", help="print one JSON object")
    _config_arg(bench_startup)
    bench_startup.add_argument("--repeats", type=int, default=3)
    bench_startup.add_argument("--idle-seconds", type=float, default=60.0)
    bench_filters = bench_commands.add_parser("filters", help="filter chain time per request")
    bench_filters.add_argument("--json", action="store_true", help="print one JSON object")
    bench_filters.add_argument("--filters-dir", type=Path, default=Path("filters"))
    bench_filters.add_argument("--requests", type=int, default=3000)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; exit status 0 on success, 1 on a reported error, 2 on usage."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return _dispatch(args)
    except EdgeRuntimeError as exc:
        print(f"edge-runtime: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "serve":
        from edge_runtime import daemon
        from edge_runtime.device import resolve_settings
        from edge_runtime.logs import configure

        config = args.config or default_config()
        resolved = resolve_settings(config)
        settings = resolved.settings
        configure(
            "debug" if args.verbose else settings.log.level,
            args.log_format or settings.log.format,
        )

        def reload() -> Settings:
            return resolve_settings(config).settings

        return asyncio.run(
            daemon.serve(settings, threads=resolved.threads, reload=reload if config else None)
        )
    if args.command == "devices":
        return _devices(args)
    if args.command == "ask":
        from edge_runtime.ask import ask_coap, ask_mqtt

        if args.coap:
            return ask_coap(
                args.coap, args.text, out=sys.stdout, err=sys.stderr, timeout_s=args.timeout
            )
        return ask_mqtt(
            args.mqtt,
            args.text,
            out=sys.stdout,
            err=sys.stderr,
            stream=args.stream,
            session=args.session,
            device=args.device,
            prefix=args.prefix,
            timeout_s=args.timeout,
        )
    if args.command == "generate":
        return _generate(args)
    if args.command == "model":
        return _model(args)
    if args.command == "doctor":
        from edge_runtime import doctor

        return doctor.run(args.config or default_config(), sys.stdout)
    if args.command == "check-config":
        from edge_runtime.device import resolve_settings

        resolved = resolve_settings(args.file)
        print(f"# {args.file}: valid; profile {resolved.choice.profile.name}")
        print(f"# {resolved.choice.reason}")
        print(json.dumps(resolved.settings.model_dump(mode="json"), indent=2))
        return 0
    if args.command == "bench":
        return _bench(args)
    if args.command == "feedback":
        return _feedback_export(args)
    if args.command == "filters":
        return _filters(args)
    raise AssertionError(args.command)


def _devices(args: argparse.Namespace) -> int:
    from edge_runtime.config import load_settings
    from edge_runtime.devices import DeviceRegistry

    settings = load_settings(args.config or default_config())
    path = settings.state_dir / "devices.db"
    if not path.is_file():
        print(f"edge-runtime: no device has registered yet ({path})", file=sys.stderr)
        return 1
    registry = DeviceRegistry(path)
    try:
        found = registry.all()
    finally:
        registry.close()
    if args.json:
        print(json.dumps([d.as_dict() for d in found], indent=2))
        return 0
    rows = [
        [
            d.id,
            d.kind or "-",
            ",".join(d.capabilities) or "-",
            d.source,
            "online" if d.online else "offline",
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(d.last_seen)),
        ]
        for d in found
    ]
    headers = ["device", "kind", "capabilities", "via", "status", "last seen"]
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    for row in [headers, *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
    return 0


def _feedback_export(args: argparse.Namespace) -> int:
    from edge_runtime.config import load_settings
    from edge_runtime.orchestrator.feedback import FeedbackStore

    config = args.config or default_config()
    settings = load_settings(config)
    path = settings.state_dir / "feedback.db"
    if not path.is_file():
        print(f"edge-runtime: no feedback recorded yet ({path})", file=sys.stderr)
        return 1
    store = FeedbackStore(path)
    try:
        bounds = {"min_rating": args.min_rating, "max_rating": args.max_rating}
        if args.out is None:
            count = store.export(sys.stdout, **bounds)
        else:
            with args.out.open("w", encoding="utf-8") as out:
                count = store.export(out, **bounds)
    finally:
        store.close()
    print(f"# {count} pair(s) exported", file=sys.stderr)
    return 0


def _generate(args: argparse.Namespace) -> int:
    from edge_runtime.device import resolve_settings
    from edge_runtime.model.runtime import load_model

    resolved = resolve_settings(args.config or default_config())
    settings = resolved.settings
    model = load_model(
        args.model or settings.model.path,
        threads=resolved.threads,
        verify=settings.model.verify,
        context_length=settings.model.context_length,
        context_overflow=settings.model.context_overflow,
        allow_spinning=settings.runtime.allow_spinning,
        optimization=settings.runtime.graph_optimization,
        max_batch=settings.runtime.max_batch,
    )
    overrides: dict[str, Any] = {
        "max_new_tokens": (
            args.max_tokens if args.max_tokens is not None else settings.model.max_new_tokens
        ),
        "seed": args.seed,
        "stop": tuple(args.stop),
    }
    for name in ("temperature", "top_k", "top_p", "repetition_penalty"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    if args.greedy:
        overrides["do_sample"] = False
    elif args.temperature is not None or args.seed is not None:
        overrides.setdefault("do_sample", True)
    with model:
        params = model.default_params(**overrides)
        if args.raw:
            generation = model.generate(model.tokenizer.encode(args.text), params)
        else:
            messages = [{"role": "user", "content": args.text}]
            if args.system:
                messages.insert(0, {"role": "system", "content": args.system})
            generation = model.chat(messages, params)

        async def emit() -> None:
            async for delta in model.stream(generation):
                sys.stdout.write(delta)
                sys.stdout.flush()

        asyncio.run(emit())
        sys.stdout.write("\n")
        result = generation.result
        if args.stats:
            print(
                f"finish={result.finish_reason} prompt_tokens={result.usage.prompt_tokens} "
                f"completion_tokens={result.usage.completion_tokens} "
                f"ttft_ms={result.timing.time_to_first_token_s * 1000:.1f} "
                f"decode_tok_s={result.decode_tokens_per_s:.1f}",
                file=sys.stderr,
            )
    return 0


def _model(args: argparse.Namespace) -> int:
    if args.model_command == "verify":
        from edge_runtime.model.verify import verify_directory

        return verify_directory(args.directory, sys.stdout)
    if args.model_command == "eval":
        from edge_runtime.bench import assistant

        found = assistant.run(
            assistant.EvalArgs(
                model=args.directory,
                samples=args.samples,
                seed=args.seed,
                json=args.json,
                failures=args.failures,
            ),
            sys.stdout,
        )
        if args.json:
            print(assistant.dump(found))
        return 0
    if args.model_command == "train":
        from edge_runtime.model.train import TrainSettings, train

        given = {
            "seed": args.seed,
            "minutes": args.minutes,
            "samples": args.samples,
            "batch_tokens": args.batch_tokens,
            "learning_rate": args.learning_rate,
            "workers": args.workers,
            "invented_share": args.invented_share,
            "copy_warmup_steps": args.copy_warmup_steps,
            "plain_share": args.plain_share,
        }
        try:
            settings = TrainSettings(**{k: v for k, v in given.items() if v is not None})
        except ValueError as exc:
            print(f"edge-runtime: {exc}", file=sys.stderr)
            return 2
        train(args.out, settings, sys.stdout)
        print(f"checkpoint in {args.out}; next: edge-runtime model export --model {args.out}")
        return 0
    if args.model_command == "dataset":
        from edge_runtime.model import dataset

        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "tools.json").write_text(
            json.dumps(dataset.tool_schemas(), ensure_ascii=False, indent=2) + "\n"
        )
        for split in dataset.SPLITS:
            count = args.train if split == "train" else args.eval
            written = dataset.write_jsonl(
                args.out / f"{split}.jsonl", dataset.generate(split, count, seed=args.seed)
            )
            print(f"{split}: {written} samples")
        return 0
    from edge_runtime.model.export import ExportOptions

    if args.model_command == "build-tiny":
        from edge_runtime.model.tiny import build_tiny

        manifest = build_tiny(args.out, seed=args.seed)
        print(f"wrote {args.out} ({manifest.files[manifest.graph].size / 1e6:.1f} MB graph)")
        return 0
    from edge_runtime.device import resolve_settings
    from edge_runtime.model.export import export_model, optimize_directory

    if args.model_command == "optimize":
        resolved = resolve_settings(args.config or default_config())
        try:
            optimized = optimize_directory(args.directory, threads=resolved.threads)
        except EdgeRuntimeError as exc:
            print(f"edge-runtime: {exc}", file=sys.stderr)
            return 1
        if optimized is None:
            print(f"{args.directory}: already optimized")
        else:
            rewrite = optimized.options["optimization"]["rewrite"]
            print(
                f"{args.directory}: {optimized.graph} rewritten (rewrite {rewrite}); "
                "greedy output unchanged"
            )
        return 0
    resolved = resolve_settings(args.config or default_config(), profile=args.profile)
    quantization = resolved.settings.quantization
    if args.scheme:
        quantization = quantization.model_copy(update={"scheme": args.scheme})
    print(f"INT8 scheme {quantization.scheme} from profile {resolved.choice.profile.name}")
    options = ExportOptions(
        quantize=args.quantize,
        quantization=quantization,
        keep_fp32=args.keep_fp32,
        threads=resolved.threads,
        source_label=args.source_label,
        optimize=args.optimize,
    )
    manifest = export_model(args.model, args.out, options)
    for parity in manifest.parity:
        print(
            f"{parity.graph} vs {parity.reference}: top-1 {parity.top1_agreement:.1%}, "
            f"greedy identical {parity.greedy_match:.0%}"
        )
    return 0


def _filters(args: argparse.Namespace) -> int:
    if args.filters_command == "build":
        import subprocess

        script = args.source / "build.sh"
        if not script.is_file():
            print(f"edge-runtime: {script}: no build script (run from a checkout)", file=sys.stderr)
            return 1
        out = args.out or args.source
        return subprocess.run(["bash", str(script), str(out)], check=False).returncode
    from edge_runtime.filters.runner import RunOptions, read_message, run_filter

    # The filter's logs are part of the result; don't print them twice.
    logging.getLogger("edge_runtime.filters").setLevel(logging.ERROR)
    config = args.config
    if config.startswith("@"):
        config = Path(config[1:]).read_text(encoding="utf-8")
    result = run_filter(
        RunOptions(
            module=args.module,
            root_id=args.root_id,
            config=config,
            request=read_message(args.request, "request") if args.request else None,
            response=read_message(args.response, "response") if args.response else None,
            log_level=args.log_level,
        )
    )
    if args.json:
        print(json.dumps(result, indent=2, ensure_ascii=False))
    else:
        _print_run(result)
    return 0


def _print_run(result: dict[str, Any]) -> None:
    if result["error"]:
        print(f"error: {result['error']}")
    local = result["local_response"]
    if local:
        print(f"local response {local['status']}: {local['body']}")
        for name, value in local["headers"]:
            print(f"  {name}: {value}")
    for phase in ("request", "response"):
        if phase not in result:
            continue
        print(f"{phase}:")
        for name, value in result[phase]["headers"]:
            print(f"  {name}: {value}")
        print(f"  body: {result[phase]['body']}")
    for level, message in result.get("logs", []):
        print(f"log[{level}] {message}")
    for name, value in result.get("metrics", {}).items():
        print(f"metric {name} = {value}")


def _bench(args: argparse.Namespace) -> int:
    """Run one benchmark; with --json its figures go to stdout as one object."""
    found: dict[str, Any]
    if args.bench_command == "transport":
        from edge_runtime.bench import transport

        found = transport.run(
            transport.TransportBenchArgs(json=args.json, requests=args.requests), sys.stdout
        )
    elif args.bench_command == "startup":
        from edge_runtime.bench import startup

        found = startup.run(
            startup.StartupBenchArgs(
                json=args.json,
                config=args.config or Path("edge-runtime.toml"),
                repeats=args.repeats,
                idle_s=args.idle_seconds,
            ),
            sys.stdout,
        )
    elif args.bench_command == "orchestrator":
        from edge_runtime.bench import orchestrator as orch_bench

        found = orch_bench.run(
            orch_bench.OrchestratorBenchArgs(
                json=args.json,
                model=args.model,
                weather_service=args.weather_service,
                requests=args.requests,
                model_requests=args.model_requests,
            ),
            sys.stdout,
        )
    elif args.bench_command == "filters":
        from edge_runtime.bench import filters as filter_bench

        found = filter_bench.run(
            filter_bench.FilterBenchArgs(
                json=args.json, filters_dir=args.filters_dir, requests=args.requests
            ),
            sys.stdout,
        )
    else:
        from edge_runtime.bench import model_dir
        from edge_runtime.bench.model import ModelBenchArgs, run

        bench_args = ModelBenchArgs(
            json=args.json,
            cache_dir=args.cache_dir,
            prompt_tokens=args.prompt_tokens,
            new_tokens=args.new_tokens,
            repeats=args.repeats,
            passes=args.passes,
            threads=args.threads,
            long_prompt_tokens=args.long_prompt_tokens,
            concurrency=tuple(int(c) for c in args.concurrency.split(",") if c.strip()),
            anchors_python=args.anchors_python,
        )
        out = sys.stderr if args.json else sys.stdout
        if args.model is not None:
            found = model_dir.run(bench_args, args.model, out)
        else:
            found = run(bench_args, out)
    if args.json:
        print(json.dumps(found, indent=2))
    return 0
