// peregrine run -p PROMPT: generate text; text on stdout, one timing line on stderr.
#include <cstdio>

#include "engine/session.h"
#include "tokenizer/chat_template.h"
#include "tools/commands.h"
#include "tools/common.h"
#include "tools/constraint_flags.h"
#include "tools/generate_io.h"

namespace peregrine::tools {

void register_run(CLI::App& app) {
  struct Opts {
    ModelOptions model;
    SequenceOptions gen;
    std::string prompt;
    std::string system;
    int64_t n_predict = 128;
    bool chat = false;
    ConstraintFlags constraint;
  };
  auto o = std::make_shared<Opts>();
  CLI::App* cmd = app.add_subcommand("run", "Generate text from a prompt");
  cmd->add_option("-p,--prompt", o->prompt, "Prompt text")->required();
  cmd->add_option("-n,--n-predict", o->n_predict, "Tokens to generate")
      ->capture_default_str()
      ->check(CLI::Range(int64_t(0), int64_t(1) << 24));
  cmd->add_flag("--chat", o->chat, "Wrap the prompt in the model's chat template");
  cmd->add_option("--system", o->system, "System message for --chat");
  add_model_options(cmd, o->model);
  add_spec_options(cmd, o->model);
  add_generation_options(cmd, o->gen);
  add_constraint_options(cmd, o->constraint);
  cmd->callback([o] {
    check(o->gen.sampling.validate());
    auto session = open_session(o->model);
    const Tokenizer& tok = session->tokenizer();
    std::vector<TokenId> prompt;
    if (o->chat) {
      // As chat and serve: control tokens only from the template, never from the messages.
      ChatTemplate tpl = check(ChatTemplate::from_gguf(session->file()));
      std::vector<ChatMessage> msgs;
      if (!o->system.empty()) msgs.push_back({"system", o->system});
      msgs.push_back({"user", o->prompt});
      prompt = check(encode_chat(tok, tpl, msgs, true, false));
    } else {
      prompt = prompt_tokens(tok, o->prompt);
    }
    if (prompt.empty()) fail("the prompt is empty");
    if (!session->unbounded() && int64_t(prompt.size()) >= session->n_ctx())
      fail(fmt::format("the prompt has {} tokens but the context holds {} (raise -c)",
                       prompt.size(), session->n_ctx()));
    SequenceOptions gen = o->gen;
    gen.max_tokens = o->n_predict;
    apply_constraint(o->constraint, *session, gen);
    SequenceState seq(gen, session->token_text(), session->model().hparams().n_vocab);
    GenerateStats st = check(session->generate(prompt, seq, [](const SequenceState::Emitted& e) {
      std::fwrite(e.text.data(), 1, e.text.size(), stdout);
      std::fflush(stdout);
      return true;
    }));
    std::printf("\n");
    std::fflush(stdout);
    print_timing(st, session->drafter() ? session->drafter()->name() : std::string_view());
  });
}

}  // namespace peregrine::tools
