// Finds special tokens (control and user-defined vocab entries such as
// "<|im_start|>") written literally in text, before any other
// pre-tokenization: leftmost match first, the longest at a position.
//
// Parts of the text can be guarded: a token is recognised only where it lies
// wholly outside every guarded range, so text that came from somewhere else
// (a chat message inside the template's text) cannot write control tokens,
// not even by joining its bytes with the template's at either edge. Tokens
// marked `in_guarded` are recognised everywhere: SentencePiece matches its
// user-defined pieces in any text, special-token parsing or not.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace peregrine {

class SpecialTokenMatcher {
 public:
  struct Token {
    std::string text;
    int32_t id;
    bool in_guarded = false;  // recognised inside guarded ranges too
  };
  // A stretch of text: either a special token (id >= 0) or plain text (id < 0).
  struct Fragment {
    std::string_view text;
    int32_t id;
  };
  using Range = std::pair<size_t, size_t>;  // [begin, end) bytes of a text

  // Empty strings are ignored; for duplicate strings the first one wins.
  explicit SpecialTokenMatcher(std::vector<Token> tokens);
  bool empty() const { return n_tokens_ == 0; }

  // Cuts text into fragments; plain text between two tokens is one fragment.
  // `guarded`: sorted, disjoint, non-empty ranges within text.
  void split(std::string_view text, std::span<const Range> guarded,
             std::vector<Fragment>& out) const;
  void split(std::string_view text, std::vector<Fragment>& out) const { split(text, {}, out); }

 private:
  // A byte trie of the token strings, so a position costs at most one step per
  // byte of the longest token (Gemma has 6,000 control tokens starting with
  // '<'; trying each at every '<' of a hostile text would take minutes).
  struct Node {
    int32_t id = -1;                                 // token ending here, or -1
    bool in_guarded = false;                         // that token's flag
    std::vector<std::pair<uint8_t, int32_t>> next;  // (byte, node), sorted by byte
  };
  int32_t child(int32_t node, uint8_t b) const;
  // Length of the longest token that text starts with (0: none) and its id;
  // a token not marked in_guarded counts only when it is at most `free` bytes
  // long (the unguarded bytes from the start of text).
  std::pair<size_t, int32_t> longest_at(std::string_view text, size_t free) const;

  std::vector<Node> nodes_;             // nodes_[0] is the root
  std::array<int32_t, 256> root_next_;  // the root's children by byte, -1 for none
  size_t n_tokens_ = 0;
  size_t n_in_guarded_ = 0;             // tokens marked in_guarded
};

}  // namespace peregrine
