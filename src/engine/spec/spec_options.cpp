#include "engine/spec/spec_options.h"

namespace peregrine {

std::optional<SpecKind> parse_spec_kind(std::string_view name) {
  if (name == "none") return SpecKind::None;
  if (name == "ngram") return SpecKind::Ngram;
  if (name == "draft") return SpecKind::Draft;
  if (name == "layerskip") return SpecKind::LayerSkip;
  return std::nullopt;
}

std::string_view spec_kind_name(SpecKind k) {
  switch (k) {
    case SpecKind::None: return "none";
    case SpecKind::Ngram: return "ngram";
    case SpecKind::Draft: return "draft";
    case SpecKind::LayerSkip: return "layerskip";
  }
  return "?";
}

Status SpecOptions::validate() const {
  if (kind == SpecKind::Draft && draft_model.empty())
    return make_error("--spec draft needs a draft model (-md FILE)");
  if (kind != SpecKind::Draft && !draft_model.empty())
    return make_error("a draft model (-md) is only used with --spec draft");
  if (kind != SpecKind::LayerSkip && draft_layers != 0)
    return make_error("--draft-layers is only used with --spec layerskip");
  if (draft_layers < 0) return make_error("--draft-layers {} is negative", draft_layers);
  return draft.validate();
}

}  // namespace peregrine
