#!/usr/bin/env python3
"""F16 and Q8_0 variants of the default Q4_1 GGUF, so the benchmark table can cover three weight types.

These are derived files: the same model's weights, dequantized from the Q4_1 release
(SmolLM2-135M-Instruct.Q4_1.gguf in the model cache), not converted from the original checkpoint.
Every tensor that is quantized in the source (the Q4_1 matrices and the Q8_0 token_embd) is
dequantized to float32 and written as F16 (holding the Q4_1 values up to f16 rounding) or re-quantized
to Q8_0 (adding at most half a Q8_0 step per value); F32 tensors (the norms) are copied unchanged.
Metadata, tensor order and alignment are copied unchanged except general.file_type (1 = MOSTLY_F16,
7 = MOSTLY_Q8_0). The variants measure speed per weight type on identical shapes; they carry no more
information than the Q4_1 file, so don't use them to judge quality.

Outputs go next to the source (SmolLM2-135M-Instruct.F16.gguf, SmolLM2-135M-Instruct.Q8_0.gguf in
~/.cache/peregrine/models, or $PEREGRINE_MODELS) and are skipped when newer than the source (--force
rewrites them). Each output is then checked: read back with gguf.GGUFReader, metadata and tensor list
compared with the source, every tensor's values compared with the source's dequantized values (F16:
exactly the f16 rounding; Q8_0: within one Q8_0 step of its block), and, when build/bin/peregrine
exists, `peregrine info` and a greedy `peregrine run` must succeed.

Needs gguf-py (pip install gguf==0.19.0) and numpy:
    .venv/bin/python bench/make_variants.py [--types F16,Q8_0] [--force] [--no-verify]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

try:
    import gguf
    from gguf import GGMLQuantizationType as QType
    from gguf import GGUFValueType as VType
except ImportError:
    sys.exit("error: this script needs gguf-py and numpy: pip install gguf==0.19.0 (or use .venv/bin/python)")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import DEFAULT_MODEL, REPO, Failure, log  # noqa: E402  (compare.py: stdlib only, no side effects)

# target weight type -> general.file_type (llama_ftype: 1 = MOSTLY_F16, 7 = MOSTLY_Q8_0)
VARIANTS = {"F16": (QType.F16, 1), "Q8_0": (QType.Q8_0, 7)}
KEEP = {QType.F32}  # copied byte for byte; every other tensor type is converted
PROMPT = "The capital of France is"


def variant_path(source: Path, name: str) -> Path:
    """SmolLM2-135M-Instruct.Q4_1.gguf -> SmolLM2-135M-Instruct.NAME.gguf (same folder)."""
    stem = source.stem
    base, dot, last = stem.rpartition(".")
    if dot and last.upper() in QType.__members__:
        stem = base
    return source.with_name(f"{stem}.{name}.gguf")


def field_value(field: gguf.ReaderField):
    """(value, type, sub_type) of a metadata field as GGUFWriter.add_key_value takes it.

    Strings stay raw bytes (the writer accepts bytes for STRING), so a token that is not valid
    UTF-8 is copied as it was instead of failing to decode.
    """
    vtype = field.types[0]
    if vtype == VType.STRING:
        return bytes(field.parts[-1]), vtype, None
    if vtype != VType.ARRAY:
        return field.contents(), vtype, None
    if len(field.types) != 2:
        raise Failure(f"metadata '{field.name}' is a nested array ({[t.name for t in field.types]}); not supported")
    sub = field.types[1]
    if not field.data:
        raise Failure(f"metadata '{field.name}' is an empty array, which GGUFWriter cannot write")
    if sub == VType.STRING:
        return [bytes(field.parts[i]) for i in field.data], vtype, sub
    return field.contents(), vtype, sub


def convert_tensor(t: gguf.ReaderTensor, target: QType) -> np.ndarray:
    """The tensor's data in the output file: F32 as is, anything else dequantized and re-encoded."""
    if t.tensor_type in KEEP:
        return t.data
    values = gguf.quants.dequantize(t.data, t.tensor_type)  # [rows, cols] float32
    return gguf.quants.quantize(values, target)  # F16: [rows, cols] float16; Q8_0: [rows, bytes] uint8


