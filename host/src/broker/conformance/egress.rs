//! Conformance cases of egress limits: concurrency slots held under leases, and the sliding
//! rate window.

use std::time::Duration;

use super::*;
use crate::broker::{EgressLimit, EgressTry};

/// Egress concurrency: slots held by token, freed on release or when a lease runs out without
/// a renewal; a host without a limit always has room.
pub async fn egress_concurrency_is_held_under_leases(store: &dyn Store) {
    let b = Subject::new(store, TTL).await;
    let b = b.broker.as_ref();
    let long = Duration::from_secs(30);
    let g = Duration::ZERO;
    let limit = EgressLimit {
        concurrency: Some(2),
        rate: None,
    };
    b.set_egress_limit("api.example", &limit).await.unwrap();
    assert_eq!(
        b.egress_limits().await.unwrap(),
        vec![("api.example".to_owned(), limit)]
    );
    assert_eq!(b.egress_limit("api.example").await.unwrap(), limit);
    assert_eq!(
        b.egress_limit("other.example").await.unwrap(),
        EgressLimit::default()
    );

    let acquire = |t: &'static str, lease: Duration| b.acquire_egress("api.example", t, lease, g);
    assert_eq!(acquire("t1", long).await.unwrap(), EgressTry::Acquired);
    assert_eq!(acquire("t2", long).await.unwrap(), EgressTry::Acquired);
    assert!(matches!(
        acquire("t3", long).await.unwrap(),
        EgressTry::Wait(_)
    ));
    b.release_egress("api.example", "t1").await.unwrap();
    assert_eq!(acquire("t3", long).await.unwrap(), EgressTry::Acquired);
    assert!(matches!(
        acquire("t4", long).await.unwrap(),
        EgressTry::Wait(_)
    ));

    // A slot whose lease runs out comes back; a renewed one does not.
    b.release_egress("api.example", "t2").await.unwrap();
    let short = Duration::from_millis(300);
    assert_eq!(acquire("t5", short).await.unwrap(), EgressTry::Acquired);
    assert!(b.renew_egress("api.example", "t3", long).await.unwrap());
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(!b.renew_egress("api.example", "t5", long).await.unwrap());
    assert_eq!(acquire("t6", long).await.unwrap(), EgressTry::Acquired);
    assert!(matches!(
        acquire("t7", long).await.unwrap(),
        EgressTry::Wait(_)
    ));

    // Other hosts are not limited; removing the limit frees this one.
    for t in ["u1", "u2", "u3"] {
        let r = b.acquire_egress("other.example", t, long, g).await.unwrap();
        assert_eq!(r, EgressTry::Acquired);
    }
    b.set_egress_limit("api.example", &EgressLimit::default())
        .await
        .unwrap();
    assert!(b.egress_limits().await.unwrap().is_empty());
    assert_eq!(acquire("t8", long).await.unwrap(), EgressTry::Acquired);
}

/// Egress rate: at most `n` starts in any window (plus the guard), whatever the concurrency.
pub async fn egress_rate_is_a_sliding_window(store: &dyn Store) {
    let b = Subject::new(store, TTL).await;
    let b = b.broker.as_ref();
    let lease = Duration::from_secs(30);
    let guard = Duration::from_millis(100);
    b.set_egress_limit(
        "api.example",
        &EgressLimit {
            concurrency: None,
            // Five seconds: the four calls below must fall inside it even on a stalled machine.
            rate: Some((3, 5000)),
        },
    )
    .await
    .unwrap();
    let tokens = ["a", "b", "c"];
    for t in tokens {
        let r = b
            .acquire_egress("api.example", t, lease, guard)
            .await
            .unwrap();
        assert_eq!(r, EgressTry::Acquired);
    }
    let wait = match b
        .acquire_egress("api.example", "d", lease, guard)
        .await
        .unwrap()
    {
        EgressTry::Wait(w) => w,
        EgressTry::Acquired => panic!("a fourth start inside the window"),
    };
    assert!(
        wait > Duration::ZERO && wait <= Duration::from_millis(5101),
        "{wait:?}"
    );
    // Once the wait it was told has passed, the oldest start has left the window.
    tokio::time::sleep(wait).await;
    assert_eq!(
        b.acquire_egress("api.example", "f", lease, guard)
            .await
            .unwrap(),
        EgressTry::Acquired
    );
}
