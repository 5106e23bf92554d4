"""Verification of any Q8_0 GGUF: layout, metadata, error against its checkpoint, and llama.cpp as a reader."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO

import numpy as np

from harness.gguf_export import Q8_0_BLOCK, Q8_0_BLOCK_BYTES, gguf_name

REQUIRED_KEYS = (
    "general.architecture", "general.file_type", "gemma3.context_length", "gemma3.embedding_length",
    "gemma3.block_count", "gemma3.feed_forward_length", "gemma3.attention.head_count",
    "gemma3.attention.head_count_kv", "gemma3.attention.key_length", "gemma3.attention.value_length",
    "gemma3.attention.layer_norm_rms_epsilon", "gemma3.rope.freq_base", "tokenizer.ggml.model",
    "tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type", "tokenizer.ggml.bos_token_id",
    "tokenizer.ggml.eos_token_id",
)


class GGUFVerifyError(RuntimeError):
    """A file that cannot be read as GGUF; the message says what to do."""


@functools.lru_cache(maxsize=None)  # one class (gguf is imported on first use)
def fast_reader_class():
    """gguf-py's GGUFReader, with its per-field reads on a plain ndarray view of the file instead of the np.memmap.

    GGUFReader slices its np.memmap once or twice per value, and a 262,144-token vocabulary is 786,000 values: numpy's
    memmap __getitem__/__array_finalize__ in Python took 9 of 13 s of a profiled read (7.6 s unprofiled, 2 cores,
    2026-11-28). A plain view of the same mapping gives the same bytes with no Python hook: 2.1 s. Only `_get`, the
    reader's one primitive, is replaced; fields and tensors (names, types, parts, data, dtypes) equal GGUFReader's on
    the tiny and 270M exports (tests/unit/test_gguf_reader.py)."""
    from gguf import GGUFReader

    class FastGGUFReader(GGUFReader):
        def _get(self, offset, dtype, count=1, override_order=None):
            plain = self.__dict__.get("_plain")
            if plain is None:
                plain = self._plain = self.data.view(np.ndarray)
            count = int(count)
            itemsize = np.dtype(dtype).itemsize
            arr = plain[offset:offset + itemsize * count].view(dtype=dtype)[:count]
            return arr.view(arr.dtype.newbyteorder(self.byte_order if override_order is None else override_order))

    return FastGGUFReader


# What gguf-py's reader raises on a bad file: 40 corruptions of the tiny export (empty, wrong magic, random bytes, cut at
# 8 points, 20 with 50 bytes flipped) gave ValueError and IndexError (2026-11-29); the others are the struct and
# numpy errors of counts and offsets read from garbage. Anything else (an AttributeError after a gguf upgrade, a
# PermissionError) is not the file's fault and is not blamed on it: "corrupt, export it again" once covered them all.
FILE_FAULTS = (ValueError, IndexError, KeyError, OverflowError, MemoryError, struct.error)


def existing_gguf(path) -> Path:
    """`path` as a Path; GGUFVerifyError (one line in the CLI) where there is no such file."""
    path = Path(path)
    if not path.is_file():
        raise GGUFVerifyError(f"{path}: no such file")
    return path


def read(path: Path):
    path = existing_gguf(path)
    reader = fast_reader_class()  # gguf missing: ImportError, the environment's, never this file's
    try:
        return reader(str(path))
    except FILE_FAULTS as exc:
        raise GGUFVerifyError(
            f"{path} is not a readable GGUF file ({type(exc).__name__}: {exc}); it is corrupt or truncated — "
            f"export it again (python -m harness export-gguf ...)") from exc


def layout(reader) -> dict:
    """GGUF-Q8-EXPORT measurements: tensor types, the Q8_0 block layout and metadata completeness."""
    from gguf import GGMLQuantizationType as Q

    types: dict[str, int] = {}
    q8_2d, other_2d, norms_f32, norms, bad_blocks = 0, [], 0, 0, []
    for t in reader.tensors:
        kind = t.tensor_type.name
        types[kind] = types.get(kind, 0) + 1
        dims = [int(d) for d in t.shape if d > 1]
        if t.name.endswith("norm.weight"):
            norms += 1
            norms_f32 += t.tensor_type == Q.F32
        elif len(dims) == 2:
            if t.tensor_type == Q.Q8_0:
                q8_2d += 1
                blocks = int(t.n_elements) // Q8_0_BLOCK
                if t.data.nbytes != blocks * Q8_0_BLOCK_BYTES:
                    bad_blocks.append(t.name)
                else:
                    raw = np.frombuffer(t.data.tobytes(), dtype=np.uint8).reshape(blocks, Q8_0_BLOCK_BYTES)
                    scales = raw[:, :2].copy().view(np.float16)
                    if not np.isfinite(scales).all():
                        bad_blocks.append(t.name)
            else:
                other_2d.append(f"{t.name}:{kind}")
    missing = [k for k in REQUIRED_KEYS if k not in reader.fields]
    return {"tensors": len(reader.tensors), "types": types, "q8_0_2d": q8_2d, "other_2d": other_2d,
            "norms_f32": norms_f32, "norms_total": norms,
            "block_bytes": Q8_0_BLOCK_BYTES if not bad_blocks else -1, "bad_block_tensors": bad_blocks,
            "metadata_missing": missing}


def error_vs_checkpoint(reader, checkpoint: Path) -> dict:
    """GGUF-Q8-ERROR: every dequantized element vs the checkpoint's, as a fraction of its 32-block's amax."""
    import gguf
    from safetensors import safe_open

    config = json.loads((Path(checkpoint) / "config.json").read_text())
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GEMMA3, config["num_hidden_layers"])
    by_gguf = {t.name: t for t in reader.tensors}
    worst, worst_tensor, compared, norm_err = 0.0, None, 0, 0.0
    per_kind: dict[str, float] = {}
    with safe_open(str(Path(checkpoint) / "model.safetensors"), "pt") as weights:
        for hf_name in weights.keys():
            if hf_name == "lm_head.weight":
                continue
            t = by_gguf.get(gguf_name(name_map, hf_name))
            if t is None:
                raise GGUFVerifyError(f"the GGUF has no tensor for {hf_name}: it was not exported from {checkpoint}")
            want = weights.get_tensor(hf_name).float().numpy()
            got = gguf.quants.dequantize(t.data, t.tensor_type).reshape(want.shape).astype(np.float32)
            compared += 1
            # Gemma's RMSNorm computes x·(1+w): llama.cpp expects w+1 stored. Checked here on its own,
            # not with the exporter's helper, so an exporter bug cannot hide from the check.
            if hf_name.endswith("norm.weight"):
                norm_err = max(norm_err, float(np.abs(got - 1.0 - want).max()))
                continue
            if t.tensor_type != gguf.GGMLQuantizationType.Q8_0:
                continue
            blocks_w = want.reshape(-1, Q8_0_BLOCK)
            amax = np.abs(blocks_w).max(axis=1, keepdims=True)
            err = np.abs(got.reshape(-1, Q8_0_BLOCK) - blocks_w)
            ratio = float((err / np.where(amax > 0, amax, 1.0)).max())
            kind = hf_name.rsplit(".", 2)[-2]
            per_kind[kind] = round(max(per_kind.get(kind, 0.0), ratio), 6)
            if ratio > worst:
                worst, worst_tensor = ratio, hf_name
    return {"tensors": compared, "max_err_over_amax": round(worst, 6), "worst_tensor": worst_tensor,
            "norm_max_err_after_shift": norm_err, "per_tensor_kind": per_kind}


def _measurement_inputs(path: Path, measure, *extra_packages: str) -> dict:
    """What a measurement of a GGUF file depends on: its bytes, the measuring function, the reader, the exporter's
    constants (block layout, tensor names) and gguf-py."""
    import harness.gguf_export
    from harness import measure_cache as mc

    return {"file": mc.file_digest(path), "code": mc.code_digest(measure, read, harness.gguf_export),
            "versions": mc.versions("gguf", "numpy", *extra_packages)}


def file_layout(path: Path) -> dict:
    """layout(read(path)), measured once per distinct file content (gguf-py parses a 262k vocabulary in ~8 s)."""
    from harness.measure_cache import cached

    return cached("gguf-layout", _measurement_inputs(path, layout), lambda: layout(read(path)))


def file_error(path: Path, checkpoint: Path) -> dict:
    """error_vs_checkpoint(read(path), checkpoint), measured once per distinct (file, checkpoint) content."""
    from harness.measure_cache import cached, folder_digest

    inputs = {**_measurement_inputs(path, error_vs_checkpoint, "safetensors", "torch"),
              "checkpoint": folder_digest(checkpoint, ("config.json", "model.safetensors"))}
    return cached("gguf-q8-error", inputs, lambda: error_vs_checkpoint(read(path), checkpoint))


def hf_greedy(checkpoint: Path, prompt_ids: list[list[int]], stop: set[int], pad_id: int, max_new_tokens: int) -> list:
    """transformers' float32 greedy continuations (stop tokens stripped), the reference llama.cpp is held to.
    Cached by checkpoint bytes, prompts, torch/transformers versions and the CPU's vector features (float32
    kernels dispatch on them): 20 prompts of the 270M take ~27 s on 2 cores.

    It runs on the CPU on at most `single_child_threads()` threads: torch's default is every core, and two GPU fault
    runs each starting 16 spinning OpenMP threads on a 16-core runner shared with three fine-tunes sat 7+ min in the
    export test that took 146 s with one run beside it (2026-11-29; the cause not measured, this is the first suspect).
    In the calling process, unless Unsloth is imported there (the GPU tier's pytest process): its import rewrites
    transformers' Gemma 3 code for the whole process (unsloth_zoo's temporary patches: the attention's forward, the
    RMS norm), so the reference would be Unsloth's code, not transformers'; it then runs in a child process of its own
    (_hf_child). On the GPU tier this reference with the llama.cpp child took 117.8 s of the Q8_0 export test's 138.2 s
    (reports/examples/h200-2026-11-29-gpu-tier-s17); measured apart on an idle H200 runner, 20 prompts: 126.4 s in a
    process that had loaded the 270M through Unsloth, 40.8 s in a child, the same answers
    (reports/examples/h200-2026-11-29-probe-hf-reference-s17)."""
    from harness import measure_cache as mc

    job = {"checkpoint": str(checkpoint), "prompt_ids": prompt_ids, "stop": sorted(stop), "pad": pad_id,
           "max_new_tokens": max_new_tokens, "threads": single_child_threads()}

    def generate() -> list:
        return _hf_child(job) if model_code_patched() else _hf_side(job)

    inputs = {"checkpoint": mc.folder_digest(checkpoint, ("config.json", "generation_config.json", "model.safetensors")),
              "prompt_ids": prompt_ids, "stop": sorted(stop), "pad": pad_id, "max_new_tokens": max_new_tokens,
              "versions": mc.versions("torch", "transformers"), "cpu": mc.cpu_signature(),
              "code": mc.code_digest(generate, _hf_side)}
    return mc.cached("hf-greedy", inputs, generate)


GEMMA3_CLASSES = ("Gemma3Attention", "Gemma3RMSNorm", "Gemma3MLP", "Gemma3DecoderLayer", "Gemma3TextModel",
                  "Gemma3ForCausalLM")


def model_code_patched() -> bool:
    """Whether this process's transformers model code may not be transformers' own: Unsloth imported (its import patches it), or a
    Gemma 3 class whose forward is no longer the one transformers defines (a patch by any other way). unsloth_zoo
    alone does not count: the CPU tier imports its dataset utilities for the masking reader (harness.masking), and that
    import leaves those forwards as transformers defines them (checked on 2026-11-29, unsloth_zoo 2026.10.9)."""
    if "unsloth" in sys.modules:
        return True
    gemma3 = sys.modules.get("transformers.models.gemma3.modeling_gemma3")
    return gemma3 is not None and any(
        getattr(getattr(getattr(gemma3, name, None), "forward", None), "__module__", gemma3.__name__) != gemma3.__name__
        for name in GEMMA3_CLASSES)


def _hf_side(job: dict) -> list:
    """transformers' float32 greedy continuations of `job`'s prompts on the CPU (in the caller, or in _hf_child)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(job["checkpoint"], dtype=torch.float32).eval()
    stop, outputs = job["stop"], []
    with torch_threads(job["threads"]):
        for ids in job["prompt_ids"]:
            with torch.no_grad():
                out = model.generate(torch.tensor([ids]), max_new_tokens=job["max_new_tokens"], do_sample=False,
                                     eos_token_id=stop, pad_token_id=job["pad"])
            hf = out[0][len(ids):].tolist()
            while hf and hf[-1] in stop:
                hf.pop()
            outputs.append(hf)
    return outputs


