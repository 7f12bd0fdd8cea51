// A file that appears at its path whole or not at all: bytes go to a temporary file in the
// destination's folder, which commit() flushes to disk (fsync) and renames over the
// destination. Until then -- and if anything fails, the object is destroyed without a commit,
// or the process is stopped by SIGINT, SIGTERM or SIGHUP -- the destination is untouched and
// the temporary file is removed. (The signal handlers are installed on first use, only where
// the program kept the default action; they remove open temporary files and re-raise.)
#pragma once

#include <cstddef>
#include <memory>
#include <string>

#include "core/status.h"

namespace peregrine {

class AtomicFile {
 public:
  // Creates the temporary file beside `path` (with the mode a plain create would give).
  static Result<AtomicFile> create(const std::string& path);
  AtomicFile(AtomicFile&& o) noexcept;
  AtomicFile& operator=(AtomicFile&&) = delete;
  AtomicFile(const AtomicFile&) = delete;
  ~AtomicFile();  // abandons the file unless committed

  // Appends n bytes (a full disk or any other error names the destination).
  Status write(const void* data, size_t n);
  // fsync, close and rename into place. The object is spent afterwards, either way.
  Status commit();

 private:
  AtomicFile(std::string path, std::unique_ptr<char[]> tmp, int fd);
  void abandon();
  void forget();  // no longer removed on a signal
  std::string path_;
  std::unique_ptr<char[]> tmp_;  // stable address: the signal handler reads it
  int fd_ = -1;
};

}  // namespace peregrine
