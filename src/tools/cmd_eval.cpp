// peregrine eval: being written (issue 15).
#include "tools/commands.h"
#include "tools/common.h"

namespace peregrine::tools {

void register_eval(CLI::App& app) {
  CLI::App* cmd = app.add_subcommand("eval", "(not yet available)");
  cmd->callback([] { fail("eval: not yet available"); });
}

}  // namespace peregrine::tools
