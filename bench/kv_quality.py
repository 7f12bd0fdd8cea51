#!/usr/bin/env python3
"""What a KV cache configuration costs in quality: long-context perplexity and pass-key retrieval.

Each configuration is a name and the extra flags it adds to every peregrine command (`--configs
"f16=--kv-type f16" "q8_0=--kv-type q8_0" "h2o=--kv-evict h2o --kv-budget 2048"`; a bare flag string
is its own name). The first configuration is the baseline every other row is compared with. The
flags go to the engine unchanged, so any KV option the engine has (--kv-type, --kv-type-k/-v,
--kv-evict with --kv-budget, --sparse-prefill, -b, ...) can be compared without editing this script.

1. Perplexity (--tests ppl) of bench/texts/long_essay.txt (--text), an original 8,350-word essay
   (10,752 SmolLM2 tokens, 10,429 Gemma 3 tokens) whose names, dates and numbers recur, so that a
   long context helps prediction. For each window size C of --windows (default 4096,8192):
   `peregrine perplexity -f TEXT --llama-windows -c C --chunks 1 FLAGS`, i.e. llama-perplexity's
   scoring of the text's first window: tokens [0, C) (BOS in the first slot for models that add BOS)
   evaluated from an empty cache, and only positions C/2 .. C-2 scored (2047 tokens at 4k, 4095 at
   8k). What is scored is therefore identical for every configuration (same tokens, same positions),
   and every scored token sees at least C/2 cached positions: the regime where a compressed or
   evicted cache loses information. PPL@4k and PPL@8k score different token ranges (the second
   halves of the first 4096 and first 8192 tokens), so compare a column down, not across.
   --llama adds llama.cpp's llama-perplexity on the same text and windows (`-c C --chunks 1 -fa on
   -ctk K -ctv V`, the same scored window; the text is repeated in a temporary copy because
   llama-perplexity refuses texts of fewer than 2C tokens, which changes nothing in window 1). Only
   configurations that are plain --kv-type/--kv-type-k/--kv-type-v settings of a type llama.cpp
   has (f32, f16, q8_0, q4_0, ...) get a llama.cpp number; quantized V needs flash attention there,
   so every llama.cpp row runs with -fa on.

2. Pass-key retrieval (--tests passkey): a prompt of about L tokens for each L of --lengths (the
   context size -c of the run; the prompt fills L - --margin tokens) made of an instruction, filler
   sentences written for this benchmark (40 plain, varied sentences that repeat in a per-seed shuffled
   order) and, at depth D% of the filler (--depths, 0 = right after the instruction, 100 = right
   before the question), the needle "The pass key is NNNNN. Remember it. NNNNN is the pass key.";
   then the question (--question) and greedy decoding of 8 tokens (`peregrine run -p PROMPT -n 8
   --temp 0 -c L FLAGS`; prompts too long for one argv string, about 30k tokens and up, go through
   `peregrine serve` instead, as does everything with --via serve). A cell is correct when the
   5-digit key appears in the output. --seeds keys (and filler orders) per (L, D); the prompts are
   the same for every configuration. Prints a table per configuration (length x depth: correct /
   seeds), then overall accuracy and its ratio to the baseline's.

   Prompt format: with the plain question "What is the pass key? The pass key is", SmolLM2-135M
   (f16 KV) found the key only at some depths even at 2k ("... is a small wooden door"); the bare
   continuation "The pass key is" (the default) retrieves it at every depth at 2k and 4k and at 4 of
   5 depths at 8k. The chat template (--chat, question "What is the pass key?") made SmolLM2 worse.
   See bench/README.md for the measured tables.

Models: --model takes a GGUF path or `smollm2` (SmolLM2-135M-Instruct Q4_1, trained context 8192)
or `gemma3` (gemma-3-270m Q4_K_M, trained context 32768), from $PEREGRINE_MODELS or
~/.cache/peregrine/models.

    .venv/bin/python bench/kv_quality.py --configs "f16=--kv-type f16" "f32=--kv-type f32"
    .venv/bin/python bench/kv_quality.py --model gemma3 --tests passkey --lengths 2048,8192 --seeds 2
    .venv/bin/python bench/kv_quality.py --configs "f16=--kv-type f16" "q8_0=--kv-type q8_0" --llama --tests ppl

Time on 2 threads, SmolLM2: perplexity ~25 s at 4k and ~30-100 s at 8k per configuration (more on a
busy machine); pass key ~2-4 s per 2k prompt, ~10 s per 4k and ~30-50 s per 8k, so about 12 minutes
per configuration with the defaults (3 lengths x 5 depths x 3 seeds = 45 prompts); 31 min each
measured with other work loading the machine 3-5x over.
Standard library only, plus bench/serve_load.py's helpers (openai, numpy: the repo's .venv) for
--via serve; started with another Python the script re-runs itself with .venv/bin/python.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
VENV_PYTHON = REPO_ROOT / ".venv" / "bin" / "python"
if VENV_PYTHON.is_file() and Path(sys.prefix).resolve() != (REPO_ROOT / ".venv").resolve() \
        and __name__ == "__main__" and not os.environ.get("PEREGRINE_KV_BENCH_REEXEC"):
    os.environ["PEREGRINE_KV_BENCH_REEXEC"] = "1"  # the serve path needs serve_load.py's openai/numpy
    os.execv(str(VENV_PYTHON), [str(VENV_PYTHON), __file__, *sys.argv[1:]])

sys.path.insert(0, str(HERE))
from compare import cpu_isa, cpu_name, footnote_mark, git_describe  # noqa: E402
from llama_cpp_build import CACHE, LLAMA_CPP_PYTHON_VERSION, Failure, build_target, log  # noqa: E402

MODELS = Path(os.environ.get("PEREGRINE_MODELS", CACHE / "models"))
MODEL_ALIASES = {"smollm2": "SmolLM2-135M-Instruct.Q4_1.gguf", "gemma3": "gemma-3-270m-q4_k_m.gguf"}
DEFAULT_TEXT = HERE / "texts" / "long_essay.txt"
ARG_MAX_CHARS = 120_000  # one argv string may hold 128 KiB on Linux (MAX_ARG_STRLEN)
# KV element types llama.cpp's -ctk/-ctv take (ggml type names): llama-perplexity and llama-server
# (common/arg.cpp) take f32 too, llama-bench (its own parser) does not.
LLAMA_KV_TYPES = {"f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "iq4_nl"}
LLAMA_BENCH_KV_TYPES = LLAMA_KV_TYPES - {"f32"}


# ---------------------------------------------------------------------------------------------
# Configurations and models (shared with kv_speed.py)

@dataclass(frozen=True)
class Config:
    name: str
    flags: tuple[str, ...]  # extra peregrine flags, as separate argv words

    @property
    def shown(self) -> str:
        return shlex.join(self.flags) or "(none)"

    def llama_kv(self, types: set[str] = LLAMA_KV_TYPES) -> tuple[list[str] | None, str]:
        """(llama.cpp flags for the same KV cache, or None, and why not). Only --kv-type,
        --kv-type-k and --kv-type-v of a type llama.cpp has translate; anything else (eviction,
        sparse prefill, KIVI, batch sizes) has no llama.cpp equivalent here."""
        k = v = "f16"
        words = list(self.flags)
        i = 0
        while i < len(words):
            w = words[i]
            name, eq, val = w.partition("=")
            if name not in ("--kv-type", "--kv-type-k", "--kv-type-v"):
                return None, f"no llama.cpp equivalent for {w}"
            if not eq:
                if i + 1 >= len(words):
                    return None, f"{w} without a value"
                i += 1
                val = words[i]
            if val not in types:
                return None, f"no KV type {val} in this llama.cpp tool"
            if name in ("--kv-type", "--kv-type-k"):
                k = val
            if name in ("--kv-type", "--kv-type-v"):
                v = val
            i += 1
        return ["-ctk", k, "-ctv", v, "-fa", "on"], ""


def parse_configs(items: list[str]) -> list[Config]:
    """'NAME=FLAGS' or 'FLAGS' (named after themselves) -> Configs; names must be distinct."""
    out: list[Config] = []
    for item in items:
        name, eq, flags = item.partition("=")
        if not eq or name.strip().startswith("-") or " " in name.strip():
            name, flags = item.strip(), item  # a flag string with '=' inside (--kv-type=q8_0)
        try:
            words = tuple(shlex.split(flags))
        except ValueError as e:
            raise Failure(f"--configs {item!r}: {e}") from None
        name = name.strip() or "(none)"
        if any(c.name == name for c in out):
            raise Failure(f"--configs: two configurations named {name!r}")
        out.append(Config(name, words))
    if not out:
        raise Failure("--configs: at least one configuration")
    return out


def resolve_model(spec: str) -> Path:
    p = Path(spec).expanduser()
    if spec in MODEL_ALIASES:
        p = MODELS / MODEL_ALIASES[spec]
    if not p.is_file():
        raise Failure(f"model {p} not found (aliases: {', '.join(f'{k} = {v}' for k, v in MODEL_ALIASES.items())})")
    return p


def private_peregrine(explicit: Path | None, tmp: Path) -> tuple[Path, Path]:
    """(the binary the user named, a copy in TMP): others may rebuild build/bin/peregrine meanwhile."""
    src = (explicit or Path(os.environ.get("PEREGRINE_BIN", REPO_ROOT / "build" / "bin" / "peregrine"))).expanduser()
    if not os.access(src, os.X_OK):
        raise Failure(f"{src} not found; build it (scripts/build.sh peregrine), pass --peregrine or set PEREGRINE_BIN")
    dst = tmp / "peregrine"
    shutil.copy2(src, dst)
    return src, dst


class CommandFailed(Exception):
    """A command that died, timed out or printed nothing usable; str() is one line."""


def run_command(cmd: list[str], timeout: float, stdin: str | None = None) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=stdin)
    except subprocess.TimeoutExpired:
        raise CommandFailed(f"timed out after {timeout:.0f} s") from None
    if proc.returncode != 0:
        what = f"signal {-proc.returncode}" if proc.returncode < 0 else f"exit {proc.returncode}"
        lines = [ln for ln in (proc.stderr.strip().splitlines() or proc.stdout.strip().splitlines()) if ln.strip()]
        raise CommandFailed(f"{what}: {(lines or ['(no output)'])[-1].strip()[:300]}")
    return proc


def shown_cmd(cmd: list[str], repl: dict[str, str]) -> str:
    text = shlex.join(cmd)
    for a, b in repl.items():
        text = text.replace(a, b)
    return text.replace(str(Path.home()) + "/", "~/")


def pct_delta(x: float | None, base: float | None) -> str:
    if x is None or not base:
        return "—"
    return f"{100 * (x / base - 1):+.2f}%"


# ---------------------------------------------------------------------------------------------
# Perplexity

PPL_LINE = re.compile(r"PPL = ([\d.]+)(?: \+/- ([\d.]+))?")


def last_ppl(text: str) -> tuple[float, float | None]:
    found = PPL_LINE.findall(text)
    if not found:
        raise CommandFailed("no 'PPL = ' line")
    value, err = found[-1]
    return float(value), (float(err) if err else None)


def text_tokens(peregrine: Path, model: Path, texts: list[str], timeout: float) -> list[int]:
    """Token counts of TEXTS by the engine's own tokenizer (`peregrine tokenize --jsonl`, no BOS)."""
    proc = run_command([str(peregrine), "tokenize", "-m", str(model), "--jsonl", "--no-special"], timeout,
                       stdin="".join(json.dumps(t) + "\n" for t in texts))
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    if len(lines) != len(texts):
        raise CommandFailed(f"peregrine tokenize --jsonl gave {len(lines)} lines for {len(texts)} texts")
    return [len(json.loads(ln)) for ln in lines]


