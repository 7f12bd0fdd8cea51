#!/usr/bin/env python3
"""Speculative decoding: each of Peregrine's --spec modes against plain decoding, beside llama.cpp's.

Single stream, temperature 0, prompts through the chat template. For each prompt set
(bench/spec_prompts/*.jsonl) and each configuration it runs one `peregrine run` per prompt and
reports, as a markdown table: generation tokens/s, the speedup over no speculation with the same
target model, the acceptance rate, tokens per verification step, drafted tokens that were thrown
away, and whether the text is identical to the text without speculation (with greedy decoding it
must be: speculation may only change the speed). llama.cpp's prompt-lookup (`llama-lookup`) and
draft-model (`llama-speculative`) examples run on the same prompts, models and threads, built from
the pinned source of bench/llama_cpp_build.py without AMX. Only the standard library is used. See
bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shlex
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from compare import DEFAULT_MODEL, REPO, cpu_isa, cpu_name, git_describe
from llama_cpp_build import LLAMA_CPP_PYTHON_VERSION, Failure, build_target, log

PROMPTS = Path(__file__).resolve().parent / "spec_prompts"
SETS = ("grounded", "chat", "longform")

# The draft-model configurations want a target clearly more expensive than its draft: the same
# model's F16 copy (bench/make_variants.py) as target, the Q4_1 release as draft.
DEFAULT_DRAFT_TARGET = DEFAULT_MODEL.with_name(DEFAULT_MODEL.name.replace(".Q4_1.", ".F16."))


# ---------------------------------------------------------------------------------------------
# Configurations

@dataclass(frozen=True)
class Config:
    """One way of generating: an engine, which target model (`main` = --model, `big` = --draft-target),
    and the flags that select the speculation; `baseline` names the plain run it is measured against."""
    name: str
    engine: str  # "peregrine" / "llama.cpp"
    target: str  # "main" / "big"
    flags: tuple[str, ...] = ()
    uses_draft: bool = False  # takes -md DRAFT

    @property
    def is_baseline(self) -> bool:
        return self.name in ("none", "llama-none")

    @property
    def baseline(self) -> str:
        return "none" if self.engine == "peregrine" else "llama-none"

    @property
    def key(self) -> tuple[str, str]:
        return self.name, self.target


def make_configs(args) -> list[Config]:
    """Every configuration --configs asks for, plus the plain runs they are compared with."""
    pmin = ("--draft-p-min", str(args.draft_p_min)) if args.draft_p_min is not None else ()
    llama_k = ("--spec-draft-n-max", str(args.llama_draft_max)) if args.llama_draft_max is not None else ()
    layers = ("--draft-layers", str(args.draft_layers)) if args.draft_layers is not None else ()
    fixed = lambda k: ("--draft-policy", "fixed", "--draft-max", str(k))  # noqa: E731
    known = {
        "ngram": [Config("ngram-dynamic", "peregrine", "main", ("--spec", "ngram", "--draft-policy", "dynamic"))]
        + [Config(f"ngram-k{k}", "peregrine", "main", ("--spec", "ngram", *fixed(k))) for k in (2, 4, 8)],
        "draft": [Config("draft-dynamic", "peregrine", "big", ("--spec", "draft", "--draft-policy", "dynamic"), True)]
        + [Config(f"draft-k{k}", "peregrine", "big", ("--spec", "draft", *fixed(k)), True) for k in (2, 4, 8)]
        + [Config("draft-pmin", "peregrine", "big", ("--spec", "draft", "--draft-policy", "pmin", *pmin), True)],
        "layerskip": [Config("layerskip-dynamic", "peregrine", "main",
                             ("--spec", "layerskip", "--draft-policy", "dynamic", *layers))],
        "llama-lookup": [Config("llama-lookup", "llama.cpp", "main", llama_k)],
        "llama-speculative": [Config("llama-speculative", "llama.cpp", "big", llama_k, True)],
    }
    known["llama"] = known["llama-lookup"] + known["llama-speculative"]
    by_name = {c.name: c for group in known.values() for c in group}
    chosen: list[Config] = []
    for word in filter(None, (w.strip() for w in args.configs.split(","))):
        if word in known:
            chosen += known[word]
        elif word in by_name:
            chosen.append(by_name[word])
        elif word != "none":
            raise Failure(f"--configs: unknown configuration '{word}' (groups: {', '.join(known)}; "
                          f"single ones: {', '.join(by_name)})")
    chosen = list(dict.fromkeys(chosen))
    # The plain runs first, one per engine and target that anything is measured against.
    plain = [Config(c.baseline, c.engine, c.target) for c in chosen]
    plain.insert(0, Config("none", "peregrine", "main"))  # always: the engine's own speed
    return list(dict.fromkeys(plain)) + chosen


# ---------------------------------------------------------------------------------------------
# Prompts and the chat template

def load_set(name: str, limit: int | None) -> list[dict]:
    path = PROMPTS / f"{name}.jsonl"
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise Failure(f"{path}: {e.strerror}") from None
    rows = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            rows.append({"id": str(row["id"]), "prompt": str(row["prompt"])})
        except (json.JSONDecodeError, KeyError, TypeError):
            raise Failure(f"{path}:{i}: not a JSON object with 'id' and 'prompt'") from None
    return rows[:limit] if limit else rows


def gguf_string(path: Path, wanted: str) -> str | None:
    """The string value of metadata key WANTED in a GGUF file (None if absent), reading only the header."""
    scalar = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}  # type -> bytes
    with open(path, "rb") as f:
        def read(fmt):
            size = struct.calcsize(fmt)
            data = f.read(size)
            if len(data) != size:
                raise Failure(f"{path}: GGUF header ends early")
            return struct.unpack(fmt, data)

        def read_str() -> bytes:
            (n,) = read("<Q")
            return f.read(n)

        def skip(vtype):
            if vtype in scalar:
                f.seek(scalar[vtype], 1)
            elif vtype == 8:
                read_str()
            elif vtype == 9:
                sub, n = read("<IQ")
                if sub in scalar:
                    f.seek(scalar[sub] * n, 1)
                else:
                    for _ in range(n):
                        skip(sub)
            else:
                raise Failure(f"{path}: unknown GGUF value type {vtype}")

        if f.read(4) != b"GGUF":
            raise Failure(f"{path}: not a GGUF file")
        _version, _n_tensors, n_kv = read("<IQQ")
        for _ in range(n_kv):
            key = read_str().decode("utf-8", "replace")
            (vtype,) = read("<I")
            if key == wanted and vtype == 8:
                return read_str().decode("utf-8", "replace")
            skip(vtype)
    return None


def chatml_renderer(model: Path):
    """A function rendering one user message as `peregrine run --chat` does (ChatML, with the fixed
    system turn that templates like SmolLM2's insert when the conversation has none), for llama.cpp's
    examples, which take the prompt as it is. Peregrine's token count is checked against llama.cpp's."""
    tpl = gguf_string(model, "tokenizer.chat_template")
    if tpl is None or "<|im_start|>" not in tpl:
        raise Failure(f"{model}: llama.cpp's runs need a ChatML chat template (this script renders it itself)")
    system = ""
    open_ = "<|im_start|>system\n"
    a = tpl.find(open_)
    if a >= 0:
        b = tpl.find("<|im_end|>", a)
        body = tpl[a + len(open_):b] if b >= 0 else ""
        if b >= 0 and "{{" not in body and "'" not in body:  # a plain literal, as in chat_template.cpp
            system = body

    def render(user: str) -> str:
        head = f"<|im_start|>system\n{system}<|im_end|>\n" if system else ""
        return f"{head}<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
    return render


# ---------------------------------------------------------------------------------------------
# Running one generation

class RunFailed(Exception):
    """One generation that died, timed out or printed no timing line; str() is the short reason."""


@dataclass
class Result:
    prompt_tokens: int
    gen_tokens: int
    gen_tps: float
    drafted: int = 0
    accepted: int = 0
    steps: int = 0  # target forward passes that produced tokens (verification steps)
    text: str = ""
    others: float | None = None  # share of the machine that other processes used during the run


DISTURBED = 0.10  # others' share of the machine above which a run counts as disturbed


def busy_seconds() -> float | None:
    """CPU seconds all processes have used (steal included), from /proc/stat's first line."""
    try:
        f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = f
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def children_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


PEREGRINE_TIMING = re.compile(r"prompt: (\d+) tokens, [\d.]+ tok/s \| generation: (\d+) tokens, ([\d.]+) tok/s")
PEREGRINE_SPEC = re.compile(r"spec [^:|]+: (\d+) drafted, (\d+) accepted \([\d.]+%\), (\d+) steps")
LLAMA_ENCODED = re.compile(r"encoded\s+(\d+) tokens in")
LLAMA_DECODED = re.compile(r"decoded\s+(\d+) tokens in\s+([\d.]+) seconds, speed:\s+([\d.]+) t/s")
LLAMA_COUNT = lambda name: re.compile(rf"\b{name}\s*=\s*(\d+)")  # noqa: E731


def execute(cmd: list[str], timeout: float) -> tuple[subprocess.CompletedProcess, float | None]:
    """Run CMD; return it and the share of the machine (0..1) that other processes used meanwhile:
    all CPU time on /proc/stat less the run's own (its rusage) over wall time x cores."""
    busy0, own0, t0 = busy_seconds(), children_seconds(), time.monotonic()
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RunFailed(f"timed out after {timeout:.0f} s") from None
    busy1, own1, wall = busy_seconds(), children_seconds(), time.monotonic() - t0
    others = None
    if busy0 is not None and busy1 is not None and wall > 0:
        others = min(max((busy1 - busy0 - (own1 - own0)) / (wall * (os.cpu_count() or 1)), 0.0), 1.0)
    if proc.returncode != 0:
        err = proc.stderr.decode("utf-8", "replace").strip().splitlines() or ["(no output)"]
        what = f"signal {-proc.returncode}" if proc.returncode < 0 else f"exit {proc.returncode}"
        raise RunFailed(f"{what}: {err[-1][:200]}")
    return proc, others


def run_peregrine(cmd: list[str], timeout: float) -> Result:
    proc, others = execute(cmd, timeout)
    lines = proc.stderr.decode("utf-8", "replace").strip().splitlines()
    last = lines[-1] if lines else ""
    m = PEREGRINE_TIMING.search(last)
    if not m:
        raise RunFailed(f"no timing line on stderr (last line: {last[:120]!r})")
    r = Result(int(m[1]), int(m[2]), float(m[3]), text=proc.stdout.decode("utf-8", "replace"), others=others)
    s = PEREGRINE_SPEC.search(last)
    if s:
        r.drafted, r.accepted, r.steps = int(s[1]), int(s[2]), int(s[3])
    elif "--spec" in cmd and cmd[cmd.index("--spec") + 1] != "none":
        raise RunFailed(f"no '| spec ...' part in the timing line ({last[:120]!r})")
    else:
        r.steps = r.gen_tokens  # one forward pass per token
    return r


def run_llama(cmd: list[str], rendered: str, timeout: float) -> Result:
    """llama-lookup / llama-speculative: stdout is "\\n\\n" + the prompt's pieces + the generated pieces
    (end-of-generation token included) + "\\n\\n\\n\\n"; stderr has the counters of the run."""
    proc, others = execute(cmd, timeout)
    err = proc.stderr.decode("utf-8", "replace")
    enc, dec = LLAMA_ENCODED.search(err), LLAMA_DECODED.search(err)
    counts = {k: LLAMA_COUNT(k).search(err) for k in ("n_drafted", "n_accept")}
    if not (enc and dec and all(counts.values())):
        raise RunFailed("no 'encoded'/'decoded'/'n_drafted'/'n_accept' lines on stderr")
    out = proc.stdout.decode("utf-8", "replace")
    out = out[2:] if out.startswith("\n\n") else out
    out = out[len(rendered):] if out.startswith(rendered) else "<prompt not echoed as sent>" + out
    out = out[:-4] if out.endswith("\n\n\n\n") else out
    n, drafted, accepted = int(dec[1]), int(counts["n_drafted"][1]), int(counts["n_accept"][1])
    # Each target pass yields the drafts it accepted plus one token of its own (the first comes from
    # the prompt's pass), so passes = tokens - accepted; llama.cpp does not print them.
    return Result(int(enc[1]), n, float(dec[3]), drafted, accepted, max(n - accepted, 1), out, others)


# ---------------------------------------------------------------------------------------------
# Results

@dataclass
class Cell:
    """One table row: a prompt set and a configuration, with each prompt's runs."""
    set: str
    config: Config
    runs: dict[str, list[Result]] = field(default_factory=dict)  # prompt id -> one Result per round
    error: str | None = None

    def best(self, pid: str) -> Result | None:
        """The round with the median tokens/s (the lower middle one for an even count)."""
        rs = sorted(self.runs.get(pid, []), key=lambda r: r.gen_tps)
        return rs[(len(rs) - 1) // 2] if rs else None


def same_text(a: str, b: str, engine: str) -> bool:
    """Peregrine stops at exactly -n tokens, so texts must be equal. llama.cpp's examples stop at the
    first check after -n is passed, which a speculative step can overshoot by up to its draft: there
    the shorter text must be the start of the longer one."""
    if engine == "peregrine":
        return a == b
    return a.startswith(b) or b.startswith(a)


def summarise(cell: Cell, base: Cell | None) -> dict:
    ids = [pid for pid in cell.runs if cell.best(pid)]
    res = [cell.best(pid) for pid in ids]
    if not res:
        return {}
    out = {"prompts": len(res), "gen_tokens": statistics.mean(r.gen_tokens for r in res),
           "gen_tps": statistics.mean(r.gen_tps for r in res)}
    drafted, accepted = sum(r.drafted for r in res), sum(r.accepted for r in res)
    steps = sum(r.steps for r in res)
    out["accept_rate"] = accepted / drafted if drafted else None
    out["tokens_per_step"] = sum(r.gen_tokens for r in res) / steps if steps else None
    out["wasted"] = statistics.mean(r.drafted - r.accepted for r in res)
    out["drafted"] = statistics.mean(r.drafted for r in res)
    # Rounds of one configuration must agree with each other too (greedy is deterministic).
    out["rounds_differ"] = sum(1 for pid in ids if len({r.text for r in cell.runs[pid]}) > 1)
    shares = [r.others for rs in cell.runs.values() for r in rs if r.others is not None]
    out["disturbed"] = sum(1 for x in shares if x > DISTURBED)
    out["runs"] = sum(len(rs) for rs in cell.runs.values())
    out["others_max"] = max(shares, default=None)
    if base is not None and not cell.config.is_baseline:
        pairs = [(cell.best(pid), base.best(pid)) for pid in ids if base.best(pid)]
        if pairs:
            out["speedup"] = statistics.mean(r.gen_tps / b.gen_tps for r, b in pairs)
            out["same"] = sum(same_text(r.text, b.text, cell.config.engine) for r, b in pairs)
            out["compared"] = len(pairs)
    return out


SUPERSCRIPTS = "¹²³⁴⁵⁶⁷⁸⁹"


def mark(notes: list[str], text: str) -> str:
    if text not in notes:
        notes.append(text)
    i = notes.index(text)
    return SUPERSCRIPTS[i] if i < len(SUPERSCRIPTS) else f"[{i + 1}]"


def report(cells: list[Cell], info: dict) -> tuple[str, list[dict]]:
    notes: list[str] = list(info["notes"])
    machine = f"{cpu_name()} ({os.cpu_count()} cores" + (f"; {cpu_isa()})" if cpu_isa() else ")")
    lines = [f"**CPU:** {machine} · **threads:** {info['threads']} · **-n** {info['n_predict']} · "
             f"**temperature** 0 · **rounds:** {info['rounds']} (median per prompt) · **peregrine** "
             f"{info['peregrine_git']} · **llama.cpp** {info['llama_commit'] or '—'} (no-AMX build)", "",
             "| set | engine | configuration | target / draft | tokens | gen tok/s | speedup | accepted "
             "| tokens/step | wasted / prompt | same output |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    rows = []
    index = {(c.set, c.config.engine, c.config.key): c for c in cells}
    models = info["models"]
    for c in cells:
        cfg = c.config
        base = index.get((c.set, cfg.engine, (cfg.baseline, cfg.target)))
        s = summarise(c, base)
        target = Path(models[cfg.target]).name
        pair = f"{target} / {Path(models['draft']).name}" if cfg.uses_draft else target
        name = cfg.name + (mark(notes, f"{cfg.name}: {c.error}") if c.error else "")
        if not s:
            lines.append(f"| {c.set} | {cfg.engine} | {name} | {pair} | — | — | — | — | — | — | — |")
            rows.append({"set": c.set, "config": cfg.name, "engine": cfg.engine, "error": c.error})
            continue
        spec = not cfg.is_baseline
        same = "—"
        if "same" in s:
            same = f"{s['same']}/{s['compared']}" + ("" if s["same"] == s["compared"] else " ✗")
        if s["rounds_differ"]:
            same += mark(notes, "rounds of this configuration gave different texts for the same prompt")
        acc = f"{100 * s['accept_rate']:.1f}%" if spec and s["accept_rate"] is not None else "—"
        tps_step = f"{s['tokens_per_step']:.2f}" if s["tokens_per_step"] else "—"
        wasted = f"{s['wasted']:.1f}" if spec else "—"
        speedup = f"{s['speedup']:.2f}x" if "speedup" in s else "—" if spec else "1.00x"
        tps = f"{s['gen_tps']:.1f}"
        if s["disturbed"]:
            tps += mark(notes, f"disturbed: other processes took more than {DISTURBED:.0%} of the machine "
                               "during some runs of this row (the JSON has each run's share); rerun on a quiet "
                               "machine before quoting it")
        lines.append(f"| {c.set} | {cfg.engine} | {name} | {pair} | {s['gen_tokens']:.0f} | {tps} | "
                     f"{speedup} | {acc} | {tps_step} | {wasted} | {same} |")
        rows.append({"set": c.set, "config": cfg.name, "engine": cfg.engine, "target": models[cfg.target],
                     "draft": models["draft"] if cfg.uses_draft else None, "error": c.error, **s,
                     "prompts_detail": {pid: [vars(r) for r in rs] for pid, rs in c.runs.items()}})
    lines.append("")
    lines += [f"{mark(notes, n)} {n}" for n in list(notes)]
    if notes:
        lines.append("")
    lines.append("tokens: mean generated tokens per prompt. gen tok/s: mean over prompts of generated tokens / "
                 "generation time (prompt processing excluded). speedup: mean over prompts of tok/s over the "
                 "plain run's (same engine, same target model). accepted: accepted / drafted tokens, summed over "
                 "the set's prompts. tokens/step: generated tokens / target forward passes (llama.cpp: tokens - "
                 "accepted). wasted: drafted - accepted, mean per prompt. same output: prompts whose text equals "
                 "the plain run's (llama.cpp: one a prefix of the other, as its examples stop past -n).")
    lines.append(f"- command: `{info['invocation']}`")
    for cmd in info["commands"]:
        lines.append(f"- `{cmd}`")
    lines.append("- PROMPT: the prompt as it is (peregrine renders the chat template with --chat); RENDERED: "
                 "the same rendered by this script as ChatML, for llama.cpp's examples (which add no template "
                 "and, for this vocabulary, no BOS)")
    for m in dict.fromkeys(info["models"].values()):
        p = Path(m)
        if p.is_file():
            lines.append(f"- {p.name}: {p} ({p.stat().st_size / 2**20:.1f} MiB)")
    return "\n".join(lines), rows


# ---------------------------------------------------------------------------------------------

def ensure_f16_variant(path: Path) -> None:
    """The default draft target is bench/make_variants.py's F16 copy: write it when missing."""
    if path.is_file():
        return
    if path != DEFAULT_DRAFT_TARGET:
        raise Failure(f"--draft-target {path} not found")
    venv_python = REPO / ".venv" / "bin" / "python"
    cmd = [str(venv_python), str(REPO / "bench" / "make_variants.py"), "--types", "F16"]
    if not venv_python.is_file():
        raise Failure(f"{path} not found: write it with `{shlex.join(cmd)}` (needs gguf-py and numpy: "
                      "scripts/venv.sh makes .venv), or pass --draft-target")
    log(f"{path.name} is missing; writing it: {shlex.join(cmd)}")
    if subprocess.call(cmd, stdout=sys.stderr) != 0 or not path.is_file():  # stdout: the table only
        raise Failure(f"bench/make_variants.py could not write {path}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default="ngram,draft,layerskip,llama",
                    help="comma list of groups (ngram, draft, layerskip, llama = llama-lookup + llama-speculative) "
                         "or single configurations (ngram-k4, draft-pmin, ...); the plain runs they are compared "
                         "with are added (default: all)")
    ap.add_argument("--sets", default=",".join(SETS), help=f"prompt sets (default: {','.join(SETS)})")
    ap.add_argument("-m", "--model", type=Path, default=DEFAULT_MODEL,
                    help="target of ngram, layerskip and llama-lookup (default: %(default)s)")
    ap.add_argument("--draft-target", type=Path, default=DEFAULT_DRAFT_TARGET,
                    help="target of draft and llama-speculative (default: %(default)s, written with "
                         "bench/make_variants.py when missing)")
    ap.add_argument("--draft-model", type=Path, default=DEFAULT_MODEL, help="draft model (default: %(default)s)")
    ap.add_argument("-n", "--n-predict", type=int, default=128, help="at most this many tokens (default: 128)")
    ap.add_argument("-t", "--threads", type=int, default=os.cpu_count() or 1, help="threads (default: nproc)")
    ap.add_argument("-c", "--ctx-size", type=int, default=2048, help="context for both engines (default: 2048)")
    ap.add_argument("--max-prompts", type=int, help="only the first N prompts of each set")
    ap.add_argument("--rounds", type=int, default=1, help="runs per prompt and configuration; the median counts "
                    "(default: 1)")
    ap.add_argument("--draft-p-min", type=float, help="--draft-p-min for draft-pmin (default: peregrine's)")
    ap.add_argument("--draft-layers", type=int, help="--draft-layers for layerskip (default: peregrine's, half)")
    ap.add_argument("--llama-draft-max", type=int, help="--spec-draft-n-max for llama.cpp (default: its own, 3)")
    ap.add_argument("--peregrine", type=Path, default=Path(os.environ.get("PEREGRINE_BIN", REPO / "build/bin/peregrine")),
                    help="peregrine binary (default: $PEREGRINE_BIN or build/bin/peregrine)")
    ap.add_argument("-j", "--jobs", type=int, default=2, help="parallel jobs for the llama.cpp build (default: 2)")
    ap.add_argument("--timeout", type=float, default=600, help="seconds before one run counts as dead")
    ap.add_argument("--json", type=Path, metavar="PATH", help="also write every run (texts included) as JSON")
    args = ap.parse_args()

    try:
        for name in ("n_predict", "threads", "rounds", "jobs", "ctx_size"):
            if getattr(args, name) < 1:
                raise Failure(f"--{name.replace('_', '-')} must be at least 1")
        configs = make_configs(args)
        sets = [s.strip() for s in args.sets.split(",") if s.strip()]
        for s in sets:
            if not (PROMPTS / f"{s}.jsonl").is_file():
                raise Failure(f"--sets: no {PROMPTS / s}.jsonl")
        prompts = {s: load_set(s, args.max_prompts) for s in sets}
        models = {"main": args.model.expanduser(), "big": args.draft_target.expanduser(),
                  "draft": args.draft_model.expanduser()}
        if any(c.target == "big" for c in configs):
            ensure_f16_variant(models["big"])
        for role, m in models.items():
            if (role == "main" or any(c.target == role or (role == "draft" and c.uses_draft) for c in configs)) \
                    and not m.is_file():
                raise Failure(f"model {m} not found (build/bin/peregrine pull smollm2-135m fetches the default)")
        if not os.access(args.peregrine, os.X_OK):
            raise Failure(f"{args.peregrine} not found; build it or pass --peregrine")
        notes: list[str] = []
        tools: dict[str, Path] = {}
        commit = ""
        for tool in dict.fromkeys("llama-speculative" if c.name == "llama-speculative" else "llama-lookup"
                                  for c in configs if c.engine == "llama.cpp"):
            # No AMX: on Xeons with AMX this llama.cpp's AMX matmul segfaults (see compare.py).
            tools[tool], commit = build_target(tool, args.jobs, no_amx=True)
        renderers = {role: chatml_renderer(models[role]) for role in ("main", "big")
                     if any(c.engine == "llama.cpp" and c.target == role for c in configs)}
    except Failure as e:
        print(f"error: {e}", file=sys.stderr)
        return 1

    with tempfile.TemporaryDirectory(prefix="peregrine-spec-") as tmp:
        peregrine = Path(tmp) / "peregrine"  # a private copy: others may rebuild build/bin/peregrine
        shutil.copy2(args.peregrine, peregrine)
        help_text = subprocess.run([str(peregrine), "run", "--help"], capture_output=True, text=True).stdout
        if "--spec" not in help_text:
            skipped = [c for c in configs if c.engine == "peregrine" and not c.is_baseline]
            if skipped:
                notes.append(f"{args.peregrine} has no `run --spec` yet: skipped "
                             f"{', '.join(c.name for c in skipped)}")
                configs = [c for c in configs if c not in skipped]

        def command(cfg: Config, prompt: str, rendered: str | None, n: int) -> list[str]:
            model = str(models[cfg.target])
            common = ["-n", str(n), "--temp", "0", "-t", str(args.threads), "-c", str(args.ctx_size)]
            draft = ["-md", str(models["draft"])] if cfg.uses_draft else []
            if cfg.engine == "peregrine":
                return [str(peregrine), "run", "-m", model, "-p", prompt, "--chat", *common, *cfg.flags, *draft]
            tool = "llama-speculative" if cfg.name == "llama-speculative" else "llama-lookup"
            flags = ("--spec-draft-n-max", "0") if cfg.is_baseline else cfg.flags
            return [str(tools[tool]), "-m", model, *draft, "-p", rendered, *common, *flags]

        def one(cfg: Config, prompt: str, n: int) -> Result:
            if cfg.engine == "peregrine":
                return run_peregrine(command(cfg, prompt, None, n), args.timeout)
            rendered = renderers[cfg.target](prompt)
            return run_llama(command(cfg, prompt, rendered, n), rendered, args.timeout)

        # Warm-up (untimed): page the model files in and let every binary start once.
        first = next((p[0]["prompt"] for p in prompts.values() if p), "Hello")
        for cfg in dict.fromkeys(Config(c.baseline, c.engine, c.target) for c in configs):
            try:
                one(cfg, first, 8)
            except RunFailed:
                pass  # the timed run will say why

        cells = [Cell(s, c) for s in sets for c in configs]
        prompt_counts: dict[tuple[str, str, str], set[int]] = {}  # (set, prompt id, target) -> token counts
        load_before = os.getloadavg()[0]
        for s in sets:
            for p in prompts[s]:
                for rnd in range(args.rounds):
                    for cell in (c for c in cells if c.set == s and not c.error):
                        cfg = cell.config
                        try:
                            r = one(cfg, p["prompt"], args.n_predict)
                        except RunFailed as e:
                            cell.error = f"{s}/{p['id']}: {e}"
                            log(f"  {cfg.engine} {cfg.name} on {s}/{p['id']}: {e}; skipping it from now on")
                            continue
                        cell.runs.setdefault(p["id"], []).append(r)
                        prompt_counts.setdefault((s, p["id"], cfg.target), set()).add(r.prompt_tokens)
                        extra = (f", {r.accepted}/{r.drafted} accepted, {r.gen_tokens / r.steps:.2f} tokens/step"
                                 if r.drafted else "")
                        log(f"{s}/{p['id']} round {rnd + 1} {cfg.engine} {cfg.name}: {r.gen_tokens} tokens, "
                            f"{r.gen_tps:.1f} tok/s{extra}")
        load_after = os.getloadavg()[0]

    bad = sorted(f"{s}/{pid} ({' vs '.join(map(str, sorted(n)))})"
                 for (s, pid, _), n in prompt_counts.items() if len(n) > 1)
    if bad:
        notes.append("prompt token counts differ between the engines (llama.cpp's tokenizer split the same "
                     f"text differently): {', '.join(bad)}")
    notes.append(f"1-minute load average {load_before:.2f} before, {load_after:.2f} after (the runs add about "
                 f"{args.threads}); on a shared machine quote ratios from one run, not tokens/s across runs")
    shown = {"main": str(models["main"]), "big": str(models["big"]), "draft": str(models["draft"])}
    templates = []
    for cfg in dict.fromkeys(configs):
        cmd = command(cfg, "PROMPT", "RENDERED", args.n_predict)
        cmd[0] = "peregrine" if cfg.engine == "peregrine" else Path(cmd[0]).name
        templates.append(f"{cfg.name}: {shlex.join(cmd)}")
    info = {"threads": args.threads, "n_predict": args.n_predict, "rounds": args.rounds,
            "peregrine_git": git_describe(), "peregrine_bin": str(args.peregrine), "llama_commit": commit,
            "llama_cpp_python": LLAMA_CPP_PYTHON_VERSION, "llama_tools": {k: str(v) for k, v in tools.items()},
            "models": shown, "notes": notes, "commands": templates,
            "invocation": "bench/speculative.py " + shlex.join(sys.argv[1:])}
    markdown, rows = report(cells, info)
    if args.json:
        machine = {"cpu": cpu_name(), "cores": os.cpu_count(), "isa": cpu_isa()}
        args.json.write_text(json.dumps({"machine": machine, **info, "rows": rows}, indent=2) + "\n")
        log(f"wrote {args.json}")
    print(markdown)
    failed = [c for c in cells if c.error]
    for c in failed:
        print(f"error: {c.config.name}: {c.error}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
