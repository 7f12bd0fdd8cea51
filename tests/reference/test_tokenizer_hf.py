"""The engine's tokenizer against Hugging Face `tokenizers`, built independently from the same GGUF.

One `peregrine tokenize --jsonl` process tokenizes the whole corpus (tokenizer_corpus.py); every
line's ids must equal HF's exactly. Ids are also decoded here with the GPT-2 byte-level table
(written from the GPT-2 definition, not taken from the engine) and must give back the line's
bytes, less the bytes this vocabulary cannot spell (both tokenizers drop those).
"""

from __future__ import annotations

import subprocess

import gguf
import pytest
from gguf_hf_tokenizer import build_tokenizer
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
from tokenizer_cli import compare, run_jsonl
from tokenizer_corpus import GENERATORS, generate

USER_DEFINED = 4


def gpt2_byte_to_char() -> dict[int, str]:
    """GPT-2's bytes_to_unicode: printable Latin-1 bytes stand for themselves, the rest map to 256+n."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


@pytest.fixture(scope="module")
def reader(model_path):
    return gguf.GGUFReader(str(model_path))


@pytest.fixture(scope="module")
def vocab(reader):
    return reader.fields["tokenizer.ggml.tokens"].contents(), reader.fields["tokenizer.ggml.token_type"].contents()


@pytest.fixture(scope="module")
def hf(reader, vocab):
    tok = build_tokenizer(reader)  # control tokens are special there; add user-defined ones too
    tokens, types = vocab
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, ty in zip(tokens, types) if ty == USER_DEFINED])
    return tok


@pytest.fixture(scope="module")
def corpus():
    return generate()


def test_corpus_is_large_and_varied(corpus):
    assert len(corpus) >= 2000
    assert len(set(corpus)) > 1500, "generator produced too many duplicate lines"
    for needle in ["<|im_start|>", "\t", "  ", "\n", "👨‍👩‍👧‍👦", "中", "\u0301", "I'LL", "https://", "\u0085"]:
        assert any(needle in s for s in corpus), f"corpus lacks {needle!r}"
    assert len(GENERATORS) >= 10


def test_ids_match_hf(peregrine_bin, model_path, hf, corpus):
    ours = run_jsonl(peregrine_bin, model_path, corpus)
    theirs = [e.ids for e in hf.encode_batch(corpus, add_special_tokens=False)]
    compare(corpus, ours, theirs, "with special tokens")
    assert sum(map(len, ours)) > 50_000  # the comparison covered real work


def test_ids_match_hf_without_special_parsing(peregrine_bin, model_path, hf, corpus):
    lines = [s for s in corpus if "<" in s]
    assert len(lines) > 200
    ours = run_jsonl(peregrine_bin, model_path, lines, "--no-special")
    hf.encode_special_tokens = True  # HF's switch for "special token text is plain text"
    try:
        theirs = [e.ids for e in hf.encode_batch(lines, add_special_tokens=False)]
    finally:
        hf.encode_special_tokens = False
    compare(lines, ours, theirs, "--no-special")
    assert any(1 not in ids for s, ids in zip(lines, ours) if "<|im_start|>" in s)


def test_decode_round_trip(peregrine_bin, model_path, vocab, corpus):
    tokens, types = vocab
    byte_of = {c: b for b, c in gpt2_byte_to_char().items()}
    spellable = {b for b, c in gpt2_byte_to_char().items() if c in set(tokens)}

    def decode(ids):
        out = bytearray()
        for i in ids:
            if types[i] in (3, USER_DEFINED):  # control / user-defined: literal text
                out += tokens[i].encode()
            else:
                out += bytes(byte_of[c] for c in tokens[i])
        return bytes(out)

    ours = run_jsonl(peregrine_bin, model_path, corpus)
    bad = []
    for s, ids in zip(corpus, ours):
        expect = bytes(b for b in s.encode() if b in spellable)
        if decode(ids) != expect:
            bad.append((s, decode(ids)))
    assert not bad, f"{len(bad)} lines do not round-trip, first: {bad[0]!r}"
    assert len(spellable) < 256  # this vocab lacks some bytes, so the filter above is exercised


# tokenizer.ggml.pre names and the split each stands for, as llama.cpp maps them (src/llama-vocab.cpp
# of the pinned llama-cpp-python 0.3.36): the names it gives the GPT-2 regex alone (pre types GPT2,
# MPT, OLMO, JAIS, TRILLION, GRANITE_DOCLING), "\p{N}" then the GPT-2 regex (STARCODER, REFACT,
# COMMAND_R, SMOLLM, CODESHELL, EXAONE, MINERVA, MELLUM2), Llama 3's regex (LLAMA3, with
# ignore_merges and BOS by default; DBRX and SMAUG without) and Qwen2's (QWEN2, STABLELM2, HUNYUAN,
# SOLAR_OPEN, GROK_2). Left out although their regex is one of these: jina-v1-en, jina-v2-code and
# roberta-bpe (llama.cpp adds a SEP token), jina-v2-de / jina-v2-es (a left-stripping <mask>) --
# encoder models -- and chatglm-bpe / glm4 (llama.cpp drops their BOS id).
GPT2_NAMES = ["gpt-2", "phi-2", "jina-es", "jina-de", "gigachat", "a.x-4.0", "mellum", "modern-bert",
              "exaone4", "mpt", "olmo", "jais", "trillion", "granite-docling"]
DIGITS_NAMES = ["smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b",
                "mellum2"]
LLAMA3_RULES_NAMES = ["llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0",
                      "lfm2", "jina-v5-nano"]
LLAMA3_NAMES = LLAMA3_RULES_NAMES + ["dbrx", "smaug-bpe"]
QWEN2_NAMES = ["qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "megrez", "stablelm2", "hunyuan",
               "solar-open", "grok-2"]
ALL_NAMES = GPT2_NAMES + DIGITS_NAMES + LLAMA3_NAMES + QWEN2_NAMES
# The Split regexes of Llama 3's and Qwen2's tokenizer.json (the model's own, not llama.cpp's
# ASCII-only [sS] rewrite of the contractions).
LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_REGEX = LLAMA3_REGEX.replace(r"\p{N}{1,3}", r"\p{N}")
# Lines aimed at what tells these splits apart: contractions in any case (U+017F folds to "s"),
# digit runs of every length, newline runs after punctuation and between spaces.
EXTRA_LINES = ["'\u017ftop 'S 'LL we'VE I'M IT'D", "1 12 123 1234 12345 1234567 x12y 3.14159",
               "end.\n\n  next!\r\n\tdone?\n \n", "(hello) [a] {b}\n\n\n", "a\u00a0\u00a0b \u3000\n"]


def hf_pre_tokenizer(name):
    """The HF pre-tokenizer the named split is, as the models' tokenizer.json files declare it."""
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if name in GPT2_NAMES:
        return byte_level
    if name in DIGITS_NAMES:
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    regex = LLAMA3_REGEX if name in LLAMA3_NAMES else QWEN2_REGEX
    assert name in LLAMA3_NAMES + QWEN2_NAMES, name
    return pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])


