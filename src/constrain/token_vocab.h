// TokenVocab: what constrained decoding needs to know about a tokenizer's tokens — the bytes
// each stands for, which never appear inside constrained text, which end generation. TokenTrie
// lays strings out for the mask walks (token_masks.cpp builds one per grammar over the tokens'
// byte classes).
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

// Strings with ids (several ids may share a string) in a trie laid out depth-first: one node
// per distinct non-empty prefix, children by byte; the root (the empty prefix) is not
// stored. Node i's subtree is [i, subtree_end), so a walk skips every string that starts with
// a rejected prefix by jumping there.
class TokenTrie {
 public:
  struct Node {
    int32_t subtree_end;
    uint16_t depth;  // bytes from the root: 1 for a first byte
    uint8_t byte;
  };
  // Strings must be non-empty and at most 65535 bytes.
  static TokenTrie build(std::vector<std::pair<std::string, int32_t>> entries);

  const std::vector<Node>& nodes() const { return nodes_; }
  // Ids whose string is exactly node i's prefix.
  std::span<const int32_t> tokens_at(size_t node) const {
    return {ids_.data() + begin_[node], ids_.data() + begin_[node + 1]};
  }
  // Ids within node i's subtree.
  std::span<const int32_t> tokens_in_subtree(size_t node) const {
    return {ids_.data() + begin_[node], ids_.data() + begin_[size_t(nodes_[node].subtree_end)]};
  }
  size_t max_depth() const { return max_depth_; }
  size_t memory_bytes() const { return nodes_.size() * sizeof(Node) + begin_.size() * 4 + ids_.size() * 4; }

 private:
  std::vector<Node> nodes_;
  std::vector<uint32_t> begin_;  // [n_nodes + 1] offsets into ids_
  std::vector<int32_t> ids_;
  size_t max_depth_ = 0;
};

class TokenVocab {
 public:
  // n_rows: the width of a logits row (at least the tokenizer's vocabulary; ids past the
  // tokenizer's are never allowed).
  static std::shared_ptr<const TokenVocab> build(const Tokenizer& tok, int64_t n_rows);
  // From each id's bytes directly (empty: never allowed) and the end-of-generation ids.
  static std::shared_ptr<const TokenVocab> from_bytes(std::vector<std::string> bytes, std::vector<int32_t> eog);

  int64_t n_rows() const { return n_rows_; }
  int64_t n_words() const { return (n_rows_ + 31) / 32; }  // bitmask words
  std::string_view bytes(int32_t token) const;            // empty for never-allowed tokens
  std::span<const int32_t> end_of_generation() const { return eog_; }
  std::span<const int32_t> never() const { return never_; }
  size_t memory_bytes() const;

 private:
  int64_t n_rows_ = 0;
  std::vector<std::string> bytes_;   // [n_rows] empty for never-allowed tokens
  std::vector<int32_t> eog_, never_;
};

}  // namespace peregrine::constrain
