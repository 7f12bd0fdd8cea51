// nemotron_h_moe: being written.
#include "model/arch/arch.h"

namespace peregrine::arch {

Result<std::unique_ptr<Model>> make_nemotron_h_moe(std::shared_ptr<const gguf::File> file, ThreadPool&) {
  return make_error("{}: architecture 'nemotron_h_moe' is not supported yet", file->name());
}

}  // namespace peregrine::arch
