"""The engine's SentencePiece-style tokenizer (Gemma 3's GGUF) against the `sentencepiece` library.

The oracle is a real SentencePiece BPE model built from the GGUF's vocabulary (gguf_spm_model.py):
same pieces, scores and types, the normalizer these models ship. One `peregrine tokenize --jsonl`
process tokenizes the whole corpus (tokenizer_corpus.py plus Gemma-specific lines made here);
every line's ids must equal SentencePiece's, with and without special-token parsing, and the ids,
decoded here from the GGUF vocabulary, must give back the line's bytes.

Two classes of input are handled explicitly, for reasons of definition (not of agreement):
  - "<unk>" written in the text with special parsing on. The GGUF marks it CONTROL (Gemma's HF
    config calls it special) and the engine, like llama.cpp, matches control text; SentencePiece
    needs it as its one UNKNOWN piece, which it never matches in text. For those lines the oracle
    is SentencePiece on the text around each "<unk>", with the unk id in between.
  - the character "▁" (U+2581) in the text: it is SentencePiece's escaped space, and decodes to
    ' ' in SentencePiece and here alike, so such lines cannot round-trip; their ids still must
    equal SentencePiece's.

Environment: PEREGRINE_GEMMA_PATH (default ~/.cache/peregrine/models/gemma-3-270m-q4_k_m.gguf);
without the file the tests are skipped (`peregrine pull gemma3-270m` puts it there).
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import gguf
import pytest
from gguf_spm_model import SPACE, build_processor, decode_bytes, vocab
from tokenizer_cli import compare, run_jsonl
from tokenizer_corpus import WORDS, generate, prose

GEMMA = Path(os.environ.get("PEREGRINE_GEMMA_PATH",
                            Path.home() / ".cache/peregrine/models/gemma-3-270m-q4_k_m.gguf"))


@pytest.fixture(scope="module")
def gemma_path() -> Path:
    if not GEMMA.is_file():
        pytest.skip(f"Gemma 3 GGUF not found at {GEMMA} "
                    "(run `peregrine pull gemma3-270m`, or set PEREGRINE_GEMMA_PATH)")
    return GEMMA


@pytest.fixture(scope="module")
def reader(gemma_path):
    return gguf.GGUFReader(str(gemma_path))


@pytest.fixture(scope="module")
def gemma_vocab(reader):
    return vocab(reader)


GEMMA_SPECIALS = ["<start_of_turn>", "<end_of_turn>", "<bos>", "<eos>", "<pad>", "<mask>",
                  "[multimodal]", "<start_of_image>", "<end_of_image>", "<unused0>", "<unused6241>",
                  "<table>", "</td>", "<h1>", "<strong>", "<sup>", "<start_of_turn", "end_of_turn>",
                  "<<start_of_turn>>", "<start_of_turn><end_of_turn>", "<unk>", "<0x41>", "<0xZZ>"]
RUNS = [" " * k for k in (1, 2, 3, 5, 8, 31, 32, 40)] + ["\t" * k for k in (1, 2, 7, 31, 33)] + \
       ["\n" * k for k in (1, 2, 3, 31, 35)] + [" \n", "\n ", "\t \t", "  \n\n  "]


def gemma_lines(n: int = 600, seed: int = 3270) -> list[str]:
    """Lines that exercise Gemma's vocabulary: its control and user-defined tokens (chat turns,
    HTML tags), the runs of spaces, tabs and newlines it has user-defined pieces for, "▁"."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        kind = i % 4
        if kind == 0:  # a chat transcript in Gemma's format
            turns = []
            for role in rng.sample(["user", "model", "user", "model"], rng.randint(1, 4)):
                turns.append(f"<start_of_turn>{role}\n{prose(rng)}<end_of_turn>\n")
            out.append(rng.choice(["", "<bos>"]) + "".join(turns) +
                       rng.choice(["", "<start_of_turn>model\n"]))
        elif kind == 1:  # specials mixed into words
            parts = [rng.choice(GEMMA_SPECIALS + WORDS + RUNS) for _ in range(rng.randint(2, 10))]
            out.append(rng.choice(["", " "]).join(parts))
        elif kind == 2:  # whitespace runs between words, indentation
            parts = []
            for _ in range(rng.randint(2, 12)):
                parts += [rng.choice(WORDS), rng.choice(RUNS)]
            out.append("".join(parts[:-1] if rng.random() < 0.5 else parts))
        else:  # the escaped-space character itself
            ws = [rng.choice(WORDS) for _ in range(rng.randint(1, 6))]
            out.append(rng.choice([SPACE, " " + SPACE, SPACE * 2, SPACE + " "]).join(ws))
    out += ["<unk>", "a<unk>b", " <unk> ", SPACE, SPACE * 3, " " * 100, "\t" * 100, "\n" * 100,
            "<start_of_turn>" * 20, "x" * 5000, "ab " * 2000]
    return out


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return generate() + gemma_lines()


def sp_with_unk_matched(sp, line: str, unk: int) -> list[int]:
    """SentencePiece's ids for a line where "<unk>" is a control token matched in the text."""
    parts = line.split("<unk>")
    ids = sp.encode(parts[0])
    for p in parts[1:]:
        ids += [unk] + sp.encode(p)  # Gemma has no dummy prefix, so parts encode independently
    return ids


