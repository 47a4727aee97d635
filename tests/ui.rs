//! Compile tests: what `#[idempotent]` accepts (tests/ui/pass) and the errors it gives
//! (tests/ui/fail/*.stderr; regenerate with `TRYBUILD=overwrite` and read the diff).

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
    t.compile_fail("tests/ui/fail/*.rs");
}
