// Chat templates. GGUF carries a Jinja template; rather than run Jinja we
// recognise the template families we support and render them natively.
//
//   ChatML  "<|im_start|>role\n...<|im_end|>\n" (SmolLM2, Qwen, ...)
//   Gemma   "<start_of_turn>user\n...<end_of_turn>\n", the assistant's role
//           written "model", a system message folded into the first turn
//           (Gemma 1-3). Chosen when the template uses <start_of_turn>, or
//           when a gemma-architecture file has no template at all (GGUFs
//           converted from Gemma's base checkpoints, like gemma-3-270m's,
//           carry none; the format is the one Google publishes in the
//           checkpoints' tokenizer_config.json).
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
  enum class Kind { ChatML, Gemma };

  // Picks the family from tokenizer.chat_template (or, without one, from
  // general.architecture); error if absent or unknown.
  static Result<ChatTemplate> from_gguf(const gguf::File& file);
  // A template family by itself (tests, and files without metadata).
  static ChatTemplate of_kind(Kind kind);

  // The prompt text for a conversation; with add_generation_prompt it ends
  // where the assistant's reply begins. A BOS token that the Jinja template
  // writes first ({{ bos_token }}) is left out: callers add BOS from
  // tokenizer.ggml.add_bos_token, as for any prompt, so it is never doubled.
  std::string render(const std::vector<ChatMessage>& messages, bool add_generation_prompt) const;

  Kind kind() const { return kind_; }
  const std::string& default_system() const { return default_system_; }

 private:
  std::string render_chatml(const std::vector<ChatMessage>& messages,
                            bool add_generation_prompt) const;
  std::string render_gemma(const std::vector<ChatMessage>& messages,
                           bool add_generation_prompt) const;

  Kind kind_ = Kind::ChatML;
  std::string default_system_;  // ChatML: inserted when the first message is not a system one
  std::string system_separator_ = "\n\n";  // Gemma: between the system text and the first turn
};

}  // namespace peregrine
