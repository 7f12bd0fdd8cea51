// N-gram drafting: no extra weights.
//
// Prompt lookup (Saxena 2023; llama.cpp's llama-lookup does the same): find the most recent
// earlier occurrence of the sequence's longest suffix of n_max..n_min tokens, in its own
// prompt and output, and propose the tokens that followed it. Outputs that copy from their
// prompt (rewriting, extraction, code edits) draft long runs this way.
//
// NgramHistory adds what earlier requests generated (the SuffixDecoding idea, Oliaro et al.
// 2024: agentic and templated workloads repeat earlier answers): a bounded ring of their
// tokens and a direct-mapped table from each n-gram's hash to where it last occurred. Memory
// is fixed at creation (4 bytes per token of capacity plus 16 per table entry); older
// outputs are overwritten, and a table entry is checked against the ring before use, so
// neither overwrites nor hash collisions can draft tokens that did not follow the n-gram.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "engine/spec/drafter.h"

namespace peregrine {

class NgramHistory {
 public:
  // capacity: tokens kept (0: none); n-grams of n_min..n_max tokens are indexed.
  NgramHistory(int64_t capacity, int32_t n_min, int32_t n_max);

  // Adds a finished output (its tokens only; a separator keeps outputs apart).
  void add(std::span<const TokenId> tokens);
  // Appends to out up to max tokens that followed the longest indexed suffix of `context`
  // (out unchanged when none matches).
  void lookup(std::span<const TokenId> context, int32_t max, std::vector<TokenId>& out) const;

  int64_t capacity() const { return int64_t(ring_.size()); }
  int64_t size() const { return int64_t(std::min<uint64_t>(written_, ring_.size())); }
  size_t bytes() const { return ring_.size() * sizeof(TokenId) + table_.size() * sizeof(Entry); }

 private:
  struct Entry {
    uint64_t hash = 0;
    uint64_t next = 0;  // absolute position of the token after the n-gram, + 1 (0: empty)
  };
  void push(TokenId t);
  bool held(uint64_t pos) const { return pos < written_ && written_ - pos <= ring_.size(); }
  TokenId at(uint64_t pos) const { return ring_[pos % ring_.size()]; }

  int32_t n_min_, n_max_;
  std::vector<TokenId> ring_;
  std::vector<Entry> table_;  // power of two
  uint64_t written_ = 0;      // tokens ever pushed
};

class NgramDrafter : public Drafter {
 public:
  static constexpr int32_t kNMin = 2, kNMax = 4;
  // history: shared with other sequences (the server), or null.
  explicit NgramDrafter(std::shared_ptr<const NgramHistory> history = nullptr,
                        int32_t n_min = kNMin, int32_t n_max = kNMax)
      : history_(std::move(history)), n_min_(n_min), n_max_(n_max) {}
  std::string_view name() const override { return "ngram"; }
  Status propose(const DraftRequest& req, DraftGoOn go_on, Draft& out) override;
  // Drafts that came from the history (a counter for /metrics).
  int64_t history_drafts() const { return history_drafts_; }

 private:
  std::shared_ptr<const NgramHistory> history_;
  int32_t n_min_, n_max_;
  int64_t history_drafts_ = 0;
};

// The tokens after the most recent earlier occurrence of tokens' longest suffix of
// n_max..n_min tokens (up to max of them, appended to out); false when none occurs.
bool lookup_suffix(std::span<const TokenId> tokens, int32_t n_min, int32_t n_max, int32_t max,
                   std::vector<TokenId>& out);

}  // namespace peregrine
