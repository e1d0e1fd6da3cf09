"""Adapters the server cannot merge (bottleneck, prefix-tuning) are served attached, exactly.

For each method: train a few steps, save, load through `kubetune_server.loading.load_model`
(fp32, no quantization), then generate greedily with the server's `Engine`, in a batch with a
different prompt. The reference is the peft model's own forward pass, recomputed over the whole
sequence at every step with no cache and no padding: the tokens must be identical.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from kubetune_api.finetune import MethodSpec
from kubetune_server.engine import Engine, GenerationJob
from kubetune_server.loading import load_model
from kubetune_server.sampling import SamplingParams
from kubetune_server.settings import ServerSettings

pytestmark = pytest.mark.integration

SPECS = {
    "adapter": MethodSpec(type="adapter", bottleneck_size=8, dropout=0.0),
    "prefix-tuning": MethodSpec(type="prefix-tuning", num_virtual_tokens=5),
    "lora": MethodSpec(type="lora", rank=4, dropout=0.0),
}
NEW_TOKENS = 12


def train_and_save(model_dir: Path, kind: str, out: Path) -> Path:
    from transformers import AutoTokenizer

    from kubetune_trainer.methods import apply_method, load_base_model, save_adapter

    base = load_base_model(str(model_dir), SPECS[kind], dtype=torch.float32)
    model, _ = apply_method(base, SPECS[kind], gradient_checkpointing=False)
    ids = torch.randint(0, 2000, (2, 12), generator=torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-2)
    model.train()
    for _ in range(3):
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    save_adapter(model, out, tokenizer=AutoTokenizer.from_pretrained(model_dir))
    return out


@torch.no_grad()
def reference_greedy(model: nn.Module, prompt: list[int], eos: frozenset[int]) -> list[int]:
    ids = list(prompt)
    for _ in range(NEW_TOKENS):
        logits = model(input_ids=torch.tensor([ids]), use_cache=False).logits[0, -1]
        token = int(torch.argmax(logits))
        if token in eos:
            break
        ids.append(token)
    return ids[len(prompt) :]


@pytest.mark.parametrize("kind", list(SPECS))
def test_attached_adapters_generate_what_the_peft_model_computes(
    kind: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    from kubetune_trainer.methods import load_adapter

    adapter = train_and_save(tiny_model_dir, kind, tmp_path / "adapter")
    loaded = load_model(
        ServerSettings(
            model=str(tiny_model_dir), adapter=adapter, quantization="none", device="cpu"
        )
    )
    assert ("merged" in loaded.notes) == (kind == "lora"), loaded.notes
    assert (loaded.prefix is not None) == (kind == "prefix-tuning")
    engine = Engine(loaded)
    prompts = [
        engine.chat_prompt_ids([{"role": "user", "content": "如何申请信用卡？请详细说明。"}]),
        engine.chat_prompt_ids([{"role": "user", "content": "hi"}]),
    ]
    out: list[list[int]] = [[], []]
    params = SamplingParams(max_new_tokens=NEW_TOKENS)
    engine.generate(
        [GenerationJob(p, params) for p in prompts], lambda r, t: out[r].append(t) or False
    )

    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    reference = load_adapter(base, adapter).eval()
    expected = [reference_greedy(reference, p, loaded.eos_ids) for p in prompts]
    assert out == expected
    assert any(out)
