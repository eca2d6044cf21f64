//! An EC2 pool end to end: a real controller (`fleet serve`) with `provider = "ec2"` against
//! moto's EC2 server through the real SDK. moto's instances do not boot, so the test plays the
//! machines' boot: it watches moto for new instances of the cluster and starts a real media-node
//! process for each, with the node id from its tag, its zone and its instance id; an instance
//! that is terminated loses its process. The whole loop runs: launch, boot, Hello, serve,
//! drain, terminate.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use aws_sdk_ec2::types::Instance;
use fleet_e2e::*;
use fleet_testkit::ec2_faults::{Fault, FaultProxy};
use fleet_testkit::imds::FakeImds;
use fleet_testkit::moto::{client, default_subnet, instances_tagged, start_moto};
use serde_json::{Value, json};

/// The cluster's instances in `states`.
async fn instances(ec2: &aws_sdk_ec2::Client, states: &[&str]) -> Vec<Instance> {
    instances_tagged(ec2, "fleet:cluster", "e2e", states).await
}

fn tag(instance: &Instance, key: &str) -> Option<String> {
    instance
        .tags()
        .iter()
        .find(|t| t.key() == Some(key))
        .and_then(|t| t.value())
        .map(str::to_owned)
}

/// Plays the machines' boot as a launch template's would run it: for each new live instance
/// a metadata service serving its user data (from moto) and its instance id, `fleet boot-env`
/// turning them into the node's environment, and the node started with it (it trades its boot
/// token for its credentials, and watches the metadata service). A gone instance loses its
/// process.
#[derive(Default)]
struct Machines {
    procs: HashMap<String, Proc>,
    imds: HashMap<String, FakeImds>,
    dir: Option<tempfile::TempDir>,
}

impl Machines {
    async fn boot(&mut self, ec2: &aws_sdk_ec2::Client) {
        let live = instances(ec2, &["pending", "running"]).await;
        self.procs
            .retain(|id, _| live.iter().any(|i| i.instance_id() == Some(id.as_str())));
        let dir = self
            .dir
            .get_or_insert_with(|| tempfile::tempdir().unwrap())
            .path()
            .to_owned();
        for i in &live {
            let id = i.instance_id().unwrap().to_owned();
            if self.procs.contains_key(&id) {
                continue;
            }
            let attribute = ec2
                .describe_instance_attribute()
                .instance_id(&id)
                .attribute(aws_sdk_ec2::types::InstanceAttributeName::UserData)
                .send()
                .await
                .unwrap();
            let encoded = attribute.user_data().and_then(|u| u.value()).unwrap();
            use base64::Engine;
            let user_data = base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .unwrap();
            let metadata = FakeImds::start(&id).await;
            metadata.set_user_data(&String::from_utf8(user_data).unwrap());
            let out = dir.join(&id);
            let status = std::process::Command::new(bin("fleet"))
                .args([
                    "boot-env",
                    "--instance-metadata",
                    &metadata.url,
                    "--http-port",
                    "0",
                ])
                .arg("--out")
                .arg(&out)
                .arg("--credentials-file")
                .arg(out.join("credentials.json"))
                .stdout(std::process::Stdio::null())
                .status()
                .unwrap();
            assert!(status.success(), "fleet boot-env failed for {id}");
            let child = self.node_command(&id).spawn().unwrap();
            self.imds.insert(id.clone(), metadata);
            self.procs.insert(id.clone(), Proc { child, name: id });
        }
    }

