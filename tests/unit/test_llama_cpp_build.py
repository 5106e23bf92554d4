"""llama-cpp-python is built for a portable CPU, and its cached wheel is keyed by what changes the machine code."""

import pytest

from harness import llama_cpp_build as build


def test_portable_flags_always_and_user_flags_added():
    assert build.cmake_args("") == "-DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF"
    assert build.cmake_args("-DGGML_BLAS=ON") == "-DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF -DGGML_BLAS=ON"


def test_a_native_build_is_refused_with_the_reason():
    with pytest.raises(build.BuildError, match="portable baseline"):
        build.cmake_args("-DGGML_NATIVE=ON")


def test_wheel_key_changes_with_flags_and_compiler():
    base = build.wheel_key(build.cmake_args(""))
    assert base == build.wheel_key(build.cmake_args(""))
    assert base != build.wheel_key(build.cmake_args("-DGGML_BLAS=ON"))
    assert base != build.wheel_key(build.cmake_args(""), compiler="/usr/bin/gcc//usr/bin/g++")
