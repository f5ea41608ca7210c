"""The built-in `tiny-llama` model: a 2-layer LLaMA-2-architecture model with its own SentencePiece
tokenizer, both trained here on the bundled corpus, created once and cached as a plain HF model dir.

Why it exists: the demo and the tests need a real causal LM without any model hub. A randomly
initialised base gives the frozen-base fine-tuning nothing to build on (its output head is noise),
so the build ends with a short, honest language-model pretraining on the bundled generic corpus
(loretta_ds/data/bundled/corpus.txt), never on the classification task's data or labels.

The directory holds config.json, model.safetensors, generation_config.json, tokenizer.json,
tokenizer_config.json and the SentencePiece tokenizer.model, so `AutoModelForCausalLM` and
`AutoTokenizer` load it in a process that never imports loretta_ds.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

TINY_LLAMA_NAME = "tiny-llama"
# Bump the version when anything below changes the built files: old caches are then left alone
# and a fresh directory is built beside them.
TINY_LLAMA_VERSION = "v1"
CACHE_ENV = "LORETTA_DS_CACHE"
MARKER_FILE = "loretta_ds_tiny_llama.json"

SEED = 0
VOCAB_SIZE = 1024
# Shapes of LLaMA-2-7B scaled down: intermediate / hidden = 11008 / 4096 = 2.6875 (so the
# intermediate size carries LLaMA's prime factor 43), head_dim 32, multi-head attention.
MODEL_SHAPE = dict(hidden_size=128, intermediate_size=344, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512)
SPECIAL_IDS = dict(unk=0, bos=1, eos=2, pad=3)
# Pretraining: ~490k tokens (about five passes over the corpus); ~30 s on one CPU core.
PRETRAIN = dict(steps=240, batch_size=32, seq_len=64, lr=3e-3, warmup=20, clip=1.0)

_REQUIRED_FILES = ("config.json", "model.safetensors", "generation_config.json",
                   "tokenizer.json", "tokenizer_config.json", "tokenizer.model", MARKER_FILE)


def cache_root() -> Path:
    """$LORETTA_DS_CACHE if set, else ~/.cache/loretta_ds."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "loretta_ds"


