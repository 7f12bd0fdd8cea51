#include "constrain/grammar.h"

namespace peregrine::constrain {

Expr Expr::literal(std::string s) {
  Expr e;
  e.kind = Kind::Literal;
  e.text = std::move(s);
  return e;
}

Expr Expr::cls(std::vector<std::pair<uint32_t, uint32_t>> ranges, bool negated) {
  Expr e;
  e.kind = Kind::Class;
  e.ranges = std::move(ranges);
  e.negated = negated;
  return e;
}

Expr Expr::ref(uint32_t rule) {
  Expr e;
  e.kind = Kind::Ref;
  e.rule = rule;
  return e;
}

Expr Expr::seq(std::vector<Expr> items) {
  Expr e;
  e.kind = Kind::Seq;
  e.items = std::move(items);
  return e;
}

Expr Expr::alt(std::vector<Expr> items) {
  Expr e;
  e.kind = Kind::Alt;
  e.items = std::move(items);
  return e;
}

Expr Expr::repeat(Expr item, uint32_t min, uint32_t max) {
  Expr e;
  e.kind = Kind::Repeat;
  e.min = min;
  e.max = max;
  e.items.push_back(std::move(item));
  return e;
}

uint32_t Grammar::rule_id(const std::string& name) {
  for (size_t i = 0; i < names.size(); ++i)
    if (names[i] == name) return uint32_t(i);
  names.push_back(name);
  rules.push_back(Expr::empty());
  return uint32_t(names.size() - 1);
}

// validate() and to_gbnf(): TODO (being written)

}  // namespace peregrine::constrain
