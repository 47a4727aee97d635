//! The demo's OpenAPI document: valid OpenAPI 3.1 by the reference validator (PyPI's
//! `openapi-spec-validator`; without it this test says so and skips, and with `CI` set that is
//! a failure), and every idempotent operation documents its key, its replays and idem's answers.

mod common;

use common::demo::start_demo;
use serde_json::Value;
use std::io::Write;
use std::process::{Command, Output, Stdio};

async fn document(base: &str) -> Value {
    let c = reqwest::Client::builder().no_proxy().build().unwrap();
    let r = c.get(format!("{base}/openapi.json")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.expect("the document is JSON")
}

/// `python3 -m openapi_spec_validator -` on `doc`.
fn validate(doc: &Value) -> Output {
    let mut child = Command::new("python3")
        .args(["-m", "openapi_spec_validator", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the validator");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(&serde_json::to_vec(doc).unwrap()).unwrap();
    drop(stdin);
    child.wait_with_output().expect("the validator's answer")
}

fn validator_available() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import openapi_spec_validator"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        if std::env::var_os("CI").is_some() {
            panic!("python3 cannot import openapi_spec_validator, and CI is set: pip install openapi-spec-validator");
        }
        eprintln!("skipped OpenAPI validation: pip install openapi-spec-validator");
    }
    ok
}

#[actix_web::test]
async fn the_document_is_valid_openapi_3_1() {
    let (_demo, base) = start_demo(None, 10).await;
    let doc = document(&base).await;
    assert_eq!(doc["openapi"], "3.1.0");
    if !validator_available() {
        return;
    }
    let out = validate(&doc);
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "invalid OpenAPI document: {said}");
    assert!(said.contains("OK"), "{said}");

    // The validator does reject a broken document: the check above is not vacuous.
    let mut broken = doc.clone();
    broken["paths"]["/payments"]["post"]["responses"]["409"]["content"]
        ["application/problem+json"]["schema"] = serde_json::json!({ "$ref": 5 });
    assert!(
        !validate(&broken).status.success(),
        "a broken document passed"
    );
}

#[actix_web::test]
async fn every_idempotent_operation_documents_key_replays_and_problems() {
    let (_demo, base) = start_demo(None, 10).await;
    let doc = document(&base).await;
    let ops = [
        ("/payments", "retry_after", "201"),
        ("/transfers", "wait", "201"),
        ("/refunds", "accepted", "201"),
        ("/checkout", "wait", "303"),
    ];
    for (path, on_conflict, success) in ops {
        let op = &doc["paths"][path]["post"];
        let x = &op["x-idempotency"];
        assert_eq!(x["on_conflict"], on_conflict, "{path}: {op:#}");
        assert_eq!(x["ttl"], "24h", "{path}");
        assert!(x["guarantee"].is_string(), "{path}");
        if path == "/checkout" {
            // The key is a form field: named in the extension, not a parameter.
            assert_eq!(x["key"][0]["in"], "form");
            assert_eq!(x["key"][0]["name"], "_idem");
        } else {
            let key = op["parameters"]
                .as_array()
                .and_then(|ps| ps.iter().find(|p| p["name"] == "Idempotency-Key"))
                .unwrap_or_else(|| panic!("{path}: no Idempotency-Key parameter: {op:#}"));
            assert_eq!(key["in"], "header", "{path}");
            assert_eq!(key["required"], true, "{path}");
            assert!(
                op["responses"][success]["headers"]["Idempotent-Replayed"].is_object(),
                "{path}"
            );
        }
        for status in ["400", "409", "413", "422", "503"] {
            assert_eq!(
                op["responses"][status]["content"]["application/problem+json"]["schema"]["$ref"],
                "#/components/schemas/IdempotencyProblem",
                "{path} {status}"
            );
        }
        assert!(
            op["responses"]["409"]["headers"]["Retry-After"].is_object(),
            "{path}"
        );
        assert_eq!(
            op["responses"]["202"].is_object(),
            on_conflict == "accepted",
            "{path}: 202 only where duplicates are accepted"
        );
    }
    // Its own answers kept: the handler's 400 description beside idem's problem body.
    assert!(
        doc["paths"]["/payments"]["post"]["responses"]["400"]["description"]
            .as_str()
            .is_some_and(|d| d.contains("Invalid amount"))
    );
    // A read is not idempotent-by-attribute and is left alone.
    let get = &doc["paths"]["/payments/{id}"]["get"];
    assert!(get.is_object() && get["x-idempotency"].is_null(), "{get:#}");
    assert!(doc["components"]["schemas"]["IdempotencyProblem"].is_object());
}
