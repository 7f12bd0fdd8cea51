// Chat templates. GGUF carries a Jinja template; rather than run Jinja we
// recognise the template families we support and render them natively.
#pragma once

#include <string>
#include <vector>

#include "core/status.h"
#include "gguf/gguf.h"

namespace peregrine {

struct ChatMessage {
  std::string role;  // "system", "user", "assistant"
  std::string content;
};

class ChatTemplate {
 public:
  enum class Kind { ChatML };

  // Picks the family from tokenizer.chat_template; error if absent or unknown.
  static Result<ChatTemplate> from_gguf(const gguf::File& file);

  // The prompt text for a conversation; with add_generation_prompt it ends
  // where the assistant's reply begins.
  std::string render(const std::vector<ChatMessage>& messages, bool add_generation_prompt) const;

  Kind kind() const { return kind_; }
  const std::string& default_system() const { return default_system_; }

 private:
  Kind kind_ = Kind::ChatML;
  std::string default_system_;  // inserted when the first message is not a system one
};

}  // namespace peregrine