    /// Boots new instances until `count` media nodes serve (within a minute).
    async fn boot_until_serving(
        &mut self,
        c: &Controller,
        ec2: &aws_sdk_ec2::Client,
        count: usize,
    ) {
        let end = Instant::now() + Duration::from_secs(60);
        loop {
            self.boot(ec2).await;
            if serving_media(c).await.len() == count {
                return;
            }
            assert!(
                Instant::now() < end,
                "not {count} serving nodes: {:?}",
                c.nodes().await
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// The node process of instance `id`, as its systemd unit starts it from `node.env`.
    fn node_command(&self, id: &str) -> std::process::Command {
        let out = self.dir.as_ref().unwrap().path().join(id);
        let env = std::fs::read_to_string(out.join("node.env")).unwrap();
        let mut cmd = std::process::Command::new(bin("media-node"));
        for line in env.lines() {
            let (k, v) = line.split_once('=').unwrap();
            cmd.env(k, v);
        }
        // Many machines share this host: the media port boot-env set is taken by the first.
        cmd.args(["--report-interval-ms", "300", "--media-port", "0"])
            .env("RUST_LOG", "info")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null());
        cmd
    }

    /// The files `fleet boot-env` and the node wrote for instance `id`.
    fn file(&self, id: &str, name: &str) -> std::path::PathBuf {
        self.dir.as_ref().unwrap().path().join(id).join(name)
    }
}

async fn serving_media(c: &Controller) -> Vec<String> {
    c.nodes()
        .await
        .unwrap_or_default()
        .iter()
        .filter(|n| n["kind"] == "media" && n["state"] == "serving")
        .filter_map(|n| n["id"].as_str().map(str::to_owned))
        .collect()
}

/// A controller whose eu-west-1 media pool (`bounds`: its min and max lines, and any other
/// policy line) is on EC2 at moto's `url`, with `autoscale` lines added to `[autoscale]` and
/// `ec2` lines to the pool's `[[providers.ec2.pools]]` entry.
async fn ec2_controller(
    ec2: &aws_sdk_ec2::Client,
    url: &str,
    bounds: &str,
    autoscale: &str,
    ec2_lines: &str,
) -> ControllerOptions {
    let mut opts = ControllerOptions::default();
    opts.extra_toml = format!(
        r#"
[autoscale]
tick_ms = 300
{autoscale}
[[pools]]
region = "eu-west-1"
kind = "media"
provider = "ec2"
node_capacity = 16
{bounds}
min_node_age_secs = 0
scale_down_window_secs = 2
[providers.ec2]
cluster = "e2e"
endpoint_url = "{url}"
controller_address = "127.0.0.1:{link}"
[[providers.ec2.pools]]
region = "eu-west-1"
kind = "media"
image_id = "ami-12c6146b"
instance_types = ["c6i.large", "c5.large"]
subnets = {{ "eu-west-1a" = "{a}", "eu-west-1b" = "{b}" }}
{ec2_lines}
"#,
        link = opts.link_port,
        a = default_subnet(ec2, "eu-west-1a").await,
        b = default_subnet(ec2, "eu-west-1b").await,
    );
    opts.env = [
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    opts
}

/// moto, its client, and a controller over it ([`ec2_controller`]'s arguments), kept alive
/// together for one test.
struct Fleet {
    _moto: fleet_testkit::moto::Moto,
    ec2: aws_sdk_ec2::Client,
    _dir: tempfile::TempDir,
    c: Controller,
}

impl Fleet {
    async fn start(pool: &str, autoscale: &str, ec2_lines: &str) -> Fleet {
        let moto = start_moto();
        let ec2 = client(&moto.url, "eu-west-1");
        let dir = tempfile::tempdir().unwrap();
        let opts = ec2_controller(&ec2, &moto.url, pool, autoscale, ec2_lines).await;
        let c = Controller::start(dir.path(), opts).unwrap();
        Fleet {
            _moto: moto,
            ec2,
            _dir: dir,
            c,
        }
    }
}

/// An instance whose node never says Hello is terminated after the boot timeout and
/// replaced; the pool never has more than its size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_that_never_connects_is_terminated_and_replaced() {
    let Fleet { ec2, c, .. } = &Fleet::start(
        "min = 1\nmax = 1\nbuffer_sessions = 0",
        "boot_timeout_secs = 5",
        "",
    )
    .await;
    // No boot is played: the first instance never connects.
    let end = Instant::now() + Duration::from_secs(20);
    let first = loop {
        let live = instances(ec2, &["pending", "running"]).await;
        if let Some(i) = live.first() {
            assert_eq!(live.len(), 1, "{live:?}");
            break i.instance_id().unwrap().to_owned();
        }
        assert!(Instant::now() < end, "nothing launched");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let live = instances(ec2, &["pending", "running"]).await;
        assert!(live.len() <= 1, "never more than the pool's size: {live:?}");
        let replaced = live.iter().any(|i| i.instance_id() != Some(first.as_str()));
        if replaced {
            break;
        }
        assert!(Instant::now() < end, "not replaced: {live:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let gone = instances(ec2, &["shutting-down", "terminated"]).await;
    assert!(
        gone.iter().any(|i| i.instance_id() == Some(first.as_str())),
        "{gone:?}"
    );
    let events = c
        .admin_get("/v1/scaling/events?region=eu-west-1")
        .await
        .unwrap();
    assert!(
        events["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "terminate"),
        "{events}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ec2_pool_grows_to_its_min_over_two_zones_then_drains_and_terminates() {
    let Fleet { ec2, c, .. } = &Fleet::start("min = 2\nmax = 3\nbuffer_sessions = 0", "", "").await;
    let mut machines = Machines::default();

    // From nothing to the min: two instances, one per zone, each a serving node.
    machines.boot_until_serving(c, ec2, 2).await;
    let live = instances(ec2, &["pending", "running"]).await;
    assert_eq!(live.len(), 2, "{live:?}");
    let mut zones: Vec<String> = live
        .iter()
        .filter_map(|i| i.placement()?.availability_zone().map(str::to_owned))
        .collect();
    zones.sort();
    assert_eq!(zones, ["eu-west-1a", "eu-west-1b"]);
    let mut tagged: Vec<String> = live
        .iter()
        .filter_map(|i| tag(i, "fleet:node-id"))
        .collect();
    tagged.sort();
    let mut serving = serving_media(c).await;
    serving.sort();
    assert_eq!(tagged, serving, "the nodes are the instances' nodes");
    for i in &live {
        assert_eq!(tag(i, "fleet:pool").as_deref(), Some("eu-west-1/media"));
        assert_eq!(tag(i, "fleet:market").as_deref(), Some("on-demand"));
    }

    // The nodes booted without a secret in user data or in their environment: each traded
    // its one-time boot token for its credentials, kept readable by the node's user only.
    use std::os::unix::fs::PermissionsExt;
    let first = live[0].instance_id().unwrap().to_owned();
    let env = std::fs::read_to_string(machines.file(&first, "node.env")).unwrap();
    assert!(env.contains("MEDIA_NODE_BOOT_TOKEN=boot.v1."), "{env}");
    assert!(
        !env.contains(CLUSTER_SECRET) && !env.contains(JOIN_SECRET),
        "{env}"
    );
    let credentials = machines.file(&first, "credentials.json");
    let mode = std::fs::metadata(&credentials)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // The token is spent: a second node using it (without the credentials) is refused.
    let thief = machines
        .node_command(&first)
        .env(
            "MEDIA_NODE_NODE_ID",
            tag(&live[0], "fleet:node-id").unwrap(),
        )
        .env(
            "MEDIA_NODE_CREDENTIALS_FILE",
            machines.file(&first, "stolen.json"),
        )
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&thief.stderr);
    assert!(!thief.status.success(), "{said}");
    assert!(said.contains("boot token already used"), "{said}");
    // The node restarted on its machine reconnects with the credentials it kept.
    let node_of_first = tag(&live[0], "fleet:node-id").unwrap();
    let mut proc = machines.procs.remove(&first).unwrap();
    proc.child.kill().unwrap();
    proc.child.wait().unwrap();
    let end = Instant::now() + Duration::from_secs(20);
    while serving_media(c).await.contains(&node_of_first) {
        assert!(Instant::now() < end, "the killed node still serves");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let child = machines.node_command(&first).spawn().unwrap();
    machines.procs.insert(
        first.clone(),
        Proc {
            child,
            name: first.clone(),
        },
    );
    let end = Instant::now() + Duration::from_secs(20);
    while !serving_media(c).await.contains(&node_of_first) {
        assert!(Instant::now() < end, "the restarted node does not serve");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Nothing more is launched while the pool is at its size.
    for _ in 0..5 {
        machines.boot(ec2).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(instances(ec2, &["pending", "running"]).await.len(), 2);

    // Down to one: a node is drained (empty: at once) and its instance terminated.
    let (status, body) = c
        .admin_send(
            reqwest::Method::PATCH,
            "/v1/pools/eu-west-1/media",
            json!({"min": 1, "max": 1}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        machines.boot(ec2).await;
        let live = instances(ec2, &["pending", "running"]).await;
        if live.len() == 1 && serving_media(c).await.len() == 1 {
            break;
        }
        assert!(Instant::now() < end, "not down to one: {live:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let gone = instances(ec2, &["shutting-down", "terminated"]).await;
    assert_eq!(gone.len(), 1, "{gone:?}");
    // The decision log says why.
    let events = c
        .admin_get("/v1/scaling/events?region=eu-west-1")
        .await
        .unwrap();
    let actions: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert!(
        actions.contains(&"launch") && actions.contains(&"drain"),
        "{events}"
    );
    assert!(actions.contains(&"terminate"), "{events}");
}

/// A controller that dies while its RunInstances calls are in flight (held by the proxy; they
/// reach EC2 anyway): the next controller finds the instances by their tags and launches no
/// second one for any node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_restarted_mid_launch_neither_forgets_nor_repeats_it() {
    let moto = start_moto();
    let proxy = FaultProxy::start(&moto.url).await;
    let ec2 = client(&moto.url, "eu-west-1");
    let dir = tempfile::tempdir().unwrap();
    let opts = ec2_controller(
        &ec2,
        &proxy.url,
        "min = 2\nmax = 2\nbuffer_sessions = 0",
        "",
        "",
    )
    .await;
    proxy.add(
        "RunInstances",
        None,
        Fault::Delay(Duration::from_secs(3)),
        2,
    );
    let mut c = Controller::start(dir.path(), opts.clone()).unwrap();
    let end = Instant::now() + Duration::from_secs(20);
    while proxy
        .log()
        .iter()
        .filter(|l| l.starts_with("RunInstances"))
        .count()
        < 2
    {
        assert!(Instant::now() < end, "no launches: {:?}", proxy.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c.proc.kill();
    let end = Instant::now() + Duration::from_secs(15);
    while instances(&ec2, &["pending", "running"]).await.len() < 2 {
        assert!(Instant::now() < end, "the held launches never reached EC2");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    c = Controller::start(dir.path(), opts).unwrap();
    let mut machines = Machines::default();
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        machines.boot(&ec2).await;
        let live = instances(&ec2, &["pending", "running"]).await;
        assert!(live.len() <= 2, "a launch was repeated: {live:?}");
        if serving_media(&c).await.len() == 2 {
            break;
        }
        assert!(Instant::now() < end, "not serving: {:?}", c.nodes().await);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // And stays so.
    for _ in 0..10 {
        machines.boot(&ec2).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let live = instances(&ec2, &["pending", "running"]).await;
    let mut nodes: Vec<String> = live
        .iter()
        .filter_map(|i| tag(i, "fleet:node-id"))
        .collect();
    nodes.sort();
    nodes.dedup();
    assert_eq!((live.len(), nodes.len()), (2, 2), "{live:?}");
    let all = instances(&ec2, &["pending", "running", "shutting-down", "terminated"]).await;
    assert_eq!(all.len(), 2, "nothing else was ever launched: {all:?}");
}

/// A pool with an on-demand base of one and its idle buffer on spot: the spot node takes no
/// call while the on-demand one has room. EC2 announces the spot node's interruption through
/// its metadata service: within a report interval the controller stops placing there, then
/// drains it (empty: its instance is terminated) and launches a replacement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spot_interruption_stops_placement_and_brings_a_replacement() {
    let Fleet { ec2, c, .. } = &Fleet::start(
        "min = 2\nmax = 3\nbuffer_sessions = 1",
        "",
        "on_demand_base = 1\nspot_share_above_base = 1.0",
    )
    .await;
    let mut machines = Machines::default();
    machines.boot_until_serving(c, ec2, 2).await;
    let live = instances(ec2, &["pending", "running"]).await;
    let market_of = |i: &Instance| tag(i, "fleet:market").unwrap_or_default();
    let mut markets: Vec<String> = live.iter().map(market_of).collect();
    markets.sort();
    assert_eq!(
        markets,
        ["on-demand", "spot"],
        "the base, then the buffer on spot"
    );
    let spot = live.iter().find(|i| market_of(i) == "spot").unwrap();
    let spot_instance = spot.instance_id().unwrap().to_owned();
    let spot_node = tag(spot, "fleet:node-id").unwrap();
    let on_demand_node = live
        .iter()
        .find_map(|i| (market_of(i) == "on-demand").then(|| tag(i, "fleet:node-id").unwrap()))
        .unwrap();
    let call = |n: usize| {
        json!({"participants": [
            {"id": format!("t{n}"), "region": "eu-west-1"},
            {"id": format!("c{n}"), "region": "eu-west-1"}
        ]})
    };
    // The on-demand node has room for a call: the spot node gets none.
    let (status, body) = c.create_session(call(1)).await.unwrap();
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["media"]["node_id"], on_demand_node.as_str(), "{body}");

    // EC2 reclaims the spot machine in two minutes.
    let noticed = Instant::now();
    machines.imds[&spot_instance].interrupt(fleet_node::now_unix_ms() + 120_000);
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let nodes = c.nodes().await.unwrap_or_default();
        let n = nodes.iter().find(|n| n["id"] == spot_node.as_str());
        if n.is_none_or(|n| n["state"] != "serving") {
            break;
        }
        assert!(Instant::now() < end, "still serving: {n:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stopped_after = noticed.elapsed();
    println!("placement stopped {stopped_after:?} after the notice (report interval 300 ms)");
    // The node polls the service once per report interval and reports once per interval.
    assert!(
        stopped_after < Duration::from_millis(2_000),
        "took {stopped_after:?}"
    );
    // No call goes there any more (the on-demand node takes the next one, then the pool grows).
    let (status, body) = c.create_session(call(2)).await.unwrap();
    assert_eq!(status, 201, "{body}");
    assert_ne!(body["media"]["node_id"], spot_node.as_str(), "{body}");

    // The spot instance is terminated (it was empty) and a replacement launched and served.
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        machines.boot(ec2).await;
        let gone = instances(ec2, &["shutting-down", "terminated"]).await;
        let terminated = gone
            .iter()
            .any(|i| i.instance_id() == Some(spot_instance.as_str()));
        let serving = serving_media(c).await;
        let replaced = serving.len() >= 2 && !serving.contains(&spot_node);
        if terminated && replaced {
            break;
        }
        assert!(
            Instant::now() < end,
            "terminated {terminated}, serving {serving:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let events = c
        .admin_get("/v1/scaling/events?region=eu-west-1")
        .await
        .unwrap();
    let events = events["events"].as_array().unwrap();
    assert!(
        events.iter().any(|e| e["action"] == "drain"
            && e["reason"] == "spot_interruption"
            && e["node_id"] == spot_node.as_str()),
        "{events:?}"
    );
}

/// A pool whose cost cap holds two of its machines: the third launch its min asks for is
/// refused, logged once with the cap as its reason, and the cost shows in the metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cost_cap_refuses_the_launch_that_would_pass_it() {
    let Fleet { ec2, c, .. } = &Fleet::start(
        "min = 3\nmax = 3\nbuffer_sessions = 0\nmax_hourly_cost = 0.2",
        "",
        "[[prices]]\nkind = \"media\"\non_demand_hourly = 0.085",
    )
    .await;
    let end = Instant::now() + Duration::from_secs(30);
    let refused = loop {
        let events = c
            .admin_get("/v1/scaling/events?region=eu-west-1")
            .await
            .unwrap_or_default();
        let refused: Vec<Value> = events["events"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|e| e["action"] == "launch_refused")
            .collect();
        if !refused.is_empty() {
            break refused;
        }
        assert!(Instant::now() < end, "no refusal: {events}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(refused[0]["reason"], "pool_cost_cap", "{refused:?}");
    assert_eq!(refused[0]["count"], 1, "{refused:?}");
    // Held for a few more ticks: still two instances, and the refusal logged once.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(instances(ec2, &["pending", "running"]).await.len(), 2);
    let events = c
        .admin_get("/v1/scaling/events?region=eu-west-1")
        .await
        .unwrap();
    let events = events["events"].as_array().unwrap();
    let refusals = events
        .iter()
        .filter(|e| e["action"] == "launch_refused")
        .count();
    assert_eq!(refusals, 1, "{events:?}");
    let launched: u64 = events
        .iter()
        .filter(|e| e["action"] == "launch")
        .filter_map(|e| e["count"].as_u64())
        .sum();
    assert_eq!(launched, 2, "{events:?}");
    let metrics = metrics_text(&c.api).await;
    let want = r#"fleet_cost_hourly{region="eu-west-1",kind="media",market="on-demand"} 0.17"#;
    assert!(metrics.contains(want), "{want} not in:\n{metrics}");
}
