"""The GC-MECHANISM probe's pure parts on the CPU (harness.gpu_probe): what decoder layers call, recompute counting,
autograd checkpoint nodes, trace summaries (copy bytes, kernel classes and attribution) and Unsloth's kernel names."""

import functools

import pytest
import torch

from harness import gpu_probe as probe


def test_describe_callable_unwraps_partials_and_keeps_their_keywords():
    from torch.utils.checkpoint import checkpoint

    fn = functools.partial(functools.partial(checkpoint, use_reentrant=False), preserve_rng_state=True)
    assert probe.describe_callable(fn) == "torch.utils.checkpoint.checkpoint(preserve_rng_state=True, use_reentrant=False)"
    assert probe.describe_callable(checkpoint) == "torch.utils.checkpoint.checkpoint"


@pytest.fixture(scope="module")
def tiny_checkpointed(tiny_dir):
    """`tiny` (6 Gemma 3 decoder layers) with transformers' checkpointing, reentrant as Unsloth forces it."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_dir), dtype=torch.float32)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    return model.train()


def test_layer_checkpoint_functions_reads_what_each_decoder_layer_calls(tiny_checkpointed):
    facts = probe.layer_checkpoint_functions(tiny_checkpointed)
    assert facts["decoder_layers"] == 6 and facts["checkpointed_layers"] == 6
    assert facts["layer_checkpoint_functions"] == {"torch.utils.checkpoint.checkpoint(use_reentrant=True)": 6}
    assert facts["checkpoint_autograd_function"] == "CheckpointFunction"


def test_layer_calls_count_the_recompute_and_autograd_holds_one_checkpoint_node_per_layer(tiny_checkpointed):
    """Forward: 6 layer calls of (2, 16, 64) float32 inputs; backward: 6 more (the recompute); 6 checkpoint nodes.
    The CPU profile of the backward holds one CheckpointFunctionBackward range per layer."""
    from torch.profiler import ProfilerActivity, profile

    ids = torch.randint(10, 1000, (2, 16), generator=torch.Generator().manual_seed(0))
    calls = probe.LayerCalls(probe.decoder_layers(tiny_checkpointed))
    try:
        calls.phase = "forward"
        loss = tiny_checkpointed(input_ids=ids, labels=ids).loss
        nodes = probe.autograd_node_counts(loss.grad_fn)
        calls.phase = "backward"
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            loss.backward()
    finally:
        calls.remove()
    tiny_checkpointed.zero_grad(set_to_none=True)
    assert calls.calls == {"forward": 6, "backward": 6}
    assert calls.detectors["child_hook"] == {"forward": 6, "backward": 6}  # the layer's own: 6/6 at 5.17, 6/0 at 5.24
    assert calls.input_bytes["forward"] == 6 * 2 * 16 * 64 * 4
    assert nodes == {"CheckpointFunctionBackward": 6}
    summary = probe.summarize_trace(probe._trace_events(prof), {})
    assert summary["checkpoint_backward_ranges"] == 6
    assert summary["dtoh_pinned_bytes"] == 0 and summary["unsloth_kernels"] == 0


def test_layer_calls_are_not_counted_outside_a_phase(tiny_checkpointed):
    calls = probe.LayerCalls(probe.decoder_layers(tiny_checkpointed))
    try:
        with torch.no_grad():
            tiny_checkpointed.eval()(input_ids=torch.tensor([[2, 105, 106]]))
    finally:
        calls.remove()
        tiny_checkpointed.train()
    assert calls.calls == {"forward": 0, "backward": 0}


class _Block(torch.nn.Module):
    """A decoder layer in miniature, checkpointed where transformers does it (`where`): a norm and a projection
    called as modules, or (functional=True) the same arithmetic on bare parameters, as Unsloth's patched layers run
    (no child called as a module)."""

    def __init__(self, where, functional=False):
        super().__init__()
        self.where, self.functional = where, functional
        if functional:
            self.weight = torch.nn.Parameter(torch.eye(4))
        else:
            self.norm = torch.nn.LayerNorm(4)
            self.proj = torch.nn.Linear(4, 4)

    def __call__(self, x):
        from torch.utils.checkpoint import checkpoint

        if self.where == "__call__":  # transformers <= 5.22: the layer's hooks run again in the recompute
            return checkpoint(super().__call__, x, use_reentrant=True)
        return super().__call__(x)

    def forward(self, x):
        from torch.utils.checkpoint import checkpoint

        if self.where == "forward":  # transformers >= 5.23: the layer's hooks stay outside the checkpoint
            return checkpoint(self._body, x, use_reentrant=True)
        return self._body(x)

    def _body(self, x):
        if self.functional:
            return x + torch.nn.functional.layer_norm(x, (4,)) @ self.weight
        return x + self.proj(self.norm(x))


@pytest.mark.parametrize("where, functional, layer_hook, child_hook", [
    ("__call__", False, (1, 1), (1, 1)),  # transformers 5.17: both detectors see the recompute
    ("forward", False, (1, 0), (1, 1)),  # transformers 5.24: only the children's hooks run in the recompute
    ("__call__", True, (1, 1), (0, 0)),  # Unsloth: no child module is called, the layer's own hooks are replayed
    (None, False, (1, 0), (1, 0)),  # no checkpoint: no recompute
], ids=["call-checkpointed", "forward-checkpointed", "functional-call-checkpointed", "not-checkpointed"])
def test_layer_calls_see_the_recompute_whichever_detector_does(where, functional, layer_hook, child_hook):
    """A run is counted where either detector sees it and once where both do (the larger count per layer and
    phase): dropping either detector fails a case above."""
    layer = _Block(where, functional)
    calls = probe.LayerCalls([layer])
    try:
        calls.phase = "forward"
        out = layer(torch.ones(2, 4, requires_grad=True))
        calls.phase = "backward"
        out.sum().backward()
    finally:
        calls.remove()
    assert calls.detectors == {"layer_hook": dict(zip(("forward", "backward"), layer_hook)),
                               "child_hook": dict(zip(("forward", "backward"), child_hook))}
    assert calls.calls == {"forward": 1, "backward": 1 if where else 0}
    assert calls.input_bytes["forward"] == 2 * 4 * 4
    assert all(p.grad is not None for p in layer.parameters())


def test_layer_calls_do_not_hook_a_child_the_layers_share():
    """A module that is a child of several layers would mark runs of all of them: only the layers' own children
    mark their runs."""
    layers = [_Block(None), _Block(None)]
    layers[1].norm = layers[0].norm
    calls = probe.LayerCalls(layers)
    try:
        calls.phase = "forward"
        layers[1](layers[0](torch.ones(2, 4)))
    finally:
        calls.remove()
    assert calls.detectors["child_hook"] == {"forward": 2, "backward": 0} and calls.calls["forward"] == 2


UNSLOTH = {"_fg_kernel": "unsloth", "_rms_layernorm_backward": "unsloth", "_fl_backward_kernel": "unsloth_zoo"}


@pytest.mark.parametrize("name, kind", [
    ("_rms_layernorm_backward", "unsloth"), ("_fg_kernel_0d1d2d3de", "unsloth"), ("_fl_backward_kernel", "unsloth"),
    ("triton_poi_fused__to_copy_1", "inductor"), ("triton_per_fused_add_mean_mul_pow_rsqrt_12", "inductor"),
    ("triton_red_fused_sum_3", "inductor"), ("triton_tem_fused_mm_0", "inductor"), ("triton_mm", "other_triton"),
    ("sm90_xmma_gemm_bf16bf16_bf16f32", "other"), ("_fg_kernel_helper", "other"),
])
def test_classify_kernel(name, kind):
    assert probe.classify_kernel(name, UNSLOTH) == kind


def _event(cat, name, ts=0, dur=0, tid=7, **args):
    return {"ph": "X", "cat": cat, "name": name, "pid": 1, "tid": tid, "ts": ts, "dur": dur, "args": args}


def test_summarize_trace_counts_bytes_by_kind_and_attributes_unsloth_kernels_to_checkpoint_backward():
    events = [
        _event("gpu_memcpy", "Memcpy DtoH (Device -> Pinned)", bytes=5242880),
        _event("gpu_memcpy", "Memcpy DtoH (Device -> Pinned)", bytes=5242880),
        _event("gpu_memcpy", "Memcpy DtoH (Device -> Pageable)", bytes=4),
        _event("gpu_memcpy", "Memcpy HtoD (Pinned -> Device)", bytes=5242880),
        _event("gpu_memcpy", "Memcpy DtoD (Device -> Device)", bytes=99),
        _event("cpu_op", "autograd::engine::evaluate_function: UnslothCheckpointFunctionBackward", ts=100, dur=100),
        _event("cpu_op", "UnslothCheckpointFunctionBackward", ts=101, dur=98),
        _event("cuda_driver", "cuLaunchKernelEx", ts=150, correlation=1),  # inside the checkpoint's backward
        _event("cuda_driver", "cuLaunchKernelEx", ts=250, correlation=2),  # after it (e.g. the loss)
        _event("cuda_runtime", "cudaLaunchKernel", ts=160, tid=8, correlation=3),  # in range, other thread
        _event("kernel", "_rms_layernorm_backward", correlation=1),
        _event("kernel", "_fl_backward_kernel", correlation=2),
        _event("kernel", "_fg_kernel", correlation=3),
        _event("kernel", "triton_poi_fused__to_copy_1", correlation=4),
        _event("kernel", "sm90_xmma_gemm", correlation=5),
    ]
    s = probe.summarize_trace(events, UNSLOTH)
    assert (s["dtoh_pinned_bytes"], s["dtoh_pageable_bytes"], s["htod_pinned_bytes"]) == (10485760, 4, 5242880)
    assert s["dtoh_pinned_copies"] == 2 and s["copies_without_bytes"] == 0
    assert (s["unsloth_kernels"], s["inductor_kernels"], s["other_kernels"]) == (3, 1, 1)
    assert s["checkpoint_backward_ranges"] == 1  # the engine's range and the node's nest: one checkpoint
    assert s["unsloth_kernels_in_checkpoint_backward"] == 1


def test_summarize_trace_says_unknown_rather_than_zero():
    """A kernel whose launch is not in the trace, or a copy without its byte count, gives None, not 0."""
    events = [_event("cpu_op", "CheckpointFunctionBackward", ts=0, dur=10), _event("kernel", "_fg_kernel", correlation=9),
              _event("gpu_memcpy", "Memcpy DtoH (Device -> Pinned)")]
    s = probe.summarize_trace(events, UNSLOTH)
    assert s["unsloth_kernels_in_checkpoint_backward"] is None
    assert s["dtoh_pinned_bytes"] is None and s["copies_without_bytes"] == 1


def test_triton_kernel_names_in_source_finds_decorated_and_wrapped_kernels():
    text = '''
import triton
@triton.jit
def _a(x): pass

@triton.heuristics({"B": lambda args: 1})
@triton.jit(do_not_specialize=["n"])
def _b(x): pass

def _c(x): pass
_c = triton.jit(_c)

@torch.compile
def _d(x): pass

def outer():
    @triton.autotune(configs=[], key=[])
    @triton.jit
    def _e(x): pass
'''
    assert probe.triton_kernel_names_in_source(text) == {"_a", "_b", "_c", "_e"}


def test_unsloth_kernel_names_are_read_from_the_installed_sources():
    """unsloth_zoo is installed here (unsloth needs a GPU to import, but its files are read, not imported)."""
    names = probe.unsloth_triton_kernel_names(("unsloth_zoo",))
    assert "_fl_backward_kernel" in names and names["_fl_backward_kernel"] == "unsloth_zoo"
    assert not any(n.startswith("triton_") for n in names)


def test_mechanism_runs_end_to_end_on_the_cpu_and_feeds_the_check(tiny_checkpointed):
    """The probe's step on `tiny` without CUDA: layer calls, recompute, checkpoint nodes and ranges are measured; a
    CPU step copies nothing to a host, so GC-MECHANISM comes out red (fail: no offload), as it must."""
    import spec
    from spec.core import evaluate

    optimizer = torch.optim.SGD(tiny_checkpointed.parameters(), lr=0.0)
    errors: dict = {}
    out = probe.mechanism(tiny_checkpointed, optimizer, 16, 2, 1000, errors, device="cpu")
    assert errors == {}
    assert (out["layer_calls_forward"], out["layer_calls_backward"]) == (6, 6)
    assert out["layer_calls_detectors"]["child_hook"] == {"forward": 6, "backward": 6}
    assert out["activation_bytes"] == 6 * 2 * 16 * 64 * 4
    assert out["checkpoint_autograd_nodes"] == {"CheckpointFunctionBackward": 6}
    assert out["checkpoint_backward_ranges"] == 6
    assert out["dtoh_pinned_bytes_forward"] == 0 and out["unsloth_triton_kernels_in_backward"] == 0
    assert out["unsloth_kernel_names_known"] > 0
    outcome = evaluate(spec.CLAIMS["GC-MECHANISM"], out, "gpu")
    assert outcome.verdict == "fail" and outcome.evidence["recomputes_in_backward"] is True
    assert outcome.evidence["offloads_to_pinned_host"] is False


def test_mechanism_keeps_the_other_measurements_when_one_fails(tiny_checkpointed, monkeypatch):
    """Unsloth's kernel names cannot be read: the error is evidence, the rest is measured, the check says fail."""
    import spec
    from spec.core import evaluate

    def broken(*args, **kwargs):
        raise OSError("site-packages unreadable")

    monkeypatch.setattr(probe, "unsloth_triton_kernel_names", broken)
    errors: dict = {}
    out = probe.mechanism(tiny_checkpointed, torch.optim.SGD(tiny_checkpointed.parameters(), lr=0.0), 16, 2, 1000,
                          errors, device="cpu")
    assert errors == {"unsloth_kernel_names": "OSError: site-packages unreadable"}
    assert out["layer_calls_backward"] == 6 and out["unsloth_kernel_names_known"] == 0
    outcome = evaluate(spec.CLAIMS["GC-MECHANISM"], {**out, "errors": errors}, "gpu")
    assert outcome.verdict == "fail" and "unsloth_kernel_names_known" in outcome.evidence["missing_measurements"]