def test_vocab_is_gemmas(reader, gemma_vocab):
    tokens, scores, types = gemma_vocab
    assert len(tokens) == 262144
    assert reader.fields["tokenizer.ggml.add_space_prefix"].contents() is False
    assert tokens[105] == "<start_of_turn>" and types[105] == 3
    assert tokens[138] == "  " and types[138] == 4  # a run of spaces, written with ' ' by llama.cpp
    assert sum(t == 6 for t in types) == 256


def test_corpus_is_large_and_varied(corpus):
    assert len(corpus) >= 2000
    assert len(set(corpus)) > 2000
    for needle in ["<start_of_turn>", "<end_of_turn>", "<table>", "  ", "\t\t", "\n\n", SPACE,
                   "<unk>", "中", "👨‍👩‍👧‍👦", "\x00", "\U000e0041"]:
        assert any(needle in s for s in corpus), f"corpus lacks {needle!r}"


def test_ids_match_sentencepiece(peregrine_bin, gemma_path, reader, corpus):
    sp = build_processor(reader, control_as_user_defined=True)
    unk = reader.fields["tokenizer.ggml.unknown_token_id"].contents()
    t0 = time.perf_counter()
    ours = run_jsonl(peregrine_bin, gemma_path, corpus)
    elapsed = time.perf_counter() - t0
    theirs = [sp_with_unk_matched(sp, s, unk) if "<unk>" in s else sp.encode(s) for s in corpus]
    compare(corpus, ours, theirs, "with special tokens", "sentencepiece")
    assert sum(map(len, ours)) > 80_000  # the comparison covered real work
    assert sum(1 for ids in ours if 105 in ids) > 100  # <start_of_turn> was matched as one token
    assert sum(1 for ids in ours if any(238 <= i <= 493 for i in ids)) > 50  # byte fallback used
    print(f"\n{len(corpus)} lines, {sum(map(len, ours))} tokens: {elapsed:.2f} s (incl. loading)")


def test_ids_match_sentencepiece_without_special_parsing(peregrine_bin, gemma_path, reader, corpus):
    sp = build_processor(reader, control_as_user_defined=False)
    lines = [s for s in corpus if "<" in s or "[" in s]
    assert len(lines) > 400
    ours = run_jsonl(peregrine_bin, gemma_path, lines, "--no-special")
    compare(lines, ours, sp.encode(lines), "--no-special", "sentencepiece")
    # Control text is plain text now, user-defined tokens (<table>, runs of spaces) still match.
    assert not any(105 in ids for ids in ours)
    assert any(168 in ids for ids in ours)


@pytest.mark.parametrize("flags", [(), ("--no-special",)])
def test_decode_round_trip(peregrine_bin, gemma_path, gemma_vocab, corpus, flags):
    tokens, _, types = gemma_vocab
    ours = run_jsonl(peregrine_bin, gemma_path, corpus, *flags)
    bad = [(s, ids) for s, ids in zip(corpus, ours)
           if SPACE not in s and decode_bytes(tokens, types, ids) != s.encode()]
    assert not bad, f"{len(bad)} lines do not round-trip, first: {bad[0][0]!r} -> {bad[0][1][:20]}"
    # "▁" reads back as a space, in SentencePiece as here.
    with_space = [(s, ids) for s, ids in zip(corpus, ours) if SPACE in s]
    assert len(with_space) > 100
    for s, ids in with_space:
        assert decode_bytes(tokens, types, ids) == s.replace(SPACE, " ").encode()


def test_dummy_prefix_variant(peregrine_bin, reader, gemma_vocab, corpus, tmp_path):
    """The same vocabulary with tokenizer.ggml.add_space_prefix = true (Llama 2's setting):
    SentencePiece's add_dummy_prefix puts "▁" before a non-empty text."""
    tokens, scores, types = gemma_vocab
    path = tmp_path / "spm-prefix.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(list(types))
    for key in ("bos_token_id", "eos_token_id", "unknown_token_id", "padding_token_id"):
        w.add_uint32(f"tokenizer.ggml.{key}", reader.fields[f"tokenizer.ggml.{key}"].contents())
    w.add_add_space_prefix(True)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    sp = build_processor(reader, control_as_user_defined=True, add_dummy_prefix=True)
    lines = [s for s in corpus[::3] if "<unk>" not in s]
    ours = run_jsonl(peregrine_bin, path, lines)
    compare(lines, ours, sp.encode(lines), "add_space_prefix", "sentencepiece")
    assert run_jsonl(peregrine_bin, path, ["", "a"]) == [[], sp.encode("a")]
    for s, ids in zip(lines, ours):
        if s and SPACE not in s:
            assert decode_bytes(tokens, types, ids) == (" " + s).encode()


def test_long_lines_are_fast(peregrine_bin, gemma_path, reader):
    """The merge loop is O(n log n): 1 MB of text in one piece takes well under a second."""
    sp = build_processor(reader, control_as_user_defined=True)
    rng = random.Random(7)
    lines = ["".join(rng.choice("ab ") for _ in range(300_000)), "z" * 1_000_000,
             " ".join(rng.choice(WORDS) for _ in range(150_000))]
    t0 = time.perf_counter()
    ours = run_jsonl(peregrine_bin, gemma_path, lines)
    elapsed = time.perf_counter() - t0
    compare(lines, ours, sp.encode(lines), "long lines", "sentencepiece")
    assert elapsed < 30, f"{elapsed:.1f} s for {sum(map(len, lines))} bytes"
