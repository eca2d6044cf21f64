//! Which of the controllers sharing a PostgreSQL store leads: the one holding a session-level
//! advisory lock on a dedicated connection. Each new leader increments a fencing epoch (the one
//! row of `fleet_leader`) and leads with it: every store write it makes checks the epoch in its
//! transaction (`Store::fenced`), and every provider mutation is preceded by [`Leadership::fence`],
//! so a leader that was paused (SIGSTOP, a long GC-like stall, a partition) and resumes after
//! another took over writes and launches nothing.
//!
//! The lease: the leader renews it every `lease / 4` by reading the epoch on its lock
//! connection; it acts only while the last renewal started less than `lease` ago
//! ([`Leadership::acting`]), so it stops acting within the lease when it loses the database,
//! even if the connection hangs. The database ends a session idle for longer than the lease
//! (`idle_session_timeout`) and probes the client's socket (`tcp_keepalives_*`), so a stopped
//! or vanished leader's lock is released within about the lease, and a standby (trying the lock
//! every `lease / 5`) takes over. A leader that stops leading goes back to standing by; it
//! never resumes leadership without a new epoch.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use sqlx::Connection;
use sqlx::postgres::PgConnection;
use tokio::sync::watch;

/// The advisory lock key the leader holds ("fleet_ld").
const LEADER_LOCK: i64 = 0x666c_6565_745f_6c64;

/// Why a mutation was refused.
#[derive(Debug, thiserror::Error)]
pub enum NotLeader {
    #[error("not the leader (standing by)")]
    StandingBy,
    #[error("the lease lapsed: no renewal for {0:?}")]
    LeaseLapsed(Duration),
    #[error("a newer leader exists (epoch {current}, ours {mine})")]
    Superseded { mine: i64, current: i64 },
    #[error("the epoch could not be checked: {0}")]
    Unchecked(String),
}

/// This controller's part in the election.
pub struct Leadership {
    url: String,
    holder: String,
    lease: Duration,
    /// The epoch this controller leads with; 0 while it does not lead.
    epoch: Arc<AtomicI64>,
    /// When the renewal that keeps the lease started (while leading).
    renewed: Mutex<Option<Instant>>,
    leading: watch::Sender<bool>,
    /// Checks of the epoch on the store's pool (for [`Leadership::fence`]).
    pool: sqlx::AnyPool,
    /// While standing by: the API URL of the controller that leads (its `holder`).
    leader_api: Mutex<Option<String>>,
}

impl Leadership {
    /// A standby for the store at `url` (PostgreSQL), known to the others as `holder` (the URL
    /// of its API, where they forward requests while it leads).
    pub fn new(url: &str, holder: String, lease: Duration, pool: sqlx::AnyPool) -> Arc<Self> {
        Arc::new(Leadership {
            url: url.to_owned(),
            holder,
            lease,
            epoch: Arc::new(AtomicI64::new(0)),
            renewed: Mutex::new(None),
            leading: watch::channel(false).0,
            pool,
            leader_api: Mutex::new(None),
        })
    }

