"""A model directory on onnxruntime: file checks, the session, the KV-cache decoder, the Model."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnxruntime as ort

from edge_runtime.errors import (
    ContextLengthError,
    ModelFileError,
    ModelFormatError,
    RequestError,
)
from edge_runtime.model.batch import BatchDecoder
from edge_runtime.model.constrain import Grounding, ToolCallConstraint, ToolGrammar, Vocabulary
from edge_runtime.model.generate import (
    CancelToken,
    Constraint,
    DecoderState,
    Generation,
    GenerationParams,
    stream,
    stream_through,
)
from edge_runtime.model.manifest import Manifest, read_manifest, verify_files
from edge_runtime.model.numbers import NumberConstraint, numbers_in
from edge_runtime.model.optimize import (
    KV_CACHE_KEY,
    KV_CACHE_SHARED,
    LOGITS_KEY,
    LOGITS_LAST,
    LOGITS_LAST_PER_ROW,
)
from edge_runtime.model.sampling import Logits, SamplingParams
from edge_runtime.model.tokenizer import GLM_TURN_END_TOKENS, ChatTokenizer, Message

GRAPH_NAMES = ("model_int8.onnx", "model.onnx")
PREFILL_CHUNK = 256
_PAST = re.compile(r"^past_key_values\.(\d+)\.(key|value)$")
_ONNX_FLOAT: dict[str, np.dtype[Any]] = {
    "tensor(float)": np.dtype(np.float32),
    "tensor(float16)": np.dtype(np.float16),
}
_OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
Verify = Literal["full", "size", "off"]


def session_options(
    threads: int, *, allow_spinning: bool = True, optimization: str = "all"
) -> ort.SessionOptions:
    """Session options for one decoder on a small box."""
    options = ort.SessionOptions()
    # Set explicitly: onnxruntime's default counts host cores and ignores cgroup quotas.
    options.intra_op_num_threads = max(1, threads)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = _OPT_LEVELS[optimization]
    options.add_session_config_entry(
        "session.intra_op.allow_spinning", "1" if allow_spinning else "0"
    )
    options.log_severity_level = 3
    return options


def open_session(path: Path, options: ort.SessionOptions) -> ort.InferenceSession:
    """An InferenceSession on the CPU; a broken graph file is a ModelFileError naming it."""
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own untyped Fail/InvalidProtobuf errors
        raise ModelFileError(path, f"onnxruntime cannot load it: {exc}") from None


@dataclass
class _KVState:
    """Past keys and values of one sequence, as onnxruntime values fed back each step."""

    past: dict[str, ort.OrtValue]
    length: int = 0


@dataclass(frozen=True, slots=True)
class GraphLayout:
    """The I/O of a decoder graph in the optimum text-generation-with-past layout."""

    layers: int
    kv_heads: int
    head_dim: int
    dtype: np.dtype[Any]
    has_position_ids: bool
    past_names: tuple[str, ...]
    present_names: tuple[str, ...]
    # Rewritten by optimize.py: past and present may be one buffer, logits are the last position's.
    shared_kv: bool = False
    # Rewrite 2 on: the logits are each row's last real position, so prompts of different
    # lengths can be prefilled together, right-padded.
    ragged_prefill: bool = False

    @classmethod
    def of(cls, session: ort.InferenceSession, graph: Path) -> GraphLayout:
        """Discover the layout from the session; a graph we cannot drive is a clear error."""
        inputs = {i.name: i for i in session.get_inputs()}
        outputs = {o.name for o in session.get_outputs()}
        missing = [n for n in ("input_ids", "attention_mask") if n not in inputs]
        if "logits" not in outputs:
            missing.append("logits (output)")
        pasts = sorted(
            ((int(m.group(1)), m.group(2), name) for name in inputs if (m := _PAST.match(name))),
        )
        if not pasts:
            missing.append("past_key_values.*")
        if missing:
            raise ModelFormatError(
                f"{graph}: not a decoder graph with a KV cache; missing {', '.join(missing)} "
                "(export with task text-generation-with-past)"
            )
        layers = max(index for index, _, _ in pasts) + 1
        past_names = tuple(
            f"past_key_values.{i}.{kind}" for i in range(layers) for kind in ("key", "value")
        )
        present_names = tuple(
            f"present.{i}.{kind}" for i in range(layers) for kind in ("key", "value")
        )
        absent = [n for n in past_names if n not in inputs] + [
            n for n in present_names if n not in outputs
        ]
        if absent:
            raise ModelFormatError(f"{graph}: incomplete KV cache I/O; missing {', '.join(absent)}")
        first = inputs[past_names[0]]
        kv_heads, head_dim = first.shape[1], first.shape[3]
        if not isinstance(kv_heads, int) or not isinstance(head_dim, int):
            raise ModelFormatError(f"{graph}: {first.name} has symbolic heads or head size")
        if first.type not in _ONNX_FLOAT:
            raise ModelFormatError(f"{graph}: {first.name} has unsupported type {first.type}")
        metadata = session.get_modelmeta().custom_metadata_map
        logits = metadata.get(LOGITS_KEY)
        return cls(
            layers=layers,
            kv_heads=kv_heads,
            head_dim=head_dim,
            dtype=_ONNX_FLOAT[first.type],
            has_position_ids="position_ids" in inputs,
            past_names=past_names,
            present_names=present_names,
            shared_kv=metadata.get(KV_CACHE_KEY) == KV_CACHE_SHARED
            and logits in (LOGITS_LAST, LOGITS_LAST_PER_ROW),
            ragged_prefill=logits == LOGITS_LAST_PER_ROW,
        )


class OnnxDecoder:
    """Drives an optimum-layout decoder graph one call per step, feeding presents back as pasts."""

    def __init__(self, session: ort.InferenceSession, layout: GraphLayout, max_length: int):
        self.session = session
        self.layout = layout
        self._outputs = ["logits", *layout.present_names]
        self._ones = np.ones((1, max_length), dtype=np.int64)
        self._positions = np.arange(max_length, dtype=np.int64).reshape(1, -1)
        empty = np.zeros((1, layout.kv_heads, 0, layout.head_dim), dtype=layout.dtype)
        self._empty = ort.OrtValue.ortvalue_from_numpy(empty)

    def start(self) -> _KVState:
        """An empty sequence."""
        return _KVState(past=dict.fromkeys(self.layout.past_names, self._empty))

    def release(self, state: DecoderState) -> None:
        """Nothing to free: the state's arrays go with it."""

    def forward(self, state: DecoderState, ids: Sequence[int]) -> Logits:
        """Run ``ids`` through the graph after ``state``; return the last position's logits.

        Long prompts go in chunks: the graph returns logits for every position it is given,
        and for a 150k vocabulary a 2k-token prompt would otherwise need 1.2 GB for them.
        """
        if not isinstance(state, _KVState):
            raise TypeError("state was not made by this decoder")
        for start in range(0, len(ids) - PREFILL_CHUNK, PREFILL_CHUNK):
            self._step(state, ids[start : start + PREFILL_CHUNK])
        tail = len(ids) % PREFILL_CHUNK or PREFILL_CHUNK
        return self._step(state, ids[len(ids) - tail :])

    def _step(self, state: _KVState, ids: Sequence[int]) -> Logits:
        count = len(ids)
        total = state.length + count
        feeds: dict[str, ort.OrtValue] = dict(state.past)
        feeds["input_ids"] = ort.OrtValue.ortvalue_from_numpy(
            np.asarray(ids, dtype=np.int64).reshape(1, count)
        )
        # Contiguous views of preallocated rows: no allocation per step.
        feeds["attention_mask"] = ort.OrtValue.ortvalue_from_numpy(self._ones[:, :total])
        if self.layout.has_position_ids:
            feeds["position_ids"] = ort.OrtValue.ortvalue_from_numpy(
                self._positions[:, state.length : total]
            )
        results = self.session.run_with_ort_values(self._outputs, feeds)
        state.past = dict(zip(self.layout.past_names, results[1:], strict=True))
        state.length = total
        logits: Logits = results[0].numpy()[0, -1]
        return logits


