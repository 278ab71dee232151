"""Baselines that steering is compared with on the same data: LoRA fine-tuning by self-distillation.

Imported lazily, so ``import workbench.baselines`` does not load peft.
"""

import importlib
from typing import Any

_EXPORTS = {
    "LoraAdapter": "workbench.baselines.adapter",
    "lora_applied": "workbench.baselines.adapter",
    "Pairs": "workbench.baselines.finetune",
    "NoPairsError": "workbench.baselines.finetune",
    "answer_loss": "workbench.baselines.finetune",
    "choose_lora": "workbench.baselines.finetune",
    "distill": "workbench.baselines.finetune",
    "lora": "workbench.baselines.finetune",
    "Evaluation": "workbench.baselines.evaluate",
    "evaluate_lora": "workbench.baselines.evaluate",
    "score_answers": "workbench.baselines.evaluate",
    "target_for": "workbench.baselines.evaluate",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'workbench.baselines' has no attribute {name!r}")
