#include "tokenizer/pretokenizer_special.h"

#include <algorithm>

namespace peregrine {

SpecialTokenMatcher::SpecialTokenMatcher(std::vector<std::pair<std::string, int32_t>> tokens) {
  std::erase_if(tokens, [](const auto& t) { return t.first.empty(); });
  std::stable_sort(tokens.begin(), tokens.end(), [](const auto& a, const auto& b) {
    const auto fa = static_cast<uint8_t>(a.first[0]), fb = static_cast<uint8_t>(b.first[0]);
    if (fa != fb) return fa < fb;
    return a.first.size() > b.first.size();
  });
  // stable_sort kept equal strings in input order: drop all but the first.
  tokens.erase(std::unique(tokens.begin(), tokens.end(),
                           [](const auto& a, const auto& b) { return a.first == b.first; }),
               tokens.end());
  tokens_ = std::move(tokens);
  size_t k = 0;
  for (int b = 0; b < 256; ++b) {
    first_[b] = static_cast<uint32_t>(k);
    while (k < tokens_.size() && static_cast<uint8_t>(tokens_[k].first[0]) == b) ++k;
  }
  first_[256] = static_cast<uint32_t>(tokens_.size());
}

void SpecialTokenMatcher::split(std::string_view text, std::vector<Fragment>& out) const {
  size_t plain_start = 0, pos = 0;
  while (pos < text.size()) {
    const auto b = static_cast<uint8_t>(text[pos]);
    const std::pair<std::string, int32_t>* hit = nullptr;
    for (uint32_t k = first_[b]; k < first_[b + 1]; ++k) {
      if (text.substr(pos).starts_with(tokens_[k].first)) {
        hit = &tokens_[k];
        break;  // longest first
      }
    }
    if (hit == nullptr) {
      ++pos;
      continue;
    }
    if (pos > plain_start) out.push_back({text.substr(plain_start, pos - plain_start), -1});
    out.push_back({text.substr(pos, hit->first.size()), hit->second});
    pos += hit->first.size();
    plain_start = pos;
  }
  if (pos > plain_start) out.push_back({text.substr(plain_start, pos - plain_start), -1});
}

}  // namespace peregrine