def _hf_child(job: dict, timeout: int = 1800) -> list:
    """_hf_side in a fresh process (`python -m harness.gguf_verify`, the job on stdin, its outputs on the last line of
    stdout), on the CPU: CUDA hidden, so it neither starts a CUDA context beside the tier's runs nor computes elsewhere
    than the in-process reference does."""
    try:
        proc = _child({"hf_greedy": job}, timeout, CUDA_VISIBLE_DEVICES="")
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"the transformers reference's child process ran past {timeout} s ({job['checkpoint']})") \
            from exc
    if proc.returncode != 0:
        raise RuntimeError(f"the transformers reference's child process failed: {_failure(proc)}")
    lines = proc.stdout.strip().splitlines()
    try:
        return json.loads(lines[-1])
    except (IndexError, ValueError) as exc:
        raise RuntimeError(f"the transformers reference's child process printed no answers: "
                           f"{proc.stdout[-300:]!r} {proc.stderr[-300:]!r}") from exc


@contextlib.contextmanager
def torch_threads(n: int):
    """torch's intra-op threads at most `n` for the block (never more than the process had: OMP_NUM_THREADS=1 stays
    1), then back to what they were (the setting is process-wide)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, min(before, n)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def use_mmap() -> bool:
    """$HARNESS_LLAMA_MMAP=0 makes llama.cpp read files instead of mapping them (set by llamacpp_loads when
    only that works: a sandboxed runner's mmap is the first suspect for the crash seen there)."""
    return os.environ.get("HARNESS_LLAMA_MMAP", "1") != "0"


def llamacpp_loads(path: Path, timeout: int = 300) -> tuple[bool, str]:
    """Load the file in llama.cpp in a child process: a crash there (seen: SIGSEGV from a llama-cpp-python
    built on a GPU runner, on every file) is reported instead of taking the caller down with it.
    Mapped first, then read without mmap; what worked is kept for this process's later loads."""
    failures = []
    for mmap in ([True, False] if use_mmap() else [False]):
        proc = _llama_child(_job(path, [], [], set(), 0, mmap), timeout)
        if proc.returncode == 0:
            os.environ["HARNESS_LLAMA_MMAP"] = "1" if mmap else "0"
            return True, "loaded" + ("" if mmap else " (without mmap: mapped, it failed)")
        failures.append(f"{'mapped' if mmap else 'read'}: {_failure(proc)}")
    from harness.doctor import require_llama_cpp

    require_llama_cpp()  # a reader that fails on Google's own GGUF too: EnvironmentProblem, not this file's fault
    return False, f"llama.cpp could not load {path.name}: " + "; ".join(failures) + build_problem()


def build_problem() -> str:
    """Why an installed llama-cpp-python crashes on every file, where that can be seen in its libraries.

    Seen on a GPU runner whose $CXX (/opt/gcc/bin/g++) links libstdc++ statically: each of libllama,
    libggml, libggml-base carries its own copy, C++ objects cross between them and loading segfaults in
    print_info. A good build lists libstdc++.so.6 among libllama's NEEDED libraries."""
    import glob
    import importlib.util
    import shutil

    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or spec.origin is None or shutil.which("readelf") is None:
        return ""
    libs = glob.glob(str(Path(spec.origin).parent / "lib" / "libllama.so*"))
    if not libs:
        return ""
    needed = subprocess.run(["readelf", "-d", libs[0]], capture_output=True, text=True).stdout
    if "libstdc++" in needed:
        return ""
    return (f"; {libs[0]} does not link libstdc++.so (libstdc++ was linked statically into each library): rebuild "
            "llama-cpp-python with the system compiler, CC=/usr/bin/gcc CXX=/usr/bin/g++ pip install … "
            "(scripts/gpu_runner.sh does)")


def _failure(proc: subprocess.CompletedProcess) -> str:
    return _exit_failure(proc.returncode, proc.stderr)


def _exit_failure(returncode: int, stderr: str) -> str:
    """How a failed child ended, for a message: the signal that killed it, else the end of its stderr."""
    if returncode < 0:
        return f"crashed (signal {-returncode})"
    return f"failed: {stderr.strip()[-300:]}"


def llama_greedy(llm, ids: list[int], stop: set[int], max_new_tokens: int, reuse_prefix: bool = False) -> list[int]:
    """llama.cpp's greedy continuation of `ids`, without the stop token.

    reuse_prefix: keep the KV cache of the longest prefix `ids` share with what was decoded before (llama-cpp-python's
    generate does so unless reset first). The held-out prompts share a ~290-token developer turn of ~320: measured on
    2 cores, 16 prompts of the embedded 270M took 14.9 s from a fresh cache each and 8.2 s reusing it, with the same
    answers (GGUF-HELDOUT)."""
    if not reuse_prefix:
        llm.reset()
    out = []
    for token in llm.generate(ids, temp=0.0, top_k=1, reset=True):
        if token in stop or len(out) >= max_new_tokens:
            break
        out.append(token)
    return out


def _llama_side(job: dict) -> dict:
    """In the child: llama.cpp's token ids for each text and greedy continuation of each prompt."""
    import llama_cpp

    # threads: None leaves llama-cpp-python's defaults, half the cores to decode and every core to read a prompt
    # (n_threads_batch); eight children on a 64-core runner then ran ~127 threads each (load average 335, 2026-11-28)
    llm = llama_cpp.Llama(model_path=job["path"], n_ctx=1024, verbose=False, seed=0, use_mmap=job["mmap"],
                          n_threads=job.get("threads"), n_threads_batch=job.get("threads"))
    return {"tokens": [llm.tokenize(text.encode("utf-8"), add_bos=False, special=True) for text in job["corpus"]],
            "greedy": [llama_greedy(llm, ids, set(job["stop"]), job["max_new_tokens"], job.get("reuse_prefix", False))
                       for ids in job["prompt_ids"]]}


def _job(path: Path, corpus: list[str], prompt_ids: list[list[int]], stop: set[int], max_new_tokens: int,
         mmap: bool) -> dict:
    return {"path": str(path), "corpus": corpus, "prompt_ids": prompt_ids, "stop": sorted(stop),
            "max_new_tokens": max_new_tokens, "mmap": mmap}


def _child_command() -> list[str]:
    """The llama.cpp child: this module run as a script, a job on stdin, its outputs on the last line of stdout."""
    return [sys.executable, "-m", "harness.gguf_verify"]


def _child_env() -> dict:
    """The environment of a llama.cpp child: OpenMP's threads spin again where conftest.py made them sleep
    (harness.omp_policy)."""
    from harness.omp_policy import child_env

    return child_env(os.environ)


def _llama_child(job: dict, timeout: int) -> subprocess.CompletedProcess:
    """`python -m harness.gguf_verify` with the job on stdin: llama.cpp alone in a fresh process, its failure judged by
    the caller: the doctor (on Google's own file any failure, a hang included, is the reader's) and llamacpp_loads (a
    failed load is retried without mmap and returned as (False, why)). Other callers: llama_children."""
    return _child(job, timeout)


def _child(job: dict, timeout: float, **env) -> subprocess.CompletedProcess:
    """This module as a child process (_child_command, _child_env with `env` over it), `job` on its stdin."""
    return subprocess.run(_child_command(), input=json.dumps(job), capture_output=True, text=True, timeout=timeout,
                          env={**_child_env(), **env})


POLL_S = 0.05  # how often llama_children looks for a finished child: nothing next to children that run for seconds


def llama_children(jobs: list[dict], timeout: float, *, doing: str = "reading", claims: tuple[str, ...] = (),
                   overload_fix: str = "fewer runs at once on this host", command: list[str] | None = None) -> list[dict]:
    """The outputs of each job (as _job builds it; "threads", "reuse_prefix" optional) from its own llama.cpp child, in
    the jobs' order. The children run at once, within one `timeout` for all. `doing` (what a child does to its file)
    and `claims` (the claims an overloaded host leaves unchecked) go into the messages. `command`: another child than
    this module's (harness.llama_text's: a job with a "path", its output JSON on the last line of stdout).

    Whose fault a failure is, the same for every caller:
    - past the deadline, or killed by signal 9, on a starved host (host_load above OVERLOADED_LOAD_PER_CORE): the
      host's (EnvironmentProblem, reported as a skip). On a host that is not starved, the file's (below): llama.cpp
      decodes at most max_new_tokens per prompt (16 held-out prompts of the 270M: 8.2 s on 2 cores, against the
      default 1800 s), so only the file can make it run without end or blow up its memory. (llama_outputs once let
      subprocess.TimeoutExpired escape, a failure with no cause; calling every timeout the host's would leave a file
      that hangs llama.cpp forever unjudged.)
    - a failure, or an exit with no output: exited 0 with no output counts as a failure; a reader that also fails on
      Google's own GGUF is an environment problem (require_llama_cpp raises it); a healthy reader blames the file.
    On any failure the other children are killed and waited for before the verdict: none outlives the call, and none
    competes for the cores with the health check's own child."""
    deadline = time.monotonic() + timeout
    with contextlib.ExitStack() as files:
        # stdin, stdout and stderr are files, never pipes: every child reads its whole job at once, and none blocks on
        # a full pipe while the parent waits for another
        children: list[tuple[subprocess.Popen, IO[str], IO[str]]] = []
        failed = None  # (job index, exit status, or None past the deadline) of the first child seen failing
        try:
            for job in jobs:
                stdin, stdout, stderr = (files.enter_context(tempfile.TemporaryFile("w+", errors="replace"))
                                         for _ in range(3))
                json.dump(job, stdin)
                stdin.seek(0)
                children.append((subprocess.Popen(command or _child_command(), stdin=stdin, stdout=stdout, stderr=stderr,
                                                  env=_child_env()),
                                 stdout, stderr))
            running = list(range(len(children)))
            while running and failed is None:
                finished = [i for i in running if children[i][0].poll() is not None]
                running = [i for i in running if i not in finished]
                failed = next(((i, children[i][0].returncode) for i in finished if children[i][0].returncode), None)
                if failed is None and running:
                    if time.monotonic() >= deadline:
                        failed = (running[0], None)
                    else:
                        time.sleep(POLL_S)
        finally:
            for proc, _, _ in children:
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
        outputs = []
        for index, (_, stdout, _) in enumerate(children):
            if failed is not None:
                break
            stdout.seek(0)
            lines = stdout.read().strip().splitlines()
            if not lines:  # exited 0 and wrote nothing: a failed child like any other
                failed = (index, 0)
            else:
                outputs.append(json.loads(lines[-1]))
        if failed is not None:
            index, returncode = failed
            path = Path(jobs[index]["path"])
            stderr = children[index][2]
            stderr.seek(0)
            if returncode is None or returncode == -signal.SIGKILL:
                what = (f"did not finish within {timeout} s" if returncode is None else "was killed (signal 9)")
                load, cores = host_load()
                if load > OVERLOADED_LOAD_PER_CORE * cores:
                    raise _overloaded(f"llama.cpp {doing} {path.name} {what} (load average {load:.1f} on {cores} "
                                      f"cores)", claims, overload_fix)
                why = f"{what} on a host that is not starved (load average {load:.1f} on {cores} cores)"
            else:
                why = _exit_failure(returncode, stderr.read()) if returncode else "wrote no output"
            from harness.doctor import require_llama_cpp

            require_llama_cpp()
            raise GGUFVerifyError(f"llama.cpp {why} {doing} {path}, while it decodes Google's own GGUF: the file is at "
                                  f"fault; check it alone with python -m harness verify-gguf {path}")
        return outputs


# A timeout or a kill (the kernel's out-of-memory killer) is the host's when the host is starved: the 1-minute load
# average above 2 runnable threads a core (8 held-out children on a 64-core runner beside three fine-tunes read 335,
# 5.2 a core, 2026-11-28). Otherwise a reader healthy on Google's own GGUF that hangs or is killed on this file blames
# the file: decoding is bounded by max_new_tokens, so only the file can make it take without end or blow up memory.
OVERLOADED_LOAD_PER_CORE = 2.0


def host_load() -> tuple[float, int]:
    """The 1-minute load average and the cores this process may use."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return os.getloadavg()[0], max(1, cores)


def _overloaded(detail: str, claims: tuple[str, ...], fix: str):
    """An environment problem (a skip with its cause and fix), never a verdict on the file."""
    from harness.doctor import EnvironmentProblem, Health

    return EnvironmentProblem(Health("llama.cpp", False, detail + ": the runner is overloaded", fix, claims))


def llama_outputs(path: Path, corpus: list[str], prompt_ids: list[list[int]], stop: set[int], max_new_tokens: int,
                  timeout: int = 1800, reuse_prefix: bool = False) -> dict:
    """{"tokens": [...], "greedy": [...]} from llama.cpp, computed in a child process (llama_children: whose fault a
    failure is).

    llama.cpp never shares a process with torch/CUDA here: on a GPU runner the pytest process (torch,
    Unsloth, CUDA loaded) died of SIGSEGV inside llama-cpp-python; a child's crash is an error instead."""
    return llama_children([{**_job(path, corpus, prompt_ids, stop, max_new_tokens, use_mmap()),
                            "reuse_prefix": reuse_prefix, "threads": llama_child_threads()}], timeout)[0]


def single_child_threads() -> int:
    """Threads for one llama.cpp child working alone: every core up to 4. llama-cpp-python's default decodes on half the
    cores (1 of 2 here) and reads prompts on all (127 threads a child on a 64-core runner); a 270M model gains little
    past 4 (GGUF-HELDOUT's children: 2 threads each, 8.2 s where one child of 4 took 15.5 s, on 2 cores)."""
    return max(1, min(4, host_load()[1]))


def llama_child_threads() -> int:
    """Threads for a llama.cpp child: single_child_threads(), less the cores this process's own background runs hold
    now (harness.run_queue.cpu_threads_held: the CPU session's tiny fine-tune, one thread, for its first ~70 s).

    Why: llama.cpp's threads spin at each step's barrier, and a core taken by another process stalls them all. On 2
    cores (2026-11-29) the 270M's GGUF-LLAMACPP child took 9.9 s on 2 threads and 17.5 s on 1 alone, but beside one busy
    process 26.2 s on 2 threads and 17.4 s on 1; test_gguf.py's two llama.cpp tests beside one took 17.8 s on 2 threads
    each, 12.1 s on 1. The transformers reference keeps single_child_threads() (its result is cached, computed alike)."""
    from harness.run_queue import cpu_threads_held

    return max(1, min(single_child_threads(), host_load()[1] - cpu_threads_held()))


def llamacpp_checks(path: Path, checkpoint: Path, prompts: list[list[dict]], corpus: list[str],
                    max_new_tokens: int = 16, timings: dict | None = None) -> dict:
    """GGUF-LLAMACPP: load in llama.cpp; token ids vs the HF tokenizer; greedy outputs vs the HF model.
    `timings`, if given, gets the seconds of each side (llama.cpp's child, transformers' reference: ~0 where the
    measurement cache held it)."""
    from harness.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(str(checkpoint))
    stop = {tokenizer.convert_tokens_to_ids("<end_of_turn>"), tokenizer.eos_token_id}
    prompt_ids = [list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"])
                  for messages in prompts]
    # the held-out prompts share their developer turn: its KV cache is kept from one prompt to the next (llama_greedy)
    started = time.perf_counter()
    llama = llama_outputs(path, corpus, prompt_ids, stop, max_new_tokens, reuse_prefix=True)
    if timings is not None:
        timings["llama.cpp"] = round(time.perf_counter() - started, 2)
    mismatches, first = 0, None
    for text, a in zip(corpus, llama["tokens"]):
        b = tokenizer.encode(text, add_special_tokens=False)
        if a != b:
            mismatches += 1
            first = first or {"text": text, "llama.cpp": a[:20], "hf": b[:20]}
    started = time.perf_counter()
    references = hf_greedy(checkpoint, prompt_ids, stop, tokenizer.pad_token_id, max_new_tokens)
    if timings is not None:
        timings["transformers reference"] = round(time.perf_counter() - started, 2)
    same, top1, differences = 0, 0, []
    for messages, hf, lc in zip(prompts, references, llama["greedy"]):
        same += hf == lc
        top1 += bool(hf and lc and hf[0] == lc[0]) or (not hf and not lc)
        if hf != lc and len(differences) < 5:
            differences.append({"prompt": messages[-1]["content"], "hf": tokenizer.decode(hf), "llama.cpp": tokenizer.decode(lc)})
    n = max(1, len(prompts))
    return {"loaded": True, "token_strings": len(corpus), "token_mismatches": mismatches, "first_token_mismatch": first,
            "prompts": len(prompts), "greedy_agreement": same / n, "top1_agreement": top1 / n, "differences": differences}


def verify(path: Path, checkpoint: Path | None = None, llama: bool = True, prompts=None, corpus=None) -> dict:
    """All checks that apply; `ok` is False if any check that ran failed."""
    reader = read(path)
    report = {"file": str(path), "layout": layout(reader)}
    lay = report["layout"]
    ok = not lay["other_2d"] and not lay["metadata_missing"] and lay["block_bytes"] == Q8_0_BLOCK_BYTES
    if checkpoint is not None:
        report["error"] = error_vs_checkpoint(reader, checkpoint)
        ok &= report["error"]["max_err_over_amax"] <= 0.0045
    if llama and checkpoint is not None:
        try:
            import llama_cpp  # noqa: F401
        except ImportError:
            from harness.llama_cpp_build import INSTALL_HINT

            report["llamacpp"] = {"skipped": f"llama-cpp-python is not installed: {INSTALL_HINT}"}
        else:
            from harness.corpus import tokenizer_corpus
            from harness.dataset import generate

            if prompts is None:
                prompts = [ex.messages[:-1] for ex in generate(0)["test"][:20]]
            report["llamacpp"] = llamacpp_checks(path, checkpoint, prompts, corpus or tokenizer_corpus())
            ok &= report["llamacpp"]["token_mismatches"] == 0
    report["ok"] = bool(ok)
    return report


if __name__ == "__main__":  # the child of llama_children, _llama_child and _hf_child: a job on stdin, outputs on the last line
    _job_in = json.loads(sys.stdin.read())
    print(json.dumps(_hf_side(_job_in["hf_greedy"]) if "hf_greedy" in _job_in else _llama_side(_job_in)))