# Tokens no merge of this vocab makes: only a tokenizer that looks a whole piece up first (Llama 3's
# ignore_merges) returns them, for the pieces "qzxv" and " qzxvw" of UNREACHABLE_LINE.
UNREACHABLE = ["qzxv", "\u0120qzxvw"]
UNREACHABLE_LINE = "qzxv qzxvw\nqzxv."


def write_vocab_gguf(path, reader, vocab, pre):
    """A GGUF holding only the model's tokenizer metadata (tokens and types as given), with
    tokenizer.ggml.pre = pre."""
    tokens, types = vocab
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(list(types))
    w.add_token_merges(reader.fields["tokenizer.ggml.merges"].contents())
    w.add_bos_token_id(int(reader.fields["tokenizer.ggml.bos_token_id"].contents()))
    w.add_eos_token_id(2)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_supported_pretokenizer_names_are_llama_cpps(peregrine_bin, reader, vocab, tmp_path):
    """The engine refuses an unknown name with one line listing what it accepts: exactly the names
    above (so a name added there without a check here fails), and not "gpt2", which no converter
    writes and llama.cpp refuses."""
    for bad in ["no-such-pre", "gpt2"]:
        path = write_vocab_gguf(tmp_path / f"{bad}.gguf", reader, vocab, bad)
        r = subprocess.run([str(peregrine_bin), "tokenize", "-m", str(path), "-p", "a"],
                           capture_output=True, text=True, timeout=60)
        lines = r.stderr.strip().splitlines()
        assert r.returncode != 0 and len(lines) == 1, r.stderr
        assert f"unsupported tokenizer pre-tokenizer '{bad}'" in lines[0], lines[0]
        listed = lines[0].split("supported: ", 1)[1].split(", ")
        assert sorted(listed) == sorted(ALL_NAMES), lines[0]


@pytest.mark.parametrize("name", ALL_NAMES)
def test_pretokenizer_names_match_hf(peregrine_bin, model_path, reader, vocab, corpus, tmp_path, name):
    """The model's vocab under each accepted tokenizer.ggml.pre against HF configured for that
    split (and, for Llama 3's names, HF's BPE ignore_merges)."""
    tokens, types = vocab
    tokens, types = tokens + UNREACHABLE, list(types) + [1] * len(UNREACHABLE)
    merges = reader.fields["tokenizer.ggml.merges"].contents()
    path = write_vocab_gguf(tmp_path / "tokenizer.gguf", reader, (tokens, types), name)
    hf = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)},
                              merges=[tuple(m.split(" ")) for m in merges],
                              ignore_merges=name in LLAMA3_RULES_NAMES))
    hf.pre_tokenizer = hf_pre_tokenizer(name)
    hf.decoder = decoders.ByteLevel()
    hf.add_special_tokens([AddedToken(t, special=True, normalized=False)
                           for t, ty in zip(tokens, types) if ty in (3, USER_DEFINED)])
    lines = corpus[::3] + EXTRA_LINES + ["a  12345", UNREACHABLE_LINE]
    ours = run_jsonl(peregrine_bin, path, lines)
    theirs = [e.ids for e in hf.encode_batch(lines, add_special_tokens=False)]
    compare(lines, ours, theirs, f"pre={name}")
    n = len(tokens)
    assert (ours[-1].count(n - 2), ours[-1].count(n - 1)) == ((2, 1) if name in LLAMA3_RULES_NAMES else (0, 0))
    # The families really differ ("a  12345": GPT-2 "a", " ", " 12345"; digits alone "a", "  ",
    # "1", ..., "5"; Llama 3 "a", " ", " ", "123", "45"; Qwen2 "a", " ", " ", "1", ..., "5"), so
    # each tested something the others did not.
    family = next(i for i, f in enumerate([GPT2_NAMES, DIGITS_NAMES, LLAMA3_NAMES, QWEN2_NAMES]) if name in f)
    splits = [["a", " ", " 12345"], ["a", "  ", *"12345"], ["a", " ", " ", "123", "45"], ["a", " ", " ", *"12345"]]
    assert len({tuple(x) for x in splits}) == 4
    pieces = [p for p, _ in hf.pre_tokenizer.pre_tokenize_str("a  12345")]
    assert pieces == [p.replace(" ", "\u0120") for p in splits[family]]
