#include "tokenizer/pretokenizer_special.h"

#include <algorithm>

namespace peregrine {

SpecialTokenMatcher::SpecialTokenMatcher(std::vector<Token> tokens) {
  root_next_.fill(-1);
  nodes_.emplace_back();
  for (const Token& t : tokens) {
    if (t.text.empty()) continue;
    int32_t node = 0;
    for (char c : t.text) {
      const auto b = static_cast<uint8_t>(c);
      int32_t next = child(node, b);
      if (next < 0) {
        next = static_cast<int32_t>(nodes_.size());
        nodes_.emplace_back();
        auto& kids = nodes_[static_cast<size_t>(node)].next;
        kids.insert(std::lower_bound(kids.begin(), kids.end(), std::pair<uint8_t, int32_t>{b, -1}),
                    {b, next});
        if (node == 0) root_next_[b] = next;
      }
      node = next;
    }
    Node& end = nodes_[static_cast<size_t>(node)];
    if (end.id < 0) {
      end.id = t.id;
      end.in_guarded = t.in_guarded;
      ++n_tokens_;
      if (t.in_guarded) ++n_in_guarded_;
    }
  }
}

int32_t SpecialTokenMatcher::child(int32_t node, uint8_t b) const {
  if (node == 0) return root_next_[b];
  const auto& kids = nodes_[static_cast<size_t>(node)].next;
  const auto it = std::lower_bound(kids.begin(), kids.end(), std::pair<uint8_t, int32_t>{b, -1});
  return it != kids.end() && it->first == b ? it->second : -1;
}

std::pair<size_t, int32_t> SpecialTokenMatcher::longest_at(std::string_view text,
                                                           size_t free) const {
  std::pair<size_t, int32_t> best{0, -1};
  int32_t node = 0;
  for (size_t i = 0; i < text.size(); ++i) {
    node = child(node, static_cast<uint8_t>(text[i]));
    if (node < 0) break;
    const Node& n = nodes_[static_cast<size_t>(node)];
    if (n.id >= 0 && (n.in_guarded || i + 1 <= free)) best = {i + 1, n.id};
  }
  return best;
}

void SpecialTokenMatcher::split(std::string_view text, std::span<const Range> guarded,
                                std::vector<Fragment>& out) const {
  size_t plain_start = 0, pos = 0;
  size_t g = 0;  // the first guarded range that ends after pos
  while (pos < text.size()) {
    while (g < guarded.size() && guarded[g].second <= pos) ++g;
    const bool inside = g < guarded.size() && guarded[g].first <= pos;
    if (inside && n_in_guarded_ == 0) {  // nothing can match before the range ends
      pos = guarded[g].second;
      continue;
    }
    if (root_next_[static_cast<uint8_t>(text[pos])] < 0) {
      ++pos;
      continue;
    }
    // Bytes from pos up to the next guarded range: the most a token that is
    // not recognised in guarded text may span.
    const size_t free = inside ? 0 : (g < guarded.size() ? guarded[g].first : text.size()) - pos;
    const auto [len, id] = longest_at(text.substr(pos), free);
    if (len == 0) {
      ++pos;
      continue;
    }
    if (pos > plain_start) out.push_back({text.substr(plain_start, pos - plain_start), -1});
    out.push_back({text.substr(pos, len), id});
    pos += len;
    plain_start = pos;
  }
  if (pos > plain_start) out.push_back({text.substr(plain_start, pos - plain_start), -1});
}

}  // namespace peregrine
