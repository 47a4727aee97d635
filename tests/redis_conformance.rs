//! The store conformance suite against a private Redis server and a private 3-master cluster.

mod common;

use common::redis::{available, RedisCluster, RedisServer};
use idem::RedisStore;

mod single {
    use super::*;

    idem_runtime::store_conformance_tests!(guarded async {
        if !available("redis conformance (single)") {
            return None;
        }
        let server = RedisServer::start();
        let store = RedisStore::connect(&server.url()).await.expect("connect");
        Some((server, store))
    });
}

/// The replay cache in front of a single Redis.
mod cached {
    use super::*;

    idem_runtime::store_conformance_tests!(guarded async {
        if !available("redis conformance (cached)") {
            return None;
        }
        let server = RedisServer::start();
        let store = RedisStore::connect(&server.url()).await.expect("connect");
        Some((server, idem::CachedStore::new(store, 1 << 20)))
    });
}

mod cluster {
    use super::*;

    idem_runtime::store_conformance_tests!(guarded async {
        if !available("redis conformance (cluster)") {
            return None;
        }
        let cluster = RedisCluster::start();
        let store = RedisStore::builder()
            .cluster(cluster.urls())
            .connect()
            .await
            .expect("connect to the cluster");
        Some((cluster, store))
    });
}
