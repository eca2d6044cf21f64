//! The store on both backends: SQLite files and a real PostgreSQL.

use super::*;

fn key() -> PoolKey {
    PoolKey {
        region: RegionId::parse("eu-west-1").expect("region"),
        kind: NodeKind::Media,
    }
}

/// A SQLite store's URL in `dir`.
fn sqlite_url(dir: &tempfile::TempDir) -> String {
    format!("sqlite://{}/fleet.db?mode=rwc", dir.path().display())
}

#[tokio::test]
async fn sqlite_store() {
    let dir = tempfile::tempdir().expect("dir");
    what_is_written_reads_back_after_a_reopen(&sqlite_url(&dir)).await;
    let dir = tempfile::tempdir().expect("dir");
    decision_log_queries_read_every_action_back(&sqlite_url(&dir)).await;
    let dir = tempfile::tempdir().expect("dir");
    demand_rows_read_back_in_start_order_and_are_pruned(&sqlite_url(&dir)).await;
    // The path form of the same.
    let dir = tempfile::tempdir().expect("dir");
    Store::open(&dir.path().join("a/b/fleet.db"))
        .await
        .expect("open by path");
    let refused = Store::open(&dir.path().join("what?.db")).await.err();
    assert!(matches!(refused, Some(StoreError::Url(_))), "{refused:?}");
    let dir = tempfile::tempdir().expect("dir");
    queued_writes_land_in_order(&sqlite_url(&dir)).await;
}

