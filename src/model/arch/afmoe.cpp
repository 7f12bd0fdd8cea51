// afmoe: being written.
#include "model/arch/arch.h"

namespace peregrine::arch {

Result<std::unique_ptr<Model>> make_afmoe(std::shared_ptr<const gguf::File> file, ThreadPool&) {
  return make_error("{}: architecture 'afmoe' is not supported yet", file->name());
}

}  // namespace peregrine::arch
