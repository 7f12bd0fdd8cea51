#include "constrain/grammar_constraint.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>

namespace peregrine::constrain {

Result<std::shared_ptr<const CompiledGrammar>> CompiledGrammar::compile(const Grammar& g,
                                                                        std::shared_ptr<const TokenVocab> vocab,
                                                                        const CompileLimits& lim) {
  const auto t0 = std::chrono::steady_clock::now();
  auto c = std::make_shared<CompiledGrammar>();
  PG_ASSIGN(c->automaton, ByteAutomaton::compile(g, lim.automaton));
  PG_TRY(c->masks.build(c->automaton, *vocab, lim.masks));
  c->vocab = std::move(vocab);
  c->compile_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  return std::shared_ptr<const CompiledGrammar>(std::move(c));
}

GrammarConstraint::GrammarConstraint(std::shared_ptr<const CompiledGrammar> g) : g_(std::move(g)) {
  cur_.add_closed(g_->automaton, arena_, {g_->automaton.root_start(), kNoFrame});
  words_.resize(size_t(g_->vocab->n_words()));
  scratch_.resize(words_.size());
}

ConfigSet* GrammarConstraint::read(ConfigSet* from, std::string_view bytes) const {
  const ByteAutomaton& a = g_->automaton;
  for (unsigned char byte : bytes) {
    ConfigSet* to = from == &a_ ? &b_ : &a_;  // the scratch set not being read
    from->advance(a, arena_, a.class_of(byte), *to);
    if (to->empty() || to->overflow()) return nullptr;
    from = to;
  }
  return from;
}

bool GrammarConstraint::reads(Config c, std::string_view bytes) const {
  a_.clear();
  a_.add_closed(g_->automaton, arena_, c);
  return read(&a_, bytes) != nullptr;
}

void GrammarConstraint::allowed_tokens(uint32_t* words, int64_t n_vocab) const {
  const TokenVocab& v = *g_->vocab;
  const int64_t n_words = (n_vocab + 31) / 32;
  std::memset(words, 0, size_t(n_words) * 4);
  // Token ids past the vocabulary's rows are never allowed (and never written).
  uint32_t* w = n_vocab == v.n_rows() ? words : words_.data();
  if (w != words) std::memset(w, 0, words_.size() * 4);
  states_.clear();
  for (const Config& c : cur_.configs())
    if (std::find(states_.begin(), states_.end(), c.state) == states_.end()) states_.push_back(c.state);
  for (size_t i = 0; i < states_.size(); ++i)
    g_->masks.add_accepted(g_->automaton, states_[i], w, scratch_.data(), /*words_zero=*/i == 0);
  // Uncertain tokens return past the configuration's frame after some bytes: there must be a
  // frame beneath (the root rule's configurations have none, so theirs are all refused).
  for (const Config& c : cur_.configs())
    if (c.parent != kNoFrame)
      for (int32_t t : g_->masks.uncertain(g_->automaton, c.state))
        if (!(w[t >> 5] >> (t & 31) & 1) && reads(c, v.bytes(t))) w[t >> 5] |= 1u << (t & 31);
  if (cur_.can_end())
    for (int32_t t : v.end_of_generation()) w[t >> 5] |= 1u << (t & 31);
  if (w != words) {
    const int64_t n = std::min<int64_t>(n_words, v.n_words());
    std::memcpy(words, w, size_t(n) * 4);
    if (n_vocab % 32 && n == n_words) words[n - 1] &= (1u << (n_vocab % 32)) - 1;
  }
}

void GrammarConstraint::mask(float* logits, int64_t n_vocab) const {
  const int64_t n_words = (n_vocab + 31) / 32;
  if (int64_t(row_words_.size()) < n_words) row_words_.resize(size_t(n_words));
  const uint32_t* allowed = row_words_.data();
  allowed_tokens(row_words_.data(), n_vocab);
  const float ninf = -INFINITY;
  for (int64_t i = 0; i < n_words; ++i) {
    const uint32_t m = allowed[i];
    if (m == 0xFFFFFFFFu) continue;
    float* row = logits + i * 32;
    const int64_t n = std::min<int64_t>(32, n_vocab - i * 32);
    if (m == 0) {
      for (int64_t j = 0; j < n; ++j) row[j] = ninf;
      continue;
    }
    for (int64_t j = 0; j < n; ++j)
      if (!(m >> j & 1)) row[j] = ninf;
  }
}

bool GrammarConstraint::advance(TokenId token) {
  const std::string_view bytes = g_->vocab->bytes(token);
  if (bytes.empty()) return false;
  ConfigSet* after = read(&cur_, bytes);
  if (after == nullptr) return false;
  std::swap(cur_, *after);
  return true;
}

}  // namespace peregrine::constrain
