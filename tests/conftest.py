"""Shared fixtures: a tiny random Llama built locally, tiny configs of other architectures, and the real
bundled SmolLM2 (slow)."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

CORPUS = [
    "What is the capital of France? The capital of France is Paris.",
    "Explain why the sky is blue. Light scatters in the air, and blue light scatters most.",
    "Answer in JSON. Use three bullet points. Be concise. Rispondi in italiano, per favore.",
    "How do I boil an egg? Put the egg in boiling water for eight minutes, then cool it.",
    "Tell me about cats and dogs. Cats are independent; dogs are loyal companions.",
] * 4

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<unk>",
    )
    fast.chat_template = CHATML
    fast.init_kwargs.update(name_or_path="tiny-llama", add_bos_token=True)
    return fast


def build_tiny_hf(seed: int = 0, n_layers: int = 4):
    """A randomly initialised Llama (d_model 64) and its tokenizer, as plain Hugging Face objects."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    hf = LlamaForCausalLM(config)
    # Random weights rarely emit EOS; keep generation lengths fixed and comparable.
    hf.generation_config.eos_token_id = tokenizer.eos_token_id
    return hf, tokenizer


# Sliding windows shorter than the prompts, so the windowed layers are exercised too.
TINY_CONFIG_EXTRA = {
    "qwen3": {"head_dim": 16},
    "mistral": {"sliding_window": 6},
    "gemma2": {"head_dim": 16, "sliding_window": 6},
    "gemma3_text": {"head_dim": 16, "sliding_window": 6},
}


def tiny_config(kind: str, tokenizer) -> object:
    """A 2-layer, d_model 64 config of any architecture ``kind``, for the shared tiny tokenizer."""
    from transformers import AutoConfig

    ids = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    if kind == "gpt2":
        return AutoConfig.for_model(
            kind, vocab_size=len(tokenizer), n_embd=64, n_layer=2, n_head=4, n_positions=256, **ids
        )
    sizes = {
        "vocab_size": len(tokenizer),
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": 256,
    }
    if kind != "gpt_neox":
        sizes["num_key_value_heads"] = 2
    return AutoConfig.for_model(kind, **sizes, **ids, **TINY_CONFIG_EXTRA.get(kind, {}))


def build_tiny_model(seed: int = 0, n_layers: int = 4):
    from workbench.models import from_hf

    hf, tokenizer = build_tiny_hf(seed, n_layers)
    return from_hf(hf, tokenizer, "tiny-llama", device="cpu")


@pytest.fixture(scope="session")
def tiny():
    return build_tiny_model()


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """The tiny model saved as a local Hugging Face directory, so commands can load it by path."""
    hf, tokenizer = build_tiny_hf()
    folder = tmp_path_factory.mktemp("tiny_hf")
    hf.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def smol():
    from workbench.models import load_model

    return load_model("smollm2-135m-instruct")


PROMPTS = [
    "What is the capital of France?",
    "Name a fruit.",
    "Explain why the sky is blue.",
    "How do I boil an egg?",
    "Tell me about cats and dogs and why people like them so much.",
]


@pytest.fixture(scope="session")
def writer():
    """The tiny model, kept from writing only whitespace (which strips to an empty answer)."""
    model = build_tiny_model()
    vocab = model.tokenizer.get_vocab().values()
    model.hf_model.generation_config.suppress_tokens = [
        i for i in vocab if not model.tokenizer.decode([i]).strip()
    ]
    return model


@pytest.fixture(scope="module")
def confident(tmp_path_factory):
    """A tiny model with peaked next-token distributions (output head × 8), as a trained model's are, so
    that steering moves the KL divergence that sets a dynamic strength; whitespace-only tokens and repeated
    tokens are kept out so that its answers are not degenerate and LoRA has pairs to distil."""
    model = build_tiny_model()
    config = model.hf_model.generation_config
    vocab = model.tokenizer.get_vocab().values()
    config.suppress_tokens = [i for i in vocab if not model.tokenizer.decode([i]).strip()]
    config.no_repeat_ngram_size = 1
    with torch.no_grad():
        model.hf_model.get_output_embeddings().weight.mul_(8.0)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("WORKBENCH_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield model
