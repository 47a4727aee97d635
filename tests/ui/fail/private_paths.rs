// Paths that were public by accident are not API any more: neither the facade's old glob
// re-export nor idem-runtime's modules.
use idem::canonical::parse;
use idem::engine::Engine;
use idem::__private::Policy;
use idem::key::parse_key;
use idem_runtime::actix::run;
use idem_runtime::store::memory::MemoryStore;
use idem_runtime::Policy as RuntimePolicy;
use idem_runtime::KeySource;

fn main() {}
