// What speculative decoding a session or server runs: the drafter and the draft length policy.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "core/status.h"
#include "engine/spec/draft_policy.h"

namespace peregrine {

enum class SpecKind { None, Ngram, Draft, LayerSkip };
std::optional<SpecKind> parse_spec_kind(std::string_view name);  // none, ngram, draft, layerskip
std::string_view spec_kind_name(SpecKind k);

struct SpecOptions {
  SpecKind kind = SpecKind::None;
  std::string draft_model;   // Draft: the draft model's GGUF path
  int64_t draft_layers = 0;  // LayerSkip: layers the draft runs (0: half the target's)
  DraftConfig draft;
  bool enabled() const { return kind != SpecKind::None; }
  // The draft model is given exactly when the kind needs it; the policy's numbers are in range.
  Status validate() const;
};

}  // namespace peregrine