AnyDecoder = OnnxDecoder | BatchDecoder


def make_decoder(
    session: ort.InferenceSession,
    layout: GraphLayout,
    max_length: int,
    *,
    vocab_size: int,
    max_batch: int = 4,
) -> AnyDecoder:
    """The decoder for a graph: in place and batched if it was rewritten, else feed-back."""
    if layout.shared_kv:
        return BatchDecoder(session, layout, max_length, rows=max_batch, vocab_size=vocab_size)
    return OnnxDecoder(session, layout, max_length)


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """What the runtime needs from config.json and generation_config.json."""

    model_type: str
    architecture: str
    max_position_embeddings: int
    vocab_size: int
    eos_token_ids: tuple[int, ...]
    defaults: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_directory(cls, directory: Path) -> ModelConfig:
        """Read config.json (required) and generation_config.json (optional)."""
        config_path = directory / "config.json"
        gen_path = directory / "generation_config.json"
        config = _read_json(config_path)
        generation = _read_json(gen_path) if gen_path.exists() else {}
        eos_source, eos = (
            (gen_path, generation["eos_token_id"])
            if "eos_token_id" in generation
            else (config_path, config.get("eos_token_id"))
        )
        eos_ids = _token_ids(eos)
        if eos_ids is None:
            raise ModelFileError(
                eos_source, f"eos_token_id must be an id or a list of ids: {eos!r}"
            )
        architectures = config.get("architectures") or ["?"]
        if isinstance(architectures, str):
            architectures = [architectures]
        try:
            vocab_size = config["vocab_size"]
            positions = config.get("max_position_embeddings", 2048)
            if not _is_id(vocab_size) or not _is_id(positions):
                raise ValueError("vocab_size and max_position_embeddings must be integers")
            return cls(
                model_type=str(config["model_type"]),
                architecture=str(architectures[0]),
                max_position_embeddings=positions,
                vocab_size=vocab_size,
                eos_token_ids=eos_ids,
                defaults=generation,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelFileError(config_path, f"missing or bad key: {exc}") from None


def _is_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _token_ids(value: Any) -> tuple[int, ...] | None:
    if value is None:
        return ()
    if _is_id(value):
        return (value,)
    if isinstance(value, list) and all(_is_id(v) for v in value):
        return tuple(value)
    return None


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ModelFileError(path, "missing")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(path, f"unreadable: {exc}") from None
    if not isinstance(data, dict):
        raise ModelFileError(path, "not a JSON object")
    return data


def find_graph(directory: Path, manifest: Manifest | None) -> Path:
    """The graph to serve: the manifest's, else model_int8.onnx, else model.onnx."""
    if manifest is not None:
        return directory / manifest.graph
    for name in GRAPH_NAMES:
        if (directory / name).is_file():
            return directory / name
    raise ModelFileError(directory / GRAPH_NAMES[1], f"missing (nor {GRAPH_NAMES[0]})")


class Model:
    """A loaded model directory: tokenizer, decoder and defaults, with its own inference thread."""

    def __init__(
        self,
        directory: Path,
        *,
        config: ModelConfig,
        tokenizer: ChatTokenizer,
        decoder: AnyDecoder,
        graph: Path,
        manifest: Manifest | None,
        context_length: int,
        context_overflow: Literal["drop_oldest", "error"] = "drop_oldest",
    ):
        self.directory = directory
        self.config = config
        self.tokenizer = tokenizer
        self.decoder = decoder
        self.graph = graph
        self.manifest = manifest
        self.context_length = context_length
        self.context_overflow = context_overflow
        # Built on the first grounded generation: every token's bytes, for tool-call grammars.
        self._vocabulary: Vocabulary | None = None
        try:
            # Checked now, so a bad generation_config.json fails the load, not every request.
            self._params({})
        except (TypeError, ValueError) as exc:
            raise ModelFileError(
                directory / "generation_config.json", f"bad sampling default: {exc}"
            ) from None
        turn_ends = (tokenizer.token_id(t) for t in GLM_TURN_END_TOKENS)
        self.eos_token_ids = tuple(
            sorted(set(config.eos_token_ids) | {i for i in turn_ends if i is not None})
        )
        # Generation steps run on these threads (onnxruntime releases the GIL while it runs, so
        # the event loop stays responsive). The feed-back decoder runs one sequence step at a
        # time on one thread; the batched decoder needs a thread per sequence waiting for the
        # step they share, and a spare for the daemon's own calls.
        # Generation steps run on these threads (onnxruntime releases the GIL while it runs, so
        # the event loop stays responsive). The feed-back decoder runs one step at a time on
        # one thread, interleaving the steps of concurrent generations; the batched decoder
        # needs a thread per sequence waiting for the step they share, and a spare.
        self.concurrency = decoder.rows if isinstance(decoder, BatchDecoder) else None
        self.executor = ThreadPoolExecutor(
            max_workers=self.concurrency + 1 if self.concurrency else 1,
            thread_name_prefix="onnxruntime",
        )
        self._admission: asyncio.Semaphore | None = None

    async def stream(self, generation: Generation) -> AsyncIterator[str]:
        """Run ``generation`` on the inference threads and yield its deltas.

        With the batched decoder at most ``concurrency`` generations run at once (one per row
        of its cache); the others wait here, on the event loop, not on an inference thread.
        """
        if self.concurrency is None:
            async for delta in stream(generation, self.executor):
                yield delta
            return
        if self._admission is None:
            self._admission = asyncio.Semaphore(self.concurrency)
        async with self._admission:
            # Each admitted generation runs on a thread of its own, so the batch's steps never
            # wait for the event loop.
            async for delta in stream_through(generation, self.executor):
                yield delta

    def close(self) -> None:
        """Stop the inference threads."""
        self.executor.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def default_params(self, **overrides: Any) -> GenerationParams:
        """Generation parameters from generation_config.json, then ``overrides``.

        Impossible values (a top_p of 0, a negative temperature) are a RequestError.
        """
        try:
            return self._params(dict(overrides))
        except (TypeError, ValueError) as exc:
            raise RequestError(f"bad generation parameter: {exc}") from None

    def _params(self, overrides: dict[str, Any]) -> GenerationParams:
        d = self.config.defaults
        sampling = SamplingParams(
            do_sample=bool(overrides.pop("do_sample", d.get("do_sample", False))),
            temperature=float(overrides.pop("temperature", d.get("temperature", 1.0))),
            top_k=int(overrides.pop("top_k", d.get("top_k", 0) or 0)),
            top_p=float(overrides.pop("top_p", d.get("top_p", 1.0))),
            repetition_penalty=float(
                overrides.pop("repetition_penalty", d.get("repetition_penalty", 1.0))
            ),
        )
        return GenerationParams(sampling=sampling, **overrides)

    def generate(
        self,
        prompt_ids: Sequence[int],
        params: GenerationParams,
        *,
        cancel: CancelToken | None = None,
        constraint: Constraint | None = None,
    ) -> Generation:
        """A generation from token ids (already formatted with the chat template)."""
        return Generation(
            self.decoder,
            self.tokenizer.stream_decoder(),
            prompt_ids,
            params,
            eos_token_ids=self.eos_token_ids,
            context_length=self.context_length,
            cancel=cancel,
            constraint=constraint,
        )

    def chat(
        self,
        messages: Sequence[Message],
        params: GenerationParams,
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        cancel: CancelToken | None = None,
        grounding: str | Grounding | None = None,
    ) -> Generation:
        """A generation answering a conversation, fitted to the context window.

        With ``tools`` and ``grounding`` (the user's message, and maybe the names the home
        knows), a tool call the model writes is held to the declared tools and their argument
        schemas, and strings marked x-grounded to text of the message (see constrain.py); a
        plain answer states only numbers of the user's turns and the tools' observations (see
        numbers.py).
        """
        constraint = None
        if tools and grounding is not None:
            constraint = self.tool_constraint(tools, grounding, numbers_in(messages))
        ids = self.fit(messages, tools=tools)
        return self.generate(ids, params, cancel=cancel, constraint=constraint)

    def tool_constraint(
        self,
        tools: Sequence[Mapping[str, Any]],
        grounding: str | Grounding,
        numbers: frozenset[bytes] | None = None,
    ) -> ToolCallConstraint | None:
        """The tool-call grammar for one turn; None if the tokenizer has no <|observation|>.

        With ``numbers``, a plain answer may state those numbers only.
        """
        observation = self.tokenizer.token_id("<|observation|>")
        if observation is None:
            return None
        if self._vocabulary is None:
            self._vocabulary = Vocabulary.of(
                self.tokenizer.backend, self.config.vocab_size, observation
            )
        then = None if numbers is None else NumberConstraint(numbers, self._vocabulary)
        return ToolCallConstraint(ToolGrammar.of(tools, grounding), self._vocabulary, then)

    def fit(
        self, messages: Sequence[Message], *, tools: Sequence[Mapping[str, Any]] | None = None
    ) -> list[int]:
        """Encode a conversation, dropping its oldest turns if policy allows and it must."""
        kept = list(messages)
        while True:
            ids = self.tokenizer.encode_chat(kept, tools=tools).ids
            if len(ids) < self.context_length:
                return ids
            droppable = [i for i, m in enumerate(kept[:-1]) if m.get("role") != "system"]
            if self.context_overflow == "error" or not droppable:
                raise ContextLengthError(
                    f"conversation is {len(ids)} tokens; the context window is "
                    f"{self.context_length}"
                )
            del kept[droppable[0]]


def load_model(
    path: Path,
    *,
    threads: int,
    verify: Verify = "full",
    context_length: int | None = None,
    context_overflow: Literal["drop_oldest", "error"] = "drop_oldest",
    allow_spinning: bool = True,
    optimization: str = "all",
    max_batch: int = 4,
) -> Model:
    """Load and check a model directory; every failure names the file at fault."""
    directory = Path(path)
    if not directory.is_dir():
        raise ModelFileError(directory, "no such model directory")
    manifest = read_manifest(directory) if verify != "off" else _optional_manifest(directory)
    if manifest is not None:
        verify_files(directory, manifest, verify)
    graph = find_graph(directory, manifest)
    config = ModelConfig.from_directory(directory)
    tokenizer = ChatTokenizer.from_directory(directory)
    session = open_session(
        graph, session_options(threads, allow_spinning=allow_spinning, optimization=optimization)
    )
    layout = GraphLayout.of(session, graph)
    if tokenizer.vocab_size > config.vocab_size:
        raise ModelFormatError(
            f"{directory / 'tokenizer.json'}: {tokenizer.vocab_size} tokens, but config.json "
            f"says the model has {config.vocab_size}; tokenizer and weights do not belong together"
        )
    window = min(context_length or config.max_position_embeddings, config.max_position_embeddings)
    decoder = make_decoder(
        session, layout, window, vocab_size=config.vocab_size, max_batch=max_batch
    )
    return Model(
        directory,
        config=config,
        tokenizer=tokenizer,
        decoder=decoder,
        graph=graph,
        manifest=manifest,
        context_length=window,
        context_overflow=context_overflow,
    )


def _optional_manifest(directory: Path) -> Manifest | None:
    try:
        return read_manifest(directory)
    except ModelFileError:
        return None
