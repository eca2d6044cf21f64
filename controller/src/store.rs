//! What the controller alone knows and must keep (DESIGN.md): the scaling decision log, pool
//! policy changes (and who made them), pool pauses, bookings, the drains and launches in
//! progress (so a restarted controller resumes them instead of repeating them), and the demand
//! trace (finished sessions in the trace format's terms: no ids, locations rounded to 0.1°).
//!
//! Two backends through sqlx's `Any` driver, with the same SQL (numbered parameters, `ON
//! CONFLICT` upserts) and a schema written for both: embedded SQLite (WAL) in the controller's
//! state directory, the default for one controller and `fleet up`; and PostgreSQL (`[store]
//! url`), shared by several controllers of which one leads (`crate::leader`). As leader, every
//! write runs in a transaction that first checks the leader's fencing epoch, and is refused
//! when a newer leader exists. Writes from the scaler go through a queue to one writer task, so
//! a slow disk or database never stalls a tick, and nothing on the placement path waits on it.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use fleet_core::Profile;
use fleet_core::autoscale::{Booking, InFlight, PolicyPatch, PoolKey, PoolPolicy};
use fleet_core::demand::DemandRow;
use fleet_core::trace::{format_participants, parse_participants};
use fleet_proto::{Market, NodeId, NodeKind, RegionId};
use sqlx::AnyPool;
use sqlx::Row;
use sqlx::any::{AnyPoolOptions, AnyRow};
use tokio::sync::mpsc;

use crate::scaler::ScalingEvent;

/// A store failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store: {0}")]
    Sql(#[from] sqlx::Error),
    #[error("store: a saved value does not read back: {0}")]
    Corrupt(String),
    #[error("store: {0}")]
    Url(String),
    /// A write made as leader after a newer leader took over (or before this one led).
    #[error(
        "store: write refused: this controller is not the leader (epoch {mine}, leader's {current})"
    )]
    Fenced { mine: i64, current: i64 },
}

/// One write, queued for the writer task.
#[derive(Debug)]
pub enum Write {
    Event(ScalingEvent),
    Policy {
        pool: PoolKey,
        policy: Box<PoolPolicy>,
        change: Box<PolicyPatch>,
        by: String,
        at_unix_ms: u64,
    },
    Paused {
        pool: PoolKey,
        paused: bool,
    },
    BookingAdded(Booking),
    BookingRemoved(String),
    DrainStarted {
        pool: PoolKey,
        node: NodeId,
        deadline_unix_ms: u64,
    },
    DrainEnded(NodeId),
    Launched {
        pool: PoolKey,
        launch: InFlight,
    },
    LaunchSeen(NodeId),
    /// Finished sessions, for the demand trace (one sweep's worth, written in multi-row
    /// inserts).
    Demand(Vec<DemandRow>),
    /// Forget demand rows that started before this time (retention).
    DemandPrune {
        before_unix_ms: u64,
    },
}

/// What a restarted controller reads back.
#[derive(Debug, Default)]
pub struct Saved {
    /// Policies changed at run time (they win over the config file's).
    pub policies: Vec<(PoolKey, PoolPolicy)>,
    pub paused: Vec<PoolKey>,
    pub bookings: Vec<Booking>,
    /// Drains in progress: (pool, node, deadline).
    pub drains: Vec<(PoolKey, NodeId, u64)>,
    /// Launches decided and not yet seen as a node.
    pub launches: Vec<(PoolKey, InFlight)>,
    /// The newest events, oldest first.
    pub events: Vec<ScalingEvent>,
}

/// Which database the store is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The store.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// With several controllers: the epoch this controller leads with (0 while it does not);
    /// every write checks it against the database's. `None`: one controller, no fencing.
    fence: Option<Arc<AtomicI64>>,
}

