"""The memory estimate against the tensor bytes real training steps hold, on the CPU.

Each case builds the model the trainer builds (`train.build_model`), runs two optimizer steps
of the trainer's own step (autocast, fused chunked loss, backward, AdamW) on one sequence, and
measures the peak of the second step with `LiveTensorBytes`: a dispatch mode that registers the
storage of every tensor an operator returns and drops it when the storage is freed, so at any
moment it knows the bytes of all live tensors created since it started (activations kept for
backward, gradients, optimizer state, loss chunks). Measured peak = frozen weights (+ 4-bit
quantisation constants) + trainable parameters + that peak. The estimate (`device="cpu"`: dropout
masks are as wide as their input there) must be within TOLERANCE of it, and the weights and the
PEFT state close to exact. Results print with `-s`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from kubetune_api.memory import MemoryEstimate, estimate_memory
from kubetune_api.trainer_config import TrainerConfig, parse_trainer_config
from kubetune_trainer.distributed import init_runtime
from kubetune_trainer.estimate import model_shape
from kubetune_trainer.loss import fused_loss
from kubetune_trainer.train import _autocast, build_model

pytestmark = pytest.mark.integration

TOLERANCE = 0.25  # |estimate / measured - 1|; measured so far: within 0.15 (see the report)
SEQ = 384


class LiveTensorBytes(TorchDispatchMode):
    """Bytes of the live tensor storages created by operators while active, and their peak."""

    def __init__(self, preexisting: list[torch.Tensor]) -> None:
        super().__init__()
        self.refs: dict[int, tuple[StorageWeakRef, int]] = {}
        for t in preexisting:  # parameters and buffers: views of them are not new memory
            storage = t.untyped_storage()
            self.refs[storage._cdata] = (StorageWeakRef(storage), 0)
        self.live = self.peak = 0

    def _sweep(self) -> None:
        for key in [k for k, (ref, _) in self.refs.items() if ref.expired()]:
            self.live -= self.refs.pop(key)[1]

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self._sweep()
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                if storage._cdata not in self.refs and storage.nbytes():
                    self.refs[storage._cdata] = (StorageWeakRef(storage), storage.nbytes())
                    self.live += storage.nbytes()
        self.peak = max(self.peak, self.live)
        return out


def storage_bytes(tensors: Iterator[torch.Tensor]) -> int:
    seen: dict[int, int] = {}
    for t in tensors:
        seen[t.untyped_storage()._cdata] = t.untyped_storage().nbytes()
    return sum(seen.values())


def quant_constants(model: torch.nn.Module) -> Iterator[torch.Tensor]:
    """bitsandbytes 4-bit quantisation state (absmax, codes, nested absmax) of every layer."""
    for module in model.modules():
        state = getattr(getattr(module, "weight", None), "quant_state", None)
        if state is not None:
            yield from (state.absmax, state.code)
            if state.nested:
                yield from (state.state2.absmax, state.state2.code, state.offset)


def config(model_dir: Path, method: dict[str, Any], **training: Any) -> TrainerConfig:
    return parse_trainer_config(
        {
            "model": {"name": str(model_dir)},
            "dataset": {"train": {"path": "unused.jsonl"}},
            "method": method,
            "training": {"microBatchSize": 1, **training},
        }
    )


def measure(cfg: TrainerConfig) -> dict[str, int]:
    """Peak bytes of the second of two training steps on one all-supervised sequence."""
    rt = init_runtime("cpu")
    torch.manual_seed(0)
    model, _ = build_model(cfg, rt)
    trainable = [p for p in model.parameters() if p.requires_grad]
    frozen = [p for p in model.parameters() if not p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    autocast = _autocast(cfg.training.precision, rt.device)
    vocab = model_shape(cfg.model.name).vocab_size
    ids = torch.randint(0, vocab - 1, (1, SEQ))
    tracker = LiveTensorBytes([*model.parameters(), *model.buffers()])
    with tracker:
        for _ in range(2):
            tracker.peak = tracker.live
            with autocast(), fused_loss(model, ids, cfg.training.loss_chunk_size) as out:
                model(input_ids=ids, use_cache=False)
            (out[0].loss_sum / out[0].tokens).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    state = [t for s in optimizer.state.values() for t in s.values() if t.dim() > 0]
    weights = storage_bytes(iter([*frozen, *model.buffers(), *quant_constants(model)]))
    params = storage_bytes(iter(trainable))
    return {
        "weights": weights,
        "trainable_params": sum(p.numel() for p in trainable),
        "optimizer": storage_bytes(iter(state)),
        "total": weights + params + tracker.peak,
    }


def check(cfg: TrainerConfig, label: str) -> tuple[MemoryEstimate, dict[str, int]]:
    measured = measure(cfg)
    est = estimate_memory(cfg, model_shape(cfg.model.name), seq_len=SEQ, device="cpu")
    ratio = est.modelled_bytes / measured["total"]
    print(
        f"\n{label}: measured {measured['total'] / 1e6:.1f} MB, estimated "
        f"{est.modelled_bytes / 1e6:.1f} MB (ratio {ratio:.3f}); weights "
        f"{measured['weights'] / 1e6:.1f} vs {est.weights_bytes / 1e6:.1f} MB"
    )
    assert abs(ratio - 1) <= TOLERANCE, f"{label}: estimate/measured = {ratio:.3f}"
    assert est.weights_bytes == pytest.approx(measured["weights"], rel=0.02)
    assert est.trainable_params == measured["trainable_params"]
    assert est.optimizer_bytes == measured["optimizer"]
    return est, measured


@pytest.fixture(scope="module")
def mid_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Qwen3 "mid" (hidden 512, 8 layers) with the small vocabulary: activations dominate."""
    from kubetune_trainer.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("mid"), vocab="small", size="mid")


