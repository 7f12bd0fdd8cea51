// StopMatcher: OpenAI "stop" strings over streamed text.
//
// Generated text arrives in pieces (one detokenized token at a time). push() returns the part
// that is safe to emit now: everything but a held-back tail that could still grow into a stop
// string. When a stop string completes, push() returns the text before it with stopped = true;
// the stop string itself and anything after it are never emitted (OpenAI semantics). If several
// stop strings occur in the text seen so far, the earliest one (by start) wins.
//
// Matching is on bytes. Fed valid UTF-8 (the stream decoder's output) with valid UTF-8 stop
// strings, every cut falls on a character boundary, so the emitted text stays valid UTF-8.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

namespace peregrine {

class StopMatcher {
 public:
  // Empty stop strings are ignored (they would match before any text).
  explicit StopMatcher(std::vector<std::string> stops);

  struct Out {
    std::string text;      // safe to emit, in order after everything returned before
    bool stopped = false;  // a stop string completed: end generation
  };
  // After a stop, returns {"", true} and ignores the piece.
  Out push(std::string_view piece);
  // The held-back text, for when generation ends for another reason (length, end of
  // sequence): the end of the stream, call it once. Empty after a stop.
  std::string flush();

  bool stopped() const { return stopped_; }
  // Bytes currently held back (for tests and debugging).
  size_t held() const { return held_.size(); }

 private:
  std::vector<std::string> stops_;
  std::string held_;  // the longest tail of the text that is a proper prefix of a stop string
  bool stopped_ = false;
};

}  // namespace peregrine
