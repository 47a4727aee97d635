//! The never-replayed header list exists twice: the attribute refuses those names at compile time
//! (`idem-macros`, which cannot depend on the runtime), and the runtime drops them at run time.
//! This keeps the two copies equal.

#[test]
fn the_macro_and_the_runtime_never_replay_the_same_headers() {
    let source = include_str!("../idem-macros/src/validate.rs");
    let start = source
        .find("const NEVER_REPLAYED: &[&str] = &[")
        .expect("the macro's list");
    let list = &source[start..];
    let list = &list[list.find('[').unwrap() + 1..];
    let list = &list[list.find('[').unwrap() + 1..list.find("];").unwrap()];
    let mut in_macro: Vec<&str> = list
        .split(',')
        .map(|s| s.trim().trim_matches('"'))
        .filter(|s| !s.is_empty())
        .collect();
    let mut in_runtime: Vec<&str> = idem::NEVER_REPLAYED.to_vec();
    in_macro.sort_unstable();
    in_runtime.sort_unstable();
    assert_eq!(in_macro, in_runtime);
}
