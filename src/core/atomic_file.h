// A file that appears at its path whole or not at all: bytes go to a temporary file in the
// destination's folder, which commit() flushes to disk (fsync) and renames over the
// destination. Until then -- and if anything fails, or the object is destroyed without a
// commit -- the destination is untouched and the temporary file is removed.
#pragma once

#include <cstddef>
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
  AtomicFile(std::string path, std::string tmp, int fd) : path_(std::move(path)), tmp_(std::move(tmp)), fd_(fd) {}
  void abandon();
  std::string path_, tmp_;
  int fd_ = -1;
};

}  // namespace peregrine