@dataclass
class PplCell:
    value: float | None = None
    err: float | None = None  # the "+/-" of the estimate (standard error of the mean NLL x PPL)
    scored: int | None = None
    seconds: float | None = None
    error: str | None = None
    skipped: bool = False  # not measurable (no llama.cpp equivalent): a footnote, not an error


def run_ppl(args, peregrine: Path, model: Path, cfg: Config, window: int, commands: list[str]) -> PplCell:
    cmd = [str(peregrine), "perplexity", "-m", str(model), "-f", str(args.text), "--llama-windows",
           "-c", str(window), "--chunks", "1", "-t", str(args.threads), *cfg.flags]
    commands.append(shlex.join(cmd))
    log(f"[{cfg.name}] ppl@{window}: $ {shlex.join(cmd)}")
    cell = PplCell()
    t0 = time.monotonic()
    try:
        proc = run_command(cmd, args.timeout)
        cell.value, _ = last_ppl(proc.stdout)
        m = re.search(r"estimate: PPL = [\d.]+ \+/- ([\d.]+) over (\d+) tokens", proc.stderr)
        if m:
            cell.err, cell.scored = float(m[1]), int(m[2])
    except CommandFailed as e:
        cell.error = f"peregrine perplexity -c {window} ({cfg.name}): {e}"
        log(f"  error: {cell.error}")
    cell.seconds = time.monotonic() - t0
    if cell.value is not None:
        log(f"  PPL {cell.value:.4f} ± {cell.err or 0:.4f} over {cell.scored} tokens in {cell.seconds:.0f} s")
    return cell


