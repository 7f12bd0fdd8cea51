"""Build a Hugging Face `tokenizers` tokenizer from a GGUF file's gpt2-style BPE vocabulary.

Used by the forward/perplexity tests to get token ids independently of the engine's own
tokenizer. Only what SmolLM2 (tokenizer.ggml.model == "gpt2", pre == "smollm") needs:

  - model: byte-level BPE from tokenizer.ggml.tokens (id = index) and tokenizer.ggml.merges
    ("a b" strings, rank = index);
  - pre-tokenizer: Digits(individual_digits=True) then ByteLevel(add_prefix_space=False,
    use_regex=True) -- the same sequence SmolLM2's tokenizer.json declares;
  - CONTROL tokens (token_type 3) become special added tokens, so "<|im_start|>" in text maps
    to its id instead of being split into bytes;
  - no BOS is added (tokenizer.ggml.add_bos_token is false for this model).
"""

from __future__ import annotations

import gguf
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

_CONTROL = 3  # llama.cpp's LLAMA_TOKEN_TYPE_CONTROL


def build_tokenizer(reader: gguf.GGUFReader) -> Tokenizer:
    model_kind = reader.fields["tokenizer.ggml.model"].contents()
    if model_kind != "gpt2":
        raise ValueError(f"only gpt2-style BPE vocabularies are supported, got {model_kind!r}")
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    types = reader.fields["tokenizer.ggml.token_type"].contents()
    merges = [tuple(m.split(" ", 1)) for m in reader.fields["tokenizer.ggml.merges"].contents()]
    vocab = {tok: i for i, tok in enumerate(tokens)}

    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    specials = [AddedToken(t, special=True, normalized=False) for t, ty in zip(tokens, types) if ty == _CONTROL]
    tok.add_special_tokens(specials)
    return tok


def encode(tok: Tokenizer, text: str) -> list[int]:
    """Token ids of `text`, special tokens recognised, nothing added around it."""
    return tok.encode(text, add_special_tokens=False).ids
