"""GPU probes run in a fresh process each (Unsloth patches torch and transformers globally).

    python -m harness.gpu_probe vram --model DIR --mode unsloth|True|False --shapes 512x1,2048x8
    python -m harness.gpu_probe checkpoint --model DIR --max-seq-length 4096 [--profile]

Each prints one JSON object on its last line. The pure parts (trace summary, kernel classification, checkpoint
function resolution) are unit-tested on the CPU (tests/unit/test_lora_quant_gc.py).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import sys
import time

from harness.recipe import GEMMA3_VOCAB_SIZE


def _mode(text: str):
    return {"True": True, "False": False}.get(text, text)


def _load(model_dir, mode, max_seq_length):
    from harness.recipe import HANDBOOK
    from harness.train_unsloth import load_unsloth

    return load_unsloth(model_dir, HANDBOOK, gradient_checkpointing=mode, max_seq_length=max_seq_length)


def _step(model, optimizer, seq: int, batch: int, vocab: int):
    import torch

    ids = torch.randint(10, vocab, (batch, seq), device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def vram(args) -> dict:
    """Peak VRAM of one QLoRA step (forward, backward, AdamW) per shape, after a warm-up step at that shape."""
    import torch

    shapes = [tuple(int(x) for x in s.split("x")) for s in args.shapes.split(",")]
    mode = _mode(args.mode)
    model, _ = _load(args.model, mode, max(s for s, _ in shapes))
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    torch.cuda.synchronize()
    weights = torch.cuda.memory_allocated() / 2**20
    vocab = model.config.vocab_size if hasattr(model.config, "vocab_size") else GEMMA3_VOCAB_SIZE
    rows = []
    for seq, batch in shapes:
        row = {"mode": str(mode), "seq": seq, "batch": batch, "weights_mib": round(weights, 1), "oom": False}
        try:
            _step(model, optimizer, seq, batch, vocab)  # warm-up: compilation and optimizer state
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            _step(model, optimizer, seq, batch, vocab)
            torch.cuda.synchronize()
            row.update(step_seconds=round(time.perf_counter() - start, 4),
                       peak_allocated_mib=round(torch.cuda.max_memory_allocated() / 2**20, 1),
                       peak_reserved_mib=round(torch.cuda.max_memory_reserved() / 2**20, 1))
        except torch.cuda.OutOfMemoryError as exc:  # recorded as evidence, the grid goes on
            row.update(oom=True, error=str(exc).splitlines()[0][:200])
            optimizer.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    return {"rows": rows, "compile_disabled": os.environ.get("UNSLOTH_COMPILE_DISABLE") == "1"}


def checkpoint(args) -> dict:
    """Which checkpoint function "unsloth" mode installs at this max_seq_length, what the decoder layers call, and
    (--profile) what one training step does: see `mechanism`. A failing measurement is reported under `errors`;
    the others are kept."""
    import torch

    model, _ = _load(args.model, "unsloth", args.max_seq_length)
    fn = torch.utils.checkpoint.checkpoint
    facts = {"max_seq_length": args.max_seq_length, "checkpoint_function": f"{fn.__module__}.{getattr(fn, '__qualname__', fn)}"}
    errors: dict[str, str] = {}
    try:
        facts.update(layer_checkpoint_functions(model))
    except Exception as exc:
        errors["layer_checkpoint_functions"] = _error(exc)
    facts["errors"] = errors
    if not args.profile:
        return facts
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    seq, batch = min(args.max_seq_length, 2048), 2
    _step(model, optimizer, seq, batch, GEMMA3_VOCAB_SIZE)  # warm-up: compilation, and Unsloth's first-pass bookkeeping
    torch.cuda.synchronize()
    facts["profiled_shape"] = f"{seq}x{batch}"
    facts["host_memory_before"] = _host_stats()
    try:
        facts.update(mechanism(model, optimizer, seq, batch, GEMMA3_VOCAB_SIZE, errors))
    except Exception as exc:  # the step itself failed: keep what was measured before it
        errors["mechanism"] = _error(exc)
    facts["host_memory"] = _host_stats()
    return facts


# --- GC-MECHANISM measurements -------------------------------------------------------------------------------------
# Kernel names torch.compile (Inductor) generates: "triton_" + the first three letters of the kernel category
# (torch/_inductor/codegen/triton.py: foreach, persistent_reduction, pointwise, reduction, split_scan, template,
# unknown), optionally prefixed by an AOTInductor model name.
INDUCTOR_KERNEL = re.compile(r"^(?:\w+_)?triton_(?:for|per|poi|red|spl|tem|unk)_")
# The autograd node of a reentrant checkpoint (torch's CheckpointFunction, unsloth_zoo's UnslothCheckpointFunction,
# Unsloth_Offloaded_Gradient_Checkpointer): kernels launched while it runs are the checkpointed layers' backward.
CHECKPOINT_BACKWARD = re.compile(r"Checkpoint\w*Backward")
# Triton before 3.0 appended the argument specialization to a kernel's name ("_fg_kernel_0d1d2d3de").
TRITON_SIGNATURE_SUFFIX = re.compile(r"_\d+d[\dde]*$")


def describe_callable(fn) -> str:
    """module.qualname of what a (possibly functools.partial-wrapped) callable resolves to, with its bound keywords."""
    keywords: dict = {}
    while isinstance(fn, functools.partial):
        keywords = {**fn.keywords, **keywords}
        fn = fn.func
    name = f"{getattr(fn, '__module__', None) or '?'}.{getattr(fn, '__qualname__', None) or type(fn).__qualname__}"
    if keywords:
        name += "(" + ", ".join(f"{k}={v!r}" for k, v in sorted(keywords.items())) + ")"
    return name


def decoder_layers(model) -> list:
    """The repeated decoder blocks (Gemma3DecoderLayer …), found by class name through any PEFT wrapping."""
    return [m for m in model.modules() if type(m).__name__.endswith("DecoderLayer")]


def layer_checkpoint_functions(model) -> dict:
    """What each decoder layer's `_gradient_checkpointing_func` resolves to (transformers' GradientCheckpointingLayer
    calls it per layer), how many layers have checkpointing on, what the module holding the layers would call
    (Unsloth's compiler can route the loop through it), and the autograd Function torch's reentrant checkpoint applies."""
    import torch

    layers = decoder_layers(model)
    functions: dict[str, int] = {}
    for layer in layers:
        fn = getattr(layer, "_gradient_checkpointing_func", None)
        name = describe_callable(fn) if fn is not None else None
        functions[str(name)] = functions.get(str(name), 0) + 1
    owners = [m for m in model.modules() if hasattr(m, "_gradient_checkpointing_func")
              and any(layer in getattr(m, "layers", ()) for layer in layers[:1])]
    owner_fn = getattr(owners[0], "_gradient_checkpointing_func", None) if owners else None
    return {"decoder_layers": len(layers),
            "checkpointed_layers": sum(bool(getattr(layer, "gradient_checkpointing", False)) for layer in layers),
            "layer_checkpoint_functions": functions,
            "model_checkpoint_function": describe_callable(owner_fn) if owner_fn is not None else None,
            "model_gradient_checkpointing": bool(getattr(owners[0], "gradient_checkpointing", False)) if owners else None,
            "checkpoint_autograd_function": getattr(torch.utils.checkpoint.CheckpointFunction, "__qualname__", "?")}


class LayerCalls:
    """Runs of the decoder layers per phase, and the bytes of their inputs. A run while phase == "backward" is a
    recompute; the forward's input bytes (read by the layer's own pre-hook) are the activations an offloading
    checkpoint would copy to the host.

    Two detectors, because neither sees every recompute (measured): a forward pre-hook on the layer ("layer_hook")
    and forward pre-hooks on its child modules ("child_hook": each call of the child that ran first in the layer's
    first seen run marks one run; children shared between layers are not hooked). transformers <= 5.22's
    GradientCheckpointingLayer checkpoints `__call__`, so the recompute replays the layer's hooks (6/6 on the CPU
    tiny model at 5.17.0); from 5.23 it checkpoints `forward`, the layer's hooks stay outside and only the children's
    fire in backward (layer hook 6/0 at 5.24.0). Unsloth's patched layers (2026.10.9, transformers 5.17.0, Gemma 3
    270M on an H200) call no child as a module (child hooks 0/0) while their own hooks fire inside its checkpoint
    (18/18). Each detector sees only real runs, so per layer and phase the count is the larger of the two;
    `detectors` keeps each one's totals."""

    PHASES = ("forward", "backward")

    def __init__(self, layers):
        self.phase = None
        self.input_bytes = {"forward": 0, "backward": 0}
        layers = list(layers)
        self._seen = {name: [{p: 0 for p in self.PHASES} for _ in layers] for name in ("layer_hook", "child_hook")}
        self._marker: dict[int, object] = {}  # layer index -> the child whose calls mark the layer's runs
        owners: dict[int, int] = {}
        for layer in layers:
            for child in layer.children():
                owners[id(child)] = owners.get(id(child), 0) + 1
        self._handles = []
        for i, layer in enumerate(layers):
            self._handles.append(layer.register_forward_pre_hook(functools.partial(self._layer_hook, i),
                                                                 with_kwargs=True))
            self._handles += [child.register_forward_pre_hook(functools.partial(self._child_hook, i))
                              for child in layer.children() if owners[id(child)] == 1]

    def _layer_hook(self, i, module, args, kwargs):
        if self.phase is None:
            return None
        x = args[0] if args else kwargs.get("hidden_states")
        self._seen["layer_hook"][i][self.phase] += 1
        if hasattr(x, "element_size"):
            self.input_bytes[self.phase] += x.numel() * x.element_size()
        return None

    def _child_hook(self, i, module, args):
        if self.phase is None:
            return None
        if self._marker.setdefault(i, module) is module:
            self._seen["child_hook"][i][self.phase] += 1
        return None

    @property
    def calls(self) -> dict[str, int]:
        """Runs per phase: per layer the larger of the two detectors' counts, summed over the layers."""
        return {p: sum(max(a[p], b[p]) for a, b in zip(*self._seen.values())) for p in self.PHASES}

    @property
    def detectors(self) -> dict[str, dict[str, int]]:
        """Each detector's runs summed over the layers: {"layer_hook": {"forward": n, "backward": m}, …}"""
        return {name: {p: sum(c[p] for c in counts) for p in self.PHASES} for name, counts in self._seen.items()}

    def remove(self):
        for handle in self._handles:
            handle.remove()


