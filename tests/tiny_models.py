"""Tiny LLaMA models built in code for tests (never downloaded weights)."""
from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def tiny_llama_config(hidden: int = 64, layers: int = 2, intermediate: int = 172, heads: int = 4,
                      kv_heads: int | None = None, vocab: int = 128) -> LlamaConfig:
    # 172 = 4 * 43: an MLP width with the awkward prime factor of LLaMA-2-7B's 11008 = 2^8 * 43.
    return LlamaConfig(hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                       num_attention_heads=heads, num_key_value_heads=kv_heads or heads,
                       vocab_size=vocab, max_position_embeddings=128, tie_word_embeddings=False)


def tiny_llama(seed: int = 0, dtype: torch.dtype = torch.float32, **kwargs) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(tiny_llama_config(**kwargs)).to(dtype).eval()


def randomize_adapter(model: torch.nn.Module, seed: int = 1, scale: float = 0.5) -> None:
    """Give every adapter tensor non-zero values, so adapted != base and tests cannot pass by accident."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "loretta_" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * scale)


# --- checkpoints of each supported family, saved like the released ones -------------------------

CHAT_TEMPLATE = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content']"
                 " + '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
                 "{% endif %}")
# Each family's traits, scaled down: LLaMA-2 (SentencePiece-like: bos added, no pad, untied),
# LLaMA-3 (byte-level BPE with bos added, GQA), Mistral (GQA, sliding window),
# Qwen2 (q/k/v biases, no bos, chat template, tied), SmolLM2 (tied, GQA, pad == eos, chat
# template, bos token declared but not added).
FAMILIES = {
    "llama2": dict(model_type="llama", tie=False, kv_heads=4, bos="<s>", add_bos=True, pad=None, chat=False),
    "llama3": dict(model_type="llama", tie=False, kv_heads=2, bos="<|begin_of_text|>", add_bos=True, pad=None,
                   chat=True),
    "mistral": dict(model_type="mistral", tie=False, kv_heads=2, bos="<s>", add_bos=True, pad=None, chat=False),
    "qwen2": dict(model_type="qwen2", tie=True, kv_heads=2, bos=None, add_bos=False, pad="<|endoftext|>",
                  chat=True),
    "smollm2": dict(model_type="llama", tie=True, kv_heads=2, bos="<|im_start|>", add_bos=False, pad="<|im_end|>",
                    chat=True),
}
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<|begin_of_text|>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"]
FAMILY_VOCAB = 512


def family_eos(family: str) -> str:
    return "</s>" if family in ("llama2", "mistral") else "<|im_end|>"


def family_config(family: str, hidden: int = 64, layers: int = 2, intermediate: int = 172):
    """A tiny config of ``family`` (its own transformers config class) with the family's traits."""
    from transformers import AutoConfig

    traits = FAMILIES[family]
    kwargs = dict(hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                  num_attention_heads=4, num_key_value_heads=traits["kv_heads"], vocab_size=FAMILY_VOCAB,
                  max_position_embeddings=256, tie_word_embeddings=traits["tie"])
    if family == "mistral":
        kwargs["sliding_window"] = 64
    return AutoConfig.for_model(traits["model_type"], **kwargs)


def bpe_tokenizer(family: str):
    """A byte-level BPE tokenizer (as LLaMA-3, Qwen2 and SmolLM2 ship) trained on the bundled
    corpus, with the family's bos / eos / pad and chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from loretta_ds.tiny_llama import corpus_documents

    traits = FAMILIES[family]
    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=FAMILY_VOCAB, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(corpus_documents()[:400], trainer)
    if traits["add_bos"]:
        bos = traits["bos"]
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tokenizer.token_to_id(bos))])
    else:
        tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=traits["bos"],
                                      eos_token=family_eos(family), pad_token=traits["pad"], unk_token=None)
    if traits["chat"]:
        wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


def save_family_checkpoint(family: str, directory, seed: int = 0, shard: str | None = "200KB",
                           dtype: torch.dtype = torch.float32):
    """A tiny pretrained-looking checkpoint of ``family`` in ``directory``: sharded safetensors,
    config, generation_config.json, tokenizer files; weights and the config's dtype in ``dtype``
    (as LLaMA and most hub checkpoints ship bfloat16). Returns the model (float32, eval mode)."""
    from transformers import AutoModelForCausalLM, GenerationConfig

    config = family_config(family)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    tokenizer = bpe_tokenizer(family)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, do_sample=True, temperature=0.7, top_p=0.9)
    if dtype != torch.float32:
        model = model.to(dtype)
    model.save_pretrained(directory, **({"max_shard_size": shard} if shard else {}))
    tokenizer.save_pretrained(directory)
    return model.float()
