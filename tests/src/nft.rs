//! A firewall for tests that run in their own network namespace ([`crate::browser::in_netns`]):
//! an nftables table with one output chain, rules added to it by the test (drop UDP to a port,
//! police a flow to a rate) and the packets each rule's counter saw. Needs `nft` (Debian
//! package `nftables`, installed by scripts/test.sh) and the namespace's CAP_NET_ADMIN.

use std::process::Command;

use crate::turn::which;

/// An nftables table `inet <name>` with an output chain `out`.
pub struct Firewall {
    table: String,
}

impl Firewall {
    /// Creates the table and its chain (hooked on output, where loopback traffic passes once).
    pub fn new(name: &str) -> Firewall {
        nft(&["add", "table", "inet", name]);
        nft(&[
            "add",
            "chain",
            "inet",
            name,
            "out",
            "{ type filter hook output priority 0; }",
        ]);
        Firewall {
            table: name.to_owned(),
        }
    }

    /// Appends a rule (nft words, e.g. `["udp", "dport", "4000", "counter", "drop"]`) to the
    /// output chain.
    pub fn add(&self, rule: &[&str]) {
        let mut args = vec!["add", "rule", "inet", &self.table, "out"];
        args.extend_from_slice(rule);
        nft(&args);
    }

    /// The chain as `nft list` shows it (rules, counters).
    pub fn listing(&self) -> String {
        nft(&["list", "chain", "inet", &self.table, "out"])
    }

    /// The packet counts of the chain's rules that have a counter, in order.
    pub fn counters(&self) -> Vec<u64> {
        let listing = self.listing();
        let words: Vec<&str> = listing.split_whitespace().collect();
        words
            .windows(2)
            .filter(|w| w[0] == "packets")
            .filter_map(|w| w[1].parse().ok())
            .collect()
    }
}

/// Runs `nft` with `args`; its stdout. Panics with its stderr on failure.
fn nft(args: &[&str]) -> String {
    let nft = which("nft").unwrap_or_else(|| {
        panic!("`nft` not found on PATH: install the Debian package `nftables`")
    });
    let out = Command::new(nft).args(args).output().expect("run nft");
    assert!(
        out.status.success(),
        "nft {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