/// The schema, for both backends: `{id}` is each backend's auto-incremented key.
const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS scaling_events (
        id {id}, at_unix_ms BIGINT NOT NULL, region TEXT NOT NULL,
        kind TEXT NOT NULL, action TEXT NOT NULL, node_id TEXT, count BIGINT,
        reason TEXT NOT NULL, inputs TEXT)",
    "CREATE INDEX IF NOT EXISTS scaling_events_at ON scaling_events (at_unix_ms)",
    "CREATE TABLE IF NOT EXISTS pool_policies (
        region TEXT NOT NULL, kind TEXT NOT NULL, policy TEXT NOT NULL,
        PRIMARY KEY (region, kind))",
    "CREATE TABLE IF NOT EXISTS policy_changes (
        id {id}, at_unix_ms BIGINT NOT NULL, region TEXT NOT NULL,
        kind TEXT NOT NULL, change TEXT NOT NULL, changed_by TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS pool_pauses (
        region TEXT NOT NULL, kind TEXT NOT NULL, PRIMARY KEY (region, kind))",
    "CREATE TABLE IF NOT EXISTS bookings (
        id TEXT PRIMARY KEY, region TEXT NOT NULL, start_unix_ms BIGINT NOT NULL,
        duration_ms BIGINT NOT NULL, participants BIGINT NOT NULL, profile TEXT NOT NULL,
        made_unix_ms BIGINT NOT NULL DEFAULT 0)",
    "CREATE TABLE IF NOT EXISTS drains (
        node_id TEXT PRIMARY KEY, region TEXT NOT NULL, kind TEXT NOT NULL,
        deadline_unix_ms BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS launches (
        node_id TEXT PRIMARY KEY, region TEXT NOT NULL, kind TEXT NOT NULL, zone TEXT NOT NULL,
        launched_unix_ms BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS demand (
        id {id}, start_unix_ms BIGINT NOT NULL,
        duration_ms BIGINT NOT NULL, participants TEXT NOT NULL, booked_unix_ms BIGINT,
        profile TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS demand_start ON demand (start_unix_ms)",
    // The leader's fencing epoch (one row; used with PostgreSQL, see `crate::leader`).
    "CREATE TABLE IF NOT EXISTS fleet_leader (
        id BIGINT PRIMARY KEY, epoch BIGINT NOT NULL, holder TEXT NOT NULL,
        since_unix_ms BIGINT NOT NULL)",
];

/// The most queued writes applied in one transaction.
const WRITE_BATCH: usize = 256;

/// Demand rows per `INSERT` statement: a busy controller ends thousands of sessions a second,
/// and one statement per row costs a round trip to the database each. 5 parameters a row keeps
/// a statement far below both backends' parameter limits (SQLite 32,766; PostgreSQL 65,535).
const DEMAND_ROWS_PER_INSERT: usize = 200;

/// `INSERT INTO demand … VALUES ($1, …, $5), ($6, …), …` for `rows` rows.
fn demand_insert_sql(rows: usize) -> String {
    let mut sql = String::from(
        "INSERT INTO demand (start_unix_ms, duration_ms, participants, booked_unix_ms, profile) VALUES ",
    );
    for r in 0..rows {
        let b = r * 5;
        if r > 0 {
            sql.push_str(", ");
        }
        sql.push_str(&format!(
            "(${}, ${}, ${}, ${}, ${})",
            b + 1,
            b + 2,
            b + 3,
            b + 4,
            b + 5
        ));
    }
    sql
}

/// The PostgreSQL advisory lock that serializes schema changes.
const MIGRATION_LOCK: i64 = 0x666c_6565_745f_6d67; // "fleet_mg"

/// A URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

/// Columns added after a table's first release: (table, column, definition). Added to a store
/// written by an older controller; already there in a new one.
const ADDED_COLUMNS: &[(&str, &str, &str)] = &[
    ("bookings", "made_unix_ms", "BIGINT NOT NULL DEFAULT 0"),
    ("launches", "market", "TEXT NOT NULL DEFAULT 'on-demand'"),
];

fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn u64_of(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(what.to_string())
}

fn pool_key(region: &str, kind: &str) -> Result<PoolKey, StoreError> {
    Ok(PoolKey {
        region: RegionId::parse(region).map_err(corrupt)?,
        kind: NodeKind::from_str(kind).map_err(corrupt)?,
    })
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// The actions the decision log holds.
const ACTIONS: [&str; 5] = ["launch", "drain", "undrain", "terminate", "launch_refused"];

/// A `scaling_events` row.
fn event_of(row: &AnyRow) -> Result<ScalingEvent, StoreError> {
    let action: String = row.try_get("action")?;
    let action = ACTIONS
        .into_iter()
        .find(|a| *a == action)
        .ok_or_else(|| corrupt(format!("unknown action {action:?}")))?;
    let node_id: Option<String> = row.try_get("node_id")?;
    let inputs: Option<String> = row.try_get("inputs")?;
    let key = pool_key(row.try_get("region")?, row.try_get("kind")?)?;
    Ok(ScalingEvent {
        at_unix_ms: u64_of(row.try_get("at_unix_ms")?),
        region: key.region,
        kind: key.kind,
        action,
        node_id: node_id
            .map(|n| NodeId::parse(&n))
            .transpose()
            .map_err(corrupt)?,
        count: row
            .try_get::<Option<i64>, _>("count")?
            .map(|c| u32::try_from(c).unwrap_or(0)),
        reason: row.try_get("reason")?,
        inputs: inputs
            .map(|i| serde_json::from_str(&i))
            .transpose()
            .map_err(corrupt)?,
    })
}

/// One pool policy change, as the store keeps it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct PolicyChange {
    pub at_unix_ms: u64,
    /// The fields changed, as sent.
    #[schema(value_type = Object)]
    pub change: serde_json::Value,
    /// "admin" or the operator whose token made it.
    pub by: String,
}

