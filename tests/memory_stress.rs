//! The memory store under many threads, with randomized interleavings: many contenders per key
//! on a multi-threaded runtime, random pauses and yields between steps. No key is ever acquired
//! twice while live, and no waiter misses a completion (every contender ends with the replay
//! long before its wait could time out).

use idem::{Begin, Fenced, Fingerprint, MemoryStore, StorageKey, Store, StoredResponse};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const KEYS: usize = 300;
const CONTENDERS: usize = 8;

fn key(i: usize) -> StorageKey {
    let k = idem::IdempotencyKey::parse(format!("stress-{i}").as_bytes()).expect("valid");
    StorageKey::scoped("stress:", "memory_stress", b"", &k)
}

async fn jitter(seed: &mut u64) {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    match *seed % 4 {
        0 => {}
        1 => tokio::task::yield_now().await,
        _ => tokio::time::sleep(Duration::from_micros(*seed % 300)).await,
    }
}

#[test]
fn many_threads_never_double_acquire_and_never_miss_a_wakeup() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let store = Arc::new(MemoryStore::default());
        let acquisitions: Arc<Mutex<HashMap<usize, u32>>> = Arc::default();
        let waits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let fp = Fingerprint::strict("POST", "/", "", b"same");
        let started = Instant::now();
        let mut tasks = Vec::new();
        for k in 0..KEYS {
            for c in 0..CONTENDERS {
                let (store, acq, waits) = (store.clone(), acquisitions.clone(), waits.clone());
                let mut seed = ((k * 31 + c * 7 + 1) as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                tasks.push(tokio::spawn(async move {
                    let key = key(k);
                    jitter(&mut seed).await;
                    loop {
                        match store
                            .begin(&key, &fp, Duration::from_secs(30), Duration::from_secs(60))
                            .await
                        {
                            Ok(Begin::Acquired { token, .. }) => {
                                *acq.lock().unwrap().entry(k).or_default() += 1;
                                jitter(&mut seed).await;
                                let resp =
                                    StoredResponse::new(200, None::<(&str, &str)>, format!("{k}"));
                                let done = store
                                    .complete(&key, token, &resp, Duration::from_secs(60))
                                    .await;
                                assert_eq!(done.ok(), Some(Fenced::Done));
                                return;
                            }
                            Ok(Begin::InProgress { .. }) => {
                                // Far longer than any run needs: a missed wake-up shows as a
                                // test that takes 20 s, which the final check refuses.
                                waits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                store
                                    .wait(&key, Duration::from_secs(20))
                                    .await
                                    .expect("wait");
                                jitter(&mut seed).await;
                            }
                            Ok(Begin::Replay(r)) => {
                                assert_eq!(r.body(), format!("{k}").as_bytes());
                                return;
                            }
                            other => panic!("unexpected {other:?}"),
                        }
                    }
                }));
            }
        }
        for t in tasks {
            t.await.expect("contender");
        }
        let waited = waits.load(std::sync::atomic::Ordering::Relaxed);
        println!("contenders that waited: {waited}");
        assert!(
            waited > KEYS / 2,
            "the interleavings must make contenders wait ({waited})"
        );
        let acq = acquisitions.lock().unwrap();
        assert_eq!(acq.len(), KEYS);
        assert!(acq.values().all(|n| *n == 1), "a key was acquired twice");
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "some waiter slept to its timeout: a lost wake-up ({:?})",
            started.elapsed()
        );
    });
}
