// ConstraintCompiler over hostile constraints with the real SmolLM2 vocabulary: every input
// compiles or fails with one line naming the problem — never a crash, a hang or unbounded
// memory (the sanitizer run repeats this under ASan + UBSan). And the compiler's cache: the
// same spec compiles once.
#include <gtest/gtest.h>

#include <string>

#include <fmt/format.h>
#include <vector>

#include "constrain/constraint_spec.h"
#include "gguf/gguf.h"
#include "real_model.h"

namespace peregrine::constrain {
namespace {

using Kind = ConstraintSpec::Kind;

class ConstraintCompilerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!std::filesystem::exists(test::smollm_path())) GTEST_SKIP() << "model not found";
    auto f = gguf::File::open(test::smollm_path());
    ASSERT_TRUE(f.ok());
    file_ = std::move(f).value();
    auto t = Tokenizer::from_gguf(*file_);
    ASSERT_TRUE(t.ok());
    tok_ = std::move(t).value();
  }
  static ConstraintSpec spec(Kind k, std::string text) {
    ConstraintSpec s;
    s.kind = k;
    s.text = std::move(text);
    return s;
  }
  std::unique_ptr<gguf::File> file_;
  std::unique_ptr<Tokenizer> tok_;
};

std::string repeat(const std::string& s, int n) {
  std::string out;
  for (int i = 0; i < n; ++i) out += s;
  return out;
}

TEST_F(ConstraintCompilerTest, HostileConstraintsCompileOrFailCleanly) {
  ConstraintCompiler cc(*tok_, tok_->n_vocab(), {.cache_entries = 0});
  std::string big_enum = R"({"enum":[)";
  for (int i = 0; i < 20000; ++i) big_enum += fmt::format("{}\"item-{}\"", i ? "," : "", i * 7919);
  big_enum += "]}";
  std::string deep_schema = repeat(R"({"type":"object","properties":{"a":)", 200) + "{}" + repeat("}}", 200);
  std::string deep_anyof = repeat(R"({"anyOf":[{"type":"integer"},)", 80) + "{}" + repeat("]}", 80);
  const std::vector<ConstraintSpec> cases = {
      spec(Kind::Regex, repeat("(", 400) + "a" + repeat(")", 400)),
      spec(Kind::Regex, "(a|aa)*b"),
      spec(Kind::Regex, "(.*){1000}"),
      spec(Kind::Regex, "(a|b{0,1000}){0,1000}"),
      spec(Kind::Regex, "((a*)*)*[^x]{0,10000}"),
      spec(Kind::Regex, "\\p{L}+"),
      spec(Kind::Gbnf, "root ::= " + repeat("(", 300) + "\"a\"" + repeat(")", 300)),
      spec(Kind::Gbnf, "root ::= a\na ::= b\nb ::= a"),
      spec(Kind::Gbnf, "root ::= x x x x x x x x\nx ::= \"a\"*"),  // ambiguous: many parses of one string
      spec(Kind::Gbnf, "root ::= [a-z]{10000}"),
      spec(Kind::JsonSchema, big_enum),
      spec(Kind::JsonSchema, deep_schema),
      spec(Kind::JsonSchema, deep_anyof),
      spec(Kind::JsonSchema, R"({"$ref":"#"})"),
      spec(Kind::JsonSchema, R"({"$defs":{"a":{"$ref":"#/$defs/b"},"b":{"$ref":"#/$defs/a"}},"$ref":"#/$defs/a"})"),
      spec(Kind::JsonSchema, R"({"$ref":"https://example.com/schema.json"})"),
      spec(Kind::JsonSchema, R"({"type":"integer","minimum":-1e300,"maximum":1e300})"),
      spec(Kind::JsonSchema, R"({"type":"string","minLength":100000})"),
      spec(Kind::JsonSchema, R"({"type":"array","items":{"type":"array","items":{"type":"string","maxLength":9999},"maxItems":9999},"maxItems":9999})"),
      spec(Kind::JsonSchema, "{\"type\": \"object\", "),
  };
  int refused = 0;
  for (const ConstraintSpec& s : cases) {
    auto r = cc.compile(s);
    if (r.ok()) {
      auto c = (*r)->make();
      std::vector<uint32_t> words(size_t((tok_->n_vocab() + 31) / 32));
      c->allowed_tokens(words.data(), tok_->n_vocab());  // usable
      continue;
    }
    ++refused;
    const std::string& m = r.error().message;
    EXPECT_FALSE(m.empty());
    EXPECT_EQ(m.find('\n'), std::string::npos) << m;
  }
  EXPECT_GE(refused, 10);
}

TEST_F(ConstraintCompilerTest, CachesByContent) {
  ConstraintCompiler cc(*tok_, tok_->n_vocab(), {.cache_entries = 2});
  auto a = cc.compile(spec(Kind::Regex, "[0-9]+"));
  auto b = cc.compile(spec(Kind::Regex, "[0-9]+"));
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->get(), b->get());
  EXPECT_EQ(cc.cache_hits(), 1u);
  ConstraintSpec strict =
      spec(Kind::JsonSchema, R"({"type":"object","properties":{"a":{"type":"integer"}},"required":["a"],"additionalProperties":false})");
  ConstraintSpec loose = strict;
  strict.json.strict = true;
  auto s1 = cc.compile(strict);
  auto s2 = cc.compile(loose);
  ASSERT_TRUE(s1.ok() && s2.ok());
  EXPECT_NE(s1->get(), s2->get());  // options are part of the key
  auto again = cc.compile(spec(Kind::Regex, "[0-9]+"));  // evicted by the two schemas
  ASSERT_TRUE(again.ok());
  EXPECT_NE(again->get(), a->get());
  EXPECT_FALSE(cc.compile(ConstraintSpec{}).ok());
}

// Each sequence gets its own matcher: advancing one does not move another.
TEST_F(ConstraintCompilerTest, MatchersAreIndependent) {
  ConstraintCompiler cc(*tok_, tok_->n_vocab());
  auto r = cc.compile(spec(Kind::Regex, "(ab|cd)"));
  ASSERT_TRUE(r.ok());
  auto m1 = (*r)->make(), m2 = (*r)->make();
  const TokenId a = tok_->find_token("a"), c = tok_->find_token("c");
  ASSERT_GE(a, 0);
  ASSERT_GE(c, 0);
  EXPECT_TRUE(m1->advance(a));
  EXPECT_FALSE(m1->advance(c));  // "ac" is not a prefix
  EXPECT_TRUE(m2->advance(c));   // m2 is still at the start
}

}  // namespace
}  // namespace peregrine::constrain
