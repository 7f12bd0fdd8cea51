"""What quantized files cost, measured, and that llama.cpp runs the files we write.

Byte identity with llama-quantize (test_quantize_file.py) settles "same quality as llama-quantize";
this file checks the rest of issue 15's quality claims on SmolLM2-135M, base = its F16 copy:

- llama.cpp loads and runs our Q4_K_M: llama-perplexity on it agrees with `peregrine perplexity
  --llama-windows` (whole GPL-3, -c 512, 14 windows). Not to 0.1%: each engine quantizes the
  activations of its matmuls to 8 bits in its own way (llama: Q8_0 blocks with fp16 scales for the
  Q5_0 tensors that most of this file is, Q8_K for the K-quants; ours: f32 scales), and that noise
  differs by more than 0.1%. The arbiter is the same weights without activation quantization: the
  file dequantized to F32 (`quantize ... F32`), where both engines agree within 0.01%. Measured on
  the AMD EPYC (AVX-512) VM: exact 18.9246, ours 18.9730 (+0.26%), llama 19.0662 (+0.75%). Bounds:
  both engines within 0.05% of each other on the F32 file; ours within 0.5% of it; llama within 1.5%
  of ours.
- An importance matrix helps where bits are scarce: Q2_K and Q3_K_S with an imatrix computed by
  `peregrine imatrix` on other text (GPL-2) have a lower mean KL divergence from the base on GPL-3
  than without one.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest


GPL2 = Path("/usr/share/common-licenses/GPL-2")
GPL3 = Path("/usr/share/common-licenses/GPL-3")
THREADS = "2"


@pytest.fixture(scope="module")
def texts():
    for p in (GPL2, GPL3):
        if not p.is_file():
            pytest.skip(f"{p} not present")


def ours_ppl(run_peregrine, model: Path) -> float:
    r = run_peregrine("perplexity", "--llama-windows", "-m", model, "-f", GPL3, "-c", "512", "-t", THREADS)
    m = re.search(r"^PPL = ([0-9.]+)$", r.stdout, re.M)
    assert m, r.stdout[-2000:]
    return float(m.group(1))


def llama_ppl(binary: Path, model: Path) -> float:
    cmd = [str(binary), "-m", str(model), "-f", str(GPL3), "-c", "512", "-b", "512", "-t", THREADS]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stderr[-3000:]}"
    m = re.search(r"Final estimate: PPL = ([0-9.]+)", r.stdout + r.stderr)
    assert m, (r.stdout + r.stderr)[-3000:]
    return float(m.group(1))


def test_llama_cpp_runs_our_q4_k_m(run_peregrine, f16_model_path, llama_perplexity, texts, tmp_path):
    q4km, exact = tmp_path / "q4km.gguf", tmp_path / "q4km-f32.gguf"
    run_peregrine("quantize", f16_model_path, q4km, "Q4_K_M", "-t", THREADS)
    run_peregrine("quantize", q4km, exact, "F32", "-t", THREADS)  # the same weights, decoded
    ours, llama = ours_ppl(run_peregrine, q4km), llama_ppl(llama_perplexity, q4km)
    ours_exact, llama_exact = ours_ppl(run_peregrine, exact), llama_ppl(llama_perplexity, exact)
    summary = f"Q4_K_M ours {ours:.4f} llama {llama:.4f}; F32 of it ours {ours_exact:.4f} llama {llama_exact:.4f}"
    assert abs(ours_exact / llama_exact - 1) < 5e-4, summary
    # Q4_K_M against its own F32 decoding: llama.cpp's engine puts it 0.74% apart. Ours moves with
    # the attention kernel's rounding alone (the matmuls are bit-identical across ISAs): 19.0413
    # scalar, 19.0338 AVX-512, 19.0007 AVX2 against 18.9247 (measured), so the bound is 0.8%.
    assert abs(ours / ours_exact - 1) < 8e-3, summary
    assert abs(llama / ours - 1) < 1.5e-2, summary


def eval_kld(run_peregrine, model: Path, base: Path) -> float:
    r = run_peregrine("eval", "-m", model, "--base", base, "-f", GPL3, "-c", "256", "--chunks", "6", "-t", THREADS,
                      "--json")
    return json.loads(r.stdout)["kld_mean"]


@pytest.fixture(scope="module")
def imatrix(run_peregrine, f16_model_path, texts, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("imatrix") / "imatrix.gguf"
    run_peregrine("imatrix", "-m", f16_model_path, "-f", GPL2, "-o", path, "-c", "512", "--chunks", "4",
                  "-t", THREADS)
    return path


@pytest.mark.parametrize("mix", ["Q2_K", "Q3_K_S"])
def test_imatrix_lowers_kl_divergence(run_peregrine, f16_model_path, imatrix, tmp_path, mix):
    plain, weighted = tmp_path / "plain.gguf", tmp_path / "weighted.gguf"
    run_peregrine("quantize", f16_model_path, plain, mix, "-t", THREADS)
    r = run_peregrine("quantize", f16_model_path, weighted, mix, "--imatrix", imatrix, "-t", THREADS, "--json")
    assert json.loads(r.stdout)["imatrix_tensors"] > 100
    kld_plain = eval_kld(run_peregrine, plain, f16_model_path)
    kld_weighted = eval_kld(run_peregrine, weighted, f16_model_path)
    assert kld_weighted < 0.95 * kld_plain, f"{mix}: KLD with imatrix {kld_weighted:.5f}, without {kld_plain:.5f}"