def write_variant(source: Path, out: Path, target: QType, file_type: int) -> None:
    reader = gguf.GGUFReader(source)
    arch_field = reader.get_field(gguf.Keys.General.ARCHITECTURE)
    if arch_field is None:
        raise Failure(f"{source}: no general.architecture")
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    writer = gguf.GGUFWriter(tmp, arch_field.contents())  # adds general.architecture first
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name == gguf.Keys.General.ARCHITECTURE:
            continue  # header counts and the architecture: the writer produces those itself
        value, vtype, sub = field_value(field)
        if field.name == gguf.Keys.General.FILE_TYPE:
            value = file_type
        if field.name == gguf.Keys.General.ALIGNMENT:
            writer.data_alignment = value  # tensor offsets must follow the copied alignment
        writer.add_key_value(field.name, value, vtype, sub_type=sub)
    if reader.get_field(gguf.Keys.General.FILE_TYPE) is None:
        writer.add_file_type(file_type)

    # Tensor infos first (sizes known without converting), then the data one tensor at a time,
    # in source order, so memory holds one tensor and the layout matches the source's.
    for t in reader.tensors:
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))  # numpy order [rows, cols]
        n = int(t.n_elements)
        if t.tensor_type in KEEP:
            writer.add_tensor_info(t.name, shape, t.data.dtype, t.data.nbytes, t.tensor_type)
        elif target == QType.F16:
            writer.add_tensor_info(t.name, shape, np.dtype(np.float16), 2 * n)
        else:
            block, type_size = gguf.GGML_QUANT_SIZES[target]
            if shape[-1] % block:
                raise Failure(f"{source}: tensor '{t.name}' rows of {shape[-1]} are not a multiple of "
                              f"the {target.name} block ({block})")
            writer.add_tensor_info(t.name, gguf.quants.quant_shape_to_byte_shape(shape, target),
                                   np.dtype(np.uint8), n // block * type_size, target)
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for t in reader.tensors:
            writer.write_tensor_data(convert_tensor(t, target), tensor_endianess=reader.endianess)
        writer.close()
        os.replace(tmp, out)
    finally:
        writer.close()
        tmp.unlink(missing_ok=True)


def verify_file(source: Path, out: Path, target: QType, file_type: int) -> str:
    """Compare OUT with SOURCE field by field and tensor by tensor; return a one-line summary."""
    src, dst = gguf.GGUFReader(source), gguf.GGUFReader(out)
    src_keys = [k for k in src.fields if not k.startswith("GGUF.")]
    dst_keys = [k for k in dst.fields if not k.startswith("GGUF.")]
    if src_keys != dst_keys:
        raise Failure(f"{out.name}: metadata keys differ from the source: "
                      f"missing {sorted(set(src_keys) - set(dst_keys))}, extra {sorted(set(dst_keys) - set(src_keys))}")
    for key in src_keys:
        a, b = src.fields[key], dst.fields[key]
        if key == gguf.Keys.General.FILE_TYPE:
            if b.contents() != file_type:
                raise Failure(f"{out.name}: general.file_type is {b.contents()}, expected {file_type}")
            continue
        if a.types != b.types or field_value(a)[0] != field_value(b)[0]:
            raise Failure(f"{out.name}: metadata '{key}' differs from the source")
    if [t.name for t in src.tensors] != [t.name for t in dst.tensors]:
        raise Failure(f"{out.name}: tensor names or order differ from the source")
    if dst.alignment != src.alignment:
        raise Failure(f"{out.name}: alignment {dst.alignment}, source {src.alignment}")

    worst_f16 = 0.0  # max |out - src| over F16 tensors
    worst_step = 0.0  # max |out - src| / (its block's Q8_0 step d) over Q8_0 tensors
    for a, b in zip(src.tensors, dst.tensors):
        where = f"{out.name}: tensor '{b.name}'"
        if list(a.shape) != list(b.shape):
            raise Failure(f"{where} shape {list(b.shape)}, source {list(a.shape)}")
        want_type = a.tensor_type if a.tensor_type in KEEP else target
        if b.tensor_type != want_type:
            raise Failure(f"{where} is {b.tensor_type.name}, expected {want_type.name}")
        x = gguf.quants.dequantize(a.data, a.tensor_type)  # [rows, cols] float32
        y = gguf.quants.dequantize(b.data, b.tensor_type)
        if x.shape != y.shape:
            raise Failure(f"{where} dequantizes to {y.shape}, source to {x.shape}")
        diff = np.abs(y - x)
        if a.tensor_type in KEEP:
            if not np.array_equal(a.data, b.data):
                raise Failure(f"{where} was to be copied unchanged but differs")
        elif target == QType.F16:
            if not np.array_equal(y, x.astype(np.float16).astype(np.float32)):
                raise Failure(f"{where} is not the f16 rounding of the source (max diff {diff.max():.3g})")
            worst_f16 = max(worst_f16, float(diff.max()))
        else:
            block, type_size = gguf.GGML_QUANT_SIZES[QType.Q8_0]
            # each 34-byte block: f16 scale d, then 32 int8; value = d * q, so one step is d
            d = b.data.reshape(-1, type_size)[:, :2].copy().view(np.float16).astype(np.float32)  # [n_blocks, 1]
            err = diff.reshape(-1, block)  # [n_blocks, 32]
            if np.any(err > d + 1e-12):
                raise Failure(f"{where} differs from the source by more than one Q8_0 step")
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = np.where(d > 0, err / d, 0.0)
            worst_step = max(worst_step, float(ratio.max()))
    if target == QType.F16:
        return f"{len(dst.tensors)} tensors match; F16 = f16(source) exactly, max |diff| {worst_f16:.3g}"
    return f"{len(dst.tensors)} tensors match; Q8_0 max |diff| {worst_step:.3f} of a step"


def verify_peregrine(out: Path) -> str:
    """`peregrine info` and a greedy `peregrine run` on OUT; return the generated text."""
    peregrine = Path(os.environ.get("PEREGRINE_BIN", REPO / "build" / "bin" / "peregrine"))
    if not os.access(peregrine, os.X_OK):
        log(f"  {peregrine} not found; skipping the peregrine checks")
        return ""
    text = ""
    for cmd in ([str(peregrine), "info", str(out)],
                [str(peregrine), "run", "-m", str(out), "-p", PROMPT, "-n", "16", "--temp", "0"]):
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise Failure(f"`peregrine {cmd[1]}` on {out.name} exited with {proc.returncode}: {last}")
        text = proc.stdout.strip()  # the run's output is what is kept
    return text


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--source", type=Path, default=DEFAULT_MODEL, help="quantized GGUF to derive from (default: %(default)s)")
    ap.add_argument("--types", default="F16,Q8_0", help="comma-separated variants to write (default: %(default)s)")
    ap.add_argument("--force", action="store_true", help="rewrite outputs even when newer than the source")
    ap.add_argument("--no-verify", action="store_true", help="skip the read-back and peregrine checks")
    args = ap.parse_args()
    try:
        source = args.source.expanduser()
        if not source.is_file():
            raise Failure(f"{source} not found (build/bin/peregrine pull smollm2-135m fetches the default)")
        names = [n.strip().upper() for n in args.types.split(",") if n.strip()]
        for name in names:
            if name not in VARIANTS:
                raise Failure(f"--types: unknown variant '{name}' (known: {', '.join(VARIANTS)})")
        log(f"source {source} ({source.stat().st_size / 2**20:.1f} MiB)")
        for name in names:
            target, file_type = VARIANTS[name]
            out = variant_path(source, name)
            if out == source:
                raise Failure(f"{source} is already {name}")
            if not args.force and out.is_file() and out.stat().st_mtime > source.stat().st_mtime:
                log(f"{out.name}: up to date ({out.stat().st_size / 2**20:.1f} MiB); --force rewrites it")
            else:
                start = time.monotonic()
                write_variant(source, out, target, file_type)
                log(f"{out.name}: wrote {out.stat().st_size / 2**20:.1f} MiB in {time.monotonic() - start:.1f} s")
            if args.no_verify:
                print(out)
                continue
            start = time.monotonic()
            summary = verify_file(source, out, target, file_type)
            log(f"  {summary} ({time.monotonic() - start:.1f} s)")
            text = verify_peregrine(out)
            if text:
                log(f"  peregrine info and run OK; greedy: {text!r}")
            print(out)
    except Failure as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
