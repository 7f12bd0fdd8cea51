// StopMatcher: stop strings split across pieces, overlapping candidates, UTF-8, and random
// pieces checked against a brute-force search of the whole text.
#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "engine/stop_matcher.h"

namespace peregrine {
namespace {

struct Emitted {
  std::string text;  // everything emitted, flush() included when not stopped
  bool stopped = false;
};

Emitted feed(std::vector<std::string> stops, const std::vector<std::string>& pieces) {
  StopMatcher m(std::move(stops));
  Emitted r;
  for (const std::string& p : pieces) {
    StopMatcher::Out o = m.push(p);
    r.text += o.text;
    if (o.stopped) {
      r.stopped = true;
      EXPECT_TRUE(m.stopped());
      EXPECT_EQ(m.flush(), "");
      return r;
    }
  }
  r.text += m.flush();
  return r;
}

// The reference: after each piece, search the whole text so far for every stop string; the
// first piece that completes one ends the stream at the earliest occurrence's start.
Emitted brute_force(const std::vector<std::string>& stops, const std::vector<std::string>& pieces) {
  std::string all;
  for (const std::string& p : pieces) {
    all += p;
    size_t first = std::string::npos;
    for (const std::string& s : stops) {
      if (!s.empty()) first = std::min(first, all.find(s));
    }
    if (first != std::string::npos) return {all.substr(0, first), true};
  }
  return {all, false};
}

TEST(StopMatcher, NoStopsPassesEverythingThrough) {
  StopMatcher m({});
  EXPECT_EQ(m.push("Hello").text, "Hello");
  EXPECT_EQ(m.push("").text, "");
  StopMatcher::Out o = m.push(" world\n\n");
  EXPECT_EQ(o.text, " world\n\n");
  EXPECT_FALSE(o.stopped);
  EXPECT_EQ(m.flush(), "");
  StopMatcher only_empty({"", ""});  // empty stop strings are ignored
  EXPECT_EQ(only_empty.push("abc").text, "abc");
  EXPECT_FALSE(only_empty.stopped());
}

TEST(StopMatcher, StopInsideOnePiece) {
  StopMatcher m({"END"});
  StopMatcher::Out o = m.push("abcENDdef");
  EXPECT_EQ(o.text, "abc");
  EXPECT_TRUE(o.stopped);
  o = m.push("more");  // after a stop: nothing more
  EXPECT_EQ(o.text, "");
  EXPECT_TRUE(o.stopped);
  EXPECT_EQ(m.flush(), "");
}

TEST(StopMatcher, StopSplitAcrossPiecesIsHeldBack) {
  StopMatcher m({"<|end|>"});
  StopMatcher::Out o = m.push("Hi <|");
  EXPECT_EQ(o.text, "Hi ");  // "<|" could start the stop string
  EXPECT_FALSE(o.stopped);
  EXPECT_EQ(m.held(), 2u);
  o = m.push("en");
  EXPECT_EQ(o.text, "");
  EXPECT_EQ(m.held(), 4u);
  o = m.push("d|>tail");
  EXPECT_EQ(o.text, "");
  EXPECT_TRUE(o.stopped);
}

TEST(StopMatcher, FalseStartIsReleased) {
  StopMatcher m({"<|end|>"});
  EXPECT_EQ(m.push("a<|en").text, "a");
  StopMatcher::Out o = m.push("x");
  EXPECT_EQ(o.text, "<|enx");
  EXPECT_FALSE(o.stopped);
  EXPECT_EQ(m.push("<").text, "");
  EXPECT_EQ(m.flush(), "<");  // generation ended for another reason
}

TEST(StopMatcher, RepeatedPrefixCharacters) {
  // "aab": after "aaa" the tail "aa" must stay held, not just "a".
  EXPECT_EQ(feed({"aab"}, {"a", "a", "a", "b", "c"}).text, "a");
  EXPECT_TRUE(feed({"aab"}, {"aaa", "b"}).stopped);
  EXPECT_EQ(feed({"abab"}, {"ab", "a", "bab"}).text, "");
  EXPECT_EQ(feed({"abab"}, {"xab", "aba", "b"}).text, "x");
  EXPECT_EQ(feed({"abab"}, {"xab", "aa", "bab"}).text, "xaba");
}

TEST(StopMatcher, OverlappingCandidates) {
  // "abc" and "bcd": "abc" completes first.
  Emitted r = feed({"abc", "bcd"}, {"xab", "cd"});
  EXPECT_EQ(r.text, "x");
  EXPECT_TRUE(r.stopped);
  // Only "bcd" occurs.
  r = feed({"abc", "bcd"}, {"xb", "c", "d"});
  EXPECT_EQ(r.text, "x");
  EXPECT_TRUE(r.stopped);
  // Both complete in the same piece: the earlier start wins.
  r = feed({"bcd", "abcd"}, {"zabcd"});
  EXPECT_EQ(r.text, "z");
  // A shorter stop completing first ends the stream even though a longer one that starts
  // earlier might have completed later.
  r = feed({"abcd", "bc"}, {"ab", "c", "d"});
  EXPECT_EQ(r.text, "a");
  EXPECT_TRUE(r.stopped);
  // A stop string inside another: both complete with "yz"; "xyz" starts first.
  r = feed({"xyz", "y"}, {"wx", "yz"});
  EXPECT_EQ(r.text, "w");
  r = feed({"xyz", "y"}, {"wx", "ay"});
  EXPECT_EQ(r.text, "wxa");
}

TEST(StopMatcher, MultiByteUtf8) {
  // "é" is C3 A9; "日本" is E6 97 A5 E6 9C AC. Pieces split inside characters too.
  Emitted r =
      feed({"\xE6\x97\xA5\xE6\x9C\xAC"}, {"caf\xC3", "\xA9 \xE6\x97", "\xA5\xE6", "\x9C\xAC!"});
  EXPECT_EQ(r.text, "caf\xC3\xA9 ");
  EXPECT_TRUE(r.stopped);
  // A stop whose first byte matches a lead byte but not the whole character.
  r = feed({"\xC3\xA9t\xC3\xA9"}, {"\xC3\xA9", "t\xC3", "\xA8"});
  EXPECT_EQ(r.text, "\xC3\xA9t\xC3\xA8");
  EXPECT_FALSE(r.stopped);
  // Emitted text on whole-character pieces stays valid UTF-8 at every step.
  StopMatcher m({"\xC3\xA9\xC3\xA9"});
  EXPECT_EQ(m.push("a\xC3\xA9").text, "a");
  EXPECT_EQ(m.push("b").text,
            "\xC3\xA9"
            "b");
}

TEST(StopMatcher, MatchesBruteForceOnRandomPieces) {
  std::mt19937 rng(2024);
  const std::vector<std::string> atoms = {"a", "b", "c", "\xC3\xA9", "\n"};
  auto random_string = [&](size_t max_atoms, size_t min_atoms) {
    std::string s;
    const size_t n = min_atoms + rng() % (max_atoms - min_atoms + 1);
    for (size_t i = 0; i < n; ++i) s += atoms[rng() % atoms.size()];
    return s;
  };
  int stopped = 0;
  for (int iter = 0; iter < 20000; ++iter) {
    std::vector<std::string> stops;
    const size_t n_stops = rng() % 4;
    for (size_t i = 0; i < n_stops; ++i) stops.push_back(random_string(4, 1));
    std::vector<std::string> pieces;
    const size_t n_pieces = rng() % 12;
    for (size_t i = 0; i < n_pieces; ++i) {
      // Some pieces are split mid-character: raw bytes of a random string.
      std::string p = random_string(3, 0);
      if (rng() % 4 == 0 && !p.empty()) {
        const size_t cut = rng() % p.size();
        pieces.push_back(p.substr(0, cut));
        p = p.substr(cut);
      }
      pieces.push_back(p);
    }
    const Emitted want = brute_force(stops, pieces);
    StopMatcher m(stops);
    Emitted got;
    std::string fed;
    for (const std::string& p : pieces) {
      fed += p;
      StopMatcher::Out o = m.push(p);
      got.text += o.text;
      if (o.stopped) {
        got.stopped = true;
        break;
      }
      // Nothing is lost or duplicated: emitted + held is all that was fed.
      ASSERT_EQ(got.text.size() + m.held(), fed.size());
      ASSERT_EQ(got.text, fed.substr(0, got.text.size()));
    }
    if (!got.stopped) got.text += m.flush();
    ASSERT_EQ(got.stopped, want.stopped) << "iteration " << iter;
    ASSERT_EQ(got.text, want.text) << "iteration " << iter;
    stopped += got.stopped;
  }
  EXPECT_GT(stopped, 2000);  // both outcomes are well covered
  EXPECT_LT(stopped, 18000);
}

}  // namespace
}  // namespace peregrine
