//! `fleet boot-env`: a cloud machine's first step at boot. Reads the machine's user data from
//! the instance metadata service (IMDSv2) — what the EC2 provider put there at launch: the
//! node id, region, zone, kind, capacity, market, the controller's link address, name and
//! certificate, and a one-time boot token — and writes what the node's systemd unit starts
//! it with: `<out>/controller.pem` and `<out>/node.env` (mode 0600), the node's flags as its
//! environment variables (`MEDIA_NODE_…` or `TURN_NODE_…`), plus `FLEET_NODE_KIND`.
//!
//! No secret passes through here: the node trades the boot token over the link for its
//! credentials at start and keeps them in `--credentials-file` (see `fleet_node`'s boot).

use std::path::{Path, PathBuf};

use anyhow::Context;
use fleet_ec2::Bootstrap;
use fleet_node::args::env_name;
use fleet_node::metadata::MetadataWatcher;
use fleet_proto::{NodeId, NodeKind, RegionId};

/// Reads user data and the instance's id and addresses; writes the env and cert files into
/// `out` and returns the env file's path. `credentials_file` is where the node keeps what its
/// boot token buys.
pub async fn write(
    metadata: &str,
    out: &Path,
    credentials_file: &Path,
    http_port: u16,
) -> anyhow::Result<PathBuf> {
    use fleet_ec2::ports;
    let mut imds = MetadataWatcher::new(metadata);
    let user_data = imds
        .read("/latest/user-data")
        .await?
        .context("the instance has no user data: was it launched by a fleet controller?")?;
    let boot: Bootstrap = serde_json::from_slice(&user_data)
        .context("user data is not a fleet bootstrap (JSON with node_id, region, …)")?;
    let kind: NodeKind = boot
        .kind
        .parse()
        .map_err(|e| anyhow::anyhow!("user data: kind: {e}"))?;
    NodeId::parse(&boot.node_id).context("user data: node_id")?;
    RegionId::parse(&boot.region).context("user data: region")?;
    anyhow::ensure!(
        boot.controller_cert.contains("BEGIN CERTIFICATE"),
        "user data: controller_cert is not a PEM certificate"
    );
    let text = |bytes: Vec<u8>| String::from_utf8_lossy(&bytes).trim().to_owned();
    let instance = imds
        .read("/latest/meta-data/instance-id")
        .await?
        .map(text)
        .context("the metadata service has no instance-id")?;
    // The address clients reach: the public one when the instance has it.
    let mut public_ip = None;
    for path in [
        "/latest/meta-data/public-ipv4",
        "/latest/meta-data/local-ipv4",
    ] {
        if let Some(ip) = imds.read(path).await?.map(text) {
            public_ip = Some(ip);
            break;
        }
    }

    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let cert_file = out.join("controller.pem");
    std::fs::write(&cert_file, &boot.controller_cert)
        .with_context(|| format!("cannot write {}", cert_file.display()))?;
    let var = |flag: &str| env_name(kind, flag);
    let mut lines = vec![
        format!("FLEET_NODE_KIND={kind}"),
        format!("{}={}", var("node-id"), boot.node_id),
        format!("{}={}", var("region"), boot.region),
        format!("{}={}", var("zone"), boot.zone),
        format!("{}={instance}", var("machine-id")),
        format!("{}={}", var("market"), boot.market),
        format!("{}={}", var("capacity"), boot.capacity),
        format!("{}={}", var("controller"), boot.controller),
        format!("{}={}", var("controller-name"), boot.controller_name),
        format!("{}={}", var("controller-cert"), cert_file.display()),
        format!("{}={}", var("boot-token"), boot.boot_token),
        format!("{}={}", var("credentials-file"), credentials_file.display()),
        format!("{}={metadata}", var("instance-metadata")),
        format!("{}=0.0.0.0:{http_port}", var("http-listen")),
    ];
    if let Some(ip) = public_ip {
        lines.push(format!("{}={ip}", var("public-ip")));
    }
    // The ports the security groups open (one owner: `fleet_ec2::ports`).
    match kind {
        NodeKind::Media => lines.push(format!("{}={}", var("media-port"), ports::MEDIA_UDP)),
        NodeKind::Turn => {
            lines.push(format!("{}={}", var("turn-port"), ports::TURN));
            lines.push(format!("{}={}", var("relay-min-port"), ports::RELAY_MIN));
            lines.push(format!("{}={}", var("relay-max-port"), ports::RELAY_MAX));
        }
    }
    for line in &lines {
        anyhow::ensure!(
            !line.contains(['\n', '\r', '"', '\'', '\\', ' ']),
            "user data: a value with spaces, quotes or line breaks: {line:?}"
        );
    }
    let env_file = out.join("node.env");
    write_private(&env_file, &(lines.join("\n") + "\n"))?;
    Ok(env_file)
}

/// Writes `text` to `path` readable by its owner only.
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}
