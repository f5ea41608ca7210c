"""Data for training and evaluation: dataset specs and formats, chat templates, tokenization with
answer-only loss, sharded resumable batches (padded or packed), label-word classification
accuracy, and the bundled demo data. Names are imported from their modules on first use, so
``from loretta_ds.data.formats import FORMATS`` (the settings, --help) stays free of datasets and torch.

    data = prepare_data(tokenizer, ["bundled:sentiment"], fmt="auto", seq_len=128, seed=0)
    batches = ShardedBatches(data.train, micro_batch_size=8, rank=r, world_size=w, seed=0,
                             pad_id=data.pad_id)
    acc = classification_accuracy(model, tokenizer, data.classification_eval_records,
                                  data.label_words, seq_len=128, batch_size=32)
"""

from __future__ import annotations

from ..lazy_names import lazy_names

_WHERE = {
    "bundled": ("BUNDLED_DIR", "DEFAULT_DATASET", "bundled_path", "bundled_task_names", "corpus_path"),
    "evaluation": ("classification_accuracy", "classification_predictions", "label_word_scores"),
    "formats": ("FORMATS", "FORMAT_SPECS", "IGNORE_INDEX", "render", "resolve_format"),
    "chat": ("DEFAULT_CHAT_TEMPLATE", "resolve_chat_template"),
    "batches": ("ShardedBatches", "collate", "eval_batches", "model_inputs", "real_token_count", "target_count"),
    "packing": ("PackedBatches", "collate_packed", "pack_rows"),
    "files": ("DatasetSpec", "canonicalize", "load_records", "mix", "parse_dataset_specs", "read_raw"),
    "prepare": ("PreparedData", "SourceSummary", "prepare_data"),
    "tokenization": ("TruncationStats", "build_example", "pad_id_of", "tokenize_dataset"),
}
__all__, __getattr__ = lazy_names(__name__, _WHERE)
