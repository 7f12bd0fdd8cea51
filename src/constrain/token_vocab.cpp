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
  for (int32_t t = 0; t < int32_t(v->n_rows_); ++t) {
    std::string& b = v->bytes_[size_t(t)];
    const bool is_eog = std::binary_search(eog.begin(), eog.end(), t);
    if (is_eog) v->eog_.push_back(t);
    // Bounded so a trie node's depth fits; no real token comes near this.
    if (is_eog || b.empty() || b.size() > 65535) {
      b.clear();
      if (!is_eog) v->never_.push_back(t);
    }
  }
  return v;
}

TokenTrie TokenTrie::build(std::vector<std::pair<std::string, int32_t>> entries) {
  TokenTrie tr;
  std::sort(entries.begin(), entries.end());
  // Depth-first layout from the sorted strings: keep the path of open nodes; a string leaves
  // the nodes past its common prefix with the previous one (closing their subtrees) and
  // opens one node per further byte. Ids come out in node order.
  std::vector<int32_t> path;  // path[d] = node at depth d + 1
  std::string_view prev;
  std::vector<int32_t> end_node;  // [entries] the node each string ends at
  end_node.reserve(entries.size());
  for (const auto& [str, id] : entries) {
    const std::string_view s = str;
    PG_ASSERT(!s.empty() && s.size() <= 65535);
    size_t common = 0;
    while (common < s.size() && common < prev.size() && s[common] == prev[common]) ++common;
    while (path.size() > common) {
      tr.nodes_[size_t(path.back())].subtree_end = int32_t(tr.nodes_.size());
      path.pop_back();
    }
    for (size_t d = common; d < s.size(); ++d) {
      path.push_back(int32_t(tr.nodes_.size()));
      tr.nodes_.push_back({0, uint16_t(d + 1), uint8_t(s[d])});
    }
    end_node.push_back(path.back());
    tr.max_depth_ = std::max(tr.max_depth_, s.size());
    prev = s;
  }
  for (int32_t n : path) tr.nodes_[size_t(n)].subtree_end = int32_t(tr.nodes_.size());
  tr.begin_.assign(tr.nodes_.size() + 1, 0);
  for (int32_t n : end_node) ++tr.begin_[size_t(n) + 1];
  for (size_t i = 0; i < tr.nodes_.size(); ++i) tr.begin_[i + 1] += tr.begin_[i];
  tr.ids_.reserve(entries.size());
  for (const auto& e : entries) tr.ids_.push_back(e.second);
  return tr;
}

std::string_view TokenVocab::bytes(int32_t token) const {
  if (token < 0 || token >= n_rows_) return {};
  return bytes_[size_t(token)];
}

size_t TokenVocab::memory_bytes() const {
  size_t b = 0;
  for (const std::string& s : bytes_) b += s.capacity() + sizeof(std::string);
  return b;
}

}  // namespace peregrine::constrain
