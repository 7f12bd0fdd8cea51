#include "constrain/catalogue.h"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <limits>
#include <numeric>
#include <string_view>

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
                                                          const CatalogueLimits& limits) {
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

  // All token sequences in one array: item i is flat[starts[i], starts[i + 1]).
  std::vector<TokenId> flat;
  flat.reserve(total / 3 + items.size());
  std::vector<uint32_t> starts;
  starts.reserve(items.size() + 1);
  starts.push_back(0);
  std::string decoded;
  for (size_t i = 0; i < items.size(); ++i) {
    const std::string& s = items[i];
    const std::vector<TokenId> ids = tok.encode(s, /*parse_special=*/false);
    // The tokens must spell the item (or " " + item, SentencePiece's space prefix): a byte the
    // vocab lacks is dropped or becomes unk, and that item could never be generated.
    decoded.clear();
    for (TokenId id : ids) decoded += tok.token_bytes(id);
    const bool spelled = decoded == s || (decoded.size() == s.size() + 1 && decoded[0] == ' ' &&
                                          std::string_view(decoded).substr(1) == s);
    if (ids.empty() || !spelled) {
      return make_error("catalogue: item {} (\"{}\") cannot be spelled by the vocabulary "
                        "(its {} tokens decode to \"{}\")",
                        i + 1, excerpt(s), ids.size(), excerpt(decoded));
    }
    // Edges are counted in uint32: bounded by max_total_bytes in practice, checked anyway.
    if (flat.size() + ids.size() >= std::numeric_limits<uint32_t>::max()) {
      return make_error("catalogue: more than {} tokens in all", std::numeric_limits<uint32_t>::max());
    }
    flat.insert(flat.end(), ids.begin(), ids.end());
    starts.push_back(static_cast<uint32_t>(flat.size()));
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
  auto seq = [&](uint32_t i) {
    return std::span<const TokenId>(flat.data() + starts[i], flat.data() + starts[i + 1]);
  };
  // Sort the sequences (a prefix sorts before its extensions) and drop duplicates.
  std::vector<uint32_t> order(n);
  std::iota(order.begin(), order.end(), 0u);
  std::sort(order.begin(), order.end(), [&](uint32_t a, uint32_t b) {
    const auto x = seq(a), y = seq(b);
    return std::lexicographical_compare(x.begin(), x.end(), y.begin(), y.end());
  });
  order.erase(std::unique(order.begin(), order.end(),
                          [&](uint32_t a, uint32_t b) { return std::ranges::equal(seq(a), seq(b)); }),
              order.end());

  std::shared_ptr<Catalogue> c(new Catalogue());
  c->n_items_ = order.size();
  c->n_vocab_ = n_vocab;
  c->offsets_.reserve(flat.size() + 2);
  c->edge_tokens_.reserve(flat.size());
  std::vector<uint8_t> terminal;  // [n_nodes] packed into bits at the end
  terminal.reserve(flat.size() + 1);

  // Level by level: a node of depth d is a run [begin, end) of sorted sequences that share
  // their first d tokens. Its sequences of length d (at most one, after dedup; first in the
  // run) make it terminal; the rest split into runs by token d, its children, which are the
  // next level's nodes in this order. Emitting each level's children in order numbers the
  // nodes breadth-first, so edge e leads to node e + 1.
  struct Run {
    uint32_t begin, end;
  };
  std::vector<Run> level{{0, static_cast<uint32_t>(order.size())}}, next;
  for (uint32_t depth = 0; !level.empty(); ++depth) {
    next.clear();
    for (const Run& r : level) {
      c->offsets_.push_back(static_cast<uint32_t>(c->edge_tokens_.size()));
      uint32_t i = r.begin;
      const bool ends = seq(order[i]).size() == depth;
      terminal.push_back(ends ? 1 : 0);
      if (ends) ++i;
      while (i < r.end) {
        const TokenId t = seq(order[i])[depth];
        uint32_t j = i + 1;
        while (j < r.end && seq(order[j])[depth] == t) ++j;
        c->edge_tokens_.push_back(t);
        next.push_back({i, j});
        i = j;
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
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) return make_error("{}: cannot open: {}", path, std::strerror(errno));
  std::string data;
  char buf[1 << 16];
  bool too_big = false;
  size_t got;
  while ((got = std::fread(buf, 1, sizeof buf, f)) > 0) {
    if (data.size() + got > limits.max_file_bytes) {
      too_big = true;
      break;
    }
    data.append(buf, got);
  }
  const bool failed = std::ferror(f) != 0;
  std::fclose(f);
  if (too_big) {
    return make_error("{}: more than {} bytes; a catalogue file may hold at most that", path,
                      limits.max_file_bytes);
  }
  if (failed) return make_error("{}: read error", path);

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
  // -inf over the gaps between the allowed tokens, taken in increasing order from the two
  // sorted lists (the node's slice, and the end tokens when complete): every disallowed entry
  // is written once, allowed ones are not touched, and the gaps are long runs that the fill
  // vectorizes.
  const std::span<const TokenId> next = next_tokens();
  auto a = next.begin();
  auto b = complete() ? end_tokens_.cbegin() : end_tokens_.cend();
  int64_t from = 0;
  while (a != next.end() || b != end_tokens_.cend()) {
    TokenId t;
    if (b == end_tokens_.cend() || (a != next.end() && *a <= *b)) {
      t = *a++;
      if (b != end_tokens_.cend() && *b == t) ++b;
    } else {
      t = *b++;
    }
    if (t >= n_vocab) break;
    std::fill(logits + from, logits + t, kNegInf);
    from = int64_t(t) + 1;
  }
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