/// Writes queued faster than one transaction each are applied in batches, in order.
async fn queued_writes_land_in_order(url: &str) {
    let store = Store::connect(url).await.expect("open");
    let writer = store.writer();
    for i in 0..600u64 {
        let event = ScalingEvent {
            at_unix_ms: i,
            region: key().region,
            kind: NodeKind::Media,
            action: "launch",
            node_id: None,
            count: Some(1),
            reason: "unmet_demand".into(),
            inputs: None,
        };
        writer.send(Write::Event(event)).expect("queued");
    }
    let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let saved = store.load(1_000).await.expect("load");
        if saved.events.len() == 600 {
            let at: Vec<u64> = saved.events.iter().map(|e| e.at_unix_ms).collect();
            assert_eq!(at, (0..600).collect::<Vec<_>>(), "in order");
            break;
        }
        assert!(
            std::time::Instant::now() < end,
            "{} of 600",
            saved.events.len()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The same checks on a real PostgreSQL, each in a database of its own; then a second
/// controller's open (the schema is there) changes nothing.
#[tokio::test]
async fn postgres_store() {
    let pg = fleet_testkit::postgres::PgCluster::start();
    for db in ["reopen", "log", "demand"] {
        pg.create_database(db);
    }
    what_is_written_reads_back_after_a_reopen(&pg.url("reopen")).await;
    decision_log_queries_read_every_action_back(&pg.url("log")).await;
    demand_rows_read_back_in_start_order_and_are_pruned(&pg.url("demand")).await;
    pg.create_database("queue");
    queued_writes_land_in_order(&pg.url("queue")).await;
    let url = pg.url("log");
    let (a, b) = tokio::join!(Store::connect(&url), Store::connect(&url));
    assert_eq!(a.expect("open a").backend(), Backend::Postgres);
    let saved = b.expect("open b").load(100).await.expect("load");
    assert_eq!(saved.events.len(), 10);
    let refused = Store::connect("mysql://x").await.err();
    assert!(matches!(refused, Some(StoreError::Url(_))), "{refused:?}");
}

async fn what_is_written_reads_back_after_a_reopen(url: &str) {
    let store = Store::connect(url).await.expect("open");
    let node = NodeId::parse("media-eu-west-1-1").expect("id");
    let policy = PoolPolicy {
        max: 20,
        ..PoolPolicy::default_for(NodeKind::Media)
    };
    let writes = [
        Write::Event(ScalingEvent {
            at_unix_ms: 5,
            region: key().region,
            kind: NodeKind::Media,
            action: "launch",
            node_id: None,
            count: Some(2),
            reason: "unmet_demand".into(),
            inputs: Some(Default::default()),
        }),
        Write::Policy {
            pool: key(),
            policy: Box::new(policy.clone()),
            change: Box::new(PolicyPatch {
                max: Some(20),
                ..Default::default()
            }),
            by: "admin".into(),
            at_unix_ms: 6,
        },
        Write::Paused {
            pool: key(),
            paused: true,
        },
        Write::BookingAdded(Booking {
            id: "b_1".into(),
            region: key().region,
            start_unix_ms: 1_000,
            duration_ms: 60_000,
            participants: 2,
            profile: Profile::Video,
            made_unix_ms: 500,
        }),
        Write::BookingAdded(Booking {
            id: "b_2".into(),
            region: key().region,
            start_unix_ms: 2_000,
            duration_ms: 60_000,
            participants: 3,
            profile: Profile::Hd,
            made_unix_ms: 1_500,
        }),
        Write::BookingRemoved("b_1".into()),
        Write::DrainStarted {
            pool: key(),
            node: node.clone(),
            deadline_unix_ms: 99,
        },
        Write::Launched {
            pool: key(),
            launch: InFlight {
                node: NodeId::parse("media-eu-west-1-2").expect("id"),
                zone: "eu-west-1b".into(),
                launched_unix_ms: 7,
                market: Market::Spot,
            },
        },
    ];
    for w in &writes {
        store.apply(w).await.expect("write");
    }
    store.pool.close().await;
    let saved = Store::connect(url)
        .await
        .expect("reopen")
        .load(10)
        .await
        .expect("load");
    assert_eq!(saved.policies, vec![(key(), policy)]);
    assert_eq!(saved.paused, vec![key()]);
    assert_eq!(saved.bookings.len(), 1);
    assert_eq!(saved.bookings[0].id, "b_2");
    assert_eq!(saved.bookings[0].profile, Profile::Hd);
    assert_eq!(saved.bookings[0].made_unix_ms, 1_500);
    assert_eq!(saved.drains, vec![(key(), node.clone(), 99)]);
    assert_eq!(saved.launches.len(), 1);
    assert_eq!(saved.events.len(), 1);
    assert_eq!(saved.events[0].count, Some(2));
    assert_eq!(saved.events[0].inputs, Some(Default::default()));
    // Ending what was in progress removes it.
    let store = Store::connect(url).await.expect("reopen");
    store.apply(&Write::DrainEnded(node)).await.expect("end");
    store
        .apply(&Write::LaunchSeen(
            NodeId::parse("media-eu-west-1-2").expect("id"),
        ))
        .await
        .expect("seen");
    let saved = store.load(10).await.expect("load");
    assert!(saved.drains.is_empty() && saved.launches.is_empty());
}

/// Every action the decision log writes reads back (a restarted controller loads them),
/// and the log can be queried by region, kind and time beyond what memory keeps.
async fn decision_log_queries_read_every_action_back(url: &str) {
    let store = Store::connect(url).await.expect("open");
    let turn = PoolKey {
        kind: NodeKind::Turn,
        ..key()
    };
    for (i, action) in ACTIONS.iter().enumerate() {
        for pool in [key(), turn.clone()] {
            let event = ScalingEvent {
                at_unix_ms: 1_000 * (i as u64 + 1),
                region: pool.region.clone(),
                kind: pool.kind,
                action,
                node_id: None,
                count: Some(1),
                reason: "pool_cost_cap".into(),
                inputs: None,
            };
            store.apply(&Write::Event(event)).await.expect("write");
        }
    }
    let saved = store.load(100).await.expect("load");
    let actions: Vec<&str> = saved.events.iter().map(|e| e.action).collect();
    assert_eq!(actions.len(), 10, "{actions:?}");
    assert!(actions.contains(&"launch_refused"));
    // Media events at 2..4 s: newest first, the upper bound excluded.
    let media = store
        .events(Some(&key().region), Some(NodeKind::Media), 2_000, 5_000, 10)
        .await
        .expect("query");
    let at: Vec<u64> = media.iter().map(|e| e.at_unix_ms).collect();
    assert_eq!(at, vec![4_000, 3_000, 2_000]);
    assert!(media.iter().all(|e| e.kind == NodeKind::Media));
    let both = store
        .events(None, None, 0, u64::MAX, 3)
        .await
        .expect("query");
    assert_eq!(both.len(), 3);
    assert_eq!(both[0].at_unix_ms, 5_000);
}

async fn demand_rows_read_back_in_start_order_and_are_pruned(url: &str) {
    use fleet_core::trace::TraceParticipant;
    let store = Store::connect(url).await.expect("open");
    let row = |start: u64, relay: bool, booked: Option<u64>| DemandRow {
        start_unix_ms: start,
        duration_ms: 3_000_000,
        participants: vec![
            TraceParticipant {
                location: fleet_geo::Location::new(51.5, -0.1).expect("loc"),
                relay: false,
            },
            TraceParticipant {
                location: fleet_geo::Location::new(-33.9, 151.2).expect("loc"),
                relay,
            },
        ],
        booked_unix_ms: booked,
        profile: Profile::Audio,
    };
    store
        .apply(&Write::Demand(vec![
            row(3_000, true, Some(1_000)),
            row(1_000, false, None),
        ]))
        .await
        .expect("write");
    store
        .apply(&Write::Demand(vec![row(2_000, false, None)]))
        .await
        .expect("write");
    let got = store.demand_since(1_500).await.expect("read");
    assert_eq!(
        got,
        vec![row(2_000, false, None), row(3_000, true, Some(1_000))]
    );
    store
        .apply(&Write::DemandPrune {
            before_unix_ms: 2_500,
        })
        .await
        .expect("prune");
    assert_eq!(
        store.demand_since(0).await.expect("read"),
        vec![row(3_000, true, Some(1_000))]
    );
    // A busy sweep's rows (more than one INSERT holds) all land, each as written.
    let many: Vec<DemandRow> = (0..450u64)
        .map(|i| row(10_000 + i, i % 3 == 0, (i % 2 == 0).then_some(9_000)))
        .collect();
    store
        .apply(&Write::Demand(many.clone()))
        .await
        .expect("write many");
    assert_eq!(store.demand_since(10_000).await.expect("read"), many);
}

#[tokio::test]
async fn a_store_from_before_booking_times_gains_the_column() {
    use sqlx::sqlite::{SqliteConnectOptions, SqlitePool};
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("fleet.db");
    {
        let options = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true);
        let pool = SqlitePool::connect_with(options).await.expect("old store");
        sqlx::query(
            "CREATE TABLE bookings (id TEXT PRIMARY KEY, region TEXT NOT NULL,
             start_unix_ms INTEGER NOT NULL, duration_ms INTEGER NOT NULL,
             participants INTEGER NOT NULL, profile TEXT NOT NULL)",
        )
        .execute(&pool)
        .await
        .expect("old table");
        sqlx::query("INSERT INTO bookings VALUES ('b_old', 'eu-west-1', 5, 6, 2, '\"video\"')")
            .execute(&pool)
            .await
            .expect("old row");
        pool.close().await;
    }
    let saved = Store::open(&path)
        .await
        .expect("open")
        .load(1)
        .await
        .expect("load");
    assert_eq!(saved.bookings.len(), 1);
    assert_eq!(saved.bookings[0].id, "b_old");
    assert_eq!(saved.bookings[0].made_unix_ms, 0);
}