def tiny_llama_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the model lives: <cache_dir or cache_root()>/tiny-llama-v1 (it may not exist yet)."""
    root = Path(cache_dir).expanduser() if cache_dir is not None else cache_root()
    return root / f"{TINY_LLAMA_NAME}-{TINY_LLAMA_VERSION}"


def is_complete(directory: Path) -> bool:
    """True when every file of a finished build is present (the marker is written last)."""
    return all((directory / name).is_file() for name in _REQUIRED_FILES)


def recipe_id(pretrain_steps: int | None = None, seed: int = SEED) -> str:
    """A digest of everything that decides the built files (corpus, shapes, pretraining)."""
    from loretta_ds.data.bundled import corpus_path

    recipe = {"version": TINY_LLAMA_VERSION, "seed": seed, "vocab_size": VOCAB_SIZE,
              "model": MODEL_SHAPE, "special_ids": SPECIAL_IDS, "threads": 1,
              "pretrain": {**PRETRAIN, "steps": PRETRAIN["steps"] if pretrain_steps is None
                           else int(pretrain_steps)},
              "corpus_sha256": hashlib.sha256(corpus_path().read_bytes()).hexdigest()}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def is_current(directory: Path) -> bool:
    """Complete and built by this version's recipe (an older build is rebuilt, not reused)."""
    if not is_complete(directory):
        return False
    try:
        marker = json.loads((directory / MARKER_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return marker.get("recipe") == recipe_id()


def ensure_tiny_llama(cache_dir: str | os.PathLike | None = None) -> Path:
    """Return the tiny-llama model directory, building it first if it is not cached.

    cache_dir is the cache root (default: $LORETTA_DS_CACHE or ~/.cache/loretta_ds); the model
    goes in <cache_dir>/tiny-llama-v1. Safe under concurrent callers (e.g. every rank of a job):
    one process builds in a temporary sibling directory under a file lock and renames it into
    place; the others wait on the lock and then reuse it. If the lock is unavailable (no fcntl,
    some network filesystems), the first rename wins and the losers discard their copy.
    """
    final = tiny_llama_dir(cache_dir)
    if is_current(final):
        return final
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OSError(f"cannot create the model cache {final.parent} ({err}); set {CACHE_ENV} "
                      f"to a writable directory") from err
    with _exclusive_lock(final.parent / f".{final.name}.lock"):
        if is_current(final):  # another process finished while we waited for the lock
            return final
        if final.exists():
            # A partial directory (copied by hand) or one built from another recipe (an older
            # checkout): builds never write into `final` directly, so this is never a live build.
            print(f"[loretta_ds] replacing {final}: incomplete or built by another recipe",
                  file=sys.stderr, flush=True)
            _discard(final)
        _remove_stale_staging(final)
        staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
        try:
            build_tiny_llama(staging)
            _make_shareable(staging)
            try:
                os.rename(staging, final)
            except OSError:
                if not is_current(final):
                    raise
                # Another process (without a working lock) renamed its copy first: same files.
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
    return final


@contextlib.contextmanager
def _exclusive_lock(path: Path):
    try:
        import fcntl
    except ImportError:  # Windows: rely on rename-wins in ensure_tiny_llama
        yield
        return
    with open(path, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _remove_stale_staging(final: Path, older_than_s: float = 3600.0) -> None:
    # Staging dirs of builds that were killed; an hour is far beyond any live build.
    for path in final.parent.glob(f".{final.name}.tmp-*"):
        with contextlib.suppress(OSError):
            if time.time() - path.stat().st_mtime > older_than_s:
                shutil.rmtree(path, ignore_errors=True)


def _make_shareable(directory: Path) -> None:
    # mkdtemp (and some writers) create owner-only entries; a shared cache wants the usual
    # umask-governed modes, as if the files had been written with open().
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(directory, 0o777 & ~umask)
    for path in directory.iterdir():
        os.chmod(path, 0o666 & ~umask)


def _discard(directory: Path) -> None:
    aside = directory.with_name(f".{directory.name}.stale-{os.getpid()}")
    os.rename(directory, aside)
    shutil.rmtree(aside, ignore_errors=True)


# --- building --------------------------------------------------------------------------------------


def corpus_documents(path: Path | None = None) -> list[str]:
    """The bundled corpus as a list of documents (separated by blank lines in the file)."""
    from loretta_ds.data.bundled import CORPUS_SEPARATOR, corpus_path

    text = (path or corpus_path()).read_text(encoding="utf-8")
    return [doc.strip() for doc in text.split(CORPUS_SEPARATOR) if doc.strip()]


def train_sentencepiece(documents: list[str], vocab_size: int = VOCAB_SIZE, pad: bool = True) -> bytes:
    """Train a byte-fallback BPE SentencePiece model with LLaMA's conventions; returns its proto.

    Ids 0..3 are <unk>, <s>, </s>, <pad>; digits are split one per token and whitespace-only
    pieces are allowed, as in the LLaMA-2 tokenizer. The identity normaliser keeps the text
    byte-exact, so the converted HF tokenizer (no normaliser) segments exactly like this model.
    pad=False leaves out <pad>, as the released LLaMA-2 tokenizer does (its vocabulary starts at <unk>, <s>, </s>).
    """
    import sentencepiece as spm

    proto = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(documents), model_writer=proto, vocab_size=vocab_size,
        model_type="bpe", byte_fallback=True, character_coverage=1.0, split_digits=True,
        allow_whitespace_only_pieces=True, remove_extra_whitespaces=False,
        normalization_rule_name="identity", max_sentence_length=1 << 16,
        unk_id=SPECIAL_IDS["unk"], bos_id=SPECIAL_IDS["bos"], eos_id=SPECIAL_IDS["eos"],
        pad_id=SPECIAL_IDS["pad"] if pad else -1, pad_piece="<pad>",
        num_threads=1, minloglevel=2)  # one thread: the merge order must not depend on timing
    return proto.getvalue()


def hf_tokenizer_from_sentencepiece(model_proto: bytes, model_max_length: int, pad_token: str | None = "<pad>"):
    """A transformers LlamaTokenizer (tokenizers backend) equivalent to the SentencePiece model.

    Built from the piece list directly (BPE merges are recovered from the piece ranks), so no
    protobuf package is needed. bos is added to every encoding, eos is not, as for LLaMA-2.
    """
    import sentencepiece as spm
    from transformers import LlamaTokenizer
    from transformers.tokenization_utils_base import generate_merges

    processor = spm.SentencePieceProcessor(model_proto=model_proto)
    vocab = {processor.id_to_piece(i): i for i in range(processor.get_piece_size())}
    specials = {"<unk>", "<s>", "</s>", "<pad>"}
    merges = generate_merges(vocab, skip_tokens=specials)
    return LlamaTokenizer(vocab=vocab, merges=merges, unk_token="<unk>", bos_token="<s>",
                          eos_token="</s>", pad_token=pad_token, add_bos_token=True,
                          add_eos_token=False, legacy=False, add_prefix_space=True,
                          model_max_length=model_max_length)


def _pretrain(model, token_stream, steps: int, batch_size: int, seq_len: int, lr: float,
              warmup: int, clip: float, seed: int) -> float:
    """Next-token training on random windows of the packed corpus; returns the last loss."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    model.train()
    loss_value = float("nan")
    for step in range(steps):
        # Linear warmup then cosine decay to zero: a short run still ends at a settled minimum.
        scale = min(1.0, (step + 1) / warmup) * 0.5 * (1.0 + math.cos(math.pi * step / steps))
        for group in optimizer.param_groups:
            group["lr"] = lr * scale
        starts = torch.randint(0, token_stream.numel() - seq_len, (batch_size,), generator=generator)
        windows = torch.stack([token_stream[s:s + seq_len] for s in starts.tolist()])
        loss = model(input_ids=windows, labels=windows).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        loss_value = loss.item()
    model.eval()
    return loss_value


def build_tiny_llama(out_dir: str | os.PathLike, pretrain_steps: int | None = None,
                     seed: int = SEED) -> Path:
    """Build the model into out_dir (which must exist and be empty); deterministic in seed.

    Most callers want ensure_tiny_llama(); this is the step it runs once. pretrain_steps
    overrides the pretraining length (tests use a handful of steps).
    """
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    out = Path(out_dir)
    started = time.perf_counter()
    steps = PRETRAIN["steps"] if pretrain_steps is None else int(pretrain_steps)
    print(f"[loretta_ds] building {TINY_LLAMA_NAME} (once; about half a minute) in {out.parent}",
          file=sys.stderr, flush=True)

    documents = corpus_documents()
    model_proto = train_sentencepiece(documents)
    tokenizer = hf_tokenizer_from_sentencepiece(model_proto, MODEL_SHAPE["max_position_embeddings"])
    (out / "tokenizer.model").write_bytes(model_proto)
    tokenizer.save_pretrained(out)

    config = LlamaConfig(
        vocab_size=len(tokenizer), **MODEL_SHAPE, hidden_act="silu", rms_norm_eps=1e-5,
        tie_word_embeddings=False, bos_token_id=SPECIAL_IDS["bos"],
        eos_token_id=SPECIAL_IDS["eos"], pad_token_id=SPECIAL_IDS["pad"])
    # fork_rng: building must not move the caller's global RNG (their seeding stays meaningful).
    # One thread: the float reductions, hence the weights, are then the same on any core count,
    # and a busy machine does not stall the build (oversubscribed OpenMP threads spin-wait;
    # measured 32 s with one thread against 400 s with two on 2 shared cores).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
        encoded = tokenizer(documents, add_special_tokens=False)["input_ids"]
        # Documents are packed as <s> doc </s> <s> doc </s> ..., the usual LM pretraining layout.
        stream = torch.tensor([t for ids in encoded for t in
                               (SPECIAL_IDS["bos"], *ids, SPECIAL_IDS["eos"])], dtype=torch.long)
        try:
            final_loss = _pretrain(model, stream, steps, PRETRAIN["batch_size"],
                                   PRETRAIN["seq_len"], PRETRAIN["lr"], PRETRAIN["warmup"],
                                   PRETRAIN["clip"], seed)
        finally:
            torch.set_num_threads(threads)

    model.generation_config = GenerationConfig(
        bos_token_id=SPECIAL_IDS["bos"], eos_token_id=SPECIAL_IDS["eos"],
        pad_token_id=SPECIAL_IDS["pad"], max_new_tokens=64)
    model.save_pretrained(out, safe_serialization=True)
    marker = {
        "name": TINY_LLAMA_NAME, "version": TINY_LLAMA_VERSION, "seed": seed,
        "pretrain_steps": steps, "pretrain_tokens": steps * PRETRAIN["batch_size"] * PRETRAIN["seq_len"],
        "corpus_tokens": int(stream.numel()), "final_train_loss": round(final_loss, 4),
        "recipe": recipe_id(steps, seed),
        "build_seconds": round(time.perf_counter() - started, 1),
    }
    (out / MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n")
    return out


def main(argv: list[str] | None = None) -> None:
    """`python -m loretta_ds.tiny_llama [CACHE_DIR]`: build (if needed) and print the directory."""
    args = sys.argv[1:] if argv is None else argv
    print(ensure_tiny_llama(args[0] if args else None))


if __name__ == "__main__":
    main()
