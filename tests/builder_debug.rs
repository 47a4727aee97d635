//! Store builders are logged (`{:?}` in a startup line, a panic message): their `Debug` never
//! prints a password, whatever form the connection string takes.

use idem::RedisStore;
use idem_runtime::PostgresStore;

#[test]
fn store_builders_never_print_a_password() {
    let secret = "s3cret-pw";
    let redis = [
        format!(
            "{:?}",
            RedisStore::builder().url(format!("redis://:{secret}@127.0.0.1:6379/2"))
        ),
        format!(
            "{:?}",
            RedisStore::builder().url(format!("rediss://app:{secret}@cache.internal:6380"))
        ),
        format!(
            "{:?}",
            RedisStore::builder().cluster([
                format!("redis://:{secret}@127.0.0.1:7000"),
                format!("redis://:{secret}@127.0.0.1:7001"),
            ])
        ),
        format!(
            "{:?}",
            RedisStore::builder().sentinel([format!("redis://:{secret}@127.0.0.1:26379")], "main")
        ),
        format!(
            "{:?}",
            RedisStore::builder()
                .sentinel(["redis://127.0.0.1:26379"], "main")
                .sentinel_node(format!("rediss://idem:{secret}@master/2"))
        ),
        format!(
            "{:?}",
            RedisStore::builder().url(format!("redis+unix:///run/redis.sock?db=1&pass={secret}"))
        ),
    ];
    let postgres = [
        format!(
            "{:?}",
            PostgresStore::builder(&format!("postgres://app:{secret}@db.internal:5432/app"))
        ),
        format!(
            "{:?}",
            PostgresStore::builder(&format!(
                "host=db.internal user=app password={secret} dbname=app"
            ))
        ),
    ];
    for shown in redis.iter().chain(&postgres) {
        assert!(!shown.contains(secret), "a password in {shown}");
    }
    assert!(
        redis[0].contains("127.0.0.1:6379"),
        "still says where: {}",
        redis[0]
    );
    assert!(
        postgres[1].contains("db.internal"),
        "still says where: {}",
        postgres[1]
    );
}
