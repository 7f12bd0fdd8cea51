// peregrine pull NAME
#include "tools/commands.h"
#include "tools/common.h"
#include "tools/pull.h"

namespace peregrine::tools {

void register_pull(CLI::App& app) {
  struct Opts {
    std::string name;
    bool force = false;
  };
  auto o = std::make_shared<Opts>();
  CLI::App* cmd = app.add_subcommand(
      "pull", "Put a known model into the model cache (" + known_model_names() + ")");
  cmd->add_option("name", o->name, "Model name")->required();
  cmd->add_flag("-f,--force", o->force, "Download again even if cached");
  cmd->callback([o] {
    const KnownModel* m = find_known_model(o->name);
    if (!m) fail(fmt::format("unknown model '{}' (known: {})", o->name, known_model_names()));
    std::string path = check(pull_model(*m, o->force));
    std::printf("%s\n", path.c_str());
  });
}

}  // namespace peregrine::tools