@pytest.fixture(scope="module")
def big_vocab_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Qwen3 "tiny" with Qwen3's 151,936-row vocabulary: the loss chunk's logits dominate."""
    from transformers import Qwen3ForCausalLM

    from kubetune_trainer.tiny_model import qwen3_config

    out = tmp_path_factory.mktemp("tiny-big-vocab")
    torch.manual_seed(0)
    Qwen3ForCausalLM(qwen3_config("tiny", 151_936)).save_pretrained(str(out))
    return out


@pytest.mark.parametrize(
    ("precision", "checkpointing", "dropout"),
    [("fp32", False, 0.05), ("fp32", True, 0.0), ("bf16", False, 0.0), ("bf16", True, 0.05)],
)
def test_lora_activations(
    mid_model_dir: Path, precision: str, checkpointing: bool, dropout: float
) -> None:
    cfg = config(
        mid_model_dir,
        {"type": "lora", "rank": 16, "dropout": dropout},
        precision=precision,
        gradientCheckpointing=checkpointing,
    )
    check(cfg, f"lora {precision} checkpointing={checkpointing} dropout={dropout}")


def test_qlora_weights_and_step(mid_model_dir: Path) -> None:
    cfg = config(
        mid_model_dir, {"type": "qlora", "rank": 8}, precision="bf16", gradientCheckpointing=True
    )
    _, measured = check(cfg, "qlora bf16 checkpointing=True")
    full = estimate_memory(config(mid_model_dir, {"type": "lora"}), model_shape(str(mid_model_dir)))
    assert measured["weights"] < 0.35 * full.weights_bytes  # NF4 really shrank the base


def test_logits_of_the_loss_chunk(big_vocab_model_dir: Path) -> None:
    cfg = config(
        big_vocab_model_dir,
        {"type": "lora", "dropout": 0.0},
        precision="bf16",
        lossChunkSize=128,
        gradientCheckpointing=False,
    )
    est, _ = check(cfg, "lora bf16, vocab 151,936, loss chunk 128")
    assert est.logits_bytes > 0.8 * est.modelled_bytes
