#include "core/atomic_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <filesystem>

namespace peregrine {
namespace {

// Temporary files being written, for the signal handler. Slots hold stable C strings.
constexpr int kSlots = 16;
std::atomic<const char*> g_open[kSlots];
const int kSignals[] = {SIGINT, SIGTERM, SIGHUP};

extern "C" void remove_open_files(int sig) {
  for (auto& slot : g_open)
    if (const char* p = slot.load()) ::unlink(p);  // async-signal-safe
  std::signal(sig, SIG_DFL);
  std::raise(sig);
}

void install_handlers_once() {
  static const bool installed = [] {
    for (int sig : kSignals) {
      struct sigaction old {};
      if (::sigaction(sig, nullptr, &old) == 0 && old.sa_handler == SIG_DFL) std::signal(sig, remove_open_files);
    }
    return true;
  }();
  (void)installed;
}

void track(const char* p) {
  install_handlers_once();
  for (auto& slot : g_open) {
    const char* expected = nullptr;
    if (slot.compare_exchange_strong(expected, p)) return;
  }  // all slots busy: this file is still removed on every other path, just not on a signal
}

void untrack(const char* p) {
  for (auto& slot : g_open) {
    const char* expected = p;
    if (slot.compare_exchange_strong(expected, nullptr)) return;
  }
}

}  // namespace

AtomicFile::AtomicFile(std::string path, std::unique_ptr<char[]> tmp, int fd)
    : path_(std::move(path)), tmp_(std::move(tmp)), fd_(fd) {
  track(tmp_.get());
}

Result<AtomicFile> AtomicFile::create(const std::string& path) {
  namespace fs = std::filesystem;
  if (path.empty()) return make_error("output path is empty");
  std::error_code ec;
  if (fs::is_directory(path, ec)) return make_error("{}: is a directory", path);
  const fs::path dest(path);
  const fs::path dir = dest.has_parent_path() ? dest.parent_path() : fs::path(".");
  const std::string name = (dir / ("." + dest.filename().string() + ".tmp.XXXXXX")).string();
  auto tmp = std::make_unique<char[]>(name.size() + 1);
  std::memcpy(tmp.get(), name.c_str(), name.size() + 1);
  const int fd = ::mkstemp(tmp.get());
  if (fd < 0) return make_error("{}: cannot create a file in {}: {}", path, dir.string(), std::strerror(errno));
  // mkstemp makes the file 0600; give it the mode a plain create would have.
  const mode_t mask = ::umask(0);
  ::umask(mask);
  ::fchmod(fd, 0666 & ~mask);
  return AtomicFile(path, std::move(tmp), fd);
}

AtomicFile::AtomicFile(AtomicFile&& o) noexcept : path_(std::move(o.path_)), tmp_(std::move(o.tmp_)), fd_(o.fd_) {
  o.fd_ = -1;  // the tracked C string moved along with tmp_: its address is unchanged
}

AtomicFile::~AtomicFile() { abandon(); }

void AtomicFile::forget() {
  if (tmp_) untrack(tmp_.get());
}

void AtomicFile::abandon() {
  if (fd_ < 0) return;
  ::close(fd_);
  ::unlink(tmp_.get());
  forget();
  fd_ = -1;
}

Status AtomicFile::write(const void* data, size_t n) {
  if (fd_ < 0) return make_error("{}: write after the file was closed", path_);
  const auto* p = static_cast<const uint8_t*>(data);
  for (size_t off = 0; off < n;) {
    const ssize_t k = ::write(fd_, p + off, n - off);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) {
      const int err = k < 0 ? errno : ENOSPC;
      abandon();
      return make_error("{}: write failed: {}", path_, std::strerror(err));
    }
    off += size_t(k);
  }
  return Status::Ok();
}

Status AtomicFile::commit() {
  if (fd_ < 0) return make_error("{}: commit after the file was closed", path_);
  if (::fsync(fd_) != 0) {
    const int err = errno;
    abandon();
    return make_error("{}: fsync failed: {}", path_, std::strerror(err));
  }
  const int fd = fd_;
  fd_ = -1;
  if (::close(fd) != 0) {
    const int err = errno;
    ::unlink(tmp_.get());
    forget();
    return make_error("{}: close failed: {}", path_, std::strerror(err));
  }
  const bool renamed = ::rename(tmp_.get(), path_.c_str()) == 0;
  const int err = errno;
  if (!renamed) ::unlink(tmp_.get());
  forget();
  if (!renamed) return make_error("{}: cannot rename the finished file into place: {}", path_, std::strerror(err));
  return Status::Ok();
}

}  // namespace peregrine
