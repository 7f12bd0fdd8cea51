// SentencePiece's BPE segmentation (model_type BPE): split a text into
// characters, then repeatedly merge the adjacent pair whose concatenation is a
// vocab piece with the highest score. There is no merge list: the scores rank
// every possible merge. Rules, as SentencePiece's encoder applies them
// (Kudo & Richardson 2018, and the library's BPE model):
//   - of all candidate pairs the one with the highest score merges first; on a
//     tie the leftmost;
//   - a merged piece must be a "mergeable" piece (normal, user-defined or
//     unused; control and byte pieces are never produced by a merge);
//   - a final piece of type unused is split again into the two pieces it was
//     made of (recursively), so unused pieces never appear in the output.
// A heap of candidate pairs with lazy invalidation keeps it O(n log n) in the
// length of the text.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace peregrine {

class SpmMerges {
 public:
  // What a piece text is in the vocab, for the merge loop.
  struct Piece {
    int32_t id;
    float score;
    bool unused;  // split again after merging (SentencePiece type UNUSED)
  };
  void reserve(size_t n_pieces) { pieces_.reserve(n_pieces); }
  // Adds a mergeable piece. The table keeps a view of `text`, which must
  // outlive it (the tokenizer's vocab strings). A later duplicate replaces the
  // earlier entry.
  void add(std::string_view text, Piece p) { pieces_.insert_or_assign(text, p); }
  // The mergeable piece spelled `text`, or nullptr.
  const Piece* find(std::string_view text) const {
    const auto it = pieces_.find(text);
    return it == pieces_.end() ? nullptr : &it->second;
  }
  size_t size() const { return pieces_.size(); }

  // A stretch of the input: text.substr(start, len).
  struct Span {
    int32_t start, len;
  };

  // Segments `text` (at most INT32_MAX bytes) into spans. Each valid UTF-8
  // character starts as its own symbol; bytes that do not form valid UTF-8 are
  // symbols of one byte each. Spans cover the text in order, without gaps.
  void segment(std::string_view text, std::vector<Span>& out) const;

 private:
  std::unordered_map<std::string_view, Piece> pieces_;
};

}  // namespace peregrine