    /// While standing by, the API URL of the leader (as it advertised itself), when one leads.
    pub fn leader_api(&self) -> Option<String> {
        self.leader_api
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set_leader_api(&self, url: Option<String>) {
        *self.leader_api.lock().unwrap_or_else(|e| e.into_inner()) = url;
    }

    /// The epoch cell the store's writes are fenced by.
    pub fn epoch_cell(&self) -> Arc<AtomicI64> {
        self.epoch.clone()
    }

    /// The epoch this controller leads with (0: it does not).
    pub fn epoch(&self) -> i64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// True while leading (changes as leadership is won and lost).
    pub fn watch(&self) -> watch::Receiver<bool> {
        self.leading.subscribe()
    }

    /// Whether this controller may act as leader now: it won the lock and its lease is fresh.
    pub fn acting(&self) -> bool {
        self.check_lease().is_ok()
    }

    fn check_lease(&self) -> Result<i64, NotLeader> {
        let epoch = self.epoch();
        if epoch == 0 {
            return Err(NotLeader::StandingBy);
        }
        let renewed = *self.renewed.lock().unwrap_or_else(|e| e.into_inner());
        match renewed {
            Some(at) if at.elapsed() < self.lease => Ok(epoch),
            Some(at) => Err(NotLeader::LeaseLapsed(at.elapsed())),
            None => Err(NotLeader::StandingBy),
        }
    }

    /// Before a mutation outside the store (a launch, a terminate): the lease is fresh and the
    /// database's epoch is still ours, checked now. Returns the epoch.
    pub async fn fence(&self) -> Result<i64, NotLeader> {
        let mine = self.check_lease()?;
        let read = sqlx::query_scalar::<_, i64>("SELECT epoch FROM fleet_leader WHERE id = 1")
            .fetch_optional(&self.pool);
        let current = match tokio::time::timeout(self.lease / 2, read).await {
            Ok(Ok(e)) => e.unwrap_or(0),
            Ok(Err(e)) => return Err(NotLeader::Unchecked(e.to_string())),
            Err(_) => return Err(NotLeader::Unchecked("timed out".into())),
        };
        if current != mine {
            return Err(NotLeader::Superseded { mine, current });
        }
        // The check took time: the lease must still hold after it.
        self.check_lease()
    }

    fn step_down(&self, why: &str) {
        self.set_leader_api(None);
        if self.epoch.swap(0, Ordering::SeqCst) != 0 {
            tracing::warn!(reason = why, "stepping down: no longer the leader");
            metrics::counter!("fleet_leader_step_downs_total").increment(1);
        }
        *self.renewed.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.leading.send_replace(false);
    }

    /// Campaigns and leads until `shutdown` changes: connect, try the lock, lead while the
    /// lease is renewed, stand by again on any failure.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        const FIRST_BACKOFF: Duration = Duration::from_millis(200);
        let mut backoff = FIRST_BACKOFF;
        loop {
            let started = Instant::now();
            let round = self.clone().round();
            tokio::select! {
                r = round => {
                    self.step_down("lost the database");
                    if let Err(e) = r {
                        tracing::warn!(error = %e, "leader election: database unavailable; retrying");
                    }
                }
                _ = shutdown.changed() => {
                    self.step_down("shutting down");
                    return;
                }
            }
            // A round that lasted starts the backoff over; failures in a row double it.
            if started.elapsed() > self.lease {
                backoff = FIRST_BACKOFF;
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.changed() => return,
            }
            backoff = (backoff * 2).min(self.lease / 2);
        }
    }

