#include "constrain/pushdown.h"

namespace peregrine::constrain {

namespace {
constexpr size_t kLinearSearch = 16;  // below this many configurations a scan beats hashing
}

bool ConfigSet::insert(Config c) {
  if (items_.size() < kLinearSearch) {
    for (const Config& x : items_)
      if (x == c) return false;
    items_.push_back(c);
    if (items_.size() == kLinearSearch)
      for (const Config& x : items_) seen_.insert(x.key());
    return true;
  }
  if (!seen_.insert(c.key()).second) return false;
  if (items_.size() >= kMaxConfigs) {
    overflow_ = true;
    return false;
  }
  items_.push_back(c);
  return true;
}

void ConfigSet::add_closed(const ByteAutomaton& a, StackArena& arena, Config c) {
  work_.clear();
  work_.push_back(c);
  while (!work_.empty()) {
    const Config x = work_.back();
    work_.pop_back();
    if (!insert(x)) continue;
    if (a.has_calls(x.state))
      for (const RuleCall& call : a.calls(x.state))
        work_.push_back({call.start, arena.intern({call.ret, x.parent})});
    if (a.accepting(x.state)) {
      if (x.parent == kNoFrame)
        can_end_ = true;
      else if (x.parent == kBottom)
        escaped_ = true;
      else
        work_.push_back(arena.frame(x.parent));
    }
  }
}

void ConfigSet::advance(const ByteAutomaton& a, StackArena& arena, uint8_t cls, ConfigSet& out) const {
  out.clear();
  for (const Config& c : items_) {
    const int32_t t = a.next_class(c.state, cls);
    if (t >= 0) out.add_closed(a, arena, {t, c.parent});
  }
  out.overflow_ = out.overflow_ || overflow_;
}

}  // namespace peregrine::constrain
