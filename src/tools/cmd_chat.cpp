// peregrine chat: interactive multi-turn chat with the model's template.
// The KV cache keeps the conversation, so each turn only computes what is new.
#include <unistd.h>

#include <cstdio>
#include <iostream>
#include <utility>

#include "engine/session.h"
#include "tokenizer/chat_template.h"
#include "tools/commands.h"
#include "tools/common.h"
#include "tools/constraint_flags.h"
#include "tools/generate_io.h"

namespace peregrine::tools {

void register_chat(CLI::App& app) {
  struct Opts {
    ModelOptions model;
    SequenceOptions gen;
    std::string system;
    int64_t n_predict = 512;
    bool parse_special = false;
    ConstraintFlags constraint;
  };
  auto o = std::make_shared<Opts>();
  CLI::App* cmd = app.add_subcommand("chat", "Interactive chat (/reset clears, Ctrl-D leaves)");
  cmd->add_option("--system", o->system, "System message");
  // Off by default: what is typed or piped in is message text, and text that spells
  // "<|im_end|>" must not end the turn or open a forged system one (pasted or generated
  // input can hold such strings). Whoever wants to write control tokens asks for it.
  cmd->add_flag("--parse-special", o->parse_special,
                "Read control tokens written in messages (e.g. <|im_start|>) as control tokens, "
                "not as text");
  cmd->add_option("-n,--n-predict", o->n_predict, "Most tokens per reply")
      ->capture_default_str()
      ->check(CLI::Range(int64_t(1), int64_t(1) << 24));
  add_model_options(cmd, o->model);
  add_spec_options(cmd, o->model);
  add_generation_options(cmd, o->gen);
  add_constraint_options(cmd, o->constraint);
  cmd->callback([o] {
    check(o->gen.sampling.validate());
    auto session = open_session(o->model);
    const Tokenizer& tok = session->tokenizer();
    ChatTemplate tpl = check(ChatTemplate::from_gguf(session->file()));
    const bool interactive = isatty(STDIN_FILENO);
    std::vector<ChatMessage> msgs;
    auto reset = [&] {
      msgs.clear();
      if (!o->system.empty()) msgs.push_back({"system", o->system});
      session->reset();
    };
    reset();
    SequenceOptions gen = o->gen;
    gen.max_tokens = o->n_predict;
    apply_constraint(o->constraint, *session, gen);
    if (interactive)
      std::fprintf(stderr, "chatting with %s (/reset to start over, Ctrl-D to leave)\n",
                   session->file().name().c_str());
    std::string line;
    for (;;) {
      if (interactive) std::fprintf(stderr, "> ");
      if (!std::getline(std::cin, line)) break;
      if (line == "/reset") {
        reset();
        std::fprintf(stderr, "(conversation cleared)\n");
        continue;
      }
      if (line.empty()) continue;
      msgs.push_back({"user", line});
      Result<std::vector<TokenId>> encoded = encode_chat(tok, tpl, msgs, true, o->parse_special);
      if (!encoded.ok()) {
        std::fprintf(stderr, "error: %s\n", encoded.error().message.c_str());
        msgs.pop_back();
        continue;
      }
      std::vector<TokenId> prompt = std::move(encoded).value();
      if (!session->unbounded() && int64_t(prompt.size()) >= session->n_ctx()) {
        std::fprintf(stderr, "error: the conversation no longer fits in the context (%lld tokens); "
                     "use /reset or raise -c\n", (long long)session->n_ctx());
        msgs.pop_back();
        continue;
      }
      // Each turn samples with the same seed, as a server request would.
      SequenceState seq(gen, session->token_text(), session->model().hparams().n_vocab);
      std::string reply;
      auto st = session->generate(prompt, seq, [&](const SequenceState::Emitted& e) {
        reply += e.text;
        std::fwrite(e.text.data(), 1, e.text.size(), stdout);
        std::fflush(stdout);
        return true;
      });
      if (!st.ok()) fail(st.error());
      std::printf("\n");
      std::fflush(stdout);
      msgs.push_back({"assistant", reply});
      if (interactive) print_timing(*st, session->drafter() ? session->drafter()->name() : std::string_view());
    }
  });
}

}  // namespace peregrine::tools
