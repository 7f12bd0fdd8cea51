#include "engine/stop_matcher.h"

#include <algorithm>
#include <utility>

namespace peregrine {

StopMatcher::StopMatcher(std::vector<std::string> stops) : stops_(std::move(stops)) {
  std::erase_if(stops_, [](const std::string& s) { return s.empty(); });
}

StopMatcher::Out StopMatcher::push(std::string_view piece) {
  Out out;
  if (stopped_) {
    out.stopped = true;
    return out;
  }
  if (stops_.empty()) {
    out.text.assign(piece);
    return out;
  }
  // Invariant: no stop string occurs in the text emitted so far + held_, and held_ is the
  // longest tail of it that a stop string begins with. So an occurrence completed by this
  // piece starts inside held_ + piece: searching that buffer is enough.
  std::string buf = std::move(held_);
  held_.clear();
  buf.append(piece);

  size_t first = std::string::npos;
  for (const std::string& s : stops_) first = std::min(first, buf.find(s));
  if (first != std::string::npos) {
    buf.resize(first);
    out.text = std::move(buf);
    out.stopped = stopped_ = true;
    return out;
  }
  // Hold back the longest tail that is a proper prefix of some stop string.
  size_t keep = 0;
  for (const std::string& s : stops_) {
    for (size_t k = std::min(buf.size(), s.size() - 1); k > keep; --k) {
      if (std::string_view(buf).substr(buf.size() - k) == std::string_view(s).substr(0, k)) {
        keep = k;
        break;
      }
    }
  }
  held_.assign(buf, buf.size() - keep, keep);
  buf.resize(buf.size() - keep);
  out.text = std::move(buf);
  return out;
}

std::string StopMatcher::flush() {
  std::string out;
  out.swap(held_);
  return out;
}

}  // namespace peregrine