def autograd_node_counts(root, pattern: re.Pattern = CHECKPOINT_BACKWARD) -> dict[str, int]:
    """Autograd nodes of a graph whose name matches `pattern`, by name (what the forward actually recorded)."""
    counts: dict[str, int] = {}
    seen, stack = set(), [root]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        name = node.name()
        if pattern.search(name):
            counts[name] = counts.get(name, 0) + 1
        stack.extend(child for child, _ in node.next_functions)
    return counts


def triton_kernel_names_in_source(text: str) -> set[str]:
    """Names of the functions a Python source declares as Triton kernels: decorated with triton.* (jit, autotune,
    heuristics) or wrapped as `name = triton.jit(fn)`."""
    import ast

    names: set[str] = set()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            if any("triton" in ast.unparse(d).split("(")[0] for d in node.decorator_list):
                names.add(node.name)
        elif isinstance(node, ast.Call) and ast.unparse(node.func).startswith("triton.") and node.args:
            if isinstance(node.args[0], ast.Name):
                names.add(node.args[0].id)
    return names


def unsloth_triton_kernel_names(packages=("unsloth", "unsloth_zoo")) -> dict[str, str]:
    """{kernel name: package} for every Triton kernel declared in the installed packages' sources (found without
    importing them: `import unsloth` needs a GPU)."""
    import importlib.util
    from pathlib import Path

    out: dict[str, str] = {}
    for package in packages:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            continue
        for folder in spec.submodule_search_locations:
            for name in _kernel_names_under(str(Path(folder).resolve())):
                out.setdefault(name, package)
    return out


