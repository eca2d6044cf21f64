//! One load run: sessions created through the API on the plan's schedule, every participant
//! joined as a real WebRTC peer, media streamed until the end of the hold, then every session
//! this run created deleted — also when the run is stopped early (Ctrl-C).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::SeedableRng;
use tokio::sync::watch;

use crate::api::{Api, OpsApi};
use crate::locations::Locations;
use crate::peer::{MediaProfile, Peer, PeerError, Sending};
use crate::plan::{Scenario, Shard, starts};
use crate::series::{Sample, Series};
use crate::stats::{Histogram, Totals};

/// What to run.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub api: String,
    pub token: String,
    /// An admin token: the pools are sampled with it every second.
    pub admin_token: Option<String>,
    pub sessions: u32,
    pub participants: u32,
    pub ramp: Duration,
    pub hold: Duration,
    pub scenario: Scenario,
    /// Share of participants (0..=1) that use only TURN relay candidates.
    pub relay_share: f64,
    pub profile: MediaProfile,
    pub locations: Locations,
    pub shard: Shard,
    /// How long a participant may take from its join to a connection.
    pub connect_timeout: Duration,
}

impl RunConfig {
    /// Sessions this process runs (its shard's part of the run).
    pub fn shard_target(&self) -> u64 {
        (0..self.sessions).filter(|&i| self.shard.owns(i)).count() as u64
    }
}

/// Counters for a live view while the run goes, and the setups since the last sample.
#[derive(Debug, Default)]
pub struct Live {
    pub sessions_started: AtomicU64,
    /// Sessions that have come up (every participant receiving media) since the start.
    pub sessions_up: AtomicU64,
    /// Sessions up now.
    pub sessions_active: AtomicU64,
    pub participants_up: AtomicU64,
    pub participants_active: AtomicU64,
    pub failures: AtomicU64,
    setups: Mutex<Histogram>,
}

impl Live {
    fn participant_up(&self, setup_ms: f64) {
        self.participants_up.fetch_add(1, Ordering::Relaxed);
        self.participants_active.fetch_add(1, Ordering::Relaxed);
        lock(&self.setups).record(setup_ms);
    }

    fn session_up(&self) {
        self.sessions_up.fetch_add(1, Ordering::Relaxed);
        self.sessions_active.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters now, with the setups recorded since the previous sample (which this one
    /// takes).
    pub fn sample(&self, unix_s: u64) -> Sample {
        Sample {
            unix_s,
            sessions_active: self.sessions_active.load(Ordering::Relaxed),
            participants_active: self.participants_active.load(Ordering::Relaxed),
            sessions_up_total: self.sessions_up.load(Ordering::Relaxed),
            failures_total: self.failures.load(Ordering::Relaxed),
            setups: std::mem::take(&mut *lock(&self.setups)),
            pools: Default::default(),
        }
    }
}

/// Now, in whole seconds since the Unix epoch.
pub fn unix_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Takes a sample a second (with the pools when `ops` is given) until `stop` is set; the
/// series is what it returns.
pub async fn sample_every_second(
    live: Arc<Live>,
    ops: Option<OpsApi>,
    stop: watch::Receiver<bool>,
) -> Series {
    let mut series = Series::default();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut warned = false;
    loop {
        tick.tick().await;
        let mut sample = live.sample(unix_s());
        if let Some(ops) = &ops {
            match tokio::time::timeout(Duration::from_millis(900), ops.pools()).await {
                Ok(Ok(pools)) => sample.pools = pools,
                Ok(Err(e)) if !warned => {
                    warned = true;
                    tracing::warn!(error = %e, "the pools' view is not available (admin token?)");
                }
                _ => {}
            }
        }
        series.push(sample);
        if *stop.borrow() {
            return series;
        }
    }
}

/// Whether participant `n` of the run is relay-only: spread evenly over the run (the golden
/// ratio's low-discrepancy sequence), so any share is met closely even in a short run.
pub fn relay_only(n: u64, share: f64) -> bool {
    const PHI: f64 = 0.618_033_988_749_894_9;
    ((n as f64 + 1.0) * PHI).fract() < share
}

/// CPU seconds this process has used (user and system), from `/proc/self/stat`.
pub fn cpu_seconds() -> f64 {
    // utime and stime (fields 14 and 15) of this process, in clock ticks of 1/100 s.
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / 100.0)
        })
        .unwrap_or(0.0)
}

