#include "core/read_file.h"

#include <cerrno>
#include <cstdio>
#include <cstring>

namespace peregrine {

Result<std::string> read_file(const std::string& path, size_t max_bytes, std::string_view over_limit_note) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) return make_error("{}: cannot open: {}", path, std::strerror(errno));
  std::string data;
  char buf[1 << 16];
  bool too_big = false;
  size_t got;
  while ((got = std::fread(buf, 1, sizeof buf, f)) > 0) {
    if (data.size() + got > max_bytes) {
      too_big = true;
      break;
    }
    data.append(buf, got);
  }
  const int read_errno = std::ferror(f) != 0 ? errno : 0;
  std::fclose(f);
  if (too_big) return make_error("{}: more than {} bytes{}", path, max_bytes, over_limit_note);
  if (read_errno != 0) return make_error("{}: cannot read: {}", path, std::strerror(read_errno));
  return data;
}

}  // namespace peregrine