@functools.lru_cache(maxsize=8)
def _kernel_names_under(folder: str) -> tuple[str, ...]:
    """The Triton kernel names declared in the .py files under `folder`, in file order, read once per process (an
    installed package's sources do not change under a running suite; parsing unsloth_zoo's took ~1.5 s on 2 cores,
    and the CPU tier asked twice)."""
    from pathlib import Path

    names: list[str] = []
    for path in sorted(Path(folder).rglob("*.py")):
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
            if "triton" in text:
                names += sorted(triton_kernel_names_in_source(text))
        except (SyntaxError, ValueError, OSError):
            continue
    return tuple(names)


def classify_kernel(name: str, unsloth_names) -> str:
    """"unsloth" (a kernel from Unsloth's sources), "inductor" (torch.compile's generated kernels), "other_triton"
    (any other triton_* name) or "other" (cuBLAS, ATen, bitsandbytes …)."""
    if name in unsloth_names or TRITON_SIGNATURE_SUFFIX.sub("", name) in unsloth_names:
        return "unsloth"
    if INDUCTOR_KERNEL.match(name):
        return "inductor"
    return "other_triton" if name.startswith("triton") else "other"


def summarize_trace(events: list[dict], unsloth_names) -> dict:
    """Copies and kernels of one profiled phase, from the Kineto (chrome trace) events.

    Copies: bytes by direction and host memory kind ("Memcpy DtoH (Device -> Pinned)" …). Kernels: counts by
    `classify_kernel`; an Unsloth kernel is also attributed to a checkpointed layer's backward when its launch (the
    cuda_runtime/cuda_driver event of the same correlation id) lies inside a Checkpoint…Backward CPU range on the
    same thread. Where a launch cannot be found, that attribution is None (unknown), never 0."""
    copies = {"dtoh_pinned": 0, "dtoh_pageable": 0, "htod_pinned": 0, "htod_pageable": 0}
    copy_counts = dict.fromkeys(copies, 0)
    bytes_missing = 0
    kernels = {"unsloth": {}, "inductor": {}, "other_triton": {}, "other": {}}
    launches, ranges, unsloth_kernel_events = {}, [], []
    for e in events:
        cat, name, args = e.get("cat"), e.get("name", ""), e.get("args") or {}
        if cat == "gpu_memcpy":
            direction = "dtoh" if "DtoH" in name else "htod" if "HtoD" in name else None
            if direction is None:
                continue
            key = f"{direction}_{'pinned' if 'Pinned' in name else 'pageable'}"
            copy_counts[key] += 1
            if "bytes" in args:
                copies[key] += int(args["bytes"])
            else:
                bytes_missing += 1
        elif cat == "kernel":
            kind = classify_kernel(name, unsloth_names)
            kernels[kind][name] = kernels[kind].get(name, 0) + 1
            if kind == "unsloth":
                unsloth_kernel_events.append((args.get("correlation"), name))
        elif cat in ("cuda_runtime", "cuda_driver") and "correlation" in args:
            launches[args["correlation"]] = (e.get("pid"), e.get("tid"), e.get("ts", 0))
        elif cat in ("cpu_op", "python_function", "user_annotation") and CHECKPOINT_BACKWARD.search(name):
            ranges.append((e.get("pid"), e.get("tid"), e.get("ts", 0), e.get("ts", 0) + e.get("dur", 0)))
    # The engine's "autograd::engine::evaluate_function: XBackward" range encloses the node's own "XBackward" range:
    # count each checkpoint once (the outermost range).
    ranges = [r for r in ranges if not any(o != r and o[:2] == r[:2] and o[2] <= r[2] and r[3] <= o[3] for o in ranges)]
    in_checkpoint, unattributed, names_in_checkpoint = 0, 0, {}
    for correlation, kernel in unsloth_kernel_events:
        launch = launches.get(correlation)
        if launch is None:
            unattributed += 1
            continue
        pid, tid, ts = launch
        if any(p == pid and t == tid and start <= ts <= end for p, t, start, end in ranges):
            in_checkpoint += 1
            names_in_checkpoint[kernel] = names_in_checkpoint.get(kernel, 0) + 1
    out = {f"{key}_bytes": (value if not bytes_missing else None) for key, value in copies.items()}
    out.update({f"{key}_copies": value for key, value in copy_counts.items()})
    out.update({f"{kind}_kernels": sum(names.values()) for kind, names in kernels.items()})
    out.update({f"{kind}_kernel_names": sorted(names)[:30] for kind, names in kernels.items() if kind != "other"})
    out["checkpoint_backward_ranges"] = len(ranges)
    out["unsloth_kernels_in_checkpoint_backward"] = (in_checkpoint if ranges and not unattributed else None)
    out["unsloth_kernel_counts_in_checkpoint_backward"] = (names_in_checkpoint if ranges and not unattributed else None)
    out["copies_without_bytes"] = bytes_missing
    return out


