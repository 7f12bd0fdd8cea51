#!/usr/bin/env python3
"""Token-mask speed of JSON Schema constraints: Peregrine, xgrammar and llguidance side by side.

  .venv-grammar/bin/python bench/mask_bench.py                   # every schema, both tokenizers
  .venv-grammar/bin/python bench/mask_bench.py --tokenizers smollm2 -n 20 --traces 2 --json out.json

(.venv-grammar: scripts/venv_grammar.sh; xgrammar and llguidance are its PyPI wheels.)

For each tokenizer (SmolLM2's 49,152-token byte-level BPE, Gemma 3's 262,144-token SentencePiece)
and each schema of bench/schemas/*.json, per engine: the compile time of the schema and the time
of every token mask along the same token sequences (traces), reported as avg / p50 / p99 over all
steps of all traces, as a Markdown table (README rows) and, with --json, every number.

Traces, made once per tokenizer and fed to every engine: random walks through the schema with
xgrammar (grammar_engines.Walker; llguidance where xgrammar's fail, see make_traces) with compact
separators and no other whitespace, so that every engine's whitespace policy accepts them; kept
when complete and valid under `jsonschema`; their text then tokenized as the model would
(tests/reference/gguf_hf_tokenizer.py, gguf_spm_model.py), because llguidance allows only the
canonical tokenization of text the grammar forces. A trace of L tokens has L + 1 masks: before each
token and after the last. A trace an engine refuses, or a schema it cannot compile, is listed under
the table and left out of every engine's statistics, so the rows are over the same steps.

Engines:
  peregrine   `peregrine masks -m MODEL --input FILE.jsonl`: its own compile_us and mask_us
  xgrammar    GrammarCompiler (cache off, --compile-threads) compile_json_schema(any_whitespace=True,
              strict_mode=False); GrammarMatcher.fill_next_token_bitmask into a preallocated mask
  llguidance  LLMatcher(grammar_from_json_schema) with its default JSON options; copies of that
              matcher compute masks (unsafe_compute_mask_ptr into a preallocated buffer)
The Python engines are timed with time.perf_counter_ns around the one binding call, the garbage
collector off; the per-call overhead of the timer and a Python call (a no-op, measured the same
way) is printed and not subtracted. All three get the same end-of-generation and never-allowed
tokens (the first line of `peregrine masks`, else grammar_engines' defaults from the GGUF).
Without build/bin/peregrine (or $PEREGRINE_BIN) the Python engines run alone.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO / "tests/reference"))
sys.path.insert(0, str(BENCH))
from compare import cpu_isa, cpu_name, git_describe  # noqa: E402
from grammar_engines import (LLGuidanceEngine, Walker, XGrammarEngine, canonical_encoder,  # noqa: E402
                             load_vocab)

MODELS = Path.home() / ".cache/peregrine/models"
TOKENIZERS = {
    "smollm2": Path(os.environ.get("PEREGRINE_MODEL_PATH", MODELS / "SmolLM2-135M-Instruct.Q4_1.gguf")),
    "gemma3": Path(os.environ.get("PEREGRINE_GEMMA_PATH", MODELS / "gemma-3-270m-q4_k_m.gguf")),
}
ENGINES = ("peregrine", "xgrammar", "llguidance")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Traces


@dataclass
class Trace:
    schema: str
    k: int
    tokens: list[int]
    text: bytes


@dataclass
class Traces:
    by_schema: dict[str, list[Trace]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def make_traces(vocab, schemas: dict[str, dict], xgr: XGrammarEngine | None, llg: LLGuidanceEngine | None,
                encode, n: int, max_steps: int, seed: int) -> Traces:
    """n traces per schema: complete walks valid under jsonschema, from xgrammar, then from
    llguidance for what xgrammar could not make (a schema it cannot compile, or walks that are
    invalid: xgrammar 0.2.9 lets raw control characters into strings, drops allOf, and leaves out
    a required property that `properties` does not list)."""
    import jsonschema

    out = Traces()
    walker = Walker(vocab, max_steps=max_steps, target_max=48)
    walkers = []
    if xgr is not None:
        walkers.append(("xgrammar", xgr.with_json(separators=(",", ":"), any_whitespace=False)))
    if llg is not None:
        walkers.append(("llguidance", llg.with_json({"whitespace_flexible": False, "item_separator": ",",
                                                     "key_separator": ":"})))
    for name, schema in schemas.items():
        traces: list[Trace] = []
        validator = jsonschema.validators.validator_for(schema)(schema, format_checker=jsonschema.FormatChecker())
        for wname, eng in walkers:
            try:
                compiled = eng.compile({"json_schema": schema})
            except Exception as e:
                out.notes.append(f"{name}: no {wname} walks: {str(e).strip().splitlines()[0][:160]}")
                continue
            invalid = incomplete = 0
            for attempt in range(3 * (n - len(traces))):
                w = walker.walk(eng.matcher(compiled), zlib.crc32(f"{seed}:{name}:{wname}:{attempt}".encode()))
                if not w.complete:
                    incomplete += 1
                    continue
                text = vocab.decode(w.tokens)
                try:
                    validator.validate(json.loads(text))
                except (ValueError, jsonschema.ValidationError) as e:
                    invalid += 1
                    if invalid == 1:
                        out.notes.append(f"{name}: a {wname} walk is not valid under jsonschema "
                                         f"({str(e).splitlines()[0][:120]}): {text[:160]!r}")
                    continue
                tokens = list(encode(text.decode()))
                if vocab.decode(tokens) != text:
                    out.notes.append(f"{name}: the tokenizer does not give back {text[:80]!r}; walk tokens used")
                    tokens = w.tokens
                traces.append(Trace(name, len(traces), tokens, text))
                if len(traces) == n:
                    break
            if incomplete:
                out.notes.append(f"{name}: {incomplete} {wname} walks not complete in {max_steps} tokens")
            if len(traces) == n:
                break
        if len(traces) < n:
            out.notes.append(f"{name}: {len(traces)} of {n} traces")
        out.by_schema[name] = traces
    return out


# ---------------------------------------------------------------------------------------------
# Engines


@dataclass
class TraceResult:
    mask_us: list[float]
    rejected_at: int
    complete: bool


@dataclass
class EngineRun:
    engine: str
    compile_us: dict[str, float] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    traces: dict[tuple[str, int], TraceResult] = field(default_factory=dict)


def peregrine_header(binary: Path, model: Path, tmp: Path) -> dict:
    empty = tmp / "empty.jsonl"
    empty.write_text("")
    r = subprocess.run([str(binary), "masks", "-m", str(model), "--input", str(empty)],
                       capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        raise RuntimeError(f"peregrine masks exited {r.returncode}: {r.stderr.strip()[-500:]}")
    return json.loads(r.stdout.splitlines()[0])


def run_peregrine(binary: Path, model: Path, schemas: dict[str, dict], traces: Traces, tmp: Path) -> EngineRun:
    inp = tmp / "masks_input.jsonl"
    with inp.open("w") as f:
        for name, schema in schemas.items():
            f.write(json.dumps({"id": name, "json_schema": schema,
                                "traces": [t.tokens for t in traces.by_schema[name]]}) + "\n")
    r = subprocess.run([str(binary), "masks", "-m", str(model), "--input", str(inp)],
                       capture_output=True, text=True, timeout=3600)
    if r.returncode != 0:
        raise RuntimeError(f"peregrine masks exited {r.returncode}: {r.stderr.strip()[-500:]}")
    run = EngineRun("peregrine")
    for line in r.stdout.splitlines()[1:]:
        rec = json.loads(line)
        name = rec["id"]
        if rec.get("error"):
            run.errors[name] = rec["error"]
            continue
        run.compile_us[name] = float(rec["compile_us"])
        for k, t in enumerate(rec["traces"]):
            run.traces[(name, k)] = TraceResult([float(x) for x in t["mask_us"]], int(t["rejected_at"]),
                                                bool(t["complete"]))
    return run


def run_python(label: str, eng, schemas: dict[str, dict], traces: Traces) -> EngineRun:
    pc = time.perf_counter_ns
    run = EngineRun(label)
    gc.disable()
    try:
        for name, schema in schemas.items():
            t0 = pc()
            try:
                compiled = eng.compile({"json_schema": schema})
            except Exception as e:
                run.errors[name] = str(e).strip().splitlines()[0][:200]
                continue
            run.compile_us[name] = (pc() - t0) / 1e3
            for tr in traces.by_schema[name]:
                m = eng.matcher(compiled)
                fill, allows, accept = m.fill_raw, m.allows, m.accept
                times = []
                rejected = -1
                for i, tok in enumerate(tr.tokens):
                    t0 = pc()
                    fill()
                    times.append(pc() - t0)
                    if not allows(tok) or not accept(tok):
                        rejected = i
                        break
                if rejected < 0:
                    t0 = pc()
                    fill()
                    times.append(pc() - t0)
                complete = rejected < 0 and m.is_complete()
                run.traces[(name, tr.k)] = TraceResult([t / 1e3 for t in times], rejected, complete)
    finally:
        gc.enable()
    return run


def call_overhead_us() -> float:
    """Median time of a timed no-op Python call, the way run_python times a mask."""
    pc = time.perf_counter_ns
    noop = (lambda: None)
    xs = []
    for _ in range(20000):
        t0 = pc()
        noop()
        xs.append(pc() - t0)
    return float(np.median(xs)) / 1e3


# ---------------------------------------------------------------------------------------------
# Report


def pct(xs: np.ndarray, q: float) -> float:
    return float(np.percentile(xs, q)) if len(xs) else float("nan")


def summarize(tok: str, vocab, schemas, traces: Traces, runs: list[EngineRun]) -> tuple[list[dict], list[str]]:
    notes = []
    compiled_by_all = [s for s in schemas if all(s in r.compile_us for r in runs)]
    for r in runs:
        for s, e in r.errors.items():
            notes.append(f"{tok}: {r.engine} cannot compile {s}: {e}")
    common = []  # (schema, k) accepted to the end by every engine
    for s in compiled_by_all:
        for t in traces.by_schema[s]:
            ok = True
            for r in runs:
                res = r.traces.get((s, t.k))
                if res is None or res.rejected_at >= 0 or not res.complete:
                    ok = False
                    if res is not None and res.rejected_at >= 0:
                        i = res.rejected_at
                        prefix = vocab.decode(t.tokens[:i])
                        notes.append(f"{tok}: {r.engine} refuses {s} trace {t.k} at token {i} "
                                     f"{vocab.show(t.tokens[i])} after {prefix[-60:]!r}")
                    elif res is not None:
                        notes.append(f"{tok}: {r.engine} is not complete at the end of {s} trace {t.k} "
                                     f"{t.text[-60:]!r}")
            if ok:
                common.append((s, t.k))
    rows = []
    for r in runs:
        comp = np.array([r.compile_us[s] for s in compiled_by_all]) / 1e3
        masks = np.array([x for key in common for x in r.traces[key].mask_us])
        rows.append({
            "tokenizer": tok, "n_vocab": vocab.n_vocab, "engine": r.engine,
            "schemas": len(compiled_by_all), "schemas_failed": len(r.errors), "traces": len(common),
            "masks": int(len(masks)),
            "compile_ms_avg": float(comp.mean()) if len(comp) else float("nan"),
            "compile_ms_p50": pct(comp, 50), "compile_ms_p99": pct(comp, 99),
            "mask_us_avg": float(masks.mean()) if len(masks) else float("nan"),
            "mask_us_p50": pct(masks, 50), "mask_us_p99": pct(masks, 99),
            "mask_us_max": float(masks.max()) if len(masks) else float("nan"),
        })
    return rows, notes


def markdown(rows: list[dict]) -> str:
    out = ["| tokenizer | engine | schemas | traces / masks | compile ms avg / p50 / p99 | "
           "mask µs avg | p50 | p99 | max |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {r['tokenizer']} ({r['n_vocab']:,}) | {r['engine']} | {r['schemas']} | "
                   f"{r['traces']} / {r['masks']} | {r['compile_ms_avg']:.2f} / {r['compile_ms_p50']:.2f} / "
                   f"{r['compile_ms_p99']:.2f} | {r['mask_us_avg']:.1f} | {r['mask_us_p50']:.1f} | "
                   f"{r['mask_us_p99']:.1f} | {r['mask_us_max']:.0f} |")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--tokenizers", default="smollm2,gemma3",
                    help="comma-separated: smollm2, gemma3, or paths to GGUF files (default both)")
    ap.add_argument("--schemas", type=Path, default=BENCH / "schemas", help="folder of *.json schemas")
    ap.add_argument("-n", "--n-schemas", type=int, default=0, help="the first N schemas by name (0: all)")
    ap.add_argument("--traces", type=int, default=4, help="traces per schema (default 4)")
    ap.add_argument("--max-steps", type=int, default=512, help="tokens per walk at most (default 512)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--engines", default=",".join(ENGINES), help="comma-separated subset of " + ", ".join(ENGINES))
    ap.add_argument("--compile-threads", type=int, default=1, help="xgrammar's compiler threads (default 1)")
    ap.add_argument("--peregrine", type=Path,
                    default=Path(os.environ.get("PEREGRINE_BIN", REPO / "build/bin/peregrine")))
    ap.add_argument("--json", type=Path, help="also write every number here")
    args = ap.parse_args()

    files = sorted(args.schemas.glob("*.json"))
    if args.n_schemas:
        files = files[:args.n_schemas]
    if not files:
        print(f"error: no *.json schemas in {args.schemas}", file=sys.stderr)
        return 1
    schemas = {f.stem: json.loads(f.read_text()) for f in files}
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    unknown = set(engines) - set(ENGINES)
    if unknown:
        print(f"error: unknown engine(s) {sorted(unknown)}; choose from {', '.join(ENGINES)}", file=sys.stderr)
        return 1
    notes: list[str] = []
    if "peregrine" in engines and not (args.peregrine.is_file() and os.access(args.peregrine, os.X_OK)):
        notes.append(f"peregrine not run: {args.peregrine} not found (build it, or set PEREGRINE_BIN)")
        engines.remove("peregrine")

    import importlib.metadata as md

    rows: list[dict] = []
    detail: dict = {}
    overhead = call_overhead_us()
    for tok in [t.strip() for t in args.tokenizers.split(",") if t.strip()]:
        model = TOKENIZERS.get(tok, Path(tok))
        name = tok if tok in TOKENIZERS else model.stem
        if not model.is_file():
            notes.append(f"{name}: model not found at {model}")
            continue
        with tempfile.TemporaryDirectory(prefix="mask_bench.") as tmpdir:
            tmp = Path(tmpdir)
            header = None
            if "peregrine" in engines:
                header = peregrine_header(args.peregrine, model, tmp)
            log(f"{name}: reading the vocabulary of {model}")
            vocab = load_vocab(model, eog=header and header["eog"], never=header and header["never"])
            encode = canonical_encoder(vocab)
            xgr = XGrammarEngine(vocab, max_threads=args.compile_threads)
            llg = LLGuidanceEngine(vocab, encode=encode)
            log(f"{name}: walks through {len(schemas)} schemas")
            t0 = time.time()
            traces = make_traces(vocab, schemas, xgr, llg, encode, args.traces, args.max_steps, args.seed)
            n_tr = sum(len(v) for v in traces.by_schema.values())
            log(f"{name}: {n_tr} traces, {sum(len(t.tokens) for v in traces.by_schema.values() for t in v)} "
                f"tokens ({time.time() - t0:.0f} s)")
            notes += [f"{name}: {x}" for x in traces.notes]
            runs = []
            for e in engines:
                log(f"{name}: timing {e}")
                if e == "peregrine":
                    runs.append(run_peregrine(args.peregrine, model, schemas, traces, tmp))
                elif e == "xgrammar":
                    runs.append(run_python("xgrammar", xgr, schemas, traces))
                else:
                    runs.append(run_python("llguidance", llg, schemas, traces))
            r, n = summarize(name, vocab, schemas, traces, runs)
            rows += r
            notes += n
            detail[name] = {
                "model": str(model), "n_vocab": vocab.n_vocab, "eog": vocab.eog, "n_never": len(vocab.never),
                "traces": {s: [{"tokens": t.tokens, "text": t.text.decode(errors="replace")} for t in v]
                           for s, v in traces.by_schema.items()},
                "engines": {run.engine: {
                    "compile_us": run.compile_us, "errors": run.errors,
                    "traces": {f"{s}#{k}": vars(res) for (s, k), res in run.traces.items()}} for run in runs}}

    versions = {p: md.version(p) for p in ("xgrammar", "llguidance")}
    print(f"CPU: {cpu_name()} ({cpu_isa()}); peregrine {git_describe()}; xgrammar {versions['xgrammar']}, "
          f"llguidance {versions['llguidance']}; {len(schemas)} schemas from {args.schemas}, "
          f"up to {args.traces} traces each\n")
    print(markdown(rows))
    print(f"\nPython engines: each timed call includes ~{overhead:.2f} µs of timer and Python call overhead "
          "(a timed no-op), not subtracted. Statistics are over the traces every engine accepted to the end.")
    if notes:
        print("\nNotes:")
        for x in notes[:60]:
            print(f"- {x}")
        if len(notes) > 60:
            print(f"- ... {len(notes) - 60} more (all in --json)")
    print("\nCommand: " + " ".join([".venv-grammar/bin/python", "bench/mask_bench.py", *sys.argv[1:]]))
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu_name(), "peregrine": git_describe(), "versions": versions,
                                         "python_call_overhead_us": overhead, "rows": rows, "notes": notes,
                                         "detail": detail}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
