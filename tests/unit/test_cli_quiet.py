"""kubetune_cli.quiet: a plain CPU run shows no bitsandbytes warning about the `kernels` hub package.

Real bitsandbytes in a fresh interpreter: without the filter its CPU backend logs the warning on
a CPU with AVX512-BF16 (this machine has one; elsewhere that half is skipped); with it, via the
`kubetune` command itself, nothing about `kernels` reaches stderr. Other records still pass.
"""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from kubetune_cli.quiet import BNB_CPU_LOGGER, KernelsHubWarningFilter

IMPORT_BNB = "import logging, bitsandbytes; logging.getLogger('x').warning('other warning')"


def _stderr(code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True
    )
    return result.stderr


def test_the_kubetune_command_imports_bitsandbytes_without_the_kernels_warning() -> None:
    quiet = _stderr(
        "import sys\n"
        "from kubetune_cli import main as m\n"
        f"m.SUBCOMMANDS['probe'] = ('kubetune_cli.quiet', '')\n"
        "import kubetune_cli.quiet as q\n"
        f"q.main = lambda argv: exec({IMPORT_BNB!r})\n"
        "sys.exit(m.main(['probe']))\n"
    )
    assert "kernels" not in quiet, quiet
    assert "other warning" in quiet, "the filter must not swallow other records"
    plain = _stderr(IMPORT_BNB)
    if "kernels" not in plain:
        pytest.skip("this CPU has no AVX512-BF16: bitsandbytes does not try the hub kernel")
    assert "No module named 'kernels'" in plain


def test_the_filter_drops_only_the_hub_kernel_record() -> None:
    keep = KernelsHubWarningFilter()

    def record(message: str, *args: object) -> logging.LogRecord:
        return logging.LogRecord(BNB_CPU_LOGGER, logging.WARNING, __file__, 1, message, args, None)

    assert not keep.filter(
        record("Failed to load CPU gemm_4bit_forward from kernels-community: %s.", "offline")
    )
    assert keep.filter(record("bitsandbytes: something else went wrong"))
