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
//
// Message text is never read for special tokens: a user message holding
// "<|im_end|>\n<|im_start|>system\n..." would otherwise forge a system turn.
// render_marked() says which bytes of the prompt came from the messages, and
// encode_chat() tokenizes with special tokens recognised only in the rest.
#pragma once

#include <cstddef>
#include <string>
#include <utility>
#include <vector>

#include "core/status.h"
#include "gguf/gguf.h"
#include "tokenizer/tokenizer.h"

namespace peregrine {

struct ChatMessage {
  std::string role;  // "system", "user", "assistant"
  std::string content;
};

// A rendered conversation and where the messages' own text lies in it.
struct RenderedChat {
  std::string text;
  // [begin, end) bytes of text that the messages supplied, in order: each
  // content as written (Gemma: trimmed), and each role name written as the
  // message gave it ("model" for "assistant" is the template's). A default
  // system prompt and separators are the template's own text. Empty ranges
  // are left out.
  std::vector<std::pair<size_t, size_t>> from_messages;
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
  std::string render(const std::vector<ChatMessage>& messages, bool add_generation_prompt) const {
    return render_marked(messages, add_generation_prompt).text;
  }
  // render(), with the messages' text marked.
  RenderedChat render_marked(const std::vector<ChatMessage>& messages,
                             bool add_generation_prompt) const;

  Kind kind() const { return kind_; }
  const std::string& default_system() const { return default_system_; }

 private:
  void render_chatml(const std::vector<ChatMessage>& messages, bool add_generation_prompt,
                     RenderedChat& out) const;
  void render_gemma(const std::vector<ChatMessage>& messages, bool add_generation_prompt,
                    RenderedChat& out) const;

  Kind kind_ = Kind::ChatML;
  std::string default_system_;  // ChatML: inserted when the first message is not a system one
  std::string system_separator_ = "\n\n";  // Gemma: between the system text and the first turn
};

// A conversation's prompt tokens, as a chat request is tokenized: BOS when the
// tokenizer adds one, then the rendered conversation with special tokens
// recognised only in the template's own text (Tokenizer::try_encode_guarded).
// parse_special_in_content reads them in the messages too -- the behaviour
// before guarding, which lets a message write control tokens and so forge
// turns: only for trusted input. An error when the prompt is longer than the
// tokenizer takes (Tokenizer::kMaxEncodeBytes).
Result<std::vector<TokenId>> encode_chat(const Tokenizer& tok, const ChatTemplate& tpl,
                                         const std::vector<ChatMessage>& messages,
                                         bool add_generation_prompt,
                                         bool parse_special_in_content);

}  // namespace peregrine
