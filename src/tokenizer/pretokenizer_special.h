// Finds special tokens (control and user-defined vocab entries such as
// "<|im_start|>") written literally in text, before any other
// pre-tokenization: leftmost match first, the longest at a position.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace peregrine {

class SpecialTokenMatcher {
 public:
  // A stretch of text: either a special token (id >= 0) or plain text (id < 0).
  struct Fragment {
    std::string_view text;
    int32_t id;
  };

  // Empty strings are ignored; for duplicate strings the first id wins.
  explicit SpecialTokenMatcher(std::vector<std::pair<std::string, int32_t>> tokens);
  bool empty() const { return tokens_.empty(); }

  void split(std::string_view text, std::vector<Fragment>& out) const;

 private:
  // Sorted by first byte, then longest first; first_[b] .. first_[b + 1] is
  // the range starting with byte b, so a position costs one table look-up
  // unless a candidate starts there.
  std::vector<std::pair<std::string, int32_t>> tokens_;
  uint32_t first_[257] = {};
};

}  // namespace peregrine
