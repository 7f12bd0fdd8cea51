// Finds special tokens (control and user-defined vocab entries such as
// "<|im_start|>") written literally in text, before any other
// pre-tokenization: leftmost match first, the longest at a position.
#pragma once

#include <array>
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
  bool empty() const { return n_tokens_ == 0; }

  void split(std::string_view text, std::vector<Fragment>& out) const;

 private:
  // A byte trie of the token strings, so a position costs at most one step per
  // byte of the longest token (Gemma has 6,000 control tokens starting with
  // '<'; trying each at every '<' of a hostile text would take minutes).
  struct Node {
    int32_t id = -1;                                 // token ending here, or -1
    std::vector<std::pair<uint8_t, int32_t>> next;  // (byte, node), sorted by byte
  };
  int32_t child(int32_t node, uint8_t b) const;
  // Length of the longest token that text starts with (0: none) and its id.
  std::pair<size_t, int32_t> longest_at(std::string_view text) const;

  std::vector<Node> nodes_;             // nodes_[0] is the root
  std::array<int32_t, 256> root_next_;  // the root's children by byte, -1 for none
  size_t n_tokens_ = 0;
};

}  // namespace peregrine
