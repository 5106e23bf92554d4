"""The fast GGUF reader (harness.gguf_verify.fast_reader_class) reads exactly what gguf-py's GGUFReader reads."""

import numpy as np
import pytest


def differences(a, b) -> list[str]:
    """Where two readers of one file disagree: field names, types, parts (values and dtypes), data indices, tensors."""
    out = []
    if list(a.fields) != list(b.fields):
        out.append("field names")
    for name in a.fields.keys() & b.fields.keys():
        fa, fb = a.fields[name], b.fields[name]
        if fa.types != fb.types or list(fa.data) != list(fb.data) or len(fa.parts) != len(fb.parts):
            out.append(f"field {name}: structure")
        elif any(x.dtype != y.dtype or not np.array_equal(x, y) for x, y in zip(fa.parts, fb.parts)):
            out.append(f"field {name}: values")
    if len(a.tensors) != len(b.tensors):
        out.append("tensor count")
    for x, y in zip(a.tensors, b.tensors):
        if (x.name, x.tensor_type, list(x.shape), x.n_elements, x.n_bytes, x.data_offset) != \
                (y.name, y.tensor_type, list(y.shape), y.n_elements, y.n_bytes, y.data_offset) \
                or x.data.dtype != y.data.dtype or not np.array_equal(x.data, y.data):
            out.append(f"tensor {x.name}")
    return out


def flipping_reader():
    """A reader that flips the last byte of the vocabulary's "▁" words (sizes kept): a planted misreading."""
    from harness.gguf_verify import fast_reader_class

    class Flipping(fast_reader_class()):
        def _get(self, offset, dtype, count=1, override_order=None):
            arr = super()._get(offset, dtype, count, override_order)
            if np.dtype(dtype) == np.uint8 and bytes(arr[:3]) == "▁".encode():
                arr = arr.copy()
                arr[-1] ^= 1
            return arr

    return Flipping


@pytest.fixture(scope="module")
def small_gguf(tmp_path_factory):
    """Every kind of value the exports hold (string, integer and float scalars; string, float and integer arrays;
    Q8_0 and F32 tensors) with a 3,000-token vocabulary: the full 262k one takes gguf-py 7-8 s to read."""
    import gguf

    path = tmp_path_factory.mktemp("gguf") / "small.gguf"
    rng = np.random.default_rng(0)
    writer = gguf.GGUFWriter(str(path), "gemma3")
    writer.add_block_count(2)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_string("general.name", "small ٢٧٠")
    writer.add_tokenizer_model("llama")
    writer.add_token_list([f"tok{i}" if i % 7 else f"▁كلمة{i}" for i in range(3000)])
    writer.add_token_scores([float(-i) for i in range(3000)])
    writer.add_token_types([1 + i % 3 for i in range(3000)])
    writer.add_bos_token_id(2)
    weights = rng.standard_normal((64, 128)).astype(np.float32)
    writer.add_tensor("blk.0.attn_q.weight", gguf.quants.quantize(weights, gguf.GGMLQuantizationType.Q8_0),
                      raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    writer.add_tensor("blk.0.attn_norm.weight", rng.standard_normal(128).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_fast_reader_reads_what_gguf_py_reads(small_gguf):
    from gguf import GGUFReader

    from harness.gguf_verify import fast_reader_class

    reference, fast = GGUFReader(str(small_gguf)), fast_reader_class()(str(small_gguf))
    assert len(fast.fields["tokenizer.ggml.tokens"].data) == 3000 and len(fast.tensors) == 2
    assert differences(reference, fast) == []


def test_a_reader_that_misreads_one_value_is_told_apart(small_gguf):
    """Planted: a reader that flips the last byte of the vocabulary's "▁" words (sizes kept); the comparison must name
    that field and no other."""
    from harness.gguf_verify import fast_reader_class

    found = differences(fast_reader_class()(str(small_gguf)), flipping_reader()(str(small_gguf)))
    assert found == ["field tokenizer.ggml.tokens: values"]



def test_transformers_gguf_loader_parses_the_same_through_the_fast_reader(small_gguf):
    """harness.models materializes the embedded model with transformers' GGUF loader reading through the fast reader
    (gguf_py_reads_fast): the loader's parse of a file is the same through either reader, and gguf-py's reader is put
    back after the block, also after an error. Planted: the misreading reader above changes the parse."""
    import gguf
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    from harness.models import gguf_py_reads_fast

    original = gguf.GGUFReader
    reference = load_gguf_checkpoint(str(small_gguf))
    with gguf_py_reads_fast():
        assert gguf.GGUFReader is not original and issubclass(gguf.GGUFReader, original)
        fast = load_gguf_checkpoint(str(small_gguf))
    assert gguf.GGUFReader is original
    assert fast == reference and reference["config"]["num_hidden_layers"] == 2
    assert reference["tokenizer"]["tokens"][7] == "▁كلمة7"
    with pytest.raises(RuntimeError), gguf_py_reads_fast():
        raise RuntimeError("a failed load")
    assert gguf.GGUFReader is original

    gguf.GGUFReader = flipping_reader()
    try:
        assert load_gguf_checkpoint(str(small_gguf)) != reference
    finally:
        gguf.GGUFReader = original
