"""Silences bitsandbytes' CPU warning about the `kernels` hub package, which Kubetune never uses.

On a CPU with AVX512-BF16, importing bitsandbytes (transformers and peft do it whenever it is
installed) tries `from kernels import get_kernel` to fetch a fused 4-bit GEMM from the Hugging
Face hub and, without that package, logs "Failed to load CPU gemm_4bit_forward from
kernels-community: No module named 'kernels'" at WARNING on every run. Kubetune runs offline
(HF_HUB_OFFLINE=1) and would not download a kernel anyway; bitsandbytes then uses its built-in
CPU kernel, which is the intended path. Only that one message is dropped; every other
bitsandbytes warning still shows. Called once by kubetune_cli.main before a subcommand runs.
"""

from __future__ import annotations

import logging

# The logger bitsandbytes/backends/cpu/ops.py logs through (logging.getLogger(__name__)).
BNB_CPU_LOGGER = "bitsandbytes.backends.cpu.ops"
# How its message about the hub kernel begins (whatever the exception: missing package, offline).
KERNELS_HUB_MESSAGE = "Failed to load CPU gemm_4bit_forward from kernels-community"


class KernelsHubWarningFilter(logging.Filter):
    """Drops the one record about the missing `kernels` package; passes everything else."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(KERNELS_HUB_MESSAGE)


def silence_kernels_hub_warning() -> None:
    """Install the filter on bitsandbytes' CPU logger (idempotent; no import of bitsandbytes)."""
    logger = logging.getLogger(BNB_CPU_LOGGER)
    if not any(isinstance(f, KernelsHubWarningFilter) for f in logger.filters):
        logger.addFilter(KernelsHubWarningFilter())
