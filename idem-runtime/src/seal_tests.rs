use super::*;

fn response() -> StoredResponse {
    StoredResponse::new(
        201,
        [("location", "/payments/MARKER")],
        b"{\"card\":\"MARKER-4242\"}",
    )
}

fn sealer(secrets: &[&[u8]]) -> Arc<Sealer> {
    Sealer::new(&secrets.iter().map(|s| s.to_vec()).collect::<Vec<_>>()).expect("secrets")
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn a_sealed_response_opens_only_with_its_key_and_raw_key() {
    let s = sealer(&[b"s1"]);
    let seal = s.record("order-1");
    let sealed = seal.seal("idem:k1", &response());
    assert_eq!(sealed.status(), 201);
    assert!(is_sealed(&sealed));
    assert!(!contains(&sealed.encode(), b"MARKER"));
    assert_eq!(seal.open("idem:k1", &sealed), Ok(response()));
    // Copied over another key, opened with another raw key, or another status: refused.
    assert_eq!(seal.open("idem:k2", &sealed), Err(Unreadable::Forged));
    assert_eq!(
        s.record("order-2").open("idem:k1", &sealed),
        Err(Unreadable::Forged)
    );
    let edited = StoredResponse::new(200, sealed.headers(), sealed.body());
    assert_eq!(seal.open("idem:k1", &edited), Err(Unreadable::Forged));
    let cut = StoredResponse::new(sealed.status(), sealed.headers(), &sealed.body()[..10]);
    assert_eq!(seal.open("idem:k1", &cut), Err(Unreadable::Forged));
    assert_eq!(seal.open("idem:k1", &response()), Err(Unreadable::Unsealed));
}

#[test]
fn records_open_under_an_older_secret_until_it_is_removed() {
    let old = sealer(&[b"s1"]).record("k").seal("idem:k", &response());
    let rotated = sealer(&[b"s2", b"s1"]).record("k");
    assert_eq!(rotated.open("idem:k", &old), Ok(response()));
    // New records are sealed under the newest secret only.
    let new = rotated.seal("idem:k", &response());
    assert_eq!(
        sealer(&[b"s1"]).record("k").open("idem:k", &new),
        Err(Unreadable::UnknownSecret)
    );
    assert_eq!(
        sealer(&[b"s2"]).record("k").open("idem:k", &old),
        Err(Unreadable::UnknownSecret)
    );
}

#[test]
fn a_status_token_carries_the_raw_key_for_its_record_only() {
    let s = sealer(&[b"s1"]);
    let sealed = s.record("order-1").seal("idem:k1", &response());
    let token = s
        .record("order-1")
        .status_token("idem:k1")
        .expect("sealing");
    assert_eq!(
        token,
        s.record("order-1")
            .status_token("idem:k1")
            .expect("sealing"),
        "one URL per record"
    );
    assert_ne!(
        token,
        s.record("order-2")
            .status_token("idem:k2")
            .expect("sealing")
    );
    assert!(!token.contains("order-1"));
    let from_token = s.from_token("idem:k1", &token).expect("a valid token");
    assert_eq!(from_token.open("idem:k1", &sealed), Ok(response()));
    assert!(
        s.from_token("idem:k2", &token).is_none(),
        "bound to its key"
    );
    assert!(sealer(&[b"other"]).from_token("idem:k1", &token).is_none());
    for bad in ["", "zz", "00", &token[..token.len() - 2]] {
        assert!(s.from_token("idem:k1", bad).is_none(), "{bad}");
    }
}

#[test]
fn a_blob_opens_under_the_secret_alone_for_its_purpose_and_key_only() {
    let s = sealer(&[b"s1"]);
    let blob = s.seal_blob("step:0:charge", "idem:k1", b"MARKER-4242");
    assert!(!contains(&blob, b"MARKER"));
    assert_eq!(
        s.open_blob("step:0:charge", "idem:k1", &blob).as_deref(),
        Ok(&b"MARKER-4242"[..])
    );
    // Another purpose (another step, the request), another key, a flipped bit: refused.
    assert_eq!(
        s.open_blob("step:1:charge", "idem:k1", &blob),
        Err(Unreadable::Forged)
    );
    assert_eq!(
        s.open_blob("step:0:charge", "idem:k2", &blob),
        Err(Unreadable::Forged)
    );
    let mut bent = blob.clone();
    let last = bent.len() - 1;
    bent[last] ^= 1;
    assert_eq!(
        s.open_blob("step:0:charge", "idem:k1", &bent),
        Err(Unreadable::Forged)
    );
    // Rotation: a newer secret first still opens what the older one sealed; without it, no.
    let rotated = sealer(&[b"s2", b"s1"]);
    assert!(rotated.open_blob("step:0:charge", "idem:k1", &blob).is_ok());
    assert_eq!(
        sealer(&[b"s2"]).open_blob("step:0:charge", "idem:k1", &blob),
        Err(Unreadable::UnknownSecret)
    );
}

#[test]
fn an_app_adopting_a_secret_opens_what_it_sealed_and_seals_nothing_itself() {
    let sealed = sealer(&[b"s1"]).record("k").seal("idem:k", &response());
    let open_only = Sealer::open_only(&[b"s1".to_vec()]).expect("secrets");
    // Under the secret's key it opens what the secret sealed, and seals what it resumes there
    // (the instances with the secret read it); a record in clear there is refused.
    let keyed = open_only.record("k").for_derivation(true);
    assert_eq!(keyed.open("idem:k", &sealed), Ok(response()));
    let resumed = keyed.seal("idem:k", &response());
    assert!(is_sealed(&resumed));
    let with_secret = sealer(&[b"s1"]).record("k");
    assert_eq!(
        with_secret
            .clone()
            .for_derivation(true)
            .open("idem:k", &resumed),
        Ok(response())
    );
    assert_eq!(keyed.open("idem:k", &response()), Err(Unreadable::Unsealed));
    // Under the public key it writes in clear, as it did without a secret, and reads that back.
    let public = open_only.record("k").for_derivation(false);
    let written = public.seal("idem:k", &response());
    assert!(!is_sealed(&written));
    assert_eq!(public.open("idem:k", &written), Ok(response()));
    assert_eq!(public.status_token("idem:k"), None);
    // With the secret, a record in clear opens only under the public key.
    assert_eq!(
        with_secret
            .clone()
            .for_derivation(true)
            .open("idem:k", &written),
        Err(Unreadable::Unsealed)
    );
    assert_eq!(
        with_secret.for_derivation(false).open("idem:k", &written),
        Ok(response())
    );
}
