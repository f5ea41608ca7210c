"""Data for training and evaluation: dataset specs and formats, chat templates, tokenization with
answer-only loss, sharded resumable batches (padded or packed), label-word classification
accuracy, and the bundled demo data.

    data = prepare_data(tokenizer, ["bundled:sentiment"], fmt="auto", seq_len=128, seed=0)
    batches = ShardedBatches(data.train, micro_batch_size=8, rank=r, world_size=w, seed=0,
                             pad_id=data.pad_id)
    acc = classification_accuracy(model, tokenizer, data.classification_eval_records,
                                  data.label_words, seq_len=128, batch_size=32)
"""

from .bundled import BUNDLED_DIR, DEFAULT_DATASET, bundled_path, bundled_task_names, corpus_path
from .evaluation import classification_accuracy, classification_predictions, label_word_scores
from .formats import FORMATS, FORMAT_SPECS, render, resolve_format
from .chat import DEFAULT_CHAT_TEMPLATE, resolve_chat_template
from .loader import ShardedBatches, collate, eval_batches, model_inputs, real_token_count, target_count
from .packing import PackedBatches, collate_packed, pack_rows
from .loading import DatasetSpec, canonicalize, load_records, mix, parse_dataset_specs, read_raw
from .prepare import PreparedData, SourceSummary, prepare_data
from .tokenization import IGNORE_INDEX, TruncationStats, build_example, pad_id_of, tokenize_dataset

__all__ = [
    "BUNDLED_DIR", "DEFAULT_CHAT_TEMPLATE", "DEFAULT_DATASET", "FORMATS", "FORMAT_SPECS", "IGNORE_INDEX",
    "DatasetSpec", "PackedBatches", "PreparedData", "ShardedBatches", "SourceSummary", "TruncationStats",
    "build_example", "bundled_path", "bundled_task_names", "canonicalize", "classification_accuracy",
    "classification_predictions", "collate", "collate_packed", "corpus_path", "eval_batches",
    "label_word_scores", "load_records", "mix", "model_inputs", "pack_rows", "pad_id_of",
    "parse_dataset_specs", "prepare_data", "read_raw", "real_token_count", "render",
    "resolve_chat_template", "resolve_format", "target_count", "tokenize_dataset",
]
