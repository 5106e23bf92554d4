"""harness.omp_policy: the test process's OpenMP threads sleep while they wait, its llama.cpp children spin."""

import sys

from harness import omp_policy


def test_set_only_where_the_caller_chose_nothing_torch_is_not_loaded_and_there_is_no_gpu(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.delenv(omp_policy.SET_BY_SUITE, raising=False)
    monkeypatch.setattr(omp_policy, "has_nvidia_gpu", lambda: False)
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    assert omp_policy.sleep_waiting_threads()
    import os

    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE" and os.environ[omp_policy.SET_BY_SUITE] == "1"
    child = omp_policy.child_env(os.environ)
    assert "OMP_WAIT_POLICY" not in child and omp_policy.SET_BY_SUITE not in child

    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")  # the caller's choice stands, in the children too
    monkeypatch.delenv(omp_policy.SET_BY_SUITE)
    assert not omp_policy.sleep_waiting_threads()
    assert omp_policy.child_env(os.environ)["OMP_WAIT_POLICY"] == "ACTIVE"


def test_not_on_a_gpu_machine_nor_after_torch_loaded(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setattr(omp_policy, "has_nvidia_gpu", lambda: True)
    assert not omp_policy.sleep_waiting_threads()
    monkeypatch.setattr(omp_policy, "has_nvidia_gpu", lambda: False)
    monkeypatch.setitem(sys.modules, "torch", object())
    assert not omp_policy.sleep_waiting_threads()
