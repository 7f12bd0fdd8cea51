#include "tokenizer/chat_template.h"

namespace peregrine {

Result<ChatTemplate> ChatTemplate::from_gguf(const gguf::File& file) {
  if (!file.find("tokenizer.chat_template"))
    return make_error("{}: model has no chat template (tokenizer.chat_template)", file.name());
  PG_ASSIGN(std::string tpl, file.get_string("tokenizer.chat_template"));
  ChatTemplate t;
  if (tpl.find("<|im_start|>") != std::string::npos) {
    t.kind_ = Kind::ChatML;
    // Templates like SmolLM2's insert a fixed system turn when the conversation
    // has none: '<|im_start|>system\n...<|im_end|>' written literally.
    const std::string open = "<|im_start|>system\n";
    size_t a = tpl.find(open);
    if (a != std::string::npos) {
      size_t b = tpl.find("<|im_end|>", a);
      std::string body = tpl.substr(a + open.size(), b == std::string::npos ? 0 : b - a - open.size());
      // Only a plain literal counts (no Jinja expressions inside).
      if (b != std::string::npos && body.find("{{") == std::string::npos &&
          body.find('\'') == std::string::npos)
        t.default_system_ = body;
    }
    return t;
  }
  return make_error("{}: unsupported chat template (known: ChatML)", file.name());
}

std::string ChatTemplate::render(const std::vector<ChatMessage>& messages,
                                 bool add_generation_prompt) const {
  std::string out;
  auto turn = [&](const std::string& role, const std::string& content) {
    out += "<|im_start|>" + role + "\n" + content + "<|im_end|>\n";
  };
  if (!default_system_.empty() && (messages.empty() || messages[0].role != "system"))
    turn("system", default_system_);
  for (const ChatMessage& m : messages) turn(m.role, m.content);
  if (add_generation_prompt) out += "<|im_start|>assistant\n";
  return out;
}

}  // namespace peregrine
