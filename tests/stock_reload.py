"""Reload exported models with stock transformers and PEFT only, the way a user without loretta_ds
would, and save their logits on one prompt.

    python tests/stock_reload.py BASE_DIR MERGED_DIR PEFT_DIR OUT.pt [DTYPE]

Importing loretta_ds is made impossible first (it is installed on the test machines), so the
exports are proven to need nothing of it. OUT.pt holds the prompt's input_ids and the logits of
the base model, the merged model and the base model with the PEFT adapter, computed in DTYPE
(default float32; bfloat16 where float32 copies of the model would not fit in memory).
"""
import importlib.abc
import sys


class _RefuseLorettaDs(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "loretta_ds" or name.startswith("loretta_ds."):
            raise ImportError(f"{name} must not be imported when reloading exports")
        return None


sys.meta_path.insert(0, _RefuseLorettaDs())

import torch  # noqa: E402
from peft import PeftModel  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

PROMPT = [{"role": "user", "content": "Name a colour of the sky."}]


def logits_of(model, input_ids):
    with torch.no_grad():
        return model(input_ids=input_ids).logits.float()


def main(base_dir: str, merged_dir: str, peft_dir: str, out_file: str, dtype: str = "float32") -> None:
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    if tokenizer.chat_template:
        text = tokenizer.apply_chat_template(PROMPT, tokenize=False, add_generation_prompt=True)
    else:
        text = PROMPT[0]["content"]
    input_ids = tokenizer(text, return_tensors="pt")["input_ids"]
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=getattr(torch, dtype)).eval()
    base_logits = logits_of(base, input_ids)
    adapted = PeftModel.from_pretrained(base, peft_dir).eval()
    peft_logits = logits_of(adapted, input_ids)
    del adapted, base
    merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=getattr(torch, dtype)).eval()
    merged_logits = logits_of(merged, input_ids)
    tied = bool(merged.config.tie_word_embeddings) and \
        merged.get_output_embeddings().weight.data_ptr() == merged.get_input_embeddings().weight.data_ptr()
    assert not any(name.startswith("loretta_ds") for name in sys.modules)
    torch.save({"input_ids": input_ids, "base": base_logits, "merged": merged_logits, "peft": peft_logits,
                "merged_tied": tied}, out_file)


if __name__ == "__main__":
    main(*sys.argv[1:6])
