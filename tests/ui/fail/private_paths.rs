// Paths that were public by accident are not API any more.
use idem::canonical::parse;
use idem::engine::Engine;
use idem::__private::Policy;
use idem::key::parse_key;

fn main() {}