impl Store {
    /// A pool's policy changes, newest first, at most `limit`.
    pub async fn policy_changes(
        &self,
        pool: &PoolKey,
        limit: usize,
    ) -> Result<Vec<PolicyChange>, StoreError> {
        let rows = sqlx::query(
            "SELECT at_unix_ms, change, changed_by FROM policy_changes
             WHERE region = $1 AND kind = $2 ORDER BY id DESC LIMIT $3",
        )
        .bind(pool.region.as_str())
        .bind(pool.kind.as_str())
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let change: String = row.try_get("change")?;
                Ok(PolicyChange {
                    at_unix_ms: u64_of(row.try_get("at_unix_ms")?),
                    change: serde_json::from_str(&change).map_err(corrupt)?,
                    by: row.try_get("changed_by")?,
                })
            })
            .collect()
    }

    /// Decision-log events from `since_unix_ms` up to (not including) `before_unix_ms`, newest
    /// first, at most `limit`, of one region and kind when given: what the in-memory log no
    /// longer holds.
    pub async fn events(
        &self,
        region: Option<&RegionId>,
        kind: Option<NodeKind>,
        since_unix_ms: u64,
        before_unix_ms: u64,
        limit: usize,
    ) -> Result<Vec<ScalingEvent>, StoreError> {
        let rows = sqlx::query(
            "SELECT at_unix_ms, region, kind, action, node_id, count, reason, inputs
             FROM scaling_events
             WHERE at_unix_ms >= $1 AND at_unix_ms < $2
               AND (CAST($3 AS TEXT) IS NULL OR region = $3)
               AND (CAST($4 AS TEXT) IS NULL OR kind = $4)
             ORDER BY at_unix_ms DESC, id DESC LIMIT $5",
        )
        .bind(i64_of(since_unix_ms))
        .bind(i64_of(before_unix_ms))
        .bind(region.map(|r| r.as_str()))
        .bind(kind.map(|k| k.as_str()))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(event_of).collect()
    }

    /// Opens (creating it when missing) the SQLite store at `path`.
    pub async fn open(path: &Path) -> Result<Store, StoreError> {
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let text = path.to_str().filter(|t| !t.contains(['?', '#']));
        let Some(text) = text else {
            return Err(StoreError::Url(format!(
                "the store path {} must be UTF-8 without '?' or '#'",
                path.display()
            )));
        };
        Self::connect(&format!("sqlite://{text}?mode=rwc")).await
    }

    /// Opens the store at a URL: `postgres://…` (or `postgresql://…`) or `sqlite://PATH`, and
    /// brings its schema up to date (idempotent; with PostgreSQL under a lock, so controllers
    /// starting together do not race).
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            return Err(StoreError::Url(format!(
                "{}: expected postgres://… or sqlite://…",
                redact(url)
            )));
        };
        let mut options = AnyPoolOptions::new()
            .max_connections(match backend {
                Backend::Sqlite => 2,
                Backend::Postgres => 4,
            })
            .acquire_timeout(std::time::Duration::from_secs(5));
        if backend == Backend::Postgres {
            // A controller paused inside a write (its transaction holds the leader row in
            // share mode) must not block a new leader's epoch increment for long.
            options = options.after_connect(|conn, _| {
                Box::pin(async move {
                    sqlx::query("SET idle_in_transaction_session_timeout = 2000")
                        .execute(&mut *conn)
                        .await?;
                    sqlx::query("SET application_name = 'fleet-controller'")
                        .execute(&mut *conn)
                        .await?;
                    Ok(())
                })
            });
        }
        let pool = options.connect(url).await?;
        if backend == Backend::Sqlite {
            // Kept in the file: once is enough, and never inside a transaction.
            sqlx::query("PRAGMA journal_mode = WAL")
                .execute(&pool)
                .await?;
        }
        let mut tx = pool.begin().await?;
        let id = match backend {
            Backend::Sqlite => "INTEGER PRIMARY KEY AUTOINCREMENT",
            Backend::Postgres => {
                sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(MIGRATION_LOCK)
                    .execute(&mut *tx)
                    .await?;
                "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY"
            }
        };
        for statement in SCHEMA {
            sqlx::query(&statement.replace("{id}", id))
                .execute(&mut *tx)
                .await?;
        }
        for (table, column, definition) in ADDED_COLUMNS {
            let present: i64 = match backend {
                Backend::Sqlite => {
                    sqlx::query_scalar("SELECT COUNT(*) FROM pragma_table_info($1) WHERE name = $2")
                        .bind(table)
                        .bind(column)
                        .fetch_one(&mut *tx)
                        .await?
                }
                Backend::Postgres => {
                    sqlx::query_scalar(
                        "SELECT COUNT(*) FROM information_schema.columns
                         WHERE table_schema = current_schema() AND table_name = $1
                           AND column_name = $2",
                    )
                    .bind(table)
                    .bind(column)
                    .fetch_one(&mut *tx)
                    .await?
                }
            };
            if present == 0 {
                sqlx::query(&format!(
                    "ALTER TABLE {table} ADD COLUMN {column} {definition}"
                ))
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        Ok(Store {
            pool,
            backend,
            fence: None,
        })
    }

    /// Which database this is.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The pool, for the leader election's own queries.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// This store, its writes fenced by `epoch` (the epoch this controller leads with, 0 while
    /// it does not lead: then every write is refused).
    pub fn fenced(&self, epoch: Arc<AtomicI64>) -> Store {
        Store {
            fence: Some(epoch),
            ..self.clone()
        }
    }

    /// Starts the writer task; writes sent to the returned queue are applied in order (a failed
    /// write is logged and the next one goes on).
    pub fn writer(&self) -> mpsc::UnboundedSender<Write> {
        let (tx, mut rx) = mpsc::unbounded_channel::<Write>();
        let store = self.clone();
        tokio::spawn(async move {
            let mut batch = Vec::new();
            while rx.recv_many(&mut batch, WRITE_BATCH).await > 0 {
                store.apply_batch(&batch).await;
                batch.clear();
            }
        });
        tx
    }

    /// Applies queued writes in order, in one transaction (one commit, one fence check, one
    /// disk sync for all of them); when that fails, one by one, so a bad write costs only
    /// itself (each failure is logged).
    async fn apply_batch(&self, writes: &[Write]) {
        if writes.len() > 1 && self.apply_all(writes).await.is_ok() {
            return;
        }
        for write in writes {
            if let Err(e) = self.apply(write).await {
                tracing::error!(error = %e, ?write, "store write failed");
            }
        }
    }

    /// Applies one write now.
    pub async fn apply(&self, write: &Write) -> Result<(), StoreError> {
        self.apply_all(std::slice::from_ref(write)).await
    }

    /// Applies writes in order in one transaction: all or none.
    async fn apply_all(&self, writes: &[Write]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        if let Some(fence) = &self.fence {
            let mine = fence.load(Ordering::SeqCst);
            // FOR SHARE: a new leader's epoch increment waits for this write to commit, and
            // this write sees a committed increment.
            let current: Option<i64> =
                sqlx::query_scalar("SELECT epoch FROM fleet_leader WHERE id = 1 FOR SHARE")
                    .fetch_optional(&mut *tx)
                    .await?;
            let current = current.unwrap_or(0);
            if mine == 0 || current != mine {
                return Err(StoreError::Fenced { mine, current });
            }
        }
        for write in writes {
            Self::write_in(&mut tx, write).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn write_in(p: &mut sqlx::AnyConnection, write: &Write) -> Result<(), StoreError> {
        match write {
            Write::Event(e) => {
                sqlx::query(
                    "INSERT INTO scaling_events (at_unix_ms, region, kind, action, node_id, count, reason, inputs)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                )
                .bind(i64_of(e.at_unix_ms))
                .bind(e.region.as_str())
                .bind(e.kind.as_str())
                .bind(e.action)
                .bind(e.node_id.as_ref().map(|n| n.to_string()))
                .bind(e.count.map(i64::from))
                .bind(&e.reason)
                .bind(e.inputs.as_ref().map(json))
                .execute(&mut *p)
                .await?;
            }
            Write::Policy {
                pool,
                policy,
                change,
                by,
                at_unix_ms,
            } => {
                sqlx::query(
                    "INSERT INTO pool_policies (region, kind, policy) VALUES ($1, $2, $3)
                     ON CONFLICT (region, kind) DO UPDATE SET policy = excluded.policy",
                )
                .bind(pool.region.as_str())
                .bind(pool.kind.as_str())
                .bind(json(policy))
                .execute(&mut *p)
                .await?;
                sqlx::query(
                    "INSERT INTO policy_changes (at_unix_ms, region, kind, change, changed_by)
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(i64_of(*at_unix_ms))
                .bind(pool.region.as_str())
                .bind(pool.kind.as_str())
                .bind(json(change))
                .bind(by)
                .execute(&mut *p)
                .await?;
            }
            Write::Paused { pool, paused } => {
                let sql = if *paused {
                    "INSERT INTO pool_pauses (region, kind) VALUES ($1, $2) ON CONFLICT DO NOTHING"
                } else {
                    "DELETE FROM pool_pauses WHERE region = $1 AND kind = $2"
                };
                sqlx::query(sql)
                    .bind(pool.region.as_str())
                    .bind(pool.kind.as_str())
                    .execute(&mut *p)
                    .await?;
            }
            Write::BookingAdded(b) => {
                sqlx::query(
                    "INSERT INTO bookings (id, region, start_unix_ms, duration_ms, participants, profile, made_unix_ms)
                     VALUES ($1, $2, $3, $4, $5, $6, $7)
                     ON CONFLICT (id) DO UPDATE SET region = excluded.region,
                       start_unix_ms = excluded.start_unix_ms, duration_ms = excluded.duration_ms,
                       participants = excluded.participants, profile = excluded.profile,
                       made_unix_ms = excluded.made_unix_ms",
                )
                .bind(&b.id)
                .bind(b.region.as_str())
                .bind(i64_of(b.start_unix_ms))
                .bind(i64_of(b.duration_ms))
                .bind(i64::from(b.participants))
                .bind(json(&b.profile))
                .bind(i64_of(b.made_unix_ms))
                .execute(&mut *p)
                .await?;
            }
            Write::BookingRemoved(id) => {
                sqlx::query("DELETE FROM bookings WHERE id = $1")
                    .bind(id)
                    .execute(&mut *p)
                    .await?;
            }
            Write::DrainStarted {
                pool,
                node,
                deadline_unix_ms,
            } => {
                sqlx::query(
                    "INSERT INTO drains (node_id, region, kind, deadline_unix_ms) VALUES ($1, $2, $3, $4)
                     ON CONFLICT (node_id) DO UPDATE SET region = excluded.region,
                       kind = excluded.kind, deadline_unix_ms = excluded.deadline_unix_ms",
                )
                .bind(node.as_str())
                .bind(pool.region.as_str())
                .bind(pool.kind.as_str())
                .bind(i64_of(*deadline_unix_ms))
                .execute(&mut *p)
                .await?;
            }
            Write::DrainEnded(node) => {
                sqlx::query("DELETE FROM drains WHERE node_id = $1")
                    .bind(node.as_str())
                    .execute(&mut *p)
                    .await?;
            }
            Write::Launched { pool, launch } => {
                sqlx::query(
                    "INSERT INTO launches (node_id, region, kind, zone, launched_unix_ms, market)
                     VALUES ($1, $2, $3, $4, $5, $6)
                     ON CONFLICT (node_id) DO UPDATE SET region = excluded.region,
                       kind = excluded.kind, zone = excluded.zone,
                       launched_unix_ms = excluded.launched_unix_ms, market = excluded.market",
                )
                .bind(launch.node.as_str())
                .bind(pool.region.as_str())
                .bind(pool.kind.as_str())
                .bind(&launch.zone)
                .bind(i64_of(launch.launched_unix_ms))
                .bind(launch.market.as_str())
                .execute(&mut *p)
                .await?;
            }
            Write::LaunchSeen(node) => {
                sqlx::query("DELETE FROM launches WHERE node_id = $1")
                    .bind(node.as_str())
                    .execute(&mut *p)
                    .await?;
            }
            Write::Demand(rows) => {
                for chunk in rows.chunks(DEMAND_ROWS_PER_INSERT) {
                    let sql = demand_insert_sql(chunk.len());
                    let mut query = sqlx::query(&sql);
                    for row in chunk {
                        query = query
                            .bind(i64_of(row.start_unix_ms))
                            .bind(i64_of(row.duration_ms))
                            .bind(format_participants(&row.participants))
                            .bind(row.booked_unix_ms.map(i64_of))
                            .bind(row.profile.as_str());
                    }
                    query.execute(&mut *p).await?;
                }
            }
            Write::DemandPrune { before_unix_ms } => {
                sqlx::query("DELETE FROM demand WHERE start_unix_ms < $1")
                    .bind(i64_of(*before_unix_ms))
                    .execute(&mut *p)
                    .await?;
            }
        }
        Ok(())
    }

    /// Everything a restarted controller resumes from, and the newest `events` events.
    pub async fn load(&self, events: usize) -> Result<Saved, StoreError> {
        let p = &self.pool;
        let mut saved = Saved::default();
        for row in sqlx::query("SELECT region, kind, policy FROM pool_policies")
            .fetch_all(p)
            .await?
        {
            let key = pool_key(row.try_get("region")?, row.try_get("kind")?)?;
            let policy: PoolPolicy =
                serde_json::from_str(row.try_get("policy")?).map_err(corrupt)?;
            saved.policies.push((key, policy));
        }
        for row in sqlx::query("SELECT region, kind FROM pool_pauses")
            .fetch_all(p)
            .await?
        {
            saved
                .paused
                .push(pool_key(row.try_get("region")?, row.try_get("kind")?)?);
        }
        for row in sqlx::query(
            "SELECT id, region, start_unix_ms, duration_ms, participants, profile, made_unix_ms FROM bookings",
        )
        .fetch_all(p)
        .await?
        {
            let profile: Profile =
                serde_json::from_str(row.try_get("profile")?).map_err(corrupt)?;
            saved.bookings.push(Booking {
                id: row.try_get("id")?,
                region: RegionId::parse(row.try_get("region")?).map_err(corrupt)?,
                start_unix_ms: u64_of(row.try_get("start_unix_ms")?),
                duration_ms: u64_of(row.try_get("duration_ms")?),
                participants: u32::try_from(row.try_get::<i64, _>("participants")?)
                    .map_err(corrupt)?,
                profile,
                made_unix_ms: u64_of(row.try_get("made_unix_ms")?),
            });
        }
        for row in sqlx::query("SELECT node_id, region, kind, deadline_unix_ms FROM drains")
            .fetch_all(p)
            .await?
        {
            saved.drains.push((
                pool_key(row.try_get("region")?, row.try_get("kind")?)?,
                NodeId::parse(row.try_get("node_id")?).map_err(corrupt)?,
                u64_of(row.try_get("deadline_unix_ms")?),
            ));
        }
        for row in sqlx::query(
            "SELECT node_id, region, kind, zone, launched_unix_ms, market FROM launches",
        )
        .fetch_all(p)
        .await?
        {
            saved.launches.push((
                pool_key(row.try_get("region")?, row.try_get("kind")?)?,
                InFlight {
                    node: NodeId::parse(row.try_get("node_id")?).map_err(corrupt)?,
                    zone: row.try_get("zone")?,
                    launched_unix_ms: u64_of(row.try_get("launched_unix_ms")?),
                    market: Market::parse(row.try_get("market")?)
                        .ok_or_else(|| corrupt("a launch's market"))?,
                },
            ));
        }
        let rows = sqlx::query(
            "SELECT at_unix_ms, region, kind, action, node_id, count, reason, inputs
             FROM scaling_events ORDER BY id DESC LIMIT $1",
        )
        .bind(i64::try_from(events).unwrap_or(i64::MAX))
        .fetch_all(p)
        .await?;
        for row in rows.into_iter().rev() {
            saved.events.push(event_of(&row)?);
        }
        Ok(saved)
    }

    /// The finished sessions that started at or after `since_unix_ms`, in start order.
    pub async fn demand_since(&self, since_unix_ms: u64) -> Result<Vec<DemandRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT start_unix_ms, duration_ms, participants, booked_unix_ms, profile
             FROM demand WHERE start_unix_ms >= $1 ORDER BY start_unix_ms, id",
        )
        .bind(i64_of(since_unix_ms))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|row| {
                let profile: String = row.try_get("profile")?;
                Ok(DemandRow {
                    start_unix_ms: u64_of(row.try_get("start_unix_ms")?),
                    duration_ms: u64_of(row.try_get("duration_ms")?),
                    participants: parse_participants(row.try_get("participants")?)
                        .map_err(corrupt)?,
                    booked_unix_ms: row.try_get::<Option<i64>, _>("booked_unix_ms")?.map(u64_of),
                    profile: Profile::parse(&profile)
                        .ok_or_else(|| corrupt(format!("unknown profile {profile:?}")))?,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
