"""Fine-tuning that steering is compared with on the same data: LoRA adapters trained by self-distillation.

Imported lazily, so ``import workbench.finetune`` does not load peft.
"""

import importlib
from typing import Any

_EXPORTS = {
    "LoraAdapter": "workbench.finetune.adapter",
    "lora_applied": "workbench.finetune.adapter",
    "Pairs": "workbench.finetune.training",
    "NoPairsError": "workbench.finetune.training",
    "answer_loss": "workbench.finetune.training",
    "choose_lora": "workbench.finetune.training",
    "distill": "workbench.finetune.training",
    "lora": "workbench.finetune.training",
    "Evaluation": "workbench.finetune.evaluate",
    "evaluate_lora": "workbench.finetune.evaluate",
    "target_for": "workbench.finetune.evaluate",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'workbench.finetune' has no attribute {name!r}")
