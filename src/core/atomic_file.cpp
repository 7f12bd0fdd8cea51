#include "core/atomic_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

namespace peregrine {

Result<AtomicFile> AtomicFile::create(const std::string& path) {
  namespace fs = std::filesystem;
  if (path.empty()) return make_error("output path is empty");
  std::error_code ec;
  if (fs::is_directory(path, ec)) return make_error("{}: is a directory", path);
  const fs::path dest(path);
  const fs::path dir = dest.has_parent_path() ? dest.parent_path() : fs::path(".");
  std::string tmp = (dir / ("." + dest.filename().string() + ".tmp.XXXXXX")).string();
  const int fd = ::mkstemp(tmp.data());
  if (fd < 0) return make_error("{}: cannot create a file in {}: {}", path, dir.string(), std::strerror(errno));
  // mkstemp makes the file 0600; give it the mode a plain create would have.
  const mode_t mask = ::umask(0);
  ::umask(mask);
  ::fchmod(fd, 0666 & ~mask);
  return AtomicFile(path, std::move(tmp), fd);
}

AtomicFile::AtomicFile(AtomicFile&& o) noexcept : path_(std::move(o.path_)), tmp_(std::move(o.tmp_)), fd_(o.fd_) {
  o.fd_ = -1;
}

AtomicFile::~AtomicFile() { abandon(); }

void AtomicFile::abandon() {
  if (fd_ < 0) return;
  ::close(fd_);
  ::unlink(tmp_.c_str());
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
    ::unlink(tmp_.c_str());
    return make_error("{}: close failed: {}", path_, std::strerror(err));
  }
  if (::rename(tmp_.c_str(), path_.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp_.c_str());
    return make_error("{}: cannot rename the finished file into place: {}", path_, std::strerror(err));
  }
  return Status::Ok();
}

}  // namespace peregrine