def padded_text(text: Path, n_tokens: int, window: int, tmp: Path) -> Path:
    """TEXT repeated until it has at least 2 x WINDOW tokens (llama-perplexity's minimum); window 1,
    the only one scored with --chunks 1, is the start of the file either way."""
    copies = max(1, math.ceil((2 * window + 64) / max(n_tokens, 1)))
    if copies == 1:
        return text
    out = tmp / f"{text.stem}.x{copies}.txt"
    if not out.is_file():
        body = text.read_text()
        out.write_text("\n\n".join([body.rstrip("\n")] * copies) + "\n")
    return out


def run_llama_ppl(args, llama_ppl: Path, model: Path, cfg: Config, window: int, padded: Path,
                  commands: list[str]) -> PplCell:
    flags, why = cfg.llama_kv()
    if flags is None:
        return PplCell(error=f"{cfg.name}: not run on llama.cpp: {why}", skipped=True)
    cmd = [str(llama_ppl), "-m", str(model), "-f", str(padded), "-c", str(window), "--chunks", "1",
           "-t", str(args.threads), *flags]
    commands.append(shlex.join(cmd))
    log(f"[{cfg.name}] llama ppl@{window}: $ {shlex.join(cmd)}")
    cell = PplCell()
    t0 = time.monotonic()
    try:
        proc = run_command(cmd, args.timeout)
        cell.value, cell.err = last_ppl(proc.stdout + "\n" + proc.stderr)
        cell.scored = window - 1 - window // 2
    except CommandFailed as e:
        cell.error = f"llama-perplexity -c {window} ({cfg.name}): {e}"
        log(f"  error: {cell.error}")
    cell.seconds = time.monotonic() - t0
    if cell.value is not None:
        log(f"  llama.cpp PPL {cell.value:.4f} in {cell.seconds:.0f} s")
    return cell


