// TokenVocab: what constrained decoding needs to know about a tokenizer's tokens — the bytes
// each stands for, which never appear inside constrained text, which end generation — and a
// byte trie of the tokens laid out in depth-first order, so a walk can skip a whole subtree
// (every token that starts with a rejected prefix) by jumping to its end index.
//
// Never allowed inside constrained text: control, unknown and unused tokens and tokens with
// no bytes. End-of-generation tokens are allowed only where the constraint is complete.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace peregrine::constrain {

class TokenVocab {
 public:
  // n_rows: the width of a logits row (at least the tokenizer's vocabulary; ids past the
  // tokenizer's are never allowed).
  static std::shared_ptr<const TokenVocab> build(const Tokenizer& tok, int64_t n_rows);
  // From each id's bytes directly (empty: never allowed) and the end-of-generation ids.
  static std::shared_ptr<const TokenVocab> from_bytes(std::vector<std::string> bytes, std::vector<int32_t> eog);

  // One trie node per distinct byte prefix of a token, in depth-first order (children by
  // byte); the root (the empty prefix) is not stored. Node i's subtree is [i, subtree_end).
  struct Node {
    int32_t subtree_end;
    uint16_t depth;  // bytes from the root: 1 for a first byte
    uint8_t byte;
  };

  int64_t n_rows() const { return n_rows_; }
  int64_t n_words() const { return (n_rows_ + 31) / 32; }  // bitmask words
  std::string_view bytes(int32_t token) const;            // empty for never-allowed tokens
  bool is_text(int32_t token) const { return !bytes(token).empty(); }
  std::span<const int32_t> end_of_generation() const { return eog_; }
  std::span<const int32_t> never() const { return never_; }
  const std::vector<Node>& nodes() const { return nodes_; }
  // Tokens whose bytes are exactly node i's prefix.
  std::span<const int32_t> tokens_at(size_t node) const {
    return {node_tokens_.data() + tok_begin_[node], node_tokens_.data() + tok_begin_[node + 1]};
  }
  // Tokens within node i's subtree: node_tokens_[tok_begin_[i] .. tok_begin_[subtree_end]).
  std::span<const int32_t> tokens_in_subtree(size_t node) const {
    return {node_tokens_.data() + tok_begin_[node],
            node_tokens_.data() + tok_begin_[size_t(nodes_[node].subtree_end)]};
  }
  size_t max_token_bytes() const { return max_len_; }
  size_t memory_bytes() const;

 private:
  int64_t n_rows_ = 0;
  std::vector<std::string> bytes_;   // [n_rows] empty for never-allowed tokens
  std::vector<int32_t> eog_, never_;
  std::vector<Node> nodes_;
  std::vector<uint32_t> tok_begin_;  // [n_nodes + 1] offsets into node_tokens_
  std::vector<int32_t> node_tokens_;
  size_t max_len_ = 0;
};

}  // namespace peregrine::constrain
