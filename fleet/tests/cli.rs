//! The `fleet` binary's command line: an invalid config stops start-up with a message naming
//! the key (file values and environment overrides alike), and `fleet token` mints a JWT.
//! (This test also makes `cargo nextest run --workspace` build the `fleet` binary that the
//! end-to-end tests in `tests/` start.)

use std::process::Command;

#[test]
fn invalid_config_stops_start_up_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "[placement]\nrtt_budget_ms = \"soon\"\n",
            "placement.rtt_budget_ms",
        ),
        ("[api]\nlisten = \"not-an-address\"\n", "api.listen"),
        (
            "[link]\ncluster_secret = \"short\"\n",
            "link.cluster_secret",
        ),
        ("[placement]\nstrategy = \"random\"\n", "placement.strategy"),
        ("[up]\nregions = [\"mars-1\"]\n", "up.regions[0]"),
        ("[aip]\nlisten = \"127.0.0.1:1\"\n", "aip"),
        ("not toml at all [", "TOML"),
    ];
    for (text, key) in cases {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, text).unwrap();
        for sub in ["serve", "check-config"] {
            let out = Command::new(env!("CARGO_BIN_EXE_fleet"))
                .arg(sub)
                .arg("--config")
                .arg(&path)
                .output()
                .unwrap();
            assert!(!out.status.success(), "{sub} accepted {text:?}");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                err.contains(key),
                "{sub} {text:?}: expected {key:?} in {err}"
            );
        }
    }
    // An environment override is checked the same way.
    let path = dir.path().join("ok.toml");
    std::fs::write(&path, "").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_fleet"))
        .args(["check-config", "--config"])
        .arg(&path)
        .env("FLEET__PLACEMENT__MAX_PARTICIPANTS", "lots")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("placement.max_participants"));
}

#[test]
fn token_command_mints_a_jwt_with_the_configured_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fleet.toml");
    std::fs::write(
        &path,
        "[[auth.api_keys]]\nkid = \"k-7\"\nsecret = \"0123456789abcdef01\"\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_fleet"))
        .args(["token", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap();
    let parts: Vec<&str> = token.trim().split('.').collect();
    assert_eq!(parts.len(), 3);
    use base64::Engine;
    let header = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(parts[0])
        .unwrap();
    let header: serde_json::Value = serde_json::from_slice(&header).unwrap();
    assert_eq!(header["kid"], "k-7");
    assert_eq!(header["alg"], "HS256");
    let out = Command::new(env!("CARGO_BIN_EXE_fleet"))
        .args(["token", "--kid", "nope", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("auth.api_keys"));
}