# ---------------------------------------------------------------------------------------------
# Pass-key retrieval

INTRO = ("There is an important piece of information hidden inside a lot of irrelevant text. "
         "Find it and memorize it. I will quiz you about it at the end.\n\n")
NEEDLE = "The pass key is {key}. Remember it. {key} is the pass key."
PLAIN_QUESTION = "\n\nThe pass key is"
CHAT_QUESTION = "\n\nWhat is the pass key?"
# Written for this benchmark: plain, varied, no digits (nothing to confuse with the key).
FILLER = [
    "The grass is green and the sky is blue.", "A small boat drifted slowly across the quiet lake.",
    "The baker opened his shop early to sell fresh bread.", "Children played in the park until the lamps came on.",
    "The river bends twice before it reaches the old mill.", "Rain fell softly on the tin roof all afternoon.",
    "A gray cat slept in a patch of warm sunlight.", "The train to the coast left a few minutes late.",
    "Her garden was full of roses, beans and tall sunflowers.", "The library was quiet except for the ticking clock.",
    "Wind moved through the pine trees on the hill.", "A farmer led his cows along the muddy lane.",
    "The market square smelled of apples and wood smoke.", "Snow covered the mountain peaks in early winter.",
    "An old bridge of stone crossed the narrow stream.", "The teacher wrote a long poem on the blackboard.",
    "Gulls circled above the harbour looking for fish.", "The tea was hot, sweet and slightly bitter.",
    "A carpenter sanded the edge of a wooden table.", "The hikers rested under a tall oak near the path.",
    "Evening light turned the windows of the town golden.", "A dog barked once and then fell silent.",
    "The museum displayed maps drawn by early explorers.", "Fresh paint made the small kitchen look bright.",
    "The bus stopped at the corner beside the bakery.", "Leaves gathered in the gutters after the storm.",
    "A violinist practised the same slow tune every evening.", "The fisherman mended his nets on the quay.",
    "Clouds drifted east over the fields of barley.", "The old clock in the hall needed winding every week.",
    "Bees moved from flower to flower in the warm air.", "The shop on the corner sold buttons, thread and ribbon.",
    "A narrow path wound up through the heather to the ridge.", "The cook stirred a large pot of vegetable soup.",
    "Frost made patterns on the glass of the greenhouse.", "Two friends walked along the beach at low tide.",
    "The lamp on the desk threw a circle of yellow light.", "A heron stood perfectly still at the edge of the pond.",
    "The village held a fair at the end of every summer.", "Someone had left a blue umbrella by the door.",
]


@dataclass
class Probe:
    """One prompt: a length, a depth and a seed, with its key; the same for every configuration."""
    length: int  # the context size -c; the prompt is about length - margin tokens
    depth: int  # percent of the filler before the needle
    seed: int
    key: int
    sentences: list[str]  # the filler, in order
    prompt: str = ""
    tokens: int = 0  # by the engine's tokenizer, without the chat template or BOS

    def compose(self, question: str) -> None:
        at = round(self.depth / 100 * len(self.sentences))
        body = " ".join(self.sentences[:at] + [NEEDLE.format(key=self.key)] + self.sentences[at:])
        self.prompt = INTRO + body + question


