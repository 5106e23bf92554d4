"""GPU probes run in a fresh process each (Unsloth patches torch and transformers globally).

    python -m harness.gpu_probe vram --model DIR --mode unsloth|True|False --shapes 512x1,2048x8
    python -m harness.gpu_probe checkpoint --model DIR --max-seq-length 4096 [--profile]

Each prints one JSON object on its last line.
"""

from __future__ import annotations

import argparse
import json
import os
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
    """Which checkpoint function "unsloth" mode installs at this max_seq_length, and what a step does."""
    import torch

    model, _ = _load(args.model, "unsloth", args.max_seq_length)
    fn = torch.utils.checkpoint.checkpoint
    facts = {"max_seq_length": args.max_seq_length, "checkpoint_function": f"{fn.__module__}.{getattr(fn, '__qualname__', fn)}"}
    if not args.profile:
        return facts
    from torch.profiler import ProfilerActivity, profile

    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    seq = min(args.max_seq_length, 2048)
    _step(model, optimizer, seq, 2, GEMMA3_VOCAB_SIZE)
    torch.cuda.synchronize()
    host_before = _host_stats()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        _step(model, optimizer, seq, 2, GEMMA3_VOCAB_SIZE)
        torch.cuda.synchronize()
    names = [e.name for e in prof.events() if e.device_type.name == "CUDA"]
    facts.update(
        kernels=len(names), triton_kernels=sum(n.startswith("triton") for n in names),
        triton_kernel_names=sorted({n for n in names if n.startswith("triton")})[:20],
        memcpy_dtoh=sum("DtoH" in n or "Device -> Pageable" in n or "Device -> Pinned" in n for n in names),
        memcpy_htod=sum("HtoD" in n or "Pinned -> Device" in n for n in names),
        memcpy_kinds=sorted({n for n in names if "emcpy" in n})[:10],
        host_memory=_host_stats(), host_memory_before=host_before,
    )
    return facts


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
