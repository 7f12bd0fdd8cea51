// The catalogue constraint: generation restricted to one of a fixed list of strings (up to
// 10^6, as in generative retrieval, where a model writes the identifier of a catalogue item).
//
// A Catalogue is the prefix tree of the items' token sequences stored as flat arrays, the
// "vectorized trie" of STATIC (Su et al. 2025, "Vectorizing the Trie"): nodes are numbered
// breadth-first with each node's children in token order, so
//   - node n's outgoing edges are the contiguous range [offsets[n], offsets[n + 1]),
//   - edge e carries token edge_tokens[e] (sorted within a node) and leads to node e + 1,
//   - terminal bit n says that the path to node n spells a whole item.
// A step's allowed set is therefore one sorted slice of edge_tokens: masking is a fill of the
// gaps between its tokens, with no pointer chasing and no per-node allocation. Because
// children of consecutive nodes are consecutive, the child node id needs no array of its own.
//
// Tokenization: each item is encoded with tok.encode(item, /*parse_special=*/false), the
// canonical tokenization, as the model would produce that text at the start of its answer.
// For byte-level BPE (SmolLM2) that is the text itself, without a leading space. For a
// SentencePiece tokenizer with add_space_prefix (Llama 2 style) encode() puts "▁" before the
// first word, so the constrained output decodes with one leading space, which is how those
// models begin an answer word; with add_space_prefix false (Gemma 3) no space is added. Other
// token sequences that spell the same text are not allowed (as in STATIC): one path per item.
// An item whose tokens do not decode back to it (bytes the vocabulary cannot spell) is refused.
//
// The Catalogue is immutable once built and shared by every sequence that uses it
// (std::shared_ptr<const Catalogue>); a CatalogueConstraint is one sequence's position in it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "core/status.h"
#include "engine/sequence.h"
#include "tokenizer/tokenizer.h"

namespace peregrine {
class ThreadPool;
}

namespace peregrine::constrain {

// Bounds on outside input (a --choices file, a request's guided_choice list).
struct CatalogueLimits {
  size_t max_items = 1'000'000;            // distinct or not, before duplicates collapse
  size_t max_item_bytes = 4096;            // one item's UTF-8 bytes
  size_t max_total_bytes = size_t{256} << 20;  // all items' bytes together
  size_t max_file_bytes = size_t{512} << 20;   // read_lines: the file's size
};

class Catalogue {
 public:
  // Tokenizes every item (on the pool's threads when one is given) and builds the flat trie.
  // An error names the item (1-based index in `items`) for an empty item, invalid UTF-8, an
  // item over max_item_bytes, or one the vocab cannot spell; and the count for too many
  // items or bytes. Duplicates collapse into one.
  static Result<std::shared_ptr<const Catalogue>> build(std::span<const std::string> items,
                                                        const Tokenizer& tok,
                                                        const CatalogueLimits& limits = {},
                                                        ThreadPool* pool = nullptr);
  // The same from token sequences (items already tokenized; tests and benchmarks). Every
  // sequence must be non-empty with ids in [0, n_vocab).
  static Result<std::shared_ptr<const Catalogue>> from_tokens(
      std::span<const std::vector<TokenId>> seqs, int32_t n_vocab,
      const CatalogueLimits& limits = {});

  // The items of a --choices file: one per line ('\n' or "\r\n"), empty lines skipped. Errors
  // name the file (and the line, for invalid UTF-8); a file over max_file_bytes is refused
  // before it is read.
  static Result<std::vector<std::string>> read_lines(const std::string& path,
                                                     const CatalogueLimits& limits = {});

  static constexpr uint32_t kRoot = 0;

  size_t n_items() const { return n_items_; }  // distinct token sequences
  size_t n_nodes() const { return offsets_.size() - 1; }
  int32_t n_vocab() const { return n_vocab_; }
  size_t memory_bytes() const;  // the flat arrays and the object itself

  // The tokens that may follow node n: sorted, distinct. Edge i of the slice leads to
  // node first_child(n) + i.
  std::span<const TokenId> next_tokens(uint32_t n) const {
    return {edge_tokens_.data() + offsets_[n], edge_tokens_.data() + offsets_[n + 1]};
  }
  uint32_t first_child(uint32_t n) const { return offsets_[n] + 1; }
  bool terminal(uint32_t n) const { return (terminal_[n >> 6] >> (n & 63)) & 1; }
  // The child of n along `token`, or -1 when token may not follow n (binary search).
  int64_t child(uint32_t n, TokenId token) const;

 private:
  Catalogue() = default;
  // Builds the levels from token sequences [starts[i], starts[i + 1]) of `flat`.
  static std::shared_ptr<const Catalogue> build_trie(const std::vector<TokenId>& flat,
                                                     const std::vector<uint32_t>& starts,
                                                     int32_t n_vocab);

  std::vector<uint32_t> offsets_;      // [n_nodes + 1] node n's edges: [offsets_[n], offsets_[n+1])
  std::vector<TokenId> edge_tokens_;   // [n_nodes - 1] edge e's token; it leads to node e + 1
  std::vector<uint64_t> terminal_;     // [(n_nodes + 63) / 64] bit n: node n ends an item
  size_t n_items_ = 0;
  int32_t n_vocab_ = 0;
};

// One sequence's place in a catalogue. End-of-generation tokens (given at construction) are
// allowed exactly when complete(): at a node that ends an item. A node that ends an item and
// has children (an item that is a prefix of another) allows both. advance() takes an end token
// only when complete (a sequence that ignores end of generation); after it only end tokens
// are allowed.
class CatalogueConstraint : public TokenConstraint {
 public:
  CatalogueConstraint(std::shared_ptr<const Catalogue> catalogue,
                      std::span<const TokenId> end_tokens);

  void mask(float* logits, int64_t n_vocab) const override;
  void allowed_tokens(uint32_t* words, int64_t n_vocab) const override;
  bool advance(TokenId token) override;
  bool complete() const override { return catalogue_->terminal(node_); }

  uint32_t node() const { return node_; }
  // The catalogue tokens that may follow (sorted; end tokens aside). Empty after a whole item
  // that is no other item's prefix: only the end tokens remain, and with none given the
  // caller should end the sequence here.
  std::span<const TokenId> next_tokens() const {
    return ended_ ? std::span<const TokenId>() : catalogue_->next_tokens(node_);
  }

 private:
  std::shared_ptr<const Catalogue> catalogue_;
  std::vector<TokenId> end_tokens_;  // sorted, distinct, >= 0
  uint32_t node_ = Catalogue::kRoot;
  bool ended_ = false;  // an end token was taken by advance() (end of generation ignored)
};

// The vocabulary's end-of-generation tokens (tok.is_end_of_generation over every id), sorted.
std::vector<TokenId> end_of_generation_tokens(const Tokenizer& tok);

}  // namespace peregrine::constrain
