"""Two GGUF files of one checkpoint (llama.cpp's converter, as Unsloth runs it, vs this project's exporter).

They should hold the same tensors, dequantizing to identical values, and make llama.cpp behave the
same. Metadata may legitimately differ (names, optional keys); every difference is listed so a reader
can judge it, and the token table differences are counted because they change tokenization.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

# Keys that only name or describe the file; differing values here change nothing llama.cpp computes.
DESCRIPTIVE = ("general.", "GGUF.")


def _fields(reader) -> dict:
    return {f.name: f.contents() for f in reader.fields.values()}


def tensors_agree(ra, rb) -> dict:
    """Per-tensor (two GGUFReaders): same name set, same type and shape, dequantized values bit-identical."""
    from gguf.quants import dequantize

    ta, tb = {t.name: t for t in ra.tensors}, {t.name: t for t in rb.tensors}
    type_diff, value_diff, max_abs = [], [], 0.0
    for name in sorted(set(ta) & set(tb)):
        x, y = ta[name], tb[name]
        if x.tensor_type != y.tensor_type:
            type_diff.append({"tensor": name, "a": x.tensor_type.name, "b": y.tensor_type.name})
        dx, dy = dequantize(x.data, x.tensor_type), dequantize(y.data, y.tensor_type)
        if dx.shape != dy.shape:
            value_diff.append({"tensor": name, "shape_a": list(dx.shape), "shape_b": list(dy.shape)})
        elif not np.array_equal(dx, dy):
            diff = float(np.abs(dx.astype(np.float64) - dy).max())
            max_abs = max(max_abs, diff)
            value_diff.append({"tensor": name, "max_abs_diff": diff, "elements_differing": int((dx != dy).sum())})
    return {"tensors": len(set(ta) & set(tb)), "only_a": sorted(set(ta) - set(tb)), "only_b": sorted(set(tb) - set(ta)),
            "type_differences": type_diff, "value_differences": value_diff[:20], "tensors_differing": len(value_diff),
            "max_abs_diff": max_abs}


def metadata_diff(ra, rb) -> dict:
    """Keys present in one file only, and keys whose values differ (tokens and token types counted per entry)."""
    fa, fb = _fields(ra), _fields(rb)
    differing, token_rows = {}, {}
    for key in sorted(set(fa) & set(fb)):
        if fa[key] == fb[key]:
            continue
        if isinstance(fa[key], list) and isinstance(fb[key], list) and len(fa[key]) == len(fb[key]):
            rows = [i for i, (x, y) in enumerate(zip(fa[key], fb[key])) if x != y]
            token_rows[key] = {"entries_differing": len(rows),
                               "examples": [{"id": i, "a": fa[key][i], "b": fb[key][i]} for i in rows[:4]]}
        elif not key.startswith(DESCRIPTIVE):
            differing[key] = {"a": str(fa[key])[:120], "b": str(fb[key])[:120]}
    return {"only_a": sorted(set(fa) - set(fb)), "only_b": sorted(set(fb) - set(fa)), "values_differ": differing,
            "array_entries_differ": token_rows}


def llamacpp_agreement(a: Path, b: Path, prompt_ids: list[list[int]], corpus: list[str],
                       max_new_tokens: int = 24) -> dict:
    """Load both in llama.cpp: token ids on a corpus and greedy continuations of the same prompts."""
    from harness.gguf_verify import _job, llama_child_threads, llama_children, use_mmap
    from harness.recipe import END_OF_TURN_ID, EOS_ID

    stop = {EOS_ID, END_OF_TURN_ID}
    # both files at once, each in its own child on half the threads, the prompts' shared developer turn kept in the KV
    # cache (harness.gguf_verify.llama_greedy)
    threads = max(1, llama_child_threads() // 2)
    outs = llama_children([{**_job(p, corpus, prompt_ids, stop, max_new_tokens, use_mmap()), "reuse_prefix": True,
                            "threads": threads} for p in (a, b)], 1800, doing="comparing")
    token_mismatch = [text for text, ta, tb in zip(corpus, outs[0]["tokens"], outs[1]["tokens"]) if ta != tb]
    same, differences = 0, []
    for ids, ga, gb in zip(prompt_ids, outs[0]["greedy"], outs[1]["greedy"]):
        same += ga == gb
        if ga != gb and len(differences) < 5:
            differences.append({"prompt_tokens": len(ids), "a": ga, "b": gb})
    return {"corpus": len(corpus), "tokenization_differs": len(token_mismatch), "tokenization_examples": token_mismatch[:5],
            "prompts": len(prompt_ids), "greedy_equal": same, "greedy_equal_rate": same / max(1, len(prompt_ids)),
            "differences": differences}


def compare(a: Path, b: Path, prompt_ids: list[list[int]] | None = None, corpus: list[str] | None = None) -> dict:
    """Everything above; `llamacpp` only where llama-cpp-python is installed and prompts were given."""
    from harness import measure_cache as mc
    from harness.gguf_verify import existing_gguf, read

    a, b = existing_gguf(a), existing_gguf(b)  # (before their digests: a missing file is named, not a traceback)

    def both() -> dict:
        ra, rb = read(a), read(b)  # each file parsed once (a 262k-token vocabulary takes ~8 s)
        return {"tensors": tensors_agree(ra, rb), "metadata": metadata_diff(ra, rb)}

    inputs = {"a": mc.file_digest(a), "b": mc.file_digest(b), "versions": mc.versions("gguf", "numpy"),
              "code": mc.code_digest(both, tensors_agree, metadata_diff, _fields)}
    report = {"a": str(a), "b": str(b), **mc.cached("gguf-compare", inputs, both)}
    if prompt_ids is not None:
        try:
            import llama_cpp  # noqa: F401
        except ImportError:
            from harness.llama_cpp_build import INSTALL_HINT

            report["llamacpp"] = {"skipped": f"llama-cpp-python is not installed: {INSTALL_HINT}"}
        else:
            report["llamacpp"] = llamacpp_agreement(a, b, prompt_ids, corpus or [])
    return report


def summary(report: dict) -> dict:
    """The comparison as flat evidence values (what GGUF-Q8-EXPORT's two-exporter bounds read)."""
    tensors, meta = report["tensors"], report["metadata"]
    flat = {"tensors_compared": tensors["tensors"],
            "tensors_differing_vs_project_exporter": tensors["tensors_differing"] + len(tensors["only_a"]) + len(tensors["only_b"]),
            "tensor_type_differences": len(tensors["type_differences"]),
            "token_table_entries_differing": sum(v["entries_differing"] for v in meta["array_entries_differ"].values()),
            "metadata_only_in_one": sorted(meta["only_a"] + meta["only_b"]),
            # The same, without the descriptive general.* keys (names, tags, urls): what a reader could act on.
            "metadata_keys_only_in_one": sorted(k for k in meta["only_a"] + meta["only_b"] if not k.startswith(DESCRIPTIVE)),
            "metadata_values_differing": sorted(meta["values_differ"])}
    llama = report.get("llamacpp") or {}
    if "greedy_equal_rate" in llama:
        flat.update({"llamacpp_tokenization_differs": llama["tokenization_differs"], "llamacpp_corpus": llama["corpus"],
                     "llamacpp_greedy_equal_rate": llama["greedy_equal_rate"], "llamacpp_prompts": llama["prompts"]})
    return flat
