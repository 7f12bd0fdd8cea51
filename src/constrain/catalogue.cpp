#include "constrain/catalogue.h"

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <numeric>
#include <string_view>

#include "core/read_file.h"
#include "core/thread_pool.h"
#include "tokenizer/unicode_utf8.h"

namespace peregrine::constrain {
namespace {

// A short, printable excerpt of an item for error messages.
std::string excerpt(std::string_view s) {
  constexpr size_t kMax = 40;
  std::string out;
  utf8::append_replacing_invalid(out, s.substr(0, kMax));
  if (s.size() > kMax) out += "...";
  return out;
}

}  // namespace

Result<std::shared_ptr<const Catalogue>> Catalogue::build(std::span<const std::string> items,
                                                          const Tokenizer& tok,
                                                          const CatalogueLimits& limits,
                                                          ThreadPool* pool) {
  if (items.empty()) return make_error("catalogue: no items");
  if (items.size() > limits.max_items) {
    return make_error("catalogue: {} items; at most {} allowed", items.size(), limits.max_items);
  }
  size_t total = 0;
  for (size_t i = 0; i < items.size(); ++i) {
    const std::string& s = items[i];
    if (s.empty()) return make_error("catalogue: item {} is empty", i + 1);
    if (s.size() > limits.max_item_bytes) {
      return make_error("catalogue: item {} (\"{}\") is {} bytes; at most {} allowed", i + 1,
                        excerpt(s), s.size(), limits.max_item_bytes);
    }
    if (const size_t v = utf8::valid_prefix(s); v != s.size()) {
      return make_error("catalogue: item {} (\"{}\") is not valid UTF-8 at byte {}", i + 1,
                        excerpt(s), v);
    }
    total += s.size();
    if (total > limits.max_total_bytes) {
      return make_error("catalogue: items 1..{} hold {} bytes; at most {} allowed in all", i + 1,
                        total, limits.max_total_bytes);
    }
  }

  // Tokenized in blocks of items, on the pool's threads when there is one (encoding is most
  // of the build: ~0.5 µs an item for SmolLM2's BPE, ~10 µs for Gemma 3's SentencePiece).
  struct Block {
    std::vector<TokenId> tokens;  // the block's items' tokens, one after another
    std::vector<uint32_t> lens;   // [items in the block]
    size_t bad = SIZE_MAX;        // the first item the vocab cannot spell
    size_t bad_n_tokens = 0;
    std::string bad_decoded;
  };
  constexpr size_t kBlock = 4096;
  std::vector<Block> blocks((items.size() + kBlock - 1) / kBlock);
  auto tokenize = [&](int64_t b) {
    Block& blk = blocks[size_t(b)];
    const size_t end = std::min(items.size(), size_t(b + 1) * kBlock);
    std::string decoded;
    for (size_t i = size_t(b) * kBlock; i < end; ++i) {
      const std::string& s = items[i];
      const std::vector<TokenId> ids = tok.encode(s, /*parse_special=*/false);
      // The tokens must spell the item (or " " + item, SentencePiece's space prefix): a byte
      // the vocab lacks is dropped or becomes unk, and that item could never be generated.
      decoded.clear();
      for (TokenId id : ids) decoded += tok.token_bytes(id);
      const bool spelled = decoded == s || (decoded.size() == s.size() + 1 && decoded[0] == ' ' &&
                                            std::string_view(decoded).substr(1) == s);
      if (ids.empty() || !spelled) {
        blk.bad = i;
        blk.bad_n_tokens = ids.size();
        blk.bad_decoded = decoded;
        return;
      }
      blk.tokens.insert(blk.tokens.end(), ids.begin(), ids.end());
      blk.lens.push_back(static_cast<uint32_t>(ids.size()));
    }
  };
  if (pool != nullptr && blocks.size() > 1) {
    pool->parallel_for(int64_t(blocks.size()), [&](int64_t b, int) { tokenize(b); });
  } else {
    for (size_t b = 0; b < blocks.size(); ++b) tokenize(int64_t(b));
  }

  // All token sequences in one array: item i is flat[starts[i], starts[i + 1]).
  size_t n_tokens = 0;
  for (const Block& blk : blocks) {
    if (blk.bad != SIZE_MAX) {
      return make_error("catalogue: item {} (\"{}\") cannot be spelled by the vocabulary "
                        "(its {} tokens decode to \"{}\")",
                        blk.bad + 1, excerpt(items[blk.bad]), blk.bad_n_tokens,
                        excerpt(blk.bad_decoded));
    }
    n_tokens += blk.tokens.size();
  }
  // Edges are counted in uint32: bounded by max_total_bytes in practice, checked anyway.
  if (n_tokens >= std::numeric_limits<uint32_t>::max()) {
    return make_error("catalogue: {} tokens in all; at most {}", n_tokens,
                      std::numeric_limits<uint32_t>::max() - 1);
  }
  std::vector<TokenId> flat;
  flat.reserve(n_tokens);
  std::vector<uint32_t> starts;
  starts.reserve(items.size() + 1);
  starts.push_back(0);
  for (Block& blk : blocks) {
    flat.insert(flat.end(), blk.tokens.begin(), blk.tokens.end());
    for (uint32_t len : blk.lens) starts.push_back(starts.back() + len);
    blk = Block();  // its memory back as we go
  }
  return build_trie(flat, starts, tok.n_vocab());
}

Result<std::shared_ptr<const Catalogue>> Catalogue::from_tokens(
    std::span<const std::vector<TokenId>> seqs, int32_t n_vocab, const CatalogueLimits& limits) {
  if (seqs.empty()) return make_error("catalogue: no items");
  if (seqs.size() > limits.max_items) {
    return make_error("catalogue: {} items; at most {} allowed", seqs.size(), limits.max_items);
  }
  std::vector<TokenId> flat;
  std::vector<uint32_t> starts{0};
  starts.reserve(seqs.size() + 1);
  for (size_t i = 0; i < seqs.size(); ++i) {
    if (seqs[i].empty()) return make_error("catalogue: item {} is empty", i + 1);
    for (TokenId t : seqs[i]) {
      if (t < 0 || t >= n_vocab) {
        return make_error("catalogue: item {} has token {} outside the vocabulary [0, {})", i + 1,
                          t, n_vocab);
      }
    }
    if (flat.size() + seqs[i].size() >= std::numeric_limits<uint32_t>::max()) {
      return make_error("catalogue: more than {} tokens in all", std::numeric_limits<uint32_t>::max());
    }
    flat.insert(flat.end(), seqs[i].begin(), seqs[i].end());
    starts.push_back(static_cast<uint32_t>(flat.size()));
  }
  return build_trie(flat, starts, n_vocab);
}

std::shared_ptr<const Catalogue> Catalogue::build_trie(const std::vector<TokenId>& flat,
                                                       const std::vector<uint32_t>& starts,
                                                       int32_t n_vocab) {
  const size_t n = starts.size() - 1;
  std::shared_ptr<Catalogue> c(new Catalogue());
  c->n_vocab_ = n_vocab;
  c->offsets_.reserve(flat.size() + 2);
  c->edge_tokens_.reserve(flat.size());
  std::vector<uint8_t> terminal;  // [n_nodes] packed into bits at the end
  terminal.reserve(flat.size() + 1);

  // Level by level, a most-significant-digit radix sort of the sequences that emits the trie
  // as it goes: a node of depth d is a run order[begin, end) of the sequences that share
  // their first d tokens. Those of length d (copies of one item) make it terminal and leave;
  // the rest are sorted by token d (one 64-bit key each: token, then sequence index) and
  // split into runs, its children, which become the next level's nodes in this order.
  // Emitting each level's children in order numbers the nodes breadth-first, so edge e
  // leads to node e + 1. Each step reads one token per live sequence: no comparison of
  // whole sequences and no pointer chasing.
  struct Seq {
    uint32_t pos, len;  // flat[pos, pos + len)
  };
  std::vector<Seq> order(n);  // the live sequences, grouped into the current level's runs
  for (size_t i = 0; i < n; ++i) order[i] = {starts[i], starts[i + 1] - starts[i]};
  std::vector<Seq> moved;     // a run's sequences that go on, in key order
  std::vector<uint64_t> keys;  // [token d << 32 | place in the run]
  struct Run {
    uint32_t begin, end;
  };
  std::vector<Run> level{{0, static_cast<uint32_t>(n)}}, next;
  for (uint32_t depth = 0; !level.empty(); ++depth) {
    next.clear();
    for (const Run& r : level) {
      c->offsets_.push_back(static_cast<uint32_t>(c->edge_tokens_.size()));
      keys.clear();
      for (uint32_t i = r.begin; i < r.end; ++i) {
        // The token reads are scattered over `flat`: start those a few places on early
        // (most runs are short, so across runs; a place past the run's end is just unused).
        if (i + 16 < n) __builtin_prefetch(flat.data() + order[i + 16].pos + depth);
        const Seq q = order[i];
        if (q.len > depth) keys.push_back(uint64_t(uint32_t(flat[q.pos + depth])) << 32 | (i - r.begin));
      }
      const bool ends = keys.size() < r.end - r.begin;
      terminal.push_back(ends ? 1 : 0);
      c->n_items_ += ends ? 1 : 0;
      if (!std::is_sorted(keys.begin(), keys.end())) std::sort(keys.begin(), keys.end());
      // The children's sequences take the run's last keys.size() places, in key order.
      moved.clear();
      for (const uint64_t k : keys) moved.push_back(order[r.begin + uint32_t(k)]);
      const uint32_t base = r.end - static_cast<uint32_t>(keys.size());
      std::copy(moved.begin(), moved.end(), order.begin() + base);
      for (size_t k = 0; k < keys.size();) {
        const uint32_t t = uint32_t(keys[k] >> 32);
        const size_t first = k;
        while (k < keys.size() && uint32_t(keys[k] >> 32) == t) ++k;
        c->edge_tokens_.push_back(static_cast<TokenId>(t));
        next.push_back({base + uint32_t(first), base + uint32_t(k)});
      }
    }
    std::swap(level, next);
  }
  c->offsets_.push_back(static_cast<uint32_t>(c->edge_tokens_.size()));
  PG_ASSERT(c->offsets_.size() == c->edge_tokens_.size() + 2);  // n_nodes + 1, n_nodes - 1

  c->terminal_.assign((terminal.size() + 63) / 64, 0);
  for (size_t k = 0; k < terminal.size(); ++k) {
    if (terminal[k]) c->terminal_[k >> 6] |= uint64_t{1} << (k & 63);
  }
  c->offsets_.shrink_to_fit();
  c->edge_tokens_.shrink_to_fit();
  return c;
}

Result<std::vector<std::string>> Catalogue::read_lines(const std::string& path,
                                                       const CatalogueLimits& limits) {
  PG_ASSIGN(const std::string data,
            read_file(path, limits.max_file_bytes, "; a catalogue file may hold at most that"));

  std::vector<std::string> lines;
  size_t line_no = 0;
  for (size_t pos = 0; pos < data.size();) {
    ++line_no;
    size_t end = data.find('\n', pos);
    const size_t next = end == std::string::npos ? data.size() : end + 1;
    if (end == std::string::npos) end = data.size();
    std::string_view line(data.data() + pos, end - pos);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    pos = next;
    if (line.empty()) continue;
    if (const size_t v = utf8::valid_prefix(line); v != line.size()) {
      return make_error("{}:{}: not valid UTF-8 at byte {} of the line", path, line_no, v);
    }
    if (line.size() > limits.max_item_bytes) {
      return make_error("{}:{}: the item is {} bytes; at most {} allowed", path, line_no,
                        line.size(), limits.max_item_bytes);
    }
    if (lines.size() == limits.max_items) {
      return make_error("{}:{}: more than {} items", path, line_no, limits.max_items);
    }
    lines.emplace_back(line);
  }
  if (lines.empty()) return make_error("{}: no items (every line is empty)", path);
  return lines;
}

size_t Catalogue::memory_bytes() const {
  return sizeof(*this) + offsets_.capacity() * sizeof(uint32_t) +
         edge_tokens_.capacity() * sizeof(TokenId) + terminal_.capacity() * sizeof(uint64_t);
}

int64_t Catalogue::child(uint32_t n, TokenId token) const {
  const std::span<const TokenId> s = next_tokens(n);
  const auto it = std::lower_bound(s.begin(), s.end(), token);
  if (it == s.end() || *it != token) return -1;
  return first_child(n) + (it - s.begin());
}

// ---- CatalogueConstraint ---------------------------------------------------------------------

CatalogueConstraint::CatalogueConstraint(std::shared_ptr<const Catalogue> catalogue,
                                         std::span<const TokenId> end_tokens)
    : catalogue_(std::move(catalogue)), end_tokens_(end_tokens.begin(), end_tokens.end()) {
  PG_ASSERT(catalogue_ != nullptr);
  end_tokens_.erase(std::remove_if(end_tokens_.begin(), end_tokens_.end(),
                                   [](TokenId t) { return t < 0; }),
                    end_tokens_.end());
  std::sort(end_tokens_.begin(), end_tokens_.end());
  end_tokens_.erase(std::unique(end_tokens_.begin(), end_tokens_.end()), end_tokens_.end());
}

void CatalogueConstraint::mask(float* logits, int64_t n_vocab) const {
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  // The allowed tokens in increasing order, merged from two sorted lists (the node's slice,
  // and the end tokens when complete), a chunk at a time: their logits are gathered, the row
  // up to the chunk's last token is filled with -inf, and the logits go back. The fill is one
  // long vectorized run per chunk, so a fan-out of thousands (a root over a 262,144-token
  // vocab) costs a gather and a scatter per allowed token, not a short fill per gap.
  constexpr int kChunk = 256;
  TokenId ids[kChunk];
  float vals[kChunk];
  int m = 0;
  int64_t from = 0;  // [0, from) is done
  auto flush = [&] {
    for (int k = 0; k < m; ++k) vals[k] = logits[ids[k]];
    std::fill(logits + from, logits + ids[m - 1] + 1, kNegInf);
    for (int k = 0; k < m; ++k) logits[ids[k]] = vals[k];
    from = int64_t(ids[m - 1]) + 1;
    m = 0;
  };
  const std::span<const TokenId> next = next_tokens();
  auto a = next.begin();
  auto b = complete() ? end_tokens_.cbegin() : end_tokens_.cend();
  while (a != next.end() || b != end_tokens_.cend()) {
    TokenId t;
    if (b == end_tokens_.cend() || (a != next.end() && *a <= *b)) {
      t = *a++;
      if (b != end_tokens_.cend() && *b == t) ++b;
    } else {
      t = *b++;
    }
    if (t >= n_vocab) break;
    ids[m++] = t;
    if (m == kChunk) flush();
  }
  if (m > 0) flush();
  std::fill(logits + from, logits + n_vocab, kNegInf);
}

void CatalogueConstraint::allowed_tokens(uint32_t* words, int64_t n_vocab) const {
  std::fill(words, words + (n_vocab + 31) / 32, 0u);
  for (const TokenId t : next_tokens()) {
    if (t >= n_vocab) break;
    words[t >> 5] |= 1u << (t & 31);
  }
  if (!complete()) return;
  for (const TokenId t : end_tokens_) {
    if (t < n_vocab) words[t >> 5] |= 1u << (t & 31);
  }
}

bool CatalogueConstraint::advance(TokenId token) {
  if (!ended_) {
    if (const int64_t c = catalogue_->child(node_, token); c >= 0) {
      node_ = static_cast<uint32_t>(c);
      return true;
    }
  }
  // An end token taken as an ordinary token (the sequence ignores end of generation): the
  // item is finished and only end tokens may follow.
  if (complete() && std::binary_search(end_tokens_.begin(), end_tokens_.end(), token)) {
    ended_ = true;
    return true;
  }
  return false;
}

std::vector<TokenId> end_of_generation_tokens(const Tokenizer& tok) {
  std::vector<TokenId> out;
  for (TokenId id = 0; id < tok.n_vocab(); ++id) {
    if (tok.is_end_of_generation(id)) out.push_back(id);
  }
  return out;
}

}  // namespace peregrine::constrain