def _trace_events(prof) -> list[dict]:
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "trace.json")
        prof.export_chrome_trace(path)
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    return data["traceEvents"] if isinstance(data, dict) else data


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"


def mechanism(model, optimizer, seq: int, batch: int, vocab: int, errors: dict, device: str = "cuda") -> dict:
    """One QLoRA step, forward and backward profiled apart (after a warm-up step at the same shape).

    Measured: decoder-layer runs in forward and in backward (recompute; layer_calls_detectors: what each of
    LayerCalls' two detectors saw) and the bytes of their inputs; the checkpoint nodes the forward put in the
    autograd graph; bytes copied device→host during the forward (pinned vs pageable); Triton kernels launched in
    the backward: Unsloth's own (names from its installed sources), torch.compile's, others. Each measurement that
    fails is reported in `errors` and comes back as None.
    device="cpu" runs the same plumbing without CUDA (tests/unit/test_lora_quant_probe.py)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    out: dict = {}
    cuda = device == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    activities = [ProfilerActivity.CPU, ProfilerActivity.CUDA] if cuda else [ProfilerActivity.CPU]
    ids = torch.randint(10, vocab, (batch, seq), device=device, generator=torch.Generator(device).manual_seed(0))

    def profiled(run, key):
        try:
            prof = profile(activities=activities)
            prof.__enter__()
        except Exception as exc:
            errors[key] = _error(exc)
            return run(), None
        try:
            result = run()
        finally:
            try:
                prof.__exit__(None, None, None)
            except Exception as exc:
                errors[key] = _error(exc)
                prof = None
        events = None
        if prof is not None:
            try:
                events = _trace_events(prof)
            except Exception as exc:
                errors[key] = _error(exc)
        return result, events

    calls = None
    try:
        calls = LayerCalls(decoder_layers(model))
    except Exception as exc:
        errors["layer_calls"] = _error(exc)
    try:
        if calls is not None:
            calls.phase = "forward"

        def forward():
            loss = model(input_ids=ids, labels=ids).loss
            sync()
            return loss

        loss, forward_events = profiled(forward, "forward_profile")
        try:
            out["checkpoint_autograd_nodes"] = autograd_node_counts(loss.grad_fn)
        except Exception as exc:
            errors["checkpoint_autograd_nodes"] = _error(exc)
            out["checkpoint_autograd_nodes"] = None
        if calls is not None:
            calls.phase = "backward"

        def backward():
            loss.backward()
            sync()

        _, backward_events = profiled(backward, "backward_profile")
    finally:
        if calls is not None:
            calls.phase = None
            calls.remove()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    out.update(layer_calls_forward=calls.calls["forward"] if calls is not None else None,
               layer_calls_backward=calls.calls["backward"] if calls is not None else None,
               layer_calls_detectors=calls.detectors if calls is not None else None,
               activation_bytes=calls.input_bytes["forward"] if calls is not None else None)
    names: dict[str, str] = {}
    try:
        names = unsloth_triton_kernel_names()
    except Exception as exc:
        errors["unsloth_kernel_names"] = _error(exc)
    out["unsloth_kernel_names_known"] = len(names)
    for phase, events in (("forward", forward_events), ("backward", backward_events)):
        try:
            out[f"trace_{phase}"] = summarize_trace(events, names) if events is not None else None
        except Exception as exc:
            errors[f"trace_{phase}"] = _error(exc)
            out[f"trace_{phase}"] = None
    fwd, bwd = out["trace_forward"] or {}, out["trace_backward"] or {}
    out.update(
        dtoh_pinned_bytes_forward=fwd.get("dtoh_pinned_bytes"), dtoh_pageable_bytes_forward=fwd.get("dtoh_pageable_bytes"),
        dtoh_copies_forward=(fwd.get("dtoh_pinned_copies", 0) + fwd.get("dtoh_pageable_copies", 0)) if fwd else None,
        htod_pinned_bytes_backward=bwd.get("htod_pinned_bytes"),
        unsloth_triton_kernels_in_backward=bwd.get("unsloth_kernels"),
        unsloth_triton_kernels_in_checkpoint_backward=bwd.get("unsloth_kernels_in_checkpoint_backward"),
        unsloth_kernel_counts_in_checkpoint_backward=bwd.get("unsloth_kernel_counts_in_checkpoint_backward"),
        inductor_triton_kernels_in_backward=bwd.get("inductor_kernels"),
        other_triton_kernels_in_backward=bwd.get("other_triton_kernels"),
        unsloth_kernel_names_in_backward=bwd.get("unsloth_kernel_names"),
        inductor_kernel_names_in_backward=(bwd.get("inductor_kernel_names") or [])[:20],
        checkpoint_backward_ranges=bwd.get("checkpoint_backward_ranges"),
    )
    return out


def _host_stats() -> dict:
    import torch

    try:
        stats = torch.cuda.host_memory_stats()
    except Exception:
        return {}
    return {k: v for k, v in stats.items() if "allocated_bytes" in k or "reserved_bytes" in k}


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("vram")
    v.add_argument("--model", required=True)
    v.add_argument("--mode", required=True)
    v.add_argument("--shapes", required=True)
    c = sub.add_parser("checkpoint")
    c.add_argument("--model", required=True)
    c.add_argument("--max-seq-length", type=int, required=True)
    c.add_argument("--profile", action="store_true")
    args = p.parse_args(argv)
    result = vram(args) if args.cmd == "vram" else checkpoint(args)
    print(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
