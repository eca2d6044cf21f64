//! moto's EC2 server for the EC2 provider's tests: `moto_server` from `$MOTO_SERVER`, else the
//! workspace's `.venv-moto` (scripts/test.sh installs it there). A missing server fails the
//! test with what to do; it never skips.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_ec2::config::{BehaviorVersion, Credentials, Region};

use crate::process::{Proc, free_tcp_port};

/// The `moto_server` binary.
pub fn moto_server_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("MOTO_SERVER") {
        return PathBuf::from(p);
    }
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv-moto/bin/moto_server");
    assert!(
        p.exists(),
        "moto_server not found at {} (scripts/test.sh installs it; or set MOTO_SERVER)",
        p.display()
    );
    p
}

/// A running moto server on a loopback port; killed when dropped.
pub struct Moto {
    pub proc: Proc,
    /// `http://127.0.0.1:<port>`.
    pub url: String,
}

/// Starts moto on a free loopback port and waits until it listens.
pub fn start_moto() -> Moto {
    let port = free_tcp_port();
    let child = Command::new(moto_server_bin())
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start moto_server");
    let proc = Proc {
        child,
        name: "moto_server".into(),
    };
    let end = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < end, "moto_server did not listen on {port}");
        std::thread::sleep(Duration::from_millis(100));
    }
    Moto {
        proc,
        url: format!("http://127.0.0.1:{port}"),
    }
}

/// The credentials moto accepts.
pub fn credentials() -> Credentials {
    Credentials::new("testing", "testing", None, None, "moto")
}

/// An EC2 client of `region` on moto at `url` (HTTPS client on rustls with ring, as the
/// provider's).
pub fn client(url: &str, region: &str) -> aws_sdk_ec2::Client {
    use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https();
    aws_sdk_ec2::Client::from_conf(
        aws_sdk_ec2::Config::builder()
            .http_client(http)
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(region.to_owned()))
            .credentials_provider(credentials())
            .endpoint_url(url)
            .build(),
    )
}

/// The subnet of `zone` in moto's default VPC.
pub async fn default_subnet(ec2: &aws_sdk_ec2::Client, zone: &str) -> String {
    let subnets = ec2
        .describe_subnets()
        .send()
        .await
        .expect("DescribeSubnets");
    subnets
        .subnets()
        .iter()
        .find(|s| s.availability_zone() == Some(zone))
        .and_then(|s| s.subnet_id())
        .unwrap_or_else(|| panic!("no default subnet in {zone}"))
        .to_owned()
}

/// The instances whose tag `key` is `value`, in `states` (e.g. `["pending", "running"]`).
pub async fn instances_tagged(
    ec2: &aws_sdk_ec2::Client,
    key: &str,
    value: &str,
    states: &[&str],
) -> Vec<aws_sdk_ec2::types::Instance> {
    use aws_sdk_ec2::types::Filter;
    let out = ec2
        .describe_instances()
        .filters(
            Filter::builder()
                .name(format!("tag:{key}"))
                .values(value)
                .build(),
        )
        .filters(
            Filter::builder()
                .name("instance-state-name")
                .set_values(Some(states.iter().map(|s| s.to_string()).collect()))
                .build(),
        )
        .send()
        .await
        .expect("DescribeInstances");
    out.reservations()
        .iter()
        .flat_map(|r| r.instances().iter().cloned())
        .collect()
}