def build_probes(args, peregrine: Path, model: Path, question: str) -> list[Probe]:
    """Every (length, depth, seed) prompt, each filled to length - margin tokens (checked with the
    engine's tokenizer and trimmed by whole sentences when the estimate overshoots)."""
    fixed = [INTRO, NEEDLE.format(key=12345), question]
    counts = text_tokens(peregrine, model, fixed + [" " + s for s in FILLER], args.timeout)
    base = sum(counts[:3]) + 2
    per_sentence = dict(zip(FILLER, counts[3:]))
    probes: list[Probe] = []
    for length in args.lengths:
        target = length - args.margin
        for depth in args.depths:
            for seed in range(args.seeds):
                rng = random.Random(f"passkey-{length}-{depth}-{seed}")
                key = rng.randint(10000, 99999)
                order = FILLER[:]
                sentences: list[str] = []
                total = base
                while True:
                    if len(sentences) % len(order) == 0:
                        rng.shuffle(order)  # a new order each pass over the list
                    s = order[len(sentences) % len(order)]
                    if total + per_sentence[s] > target:
                        break
                    sentences.append(s)
                    total += per_sentence[s]
                probes.append(Probe(length, depth, seed, key, sentences))
                probes[-1].compose(question)
    # exact counts; trim the (rare) prompts the per-sentence estimate put over the target
    for _ in range(5):
        counts = text_tokens(peregrine, model, [p.prompt for p in probes], args.timeout)
        over = False
        for p, n in zip(probes, counts):
            p.tokens = n
            excess = n - (p.length - args.margin)
            if excess > 0:
                over = True
                drop = max(1, math.ceil(excess / min(per_sentence.values())))
                p.sentences = p.sentences[:-drop]
                p.compose(question)
        if not over:
            return probes
    raise Failure("could not fit the pass-key prompts to their lengths (tokenizer counts keep overshooting)")


@dataclass
class Answer:
    probe: Probe
    output: str | None = None
    prompt_tokens: int | None = None  # as the engine counted them (chat template and BOS included)
    error: str | None = None

    @property
    def correct(self) -> bool:
        return self.output is not None and str(self.probe.key) in self.output


class ServeRunner:
    """`peregrine serve` for one configuration and context size, one request at a time (no prefix
    cache, so each prompt is computed from scratch as `run` does)."""

    def __init__(self, args, peregrine: Path, model: Path, cfg: Config, ctx: int, logs: Path, commands: list[str]):
        from serve_load import Server, ServerDied, free_port, tail  # openai and numpy: the repo's .venv
        self.args = args
        port = free_port()
        cmd = [str(peregrine), "serve", "-m", str(model), "--host", "127.0.0.1", "--port", str(port),
               "--parallel", "1", "-t", str(args.threads), "-c", str(ctx), "--no-prefix-cache", "-q", *cfg.flags]
        commands.append(shlex.join(cmd).replace(f"--port {port}", "--port PORT"))
        log_path = logs / f"serve-{cfg.name}-{ctx}.log".replace("/", "_")
        self.server = Server("peregrine", cmd, port, log_path)
        try:
            self.server.start(args.start_timeout)
        except ServerDied as e:
            raise CommandFailed(f"{e}: {tail(log_path, 1).strip()[:300]}") from None
        self.model = self.server.model_id(model.name)

    def ask(self, prompt: str) -> tuple[str, int | None]:
        if self.args.chat:
            path, body = "/v1/chat/completions", {"messages": [{"role": "user", "content": prompt}]}
        else:
            path, body = "/v1/completions", {"prompt": prompt}
        body.update({"model": self.model, "max_tokens": self.args.n_predict, "temperature": 0})
        req = urllib.request.Request(self.server.base + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.args.timeout) as r:
                reply = json.loads(r.read())
        except OSError as e:  # URLError, HTTPError, timeouts
            detail = e.read().decode(errors="replace")[:200] if hasattr(e, "read") else ""
            raise CommandFailed(f"POST {path}: {e} {detail}".strip()) from None
        choice = reply["choices"][0]
        text = choice["message"]["content"] if self.args.chat else choice["text"]
        return text or "", (reply.get("usage") or {}).get("prompt_tokens")

    def close(self) -> None:
        self.server.stop()


def run_passkey(args, peregrine: Path, model: Path, cfg: Config, probes: list[Probe], logs: Path,
                commands: list[str]) -> list[Answer]:
    answers: list[Answer] = []
    failed: str | None = None
    servers: dict[int, ServeRunner] = {}
    try:
        for p in probes:
            a = Answer(p)
            answers.append(a)
            if failed:  # the configuration does not work at all (an unknown flag, say): do not repeat it
                a.error = failed
                continue
            via = "serve" if args.via == "serve" or len(p.prompt) > ARG_MAX_CHARS else "run"
            t0 = time.monotonic()
            try:
                if via == "run":
                    cmd = [str(peregrine), "run", "-m", str(model), "-p", p.prompt, "-n", str(args.n_predict),
                           "--temp", "0", "-c", str(p.length), "-t", str(args.threads),
                           *(["--chat"] if args.chat else []), *cfg.flags]
                    if p is probes[0]:
                        commands.append(shlex.join([*cmd[:5], "PROMPT", *cmd[6:]]))
                    proc = run_command(cmd, args.timeout)
                    a.output = proc.stdout
                    m = re.search(r"prompt: (\d+) tokens", proc.stderr)
                    a.prompt_tokens = int(m[1]) if m else None
                else:
                    if p.length not in servers:
                        for s in servers.values():
                            s.close()
                        servers.clear()
                        servers[p.length] = ServeRunner(args, peregrine, model, cfg, p.length, logs, commands)
                    a.output, a.prompt_tokens = servers[p.length].ask(p.prompt)
            except Exception as e:  # noqa: BLE001 - CommandFailed, ServerDied, odd replies: one cell
                a.error = f"{type(e).__name__}: {e}" if not isinstance(e, CommandFailed) else str(e)
                if not answers[:-1] or all(x.error for x in answers[:-1]):
                    failed = f"{cfg.name}: {a.error}"  # the first prompt failed: give up on this config
            log(f"[{cfg.name}] L{p.length} d{p.depth}% seed {p.seed}: key {p.key} -> "
                + (f"{'ok ' if a.correct else 'MISS'} {a.output.strip()[:50]!r} ({a.prompt_tokens} tokens, "
                   f"{time.monotonic() - t0:.1f} s)" if a.output is not None else f"error: {a.error}"))
    finally:
        for s in servers.values():
            s.close()
    return answers


