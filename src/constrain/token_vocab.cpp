#include "constrain/token_vocab.h"

#include <algorithm>

namespace peregrine::constrain {

std::shared_ptr<const TokenVocab> TokenVocab::build(const Tokenizer& tok, int64_t n_rows) {
  std::vector<std::string> bytes(size_t(std::max<int64_t>(n_rows, tok.n_vocab())));
  std::vector<int32_t> eog;
  for (int32_t t = 0; t < tok.n_vocab(); ++t) {
    if (tok.is_end_of_generation(t)) {
      eog.push_back(t);
      continue;
    }
    const TokenType type = tok.token_type(t);
    if (type != TokenType::Control && type != TokenType::Unknown && type != TokenType::Unused)
      bytes[size_t(t)] = tok.token_bytes(t);
  }
  return from_bytes(std::move(bytes), std::move(eog));
}

std::shared_ptr<const TokenVocab> TokenVocab::from_bytes(std::vector<std::string> bytes, std::vector<int32_t> eog) {
  auto v = std::make_shared<TokenVocab>();
  v->n_rows_ = int64_t(bytes.size());
  v->bytes_ = std::move(bytes);
  std::sort(eog.begin(), eog.end());
  eog.erase(std::unique(eog.begin(), eog.end()), eog.end());
  std::vector<int32_t> text;  // tokens that may appear inside constrained text
  for (int32_t t = 0; t < int32_t(v->n_rows_); ++t) {
    std::string& b = v->bytes_[size_t(t)];
    const bool is_eog = std::binary_search(eog.begin(), eog.end(), t);
    if (is_eog) v->eog_.push_back(t);
    // Bounded so a trie node's depth fits; no real token comes near this.
    if (is_eog || b.empty() || b.size() > 65535) {
      b.clear();
      if (!is_eog) v->never_.push_back(t);
      continue;
    }
    v->max_len_ = std::max(v->max_len_, b.size());
    text.push_back(t);
  }
  std::sort(text.begin(), text.end(),
            [&](int32_t a, int32_t b) { return v->bytes_[size_t(a)] < v->bytes_[size_t(b)]; });

  // Depth-first layout from the sorted strings: keep the path of open nodes; a string leaves
  // the nodes past its common prefix with the previous one (closing their subtrees) and
  // opens one node per further byte.
  std::vector<int32_t> path;  // path[d] = node at depth d + 1
  std::string_view prev;
  std::vector<std::pair<int32_t, int32_t>> ends;  // (node, token), nodes in increasing order
  for (int32_t t : text) {
    const std::string_view s = v->bytes_[size_t(t)];
    size_t common = 0;
    while (common < s.size() && common < prev.size() && s[common] == prev[common]) ++common;
    while (path.size() > common) {
      v->nodes_[size_t(path.back())].subtree_end = int32_t(v->nodes_.size());
      path.pop_back();
    }
    for (size_t d = common; d < s.size(); ++d) {
      path.push_back(int32_t(v->nodes_.size()));
      v->nodes_.push_back({0, uint16_t(d + 1), uint8_t(s[d])});
    }
    ends.emplace_back(path.back(), t);
    prev = s;
  }
  for (int32_t n : path) v->nodes_[size_t(n)].subtree_end = int32_t(v->nodes_.size());
  v->tok_begin_.assign(v->nodes_.size() + 1, 0);
  for (auto [n, t] : ends) ++v->tok_begin_[size_t(n) + 1];
  for (size_t i = 0; i < v->nodes_.size(); ++i) v->tok_begin_[i + 1] += v->tok_begin_[i];
  v->node_tokens_.resize(ends.size());
  for (size_t i = 0; i < ends.size(); ++i) v->node_tokens_[i] = ends[i].second;  // already in node order
  return v;
}

std::string_view TokenVocab::bytes(int32_t token) const {
  if (token < 0 || token >= n_rows_) return {};
  return bytes_[size_t(token)];
}

size_t TokenVocab::memory_bytes() const {
  size_t b = nodes_.size() * sizeof(Node) + tok_begin_.size() * 4 + node_tokens_.size() * 4;
  for (const std::string& s : bytes_) b += s.capacity() + sizeof(std::string);
  return b;
}

}  // namespace peregrine::constrain
