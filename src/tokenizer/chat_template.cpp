#include "tokenizer/chat_template.h"

#include <string_view>

#include "tokenizer/unicode_utf8.h"

namespace peregrine {
namespace {

// Python's str.isspace(), which Jinja's `trim` filter (str.strip) uses.
bool is_python_space(uint32_t c) {
  return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 ||
         c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 ||
         c == 0x202F || c == 0x205F || c == 0x3000;
}

// Jinja's `trim`: whitespace (Python's definition) cut from both ends.
std::string_view trim(std::string_view s) {
  size_t begin = 0, end = 0;  // [begin, end): first and past the last non-space character
  bool seen = false;
  for (size_t i = 0; i < s.size();) {
    const utf8::Seq q = utf8::next(s, i);
    const bool space = q.kind == utf8::Seq::Valid && is_python_space(utf8::codepoint(s, i, q.len));
    if (!space) {
      if (!seen) begin = i;
      seen = true;
      end = i + q.len;
    }
    i += q.len;
  }
  return seen ? s.substr(begin, end - begin) : std::string_view();
}

// Gemma's templates set first_user_prefix = messages[0]['content'] + '<sep>';
// the separator is "\n\n" in Gemma 3's and "\n" in some conversions. Reads the
// Jinja string literal (either quote; "\n" escapes or literal newlines).
std::string gemma_system_separator(std::string_view tpl) {
  constexpr std::string_view kKey = "first_user_prefix = messages[0]['content'] + ";
  size_t at = tpl.find(kKey);
  if (at == std::string_view::npos) return "\n\n";
  at += kKey.size();
  if (at >= tpl.size() || (tpl[at] != '\'' && tpl[at] != '"')) return "\n\n";
  const char quote = tpl[at];
  std::string sep;
  for (size_t i = at + 1; i < tpl.size(); ++i) {
    if (tpl[i] == quote) return sep;
    if (tpl[i] == '\\' && i + 1 < tpl.size()) {
      const char e = tpl[++i];
      sep += e == 'n' ? '\n' : e == 't' ? '\t' : e;
    } else {
      sep += tpl[i];
    }
  }
  return "\n\n";  // unterminated literal: keep the published default
}

}  // namespace

ChatTemplate ChatTemplate::of_kind(Kind kind) {
  ChatTemplate t;
  t.kind_ = kind;
  return t;
}

Result<ChatTemplate> ChatTemplate::from_gguf(const gguf::File& file) {
  if (!file.find("tokenizer.chat_template")) {
    if (file.find("general.architecture")) {
      PG_ASSIGN(const std::string arch, file.get_string("general.architecture"));
      if (arch == "gemma" || arch == "gemma2" || arch == "gemma3") return of_kind(Kind::Gemma);
    }
    return make_error("{}: model has no chat template (tokenizer.chat_template)", file.name());
  }
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
  if (tpl.find("<start_of_turn>") != std::string::npos) {
    t.kind_ = Kind::Gemma;
    t.system_separator_ = gemma_system_separator(tpl);
    return t;
  }
  return make_error("{}: unsupported chat template (known: ChatML, Gemma)", file.name());
}

namespace {

// Appends text the messages supplied, marking where it lies.
void append_marked(RenderedChat& out, std::string_view s) {
  if (!s.empty()) out.from_messages.emplace_back(out.text.size(), out.text.size() + s.size());
  out.text += s;
}

}  // namespace

RenderedChat ChatTemplate::render_marked(const std::vector<ChatMessage>& messages,
                                         bool add_generation_prompt) const {
  RenderedChat out;
  if (kind_ == Kind::Gemma) {
    render_gemma(messages, add_generation_prompt, out);
  } else {
    render_chatml(messages, add_generation_prompt, out);
  }
  return out;
}

void ChatTemplate::render_chatml(const std::vector<ChatMessage>& messages,
                                 bool add_generation_prompt, RenderedChat& out) const {
  if (!default_system_.empty() && (messages.empty() || messages[0].role != "system"))
    out.text += "<|im_start|>system\n" + default_system_ + "<|im_end|>\n";
  for (const ChatMessage& m : messages) {
    out.text += "<|im_start|>";
    append_marked(out, m.role);
    out.text += '\n';
    append_marked(out, m.content);
    out.text += "<|im_end|>\n";
  }
  if (add_generation_prompt) out.text += "<|im_start|>assistant\n";
}

// As Gemma 3's Jinja template: a leading system message is not a turn of its
// own but its text (untrimmed) + separator starts the first turn; every
// turn's content is trimmed; "assistant" is written "model". (The template
// also refuses conversations whose roles do not alternate user/model; the
// chat commands only build alternating ones.)
void ChatTemplate::render_gemma(const std::vector<ChatMessage>& messages,
                                bool add_generation_prompt, RenderedChat& out) const {
  size_t first = 0;
  const bool has_system = !messages.empty() && messages[0].role == "system";
  if (has_system) first = 1;
  for (size_t i = first; i < messages.size(); ++i) {
    const ChatMessage& m = messages[i];
    out.text += "<start_of_turn>";
    if (m.role == "assistant") {
      out.text += "model";
    } else {
      append_marked(out, m.role);
    }
    out.text += '\n';
    if (i == first && has_system) {
      append_marked(out, messages[0].content);
      out.text += system_separator_;
    }
    append_marked(out, trim(m.content));
    out.text += "<end_of_turn>\n";
  }
  if (add_generation_prompt) out.text += "<start_of_turn>model\n";
}

Result<std::vector<TokenId>> encode_chat(const Tokenizer& tok, const ChatTemplate& tpl,
                                         const std::vector<ChatMessage>& messages,
                                         bool add_generation_prompt,
                                         bool parse_special_in_content) {
  const RenderedChat chat = tpl.render_marked(messages, add_generation_prompt);
  PG_ASSIGN(std::vector<TokenId> body,
            parse_special_in_content ? tok.try_encode(chat.text, true)
                                     : tok.try_encode_guarded(chat.text, chat.from_messages));
  std::vector<TokenId> ids;
  ids.reserve(body.size() + 1);
  if (tok.add_bos()) ids.push_back(tok.bos());
  ids.insert(ids.end(), body.begin(), body.end());
  return ids;
}

}  // namespace peregrine
