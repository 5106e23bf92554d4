"""llama.cpp reading an export the way a user's inference does: from TEXT, through the GGUF's own chat template, with no
stop ids passed. GGUF-PROMPT-TEXT, GGUF-EOS and GGUF-SLIDING-WINDOW are measured here.

GGUF-LLAMACPP hands llama.cpp the HF tokenizer's prompt ids and the stop ids, so two real failures cannot show there:
llama.cpp running `<bos><bos>` for Gemma 3 270M when a templated string is tokenized with a BOS added again
(llama.cpp #15086, #15326), and an export whose end-of-generation tokens are wrong, so servers never stop (unsloth
#5386). And no prompt of the suite reaches past Gemma 3's 512-token sliding window, which Gemma 2 once lost in a
transformers refactor (#35235, fixed #35681).

llama.cpp runs in a child process (`python -m harness.llama_text`, the job on stdin), as in harness.gguf_verify: a crash
there is reported, never taken down with the suite; a reader that fails on Google's own GGUF too is an environment
problem (harness.doctor), which the caller turns into a skip with its cause and fix. The child honours HARNESS_FAULT for
faults that patch llama-cpp-python (harness.pytest_plugin.apply_planted_fault_in_child).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

# Tokens whose end-of-generation status is read from llama.cpp: <pad>, <eos>, <bos>, <start_of_turn>, <end_of_turn>, "\n".
EOG_CANDIDATES = (0, 1, 2, 105, 106, 107)


# ---- the child ------------------------------------------------------------------------------------


def _force(token: int):
    """A llama-cpp-python logits processor that makes `token` the greedy choice at every step."""
    import numpy as np

    def processor(input_ids, scores):
        scores = np.array(scores, copy=True)
        scores[token] = scores.max() + 1000.0
        return scores

    return processor


def _prompt_and_stop(llm, job: dict) -> dict:
    import llama_cpp

    vocab = llm._model.vocab
    out = {"metadata": {k: v for k, v in llm.metadata.items() if k.startswith("tokenizer.ggml.")},
           "has_chat_template": "tokenizer.chat_template" in llm.metadata, "chat_format": llm.chat_format,
           "bos": int(llm.token_bos()), "eos": int(llm.token_eos()), "eot": int(llama_cpp.llama_vocab_eot(vocab)),
           "add_bos": bool(llama_cpp.llama_vocab_get_add_bos(vocab)),
           "eog": {str(t): bool(llama_cpp.llama_vocab_is_eog(vocab, t)) for t in EOG_CANDIDATES}}
    # The GGUF's own chat template through llama-cpp-python's chat handler (create_chat_completion): the prompt ids it
    # tokenizes are recorded from its call of llm.tokenize.
    original, recorded = llm.tokenize, []

    def tokenize(text, add_bos=True, special=False):
        ids = original(text, add_bos=add_bos, special=special)
        recorded.append(list(ids))
        return ids

    llm.tokenize = tokenize
    out["chat_prompt_ids"] = []
    for messages in job["chats"]:
        recorded.clear()
        llm.create_chat_completion(messages=messages, max_tokens=1, temperature=0.0)
        out["chat_prompt_ids"].append(recorded[0] if recorded else None)
    llm.tokenize = original
    # The HF-rendered prompt string, llama.cpp's tokenizer: adding the special tokens as the GGUF says (what a raw
    # completion request does), and adding none.
    out["rendered_add_special_ids"] = [list(original(t.encode("utf-8"), add_bos=True, special=True)) for t in job["rendered"]]
    out["rendered_no_special_ids"] = [list(original(t.encode("utf-8"), add_bos=False, special=True)) for t in job["rendered"]]
    # Stopping with no stop ids passed: one token forced at every step; generation either ends (the token is an
    # end-of-generation token) or runs to max_tokens.
    out["forced"] = {}
    for name, token in job["force"].items():
        result = llm.create_chat_completion(messages=job["chats"][0], max_tokens=job["force_max_tokens"], temperature=0.0,
                                            logits_processor=llama_cpp.LogitsProcessorList([_force(token)]))
        out["forced"][name] = {"token": token, "finish_reason": result["choices"][0]["finish_reason"],
                               "completion_tokens": result["usage"]["completion_tokens"]}
    return out


def _logits_at(llm, job: dict) -> dict:
    """Teacher-forced logits of `ids` at the positions `at` (the logits after ids[:p+1]): the whole prompt decoded as one
    batch whose output flags are set at those positions only (n_batch >= len(ids)); then a greedy continuation."""
    import ctypes

    import llama_cpp
    import numpy as np

    ids, positions, k = job["ids"], job["at"], job["top_k"]
    llm.reset()
    batch = llm._batch
    batch.set_batch(batch=ids, n_past=0, logits_all=False)
    batch.batch.logits[len(ids) - 1] = False
    for p in positions:
        batch.batch.logits[p] = True
    llm._ctx.decode(batch)
    n_vocab = llm.n_vocab()
    rows = []
    for p in positions:  # llama_get_logits_ith takes the token's index in the batch
        pointer = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, p)
        logits = np.ctypeslib.as_array(ctypes.cast(pointer, ctypes.POINTER(ctypes.c_float)), shape=(n_vocab,)).copy()
        top = np.argsort(-logits)[:k]
        wanted = job.get("logits_of", {}).get(str(p), [])
        rows.append({"position": p, "top": [int(t) for t in top], "logits": [float(logits[t]) for t in top],
                     "at": {str(t): float(logits[t]) for t in wanted}})
    greedy = []
    if job.get("greedy_tokens"):
        llm.reset()
        for token in llm.generate(ids, temp=0.0, top_k=1, reset=True):
            if len(greedy) >= job["greedy_tokens"]:
                break
            greedy.append(int(token))
    window = next((v for k, v in llm.metadata.items() if k.endswith(".attention.sliding_window")), None)
    return {"rows": rows, "greedy": greedy, "sliding_window": int(window) if window is not None else None}


def _child(job: dict) -> dict:
    from harness.pytest_plugin import apply_planted_fault_in_child

    apply_planted_fault_in_child()
    import llama_cpp

    llm = llama_cpp.Llama(model_path=job["path"], n_ctx=job["n_ctx"], n_batch=job.get("n_batch", 512),
                          n_ubatch=job.get("n_ubatch", 512), verbose=False, seed=0, use_mmap=job["mmap"])
    return {"prompt_and_stop": _prompt_and_stop, "logits_at": _logits_at}[job["kind"]](llm, job)


def child_command() -> list[str]:
    return [sys.executable, "-m", "harness.llama_text"]


def run_child(job: dict, timeout: int = 900) -> dict:
    """One job in a llama.cpp child of this module, judged as every llama.cpp child is
    (harness.gguf_verify.llama_children: past the deadline or killed on a starved host, the host's; a reader failing
    on Google's own GGUF, an environment problem; else the file's). It once had a rule of its own: a timeout escaped
    as subprocess.TimeoutExpired, a failure with no cause."""
    from harness.gguf_verify import llama_children, use_mmap

    return llama_children([{"mmap": use_mmap(), **job}], timeout, doing=f"reading ({job['kind']})",
                          claims=("GGUF-PROMPT-TEXT", "GGUF-EOS", "GGUF-SLIDING-WINDOW"), command=child_command())[0]


# ---- the parent: measurements for the claims ---------------------------------------------------------


def prompt_and_stop_facts(path: Path, checkpoint: Path, chats: list[list[dict]], force_max_tokens: int = 4) -> dict:
    """GGUF-PROMPT-TEXT and GGUF-EOS measurements of one GGUF (made from `checkpoint`), from one llama.cpp child."""
    from harness.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(str(checkpoint))
    hf_ids = [list(tokenizer.apply_chat_template(m, add_generation_prompt=True, return_dict=True)["input_ids"]) for m in chats]
    rendered = [tokenizer.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m in chats]
    eot = tokenizer.convert_tokens_to_ids("<end_of_turn>")
    force = {"end_of_turn": eot, "eos": tokenizer.eos_token_id, "newline": tokenizer.convert_tokens_to_ids("\n")}
    out = run_child({"kind": "prompt_and_stop", "path": str(path), "n_ctx": 2048, "chats": chats, "rendered": rendered,
                     "force": force, "force_max_tokens": force_max_tokens})
    bos = tokenizer.bos_token_id

    def leading_bos(ids):
        n = 0
        while n < len(ids) and ids[n] == bos:
            n += 1
        return n

    chat = out["chat_prompt_ids"]
    first_diff = next(({"prompt": i, "hf": h[:8], "llama.cpp": (c or [])[:8]} for i, (h, c) in enumerate(zip(hf_ids, chat))
                       if h != c), None)
    prompt = {
        "prompts": len(chats), "gguf_has_chat_template": out["has_chat_template"], "llama_chat_format": out["chat_format"],
        "gguf_add_bos": out["add_bos"],
        "chat_template_prompts_differing": sum(h != c for h, c in zip(hf_ids, chat)),
        "chat_template_leading_bos": sorted({leading_bos(c or []) for c in chat}),
        "chat_template_bos_total": sorted({(c or []).count(bos) for c in chat}),
        "first_difference": first_diff,
        # The same string, llama.cpp's tokenizer: adding no special token it equals HF's ids; adding them as the GGUF
        # says (add_bos) it starts <bos><bos>, since the template writes its own <bos> (llama.cpp #15086's mechanism).
        "rendered_no_special_prompts_differing": sum(h != r for h, r in zip(hf_ids, out["rendered_no_special_ids"])),
        "rendered_add_special_leading_bos": sorted({leading_bos(r) for r in out["rendered_add_special_ids"]}),
    }
    eog = sorted(int(t) for t, is_eog in out["eog"].items() if is_eog)
    forced = out["forced"]
    metadata = out["metadata"]
    stop = {
        "gguf_eos_token_id": _int(metadata.get("tokenizer.ggml.eos_token_id")),
        "gguf_eot_token_id": _int(metadata.get("tokenizer.ggml.eot_token_id")),
        "gguf_bos_token_id": _int(metadata.get("tokenizer.ggml.bos_token_id")),
        "llama_eos": out["eos"], "llama_eot": out["eot"], "llama_bos": out["bos"], "eog_ids": eog,
        "eog_candidates": list(EOG_CANDIDATES),
        "stops_at_end_of_turn": forced["end_of_turn"]["finish_reason"] == "stop" and forced["end_of_turn"]["completion_tokens"] == 0,
        "stops_at_eos": forced["eos"]["finish_reason"] == "stop" and forced["eos"]["completion_tokens"] == 0,
        # The control: a token that must not end generation runs to max_tokens (the check can see a non-stop).
        "control_newline_stops": forced["newline"]["finish_reason"] == "stop",
        "forced": forced, "stop_ids_passed": "none (create_chat_completion with the GGUF's own chat template)",
        "hf_tokenizer_eos": tokenizer.eos_token, "hf_generation_config_eos": _generation_eos(checkpoint),
    }
    return {"prompt": prompt, "stop": stop}


def long_prompt(tokenizer, conversations, min_tokens: int = 1500) -> list[int]:
    """One chat past Gemma 3's sliding window: the first conversation's developer turn, then the user/model exchanges of
    `conversations` in order until the template holds at least `min_tokens` ids."""
    messages = [conversations[0][0]]
    for conversation in conversations:
        messages += conversation[1:]
        ids = list(tokenizer.apply_chat_template(messages, return_dict=True)["input_ids"])
        if len(ids) >= min_tokens:
            return ids
    raise ValueError(f"the conversations hold fewer than {min_tokens} tokens")


def hf_logits_at(checkpoint: Path, ids: list[int], positions: list[int], k: int = 20) -> dict:
    """transformers' float32 logits at `positions` of one forward over `ids`: per position HF's top-k (ids, logits), and
    the same ids' logits from the same model with its sliding window opened to the whole prompt (rope and weights
    unchanged: only the attention mask of the sliding layers differs), the probe's resolution. Cached like
    harness.gguf_verify.hf_greedy (two forwards of 1,500 tokens: ~25 s on 2 cores)."""
    from harness import measure_cache as mc

    def compute() -> dict:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        index = torch.tensor(positions)
        config = AutoConfig.from_pretrained(str(checkpoint))
        out = {"sliding_window": config.sliding_window, "layer_types": list(config.layer_types)}
        with torch.no_grad():
            model = AutoModelForCausalLM.from_pretrained(str(checkpoint), dtype=torch.float32).eval()
            logits = model(torch.tensor([ids]), logits_to_keep=index).logits[0]
            del model
            config.sliding_window = len(ids) + 1
            opened = AutoModelForCausalLM.from_pretrained(str(checkpoint), config=config, dtype=torch.float32).eval()
            global_logits = opened(torch.tensor([ids]), logits_to_keep=index).logits[0]
        top = logits.topk(k)
        out["rows"] = [{"position": p, "top": top.indices[i].tolist(), "logits": top.values[i].tolist(),
                        "window_opened": global_logits[i][top.indices[i]].tolist()} for i, p in enumerate(positions)]
        return out

    inputs = {"checkpoint": mc.folder_digest(checkpoint, ("config.json", "model.safetensors")), "ids": ids,
              "positions": positions, "k": k, "versions": mc.versions("torch", "transformers"), "cpu": mc.cpu_signature(),
              "code": mc.code_digest(compute)}
    return mc.cached("hf-logits-at", inputs, compute)


def long_context_facts(path: Path, checkpoint: Path, ids: list[int], every: int = 25, k: int = 20) -> dict:
    """GGUF-SLIDING-WINDOW: teacher-forced next-token logits of HF (float32) and llama.cpp (the GGUF) on one long
    prompt, every `every` positions, within and past the sliding window: top-1 agreement and the largest logit
    difference over HF's top-k; and HF with its window opened, the difference the probe must resolve."""
    positions = list(range(every, len(ids), every))
    hf = hf_logits_at(checkpoint, ids, positions, k)
    out = run_child({"kind": "logits_at", "path": str(path), "n_ctx": len(ids) + 16, "n_batch": len(ids) + 16,
                     "ids": ids, "at": positions, "top_k": 1,
                     "logits_of": {str(r["position"]): r["top"] for r in hf["rows"]}})
    # Positions are split at the GGUF's window (what llama.cpp applies), not at transformers' config: a config that lost
    # its window must not move the split.
    window = out["sliding_window"] or 0
    facts = {"prompt_tokens": len(ids), "gguf_sliding_window": out["sliding_window"],
             "hf_config_sliding_window": hf["sliding_window"], "top_k_compared": k, "every": every,
             "global_layers": sum(t == "full_attention" for t in hf["layer_types"]), "layers": len(hf["layer_types"])}
    for part, keep in (("within_window", lambda p: p < window), ("past_window", lambda p: p >= window)):
        pairs = [(h, l) for h, l in zip(hf["rows"], out["rows"]) if keep(h["position"])]
        diffs = [max(abs(v - l["at"][str(t)]) for t, v in zip(h["top"], h["logits"])) for h, l in pairs]
        opened = [max(abs(v - g) for v, g in zip(h["logits"], h["window_opened"])) for h, _ in pairs]
        opened_top1 = [max(range(k), key=lambda j: h["window_opened"][j]) != 0 for h, _ in pairs]
        facts[f"positions_{part}"] = len(pairs)
        facts[f"top1_agreement_{part}"] = sum(h["top"][0] == l["top"][0] for h, l in pairs) / max(1, len(pairs))
        facts[f"max_logit_diff_{part}"] = round(max(diffs, default=float("nan")), 4)
        facts[f"median_logit_diff_{part}"] = round(sorted(diffs)[len(diffs) // 2], 4) if diffs else None
        facts[f"window_effect_max_{part}"] = round(max(opened, default=float("nan")), 4)
        facts[f"window_effect_median_{part}"] = round(sorted(opened)[len(opened) // 2], 4) if opened else None
        facts[f"window_effect_top1_changed_{part}"] = sum(opened_top1) / max(1, len(pairs))
    return facts


def _int(value):
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _generation_eos(checkpoint: Path):
    path = Path(checkpoint) / "generation_config.json"
    if not path.is_file():
        return None
    eos = json.loads(path.read_text()).get("eos_token_id")
    return sorted(eos) if isinstance(eos, list) else eos


if __name__ == "__main__":  # the child of run_child: a job on stdin, the result on the last line of stdout
    print(json.dumps(_child(json.loads(sys.stdin.read()))))
