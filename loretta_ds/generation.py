"""How this project generates text: one GenerationConfig for `loretta-ds generate` and for the
sample generations a training run logs at eval time (--eval_generate), so the two agree token for
token on the same model and prompt.

Generation stops at the tokenizer's eos and at every eos of the checkpoint's generation config
(chat models end a turn with their own marker); padding uses the tokenizer's pad id (else eos).
Greedy decoding drops the checkpoint's sampling defaults, which would only trigger warnings.
"""
from __future__ import annotations

import copy


def generation_config(model, tokenizer, max_new_tokens: int, sample: bool = False, temperature: float = 0.7,
                      top_p: float = 0.9):
    from .data.tokenization import pad_id_of

    config = copy.deepcopy(model.generation_config)
    config.max_new_tokens, config.do_sample = max_new_tokens, sample
    config.pad_token_id = pad_id_of(tokenizer)
    eos = {tokenizer.eos_token_id} | set(
        config.eos_token_id if isinstance(config.eos_token_id, list) else [config.eos_token_id])
    config.eos_token_id = sorted(e for e in eos if e is not None) or None
    if sample:
        config.temperature, config.top_p, config.top_k = temperature, top_p, None
    else:
        config.temperature = config.top_p = config.top_k = None
    return config
