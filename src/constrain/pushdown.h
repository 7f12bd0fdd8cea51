// Running a ByteAutomaton as a pushdown automaton: a configuration is a state of some rule's
// automaton plus the stack of return states beneath it. Stacks are persistent (a frame is a
// node (return state, parent node) interned in a StackArena), so configurations share their
// tails and copying one is copying two integers. A ConfigSet holds every configuration the
// text so far can be in (the grammar may be ambiguous), closed under calls and returns.
#pragma once

#include <cstdint>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "constrain/byte_automaton.h"

namespace peregrine::constrain {

inline constexpr int32_t kNoFrame = -1;  // the root rule's configuration: nothing beneath
inline constexpr int32_t kBottom = -2;   // a mask walk's floor: what lies beneath is unknown

struct Config {
  int32_t state;
  int32_t parent;  // a node of the StackArena, kNoFrame or kBottom
  bool operator==(const Config&) const = default;
  uint64_t key() const { return (uint64_t(uint32_t(state)) << 32) | uint32_t(parent); }
};

// Interned stack frames: node id -> (return state, parent node).
class StackArena {
 public:
  int32_t intern(Config frame) {
    auto [it, added] = index_.try_emplace(frame.key(), int32_t(nodes_.size()));
    if (added) nodes_.push_back(frame);
    return it->second;
  }
  const Config& frame(int32_t node) const { return nodes_[size_t(node)]; }
  size_t size() const { return nodes_.size(); }
  void clear() {
    nodes_.clear();
    index_.clear();
  }

 private:
  std::vector<Config> nodes_;
  std::unordered_map<uint64_t, int32_t> index_;
};

// A set of configurations closed under calls (enter a callee's start state, pushing the
// return state) and returns (leave an accepting state for the frame beneath).
class ConfigSet {
 public:
  static constexpr size_t kMaxConfigs = 4096;  // ambiguity bound: more is an error

  const std::vector<Config>& configs() const { return items_; }
  bool empty() const { return items_.empty(); }
  // A configuration of the root rule is accepting: the text so far is a whole match.
  bool can_end() const { return can_end_; }
  // A configuration returned past kBottom: the text so far can end the walk's rule.
  bool escaped() const { return escaped_; }
  bool overflow() const { return overflow_; }
  void clear() {
    items_.clear();
    seen_.clear();
    can_end_ = escaped_ = overflow_ = false;
  }

  // Adds c and everything its calls and returns reach.
  void add_closed(const ByteAutomaton& a, StackArena& arena, Config c);
  // This set's configurations after one more byte of class `cls` (ByteAutomaton::class_of),
  // closed (out is cleared first).
  void advance(const ByteAutomaton& a, StackArena& arena, uint8_t cls, ConfigSet& out) const;

 private:
  bool insert(Config c);

  std::vector<Config> items_;
  std::unordered_set<uint64_t> seen_;  // mirrors items_ once it is large
  std::vector<Config> work_;
  bool can_end_ = false, escaped_ = false, overflow_ = false;
};

}  // namespace peregrine::constrain