    /// One connection's life: stand by until the lock is won, then lead until a renewal fails.
    async fn round(self: Arc<Self>) -> Result<(), sqlx::Error> {
        let mut conn = PgConnection::connect(&self.url).await?;
        let lease_ms = self.lease.as_millis();
        // The server ends a session silent for longer than the lease (a paused leader), and
        // probes a client that vanished; both release the lock.
        for setting in [
            format!("SET idle_session_timeout = {lease_ms}"),
            "SET tcp_keepalives_idle = 2".to_owned(),
            "SET tcp_keepalives_interval = 1".to_owned(),
            "SET tcp_keepalives_count = 2".to_owned(),
            "SET application_name = 'fleet-controller-election'".to_owned(),
        ] {
            sqlx::query(&setting).execute(&mut conn).await?;
        }
        loop {
            let won: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                .bind(LEADER_LOCK)
                .fetch_one(&mut conn)
                .await?;
            if won {
                break;
            }
            // Someone else holds the lock: the row names the leader (it wrote the row when it
            // won, holding the lock).
            let holder: Option<String> =
                sqlx::query_scalar("SELECT holder FROM fleet_leader WHERE id = 1")
                    .fetch_optional(&mut conn)
                    .await?;
            self.set_leader_api(holder);
            tokio::time::sleep(self.lease / 5).await;
        }
        let started = Instant::now();
        let epoch: i64 = sqlx::query_scalar(
            "INSERT INTO fleet_leader (id, epoch, holder, since_unix_ms) VALUES (1, 1, $1, $2)
             ON CONFLICT (id) DO UPDATE SET epoch = fleet_leader.epoch + 1,
               holder = excluded.holder, since_unix_ms = excluded.since_unix_ms
             RETURNING epoch",
        )
        .bind(&self.holder)
        .bind(i64::try_from(fleet_node::now_unix_ms()).unwrap_or(i64::MAX))
        .fetch_one(&mut conn)
        .await?;
        *self.renewed.lock().unwrap_or_else(|e| e.into_inner()) = Some(started);
        self.set_leader_api(None);
        self.epoch.store(epoch, Ordering::SeqCst);
        self.leading.send_replace(true);
        tracing::info!(epoch, holder = %self.holder, "leading the fleet");
        metrics::counter!("fleet_leader_elections_won_total").increment(1);
        loop {
            tokio::time::sleep(self.lease / 4).await;
            let at = Instant::now();
            let read = sqlx::query_scalar::<_, i64>("SELECT epoch FROM fleet_leader WHERE id = 1")
                .fetch_one(&mut conn);
            match tokio::time::timeout(self.lease / 2, read).await {
                Ok(Ok(current)) if current == epoch => {
                    *self.renewed.lock().unwrap_or_else(|e| e.into_inner()) = Some(at);
                }
                Ok(Ok(current)) => {
                    tracing::warn!(epoch, current, "a newer leader took over");
                    return Ok(());
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => {
                    return Err(sqlx::Error::Protocol(
                        "the lease renewal timed out".to_owned(),
                    ));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The election and its fence on a real PostgreSQL (the test kit's throwaway cluster).

    use super::*;
    use crate::store::{Store, StoreError, Write};

    async fn wait_leading(l: &Leadership) {
        let mut w = l.watch();
        tokio::time::timeout(Duration::from_secs(10), w.wait_for(|v| *v))
            .await
            .expect("leads in time")
            .expect("watch");
    }

    /// A leader that stopped renewing (its task gone, as a process paused at the worst moment:
    /// its own view still says it leads, its lease not lapsed) is fenced as soon as another
    /// leads: its store writes and its provider mutations are refused.
    #[tokio::test]
    async fn a_superseded_leader_is_fenced_although_it_thinks_it_leads() {
        let pg = fleet_testkit::postgres::PgCluster::start();
        pg.create_database("fleet");
        let url = pg.url("fleet");
        let store = Store::connect(&url).await.expect("store");
        // A long lease: the old leader's own clock does not tell it to stop in this test (the
        // standby tries the lock every fifth of it).
        let lease = Duration::from_secs(15);
        let first = Leadership::new(&url, "first".into(), lease, store.pool().clone());
        let (stop_first, first_stopped) = watch::channel(false);
        let first_task = tokio::spawn(first.clone().run(first_stopped));
        wait_leading(&first).await;
        assert_eq!(first.epoch(), 1);
        assert_eq!(first.fence().await.expect("fenced in"), 1);
        let first_store = store.fenced(first.epoch_cell());
        let write = Write::Paused {
            pool: fleet_core::autoscale::PoolKey {
                region: fleet_proto::RegionId::parse("eu-west-1").unwrap(),
                kind: fleet_proto::NodeKind::Media,
            },
            paused: true,
        };
        first_store.apply(&write).await.expect("the leader writes");

        // A second controller stands by while the first holds the lock.
        let second = Leadership::new(&url, "second".into(), lease, store.pool().clone());
        let (_stop_second, second_stopped) = watch::channel(false);
        tokio::spawn(second.clone().run(second_stopped));
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!second.acting(), "two leaders");
        assert!(matches!(second.fence().await, Err(NotLeader::StandingBy)));
        let second_store = store.fenced(second.epoch_cell());
        assert!(matches!(
            second_store.apply(&write).await,
            Err(StoreError::Fenced { mine: 0, .. })
        ));

        // The first one's renewals stop and its lock connection goes (its task ends without
        // stepping down): the second takes over with a new epoch.
        first_task.abort();
        let _ = first_task.await;
        drop(stop_first);
        wait_leading(&second).await;
        assert_eq!(second.epoch(), 2);
        assert!(first.acting(), "the old leader's own view: still leading");
        let refused = first.fence().await;
        assert!(
            matches!(
                refused,
                Err(NotLeader::Superseded {
                    mine: 1,
                    current: 2
                })
            ),
            "{refused:?}"
        );
        let refused = first_store.apply(&write).await;
        assert!(
            matches!(
                refused,
                Err(StoreError::Fenced {
                    mine: 1,
                    current: 2
                })
            ),
            "{refused:?}"
        );
        second_store
            .apply(&write)
            .await
            .expect("the new leader writes");
    }

    /// Without the database a leader stops acting within its lease, and leads again (with a
    /// new epoch) once the database is back.
    #[tokio::test]
    async fn a_leader_that_loses_the_database_stops_within_its_lease() {
        let pg = fleet_testkit::postgres::PgCluster::start();
        pg.create_database("fleet");
        let url = pg.url("fleet");
        let store = Store::connect(&url).await.expect("store");
        let lease = Duration::from_millis(1_000);
        let l = Leadership::new(&url, "only".into(), lease, store.pool().clone());
        let (_stop, stopped) = watch::channel(false);
        tokio::spawn(l.clone().run(stopped));
        wait_leading(&l).await;
        pg.stop();
        let lost = Instant::now();
        while l.acting() {
            assert!(lost.elapsed() < lease, "still acting past the lease");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        pg.start_again();
        wait_leading(&l).await;
        assert_eq!(l.epoch(), 2, "a new epoch after the outage");
    }
}
