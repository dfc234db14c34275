"""lam.runtime.configure_allocator: glibc malloc tuning, applied once, with an environment opt-out."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from lam.runtime import allocator_configured, configure_allocator

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def _run(code: str, **env: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True,
                         check=True)
    return out.stdout.strip()


@pytest.mark.skipif(not GLIBC, reason="mallopt exists only in glibc")
def test_configure_allocator_on_glibc_applies_once() -> None:
    code = ("from lam.runtime import configure_allocator, allocator_configured\n"
            "print(allocator_configured(), configure_allocator(), configure_allocator(), allocator_configured())")
    assert _run(code, LAM_MALLOC_TUNING="1") == "False True True True"


def test_opt_out_by_environment() -> None:
    code = "from lam.runtime import configure_allocator, allocator_configured\n" \
           "print(configure_allocator(), allocator_configured())"
    assert _run(code, LAM_MALLOC_TUNING="0") == "False False"


def test_calculator_configures_the_allocator() -> None:
    import lam
    from lam import LAMCalculator

    LAMCalculator(lam.build_model("student", type_map=["H", "O"]))
    assert allocator_configured() == GLIBC
    assert configure_allocator() == GLIBC
