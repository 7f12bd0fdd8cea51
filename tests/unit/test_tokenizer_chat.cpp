// Chat templates: the family chosen from GGUF metadata, and the native Gemma renderer against
// jinja2's rendering of Gemma 3's published template (tests/reference/gemma_chat_cases.json,
// made and checked by tests/reference/gemma_chat_cases.py / test_chat_template_gemma.py).
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "gguf_builder.h"
#include "tokenizer/chat_template.h"

namespace peregrine {
namespace {

namespace fs = std::filesystem;

// tests/reference, found from $PEREGRINE_SOURCE_DIR or from this file's path (absolute, or
// relative to the build folder where ctest runs the tests).
fs::path reference_dir() {
  if (const char* s = std::getenv("PEREGRINE_SOURCE_DIR"); s && *s) return fs::path(s) / "tests/reference";
  return fs::path(__FILE__).parent_path().parent_path() / "reference";
}

std::string read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

struct Loaded {
  std::vector<uint8_t> data;
  std::unique_ptr<gguf::File> file;
};

Loaded gguf_with(const std::string& arch, const std::string* tpl) {
  test::GgufBuilder b;
  b.kv_str("general.architecture", arch);
  if (tpl != nullptr) b.kv_str("tokenizer.chat_template", *tpl);
  Loaded l;
  l.data = b.build();
  auto f = gguf::File::parse(l.data.data(), l.data.size(), "chat.gguf");
  EXPECT_TRUE(f.ok()) << f.error().message;
  if (f.ok()) l.file = std::move(f).value();
  return l;
}

TEST(TokenizerChat, GemmaMatchesJinjaOnPublishedTemplate) {
  const fs::path dir = reference_dir();
  if (!fs::exists(dir / "gemma_chat_cases.json")) GTEST_SKIP() << "no " << dir / "gemma_chat_cases.json";
  const std::string tpl = read_file(dir / "gemma3_chat_template.jinja");
  ASSERT_FALSE(tpl.empty());
  Loaded l = gguf_with("gemma3", &tpl);
  auto t = ChatTemplate::from_gguf(*l.file);
  ASSERT_TRUE(t.ok()) << t.error().message;
  EXPECT_EQ(t->kind(), ChatTemplate::Kind::Gemma);

  const nlohmann::json cases = nlohmann::json::parse(read_file(dir / "gemma_chat_cases.json"));
  ASSERT_GE(cases.size(), 50u);
  for (const auto& c : cases) {
    std::vector<ChatMessage> msgs;
    for (const auto& m : c["messages"]) msgs.push_back({m["role"], m["content"]});
    EXPECT_EQ(t->render(msgs, c["add_generation_prompt"]), c["expected"].get<std::string>())
        << c.dump();
  }
}

TEST(TokenizerChat, GemmaBasics) {
  const ChatTemplate t = ChatTemplate::of_kind(ChatTemplate::Kind::Gemma);
  EXPECT_EQ(t.render({{"user", "Write a haiku about rivers"}}, true),
            "<start_of_turn>user\nWrite a haiku about rivers<end_of_turn>\n<start_of_turn>model\n");
  EXPECT_EQ(t.render({{"system", " Be brief. "}, {"user", "\xE3\x80\x80Hi\n"},
                      {"assistant", "Hello."}, {"user", "Bye"}},
                     false),
            "<start_of_turn>user\n Be brief. \n\nHi<end_of_turn>\n"  // U+3000 trimmed, system not
            "<start_of_turn>model\nHello.<end_of_turn>\n"
            "<start_of_turn>user\nBye<end_of_turn>\n");
  EXPECT_EQ(t.render({{"system", "only"}}, true), "<start_of_turn>model\n");
  EXPECT_EQ(t.render({{"user", "a\xE2\x80\x8B"}}, false),  // U+200B is not whitespace to Python
            "<start_of_turn>user\na\xE2\x80\x8B<end_of_turn>\n");
}

TEST(TokenizerChat, ChoosesFamilyFromMetadata) {
  const std::string chatml = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}"
                             "<|im_end|>\n{% endfor %}";
  Loaded a = gguf_with("llama", &chatml);
  auto t = ChatTemplate::from_gguf(*a.file);
  ASSERT_TRUE(t.ok()) << t.error().message;
  EXPECT_EQ(t->kind(), ChatTemplate::Kind::ChatML);
  EXPECT_EQ(t->render({{"user", "hi"}}, true), "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");

  // Gemma 3 base checkpoints' GGUFs have no template: the architecture decides.
  Loaded b = gguf_with("gemma3", nullptr);
  auto g = ChatTemplate::from_gguf(*b.file);
  ASSERT_TRUE(g.ok()) << g.error().message;
  EXPECT_EQ(g->kind(), ChatTemplate::Kind::Gemma);

  Loaded c = gguf_with("llama", nullptr);
  auto none = ChatTemplate::from_gguf(*c.file);
  ASSERT_FALSE(none.ok());
  EXPECT_NE(none.error().message.find("no chat template"), std::string::npos);

  const std::string other = "{{ messages[0].content }}";
  Loaded d = gguf_with("llama", &other);
  auto unknown = ChatTemplate::from_gguf(*d.file);
  ASSERT_FALSE(unknown.ok());
  EXPECT_NE(unknown.error().message.find("known: ChatML, Gemma"), std::string::npos);
}

TEST(TokenizerChat, GemmaSystemSeparatorFromTemplate) {
  // Some conversions fold the system message with one newline; the literal is read from the
  // template, written with escapes or with a real newline.
  for (const std::string& tpl :
       {std::string("{%- set first_user_prefix = messages[0]['content'] + '\\n' -%}<start_of_turn>"),
        std::string("{%- set first_user_prefix = messages[0]['content'] + \"\n\" -%}<start_of_turn>")}) {
    Loaded l = gguf_with("gemma3", &tpl);
    auto t = ChatTemplate::from_gguf(*l.file);
    ASSERT_TRUE(t.ok()) << t.error().message;
    EXPECT_EQ(t->render({{"system", "S"}, {"user", "U"}}, false),
              "<start_of_turn>user\nS\nU<end_of_turn>\n");
  }
}

}  // namespace
}  // namespace peregrine
