"""A real SentencePiece model (the `sentencepiece` package) built from a GGUF's "llama" vocabulary.

The GGUF holds what SentencePiece's ModelProto holds, written by llama.cpp's converter: every
piece with its score and type (tokenizer.ggml.tokens / scores / token_type use the proto's type
numbers: 1 NORMAL, 2 UNKNOWN, 3 CONTROL, 4 USER_DEFINED, 5 UNUSED, 6 BYTE) and the dummy-prefix
flag (tokenizer.ggml.add_space_prefix). Two things the converter changed are undone here:

  - it writes the "▁" of user-defined pieces as ' ' (Gemma's runs of spaces "▁▁".."▁"*31 are
    stored as "  ".." "*31, so that llama.cpp can match them in raw text); SentencePiece matches
    user-defined pieces in the escaped text, so they get their "▁" back;
  - it marks the unknown piece as CONTROL when the HF config calls it special (Gemma's "<unk>");
    SentencePiece needs exactly one UNKNOWN piece, so tokenizer.ggml.unknown_token_id is that.

The normalizer is the one these models ship: no normalization rules (identity), whitespace
escaped to "▁", extra whitespace kept; the model type is BPE with byte fallback.

control_as_user_defined=True turns every CONTROL piece (but the unknown one) into USER_DEFINED:
SentencePiece then matches "<start_of_turn>" etc. written in the text, which is what the engine
does with parse_special (its default). With False, control text is plain text, as with
--no-special.
"""

from __future__ import annotations

import gguf
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as pb

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
SPACE = "\u2581"


def _field(reader: gguf.GGUFReader, key: str, default=None):
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def vocab(reader: gguf.GGUFReader) -> tuple[list[str], list[float], list[int]]:
    tokens = _field(reader, "tokenizer.ggml.tokens")
    scores = _field(reader, "tokenizer.ggml.scores")
    types = _field(reader, "tokenizer.ggml.token_type")
    assert _field(reader, "tokenizer.ggml.model") == "llama", "not a SentencePiece-style vocab"
    assert len(tokens) == len(scores) == len(types)
    return tokens, scores, types


def build_processor(reader: gguf.GGUFReader, *, control_as_user_defined: bool,
                    add_dummy_prefix: bool | None = None) -> spm.SentencePieceProcessor:
    tokens, scores, types = vocab(reader)
    unk = _field(reader, "tokenizer.ggml.unknown_token_id")
    if add_dummy_prefix is None:
        add_dummy_prefix = bool(_field(reader, "tokenizer.ggml.add_space_prefix", True))

    m = pb.ModelProto()
    for i, (text, score, ty) in enumerate(zip(tokens, scores, types)):
        if i == unk:
            ty = UNKNOWN
        elif ty == CONTROL and control_as_user_defined:
            ty = USER_DEFINED
        if ty == USER_DEFINED and types[i] == USER_DEFINED:
            text = text.replace(" ", SPACE)
        p = m.pieces.add()
        p.piece = text
        p.score = score
        p.type = ty if ty != 0 else NORMAL

    t = m.trainer_spec
    t.model_type = pb.TrainerSpec.BPE
    t.vocab_size = len(tokens)
    t.byte_fallback = True
    t.unk_id = unk
    t.bos_id = _field(reader, "tokenizer.ggml.bos_token_id", -1)
    t.eos_id = _field(reader, "tokenizer.ggml.eos_token_id", -1)
    t.pad_id = _field(reader, "tokenizer.ggml.padding_token_id", -1)
    for field, tid in (("unk_piece", t.unk_id), ("bos_piece", t.bos_id), ("eos_piece", t.eos_id),
                       ("pad_piece", t.pad_id)):
        if tid >= 0:
            setattr(t, field, tokens[tid])

    n = m.normalizer_spec
    n.name = "identity"
    n.precompiled_charsmap = b""
    n.add_dummy_prefix = add_dummy_prefix
    n.remove_extra_whitespaces = False
    n.escape_whitespaces = True

    sp = spm.SentencePieceProcessor()
    sp.LoadFromSerializedProto(m.SerializeToString())
    return sp


def decode_bytes(tokens: list[str], types: list[int], ids: list[int]) -> bytes:
    """Ids back to bytes, written from the format: <0xXX> pieces are one byte, control and unknown
    pieces their literal text, every other piece its text with "▁" read as a space."""
    out = bytearray()
    for i in ids:
        t, ty = tokens[i], types[i]
        if ty == BYTE:
            out.append(int(t[3:5], 16))
        elif ty in (CONTROL, UNKNOWN):
            out += t.encode()
        else:
            out += t.replace(SPACE, " ").encode()
    return bytes(out)