/// Runs the load until the end of the hold or until `stop` turns true; returns what it
/// measured, in total and second by second. Every session it created is deleted before it
/// returns.
pub async fn run(
    config: RunConfig,
    live: Arc<Live>,
    mut stop: watch::Receiver<bool>,
) -> (Totals, Series) {
    let started = Instant::now();
    let cpu_before = cpu_seconds();
    let end = started + config.ramp + config.hold;
    let plan = starts(
        config.scenario,
        config.sessions,
        config.ramp,
        config.hold,
        config.shard,
    );
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap_or_default();
    let api = Api::new(http.clone(), &config.api, &config.token);
    let ops = config
        .admin_token
        .as_ref()
        .map(|t| OpsApi::new(&config.api, t));
    let (sampled_tx, sampled_rx) = watch::channel(false);
    let sampler = tokio::spawn(sample_every_second(live.clone(), ops, sampled_rx));
    let totals = Arc::new(Mutex::new(Totals {
        target_sessions: plan.len() as u64,
        participants_target: plan.len() as u64 * u64::from(config.participants),
        ..Totals::default()
    }));
    let stopping = Arc::new(AtomicBool::new(false));
    let config = Arc::new(config);
    let mut tasks = Vec::new();
    for (index, offset) in plan {
        let at = tokio::time::Instant::from_std(started + offset);
        tokio::select! {
            _ = tokio::time::sleep_until(at) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
        if *stop.borrow() {
            break;
        }
        let session = SessionRun {
            index,
            config: config.clone(),
            api: api.clone(),
            http: http.clone(),
            totals: totals.clone(),
            live: live.clone(),
            stopping: stopping.clone(),
            end,
        };
        tasks.push(tokio::spawn(session.run()));
    }
    // Hold until the end (or a stop), then let every session finish and clean up.
    tokio::select! {
        _ = tokio::time::sleep_until(tokio::time::Instant::from_std(end)) => {}
        _ = stop.wait_for(|s| *s) => {}
    }
    stopping.store(true, Ordering::SeqCst);
    for task in tasks {
        let _ = task.await;
    }
    let _ = sampled_tx.send(true);
    let series = sampler.await.unwrap_or_default();
    let mut totals = lock(&totals).clone();
    totals.loadsim_cpu_s = cpu_seconds() - cpu_before;
    totals.wall_s = started.elapsed().as_secs_f64();
    (totals, series)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One session of the run.
struct SessionRun {
    index: u32,
    config: Arc<RunConfig>,
    api: Api,
    http: reqwest::Client,
    totals: Arc<Mutex<Totals>>,
    live: Arc<Live>,
    stopping: Arc<AtomicBool>,
    end: Instant,
}

/// How one participant fared.
struct Joined {
    peer: Option<Peer>,
    setup: Option<Duration>,
    failure: Option<String>,
    relayed: bool,
    /// Frames sent and due ([`Sending::frames`]).
    frames: (u64, u64),
}

impl SessionRun {
    async fn run(self) {
        let c = &self.config;
        let mut rng = rand::rngs::SmallRng::seed_from_u64(u64::from(self.index));
        let people: Vec<(String, fleet_geo::Location)> = (0..c.participants)
            .map(|j| (format!("ls{}p{j}", self.index), c.locations.pick(&mut rng)))
            .collect();
        let asked = Instant::now();
        self.live.sessions_started.fetch_add(1, Ordering::Relaxed);
        let grant = match self.api.create_session(&people, c.profile.name).await {
            Ok(g) => g,
            Err(e) => {
                tracing::debug!(error = %e, "session not created");
                self.live.failures.fetch_add(1, Ordering::Relaxed);
                lock(&self.totals).fail(e.cause());
                return;
            }
        };
        {
            let mut t = lock(&self.totals);
            t.sessions_created += 1;
            t.regions.entry(grant.region.clone()).or_default().sessions += 1;
        }
        let mut joins = Vec::new();
        for (j, p) in grant.participants.iter().enumerate() {
            let n = u64::from(self.index) * u64::from(c.participants) + j as u64;
            let relay = relay_only(n, c.relay_share);
            // The media node's WHIP-style endpoint for this participant.
            let (http, url, token, servers) = (
                self.http.clone(),
                format!(
                    "{}/v1/sessions/{}/participants/{}",
                    grant.media_url.trim_end_matches('/'),
                    grant.session_id,
                    p.id
                ),
                p.join_token.clone(),
                p.ice_servers.clone(),
            );
            let timeout = c.connect_timeout;
            joins.push(tokio::spawn(async move {
                join_one(n as u32, &http, &url, &token, &servers, relay, timeout).await
            }));
        }
        let mut peers = Vec::new();
        for j in joins {
            match j.await {
                Ok(Ok(peer)) => peers.push(Some(peer)),
                Ok(Err(e)) => {
                    self.live.failures.fetch_add(1, Ordering::Relaxed);
                    lock(&self.totals).fail(e.cause());
                    peers.push(None);
                }
                Err(_) => peers.push(None),
            }
        }
        // Everyone streams until the end; each participant's setup time is from the API
        // request to the first packet it received from another, counted live as it comes.
        let profile = c.profile;
        let expected = grant.participants.len();
        let came_up = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let streams: Vec<_> = peers
            .into_iter()
            .map(|peer| {
                let (stopping, end) = (self.stopping.clone(), self.end);
                let (live, came_up) = (self.live.clone(), came_up.clone());
                tokio::spawn(async move {
                    let Some(peer) = peer else {
                        return Joined {
                            peer: None,
                            setup: None,
                            failure: None,
                            relayed: false,
                            frames: (0, 0),
                        };
                    };
                    let mut sending = Sending::default();
                    let mut receiving = false;
                    // In slices, so that a stop is seen within a second, and the first packet
                    // within 100 ms.
                    while !stopping.load(Ordering::SeqCst) && Instant::now() < end {
                        let slice = if receiving { 1000 } else { 100 };
                        let until = end.min(Instant::now() + Duration::from_millis(slice));
                        peer.stream(profile, until, &mut sending).await;
                        if let (false, Some(first)) = (receiving, peer.first_packet()) {
                            receiving = true;
                            let setup = first.saturating_duration_since(asked);
                            live.participant_up(setup.as_secs_f64() * 1000.0);
                            if came_up.fetch_add(1, Ordering::SeqCst) + 1 == expected {
                                live.session_up();
                            }
                        }
                    }
                    if receiving {
                        live.participants_active.fetch_sub(1, Ordering::Relaxed);
                    }
                    let setup = peer
                        .first_packet()
                        .map(|t| t.saturating_duration_since(asked));
                    let relayed = peer.relayed().await;
                    Joined {
                        failure: setup.is_none().then(|| "no_media".to_owned()),
                        peer: Some(peer),
                        setup,
                        relayed,
                        frames: sending.frames(),
                    }
                })
            })
            .collect();
        let mut all_up = true;
        let mut joined = Vec::new();
        for s in streams {
            match s.await {
                Ok(j) => joined.push(j),
                Err(_) => all_up = false,
            }
        }
        {
            let mut t = lock(&self.totals);
            for j in &joined {
                let Some(peer) = &j.peer else {
                    all_up = false;
                    continue;
                };
                if let Some(f) = &j.failure {
                    all_up = false;
                    self.live.failures.fetch_add(1, Ordering::Relaxed);
                    t.fail(f.clone());
                }
                let mut media = peer.media();
                (media.frames_sent, media.frames_due) = j.frames;
                t.media.merge(&media);
                let region = t.regions.entry(grant.region.clone()).or_default();
                region.media.merge(&media);
                if let Some(setup) = j.setup {
                    let ms = setup.as_secs_f64() * 1000.0;
                    region.setup.record(ms);
                    region.participants_up += 1;
                    t.setup.record(ms);
                    t.participants_up += 1;
                }
                if j.relayed {
                    t.participants_relayed += 1;
                }
            }
            if all_up && joined.len() == expected {
                t.sessions_up += 1;
            }
            if came_up.load(Ordering::SeqCst) == expected {
                self.live.sessions_active.fetch_sub(1, Ordering::Relaxed);
            }
        }
        for j in &joined {
            if let Some(peer) = &j.peer {
                peer.close().await;
            }
        }
        let deleted = self.api.delete_session(&grant.session_id).await;
        let mut t = lock(&self.totals);
        match deleted {
            Ok(()) => t.sessions_deleted += 1,
            Err(e) => t.fail(format!("delete:{}", e.cause())),
        }
    }
}

/// Creates, joins and connects one participant.
async fn join_one(
    sender: u32,
    http: &reqwest::Client,
    url: &str,
    token: &str,
    servers: &[crate::peer::IceServer],
    relay: bool,
    timeout: Duration,
) -> Result<Peer, PeerError> {
    let t0 = Instant::now();
    let peer = Peer::new(sender, servers, relay).await?;
    let joined = async {
        peer.join(http, url, token).await?;
        let answered = t0.elapsed();
        peer.connected(timeout).await?;
        tracing::debug!(sender, relay, ?answered, connected = ?t0.elapsed(), "participant connected");
        Ok(())
    };
    match joined.await {
        Ok(()) => Ok(peer),
        Err(e) => {
            peer.close().await;
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_share_is_met_closely_over_few_participants() {
        for share in [0.0, 0.15, 0.5, 1.0] {
            let n = (0..40).filter(|&i| relay_only(i, share)).count();
            assert!(
                (n as f64 - 40.0 * share).abs() <= 2.0,
                "share {share}: {n} of 40"
            );
        }
    }
}
