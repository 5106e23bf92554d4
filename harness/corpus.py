"""A tokenizer comparison corpus: Arabic (MSA and dialects), English, JSON, digits, whitespace runs, emoji, markers."""

from __future__ import annotations


def tokenizer_corpus(size: int = 240) -> list[str]:
    """At least `size` strings, deterministic, covering what the handbook's task feeds the tokenizer."""
    from harness.dataset import generate

    fixed = [
        "The capital of France is", "عاصمة مصر هي", "a    b", "  leading spaces", "trailing spaces   ", "tab\tseparated",
        "line one\nline two\n\nline four", "٠١٢٣٤٥٦٧٨٩", "0123456789", "3.14159 and 2,718", "07:30", "2026-12-05",
        '{"action": "set_alarm", "time": "07:30"}', '{"action": "none"}', "😀🚀🇪🇬 emoji", "مرحبا 👋 بالعالم",
        "<start_of_turn>user\nمرحبا<end_of_turn>\n", "<start_of_turn>model\n{}<end_of_turn>\n", "MiXeD CaSe",
        "naïve café — résumé", "中文 日本語 한국어", "x" * 100, " ", "\n", "\n\n\n", "a" + " " * 31 + "b",
    ]
    data = generate(seed=0, sizes={"train": size, "validation": 0, "test": size // 4})
    pool = []
    for ex in data["train"] + data["test"]:
        for message in ex.messages[1:]:
            pool.append(message["content"])
    corpus = list(dict.fromkeys(fixed + pool))
    return corpus[: max(size, len(fixed))]