def passkey_table(cfg: Config, answers: list[Answer], args) -> list[str]:
    lines = [f"**{cfg.name}** (`{cfg.shown}`):", "",
             "| length | " + " | ".join(f"{d}%" for d in args.depths) + " | all |",
             "|---:|" + "---:|" * (len(args.depths) + 1)]
    for length in args.lengths:
        row = [a for a in answers if a.probe.length == length]
        cells = []
        for d in args.depths:
            cell = [a for a in row if a.probe.depth == d]
            errs = sum(1 for a in cell if a.error)
            cells.append(f"{sum(a.correct for a in cell)}/{len(cell)}" + (f" ({errs} err)" if errs else ""))
        toks = sorted(a.prompt_tokens or a.probe.tokens for a in row)
        lines.append(f"| {length} ({toks[0]}–{toks[-1]} tok) | " + " | ".join(cells)
                     + f" | {sum(a.correct for a in row)}/{len(row)} |")
    return lines


# ---------------------------------------------------------------------------------------------

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="+", default=["f16=--kv-type f16"], metavar="NAME=FLAGS",
                    help="KV configurations, each NAME=FLAGS (extra peregrine flags) or FLAGS; the first is the "
                         "baseline (default: f16=--kv-type f16)")
    ap.add_argument("-m", "--model", default="smollm2",
                    help=f"GGUF path or {' / '.join(MODEL_ALIASES)} (default: smollm2)")
    ap.add_argument("--tests", default="ppl,passkey", help="ppl, passkey or both (default)")
    ap.add_argument("-t", "--threads", type=int, default=2, help="threads of every command (default: 2)")
    ap.add_argument("--text", type=Path, default=DEFAULT_TEXT, help="perplexity text (default: texts/long_essay.txt)")
    ap.add_argument("--windows", default="4096,8192", help="perplexity windows -c (default: 4096,8192)")
    ap.add_argument("--llama", action="store_true", help="also llama-perplexity with -ctk/-ctv -fa on")
    ap.add_argument("--lengths", default="2048,4096,8192", help="pass-key context sizes (default: 2048,4096,8192)")
    ap.add_argument("--depths", default="0,25,50,75,100", help="needle depths in %% (default: 0,25,50,75,100)")
    ap.add_argument("--seeds", type=int, default=3, help="keys per (length, depth) (default: 3)")
    ap.add_argument("--margin", type=int, default=96,
                    help="tokens of each context left for the chat template and the answer (default: 96)")
    ap.add_argument("--chat", action="store_true", help="wrap pass-key prompts in the model's chat template")
    ap.add_argument("--question", help=f"text after the filler (default: {PLAIN_QUESTION!r}; --chat: {CHAT_QUESTION!r})")
    ap.add_argument("-n", "--n-predict", type=int,
                    help="tokens generated per pass-key prompt (default: 8; --chat: 32, the answer is a sentence and "
                         "Gemma spells numbers one digit per token)")
    ap.add_argument("--via", choices=("run", "serve"), default="run",
                    help="pass-key prompts through `peregrine run` (default; serve for prompts over 120k chars) "
                         "or all through `peregrine serve`")
    ap.add_argument("--peregrine", type=Path, help="peregrine binary (default: $PEREGRINE_BIN or build/bin/peregrine)")
    ap.add_argument("--timeout", type=float, default=1200, help="seconds for one command (default: 1200)")
    ap.add_argument("--start-timeout", type=float, default=120, help="seconds for peregrine serve to start")
    ap.add_argument("-j", "--jobs", type=int, default=2, help="parallel jobs if llama-perplexity must be built")
    ap.add_argument("--out", type=Path, help="also write the markdown here")
    ap.add_argument("--json-out", type=Path, help="also write every number, output and command as JSON")
    args = ap.parse_args()

    started = time.monotonic()
    commands: list[str] = []
    tmp = Path(tempfile.mkdtemp(prefix="peregrine-kv-quality-"))
    try:
        configs = parse_configs(args.configs)
        model = resolve_model(args.model)
        tests = {t.strip() for t in args.tests.split(",") if t.strip()}
        if not tests or tests - {"ppl", "passkey"}:
            raise Failure("--tests: ppl, passkey or both")
        try:
            args.windows = [int(x) for x in args.windows.split(",") if x.strip()]
            args.lengths = [int(x) for x in args.lengths.split(",") if x.strip()]
            args.depths = [int(x) for x in args.depths.split(",") if x.strip()]
        except ValueError:
            raise Failure("--windows, --lengths and --depths are comma lists of integers") from None
        if any(d < 0 or d > 100 for d in args.depths) or args.seeds < 1 or args.threads < 1:
            raise Failure("depths are 0..100, --seeds and -t at least 1")
        if any(length - args.margin < 200 for length in args.lengths):
            raise Failure(f"every pass-key length must exceed --margin ({args.margin}) by 200 tokens at least")
        question = args.question if args.question is not None else (CHAT_QUESTION if args.chat else PLAIN_QUESTION)
        question = question.replace("\\n", "\n")
        if args.n_predict is None:
            args.n_predict = 32 if args.chat else 8
        src, peregrine = private_peregrine(args.peregrine, tmp)
        checkout = git_describe()  # when the binary was copied: others may commit meanwhile
        llama_ppl, llama_commit = None, "?"
        if args.llama and "ppl" in tests:
            llama_ppl, llama_commit = build_target("llama-perplexity", args.jobs, no_amx=True)
        n_text = text_tokens(peregrine, model, [args.text.read_text()], args.timeout)[0] if "ppl" in tests else 0
        for w in args.windows if "ppl" in tests else []:
            if w > n_text:
                raise Failure(f"{args.text} has {n_text} tokens for {model.name}: less than the window {w}")
        probes = build_probes(args, peregrine, model, question) if "passkey" in tests else []
    except (Failure, CommandFailed) as e:
        print(f"error: {e}", file=sys.stderr)
        shutil.rmtree(tmp, ignore_errors=True)
        return 1

    load_before = os.getloadavg()[0]
    ppl: dict[tuple[str, int], PplCell] = {}
    lppl: dict[tuple[str, int], PplCell] = {}
    answers: dict[str, list[Answer]] = {}
    try:
        for cfg in configs:
            if "ppl" in tests:
                for w in args.windows:
                    ppl[(cfg.name, w)] = run_ppl(args, peregrine, model, cfg, w, commands)
                    if llama_ppl:
                        lppl[(cfg.name, w)] = run_llama_ppl(args, llama_ppl, model, cfg, w,
                                                            padded_text(args.text, n_text, w, tmp), commands)
            if probes:
                answers[cfg.name] = run_passkey(args, peregrine, model, cfg, probes, tmp, commands)
    except KeyboardInterrupt:
        print(f"error: interrupted (server logs, if any, in {tmp})", file=sys.stderr)
        return 130
    load_after = os.getloadavg()[0]

    # ---- the report
    notes: list[str] = []
    errors: list[str] = []
    base = configs[0]
    out = [f"**CPU:** {cpu_name()} ({os.cpu_count()} cores" + (f"; {cpu_isa()})" if cpu_isa() else ")")
           + f" · **model:** {model.name} · **threads:** {args.threads} · **peregrine:** {checkout} (at the start)"
           + (f" · **llama.cpp:** {llama_commit} (llama-cpp-python {LLAMA_CPP_PYTHON_VERSION}, no-AMX build)"
              if llama_ppl else "") + f" · **baseline:** {base.name}", ""]
    if "ppl" in tests:
        head = "| config | flags |"
        rule = "|---|---|"
        for w in args.windows:
            head += f" PPL@{w // 1024}k | Δ% |"
            rule += "---:|---:|"
        if llama_ppl:
            for w in args.windows:
                head += f" llama.cpp PPL@{w // 1024}k | Δ% |"
                rule += "---:|---:|"
        out += [f"**Perplexity** of {args.text.name} ({n_text} tokens), llama-perplexity's first window of each "
                "size, its second half scored:", "", head, rule]
        for cfg in configs:
            cells = []
            for table in ([ppl, lppl] if llama_ppl else [ppl]):
                for w in args.windows:
                    c, b = table.get((cfg.name, w)), table.get((base.name, w))
                    if c is None or c.value is None:
                        why = (c.error if c else None) or "not run"
                        cells += [f"—{footnote_mark(notes, why)}", "—"]
                        if not (c and c.skipped):
                            errors.append(why)
                        continue
                    v = f"{c.value:.4f}" + (f" ± {c.err:.3f}" if c.err else "")
                    cells += [v, "base" if cfg is base else pct_delta(c.value, b.value if b else None)]
            out.append(f"| {cfg.name} | `{cfg.shown}` | " + " | ".join(cells) + " |")
        scored = ", ".join(f"{w}: positions {w // 2}..{w - 2} ({w - 1 - w // 2} tokens)" for w in args.windows)
        out += ["", f"Scored ({scored}) identically for every configuration; ± is the estimate's standard error "
                "(correlated between configurations, so a Δ smaller than it can still be real). Δ% is against "
                f"{base.name} of the same engine.", ""]
    if probes:
        out.append(f"**Pass-key retrieval** (correct / {args.seeds} keys per cell; prompts "
                   + ("in the chat template" if args.chat else "as plain text")
                   + f", question {question.strip()!r}, greedy, {args.n_predict} tokens):")
        out.append("")
        summary = ["| config | flags | correct | accuracy | vs " + base.name + " |", "|---|---|---:|---:|---:|"]
        base_acc = None
        for cfg in configs:
            ans = answers.get(cfg.name, [])
            out += passkey_table(cfg, ans, args) + [""]
            errs = [a.error for a in ans if a.error]
            if errs:
                errors.append(f"pass key, {cfg.name}: {len(errs)} of {len(ans)} prompts failed, first: {errs[0]}")
            acc = sum(a.correct for a in ans) / len(ans) if ans else 0.0
            if cfg is base:
                base_acc = acc
            vs = "base" if cfg is base else (f"{acc / base_acc:.2f}" if base_acc else "—")
            summary.append(f"| {cfg.name} | `{cfg.shown}` | {sum(a.correct for a in ans)}/{len(ans)}"
                           + (f" ({len(errs)} failed)" if errs else "") + f" | {100 * acc:.1f}% | {vs} |")
        out += summary + [""]
        out.append("Rows: context size -c; in parentheses the prompt tokens the engine counted. Columns: needle "
                   "depth in the filler. Every configuration gets the very same prompts.")
        out.append("")
    if notes:
        out += [f"{footnote_mark(notes, n)} {n}" for n in list(notes)] + [""]
    repl = {str(peregrine): "peregrine", str(tmp) + "/": "TMP/", str(MODELS) + "/": "MODELS/",
            str(REPO_ROOT) + "/": ""}
    if llama_ppl:
        repl[str(llama_ppl)] = "llama-perplexity"
    kinds: dict[str, str] = {}
    for c in commands:
        words = c.split()
        kinds.setdefault(Path(words[0]).name + " " + (words[1] if "peregrine" in words[0] else ""), c)
    out.append(f"Commands (the first of each kind, {len(commands)} in all"
               + (f"; every one in {args.json_out}" if args.json_out else "") + "):")
    out += [f"- `{shown_cmd(shlex.split(c), repl)}`" for c in kinds.values()]
    out.append(f"- peregrine = {src} (copied at the start); MODELS = {MODELS}".replace(str(Path.home()) + "/", "~/"))
    out.append(f"- this report: `.venv/bin/python bench/kv_quality.py {shlex.join(sys.argv[1:])}`; "
               f"{(time.monotonic() - started) / 60:.1f} min, 1-minute load average {load_before:.2f} before, "
               f"{load_after:.2f} after")
    markdown = "\n".join(out)
    print(markdown)
    if args.out:
        args.out.write_text(markdown + "\n")
        log(f"wrote {args.out}")
    if args.json_out:
        def cell_json(c: PplCell | None):
            return None if c is None else c.__dict__
        data = {"machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "isa": cpu_isa()},
                "peregrine_git": checkout, "peregrine_bin": str(src), "model": str(model),
                "threads": args.threads, "configs": [{"name": c.name, "flags": list(c.flags)} for c in configs],
                "text": str(args.text), "text_tokens": n_text, "windows": args.windows,
                "ppl": {c.name: {str(w): cell_json(ppl.get((c.name, w))) for w in args.windows} for c in configs},
                "llama_ppl": ({c.name: {str(w): cell_json(lppl.get((c.name, w))) for w in args.windows}
                               for c in configs} if llama_ppl else None),
                "llama_cpp_commit": llama_commit if llama_ppl else None,
                "passkey": {"lengths": args.lengths, "depths": args.depths, "seeds": args.seeds, "chat": args.chat,
                            "question": question, "margin": args.margin,
                            "answers": {name: [{"length": a.probe.length, "depth": a.probe.depth,
                                                "seed": a.probe.seed, "key": a.probe.key, "correct": a.correct,
                                                "output": a.output, "prompt_tokens": a.prompt_tokens,
                                                "error": a.error} for a in ans] for name, ans in answers.items()}},
                "commands": commands, "errors": errors, "footnotes": notes,
                "seconds": time.monotonic() - started, "load_before": load_before, "load_after": load_after}
        args.json_out.write_text(json.dumps(data, indent=1) + "\n")
        log(f"wrote {args.json_out}")
    shutil.rmtree(tmp, ignore_errors=True)
    for e in errors:
        print(f"error: {e}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
