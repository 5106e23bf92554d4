"""Load a GGUF in llama.cpp, prefill 300 tokens (the size of a held-out prompt) and decode 16: JSON on stdout."""
import json
import sys

import llama_cpp

llm = llama_cpp.Llama(model_path=sys.argv[1], n_ctx=1024, verbose=False, seed=0)
prompt = [2] + [(i * 7919) % 200000 + 1000 for i in range(299)]
out = []
for token in llm.generate(prompt, temp=0.0, top_k=1):
    out.append(token)
    if len(out) >= 16:
        break
print(json.dumps({"tokenized": llm.tokenize(b"The capital of France is", add_bos=False), "greedy": out}))
