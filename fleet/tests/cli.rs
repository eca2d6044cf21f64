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

#[test]
fn simulate_scores_a_trace_with_the_oracle_and_names_bad_rows() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sim.toml");
    std::fs::write(
        &config,
        "[pool_defaults]\nmin = 0\n[sim]\nmedia_capacity = 16\nturn_capacity = 100\n",
    )
    .unwrap();
    // London calls needing 1, 2, then 1 node over 30-minute steps, and a Mumbai call with one
    // relayed participant: 2 + 1 media node-hours and 1 TURN node-hour.
    let trace = dir.path().join("week.csv");
    std::fs::write(
        &trace,
        "session_id,start_s,duration_s,participants,booked_s,profile
s1,0,3600,51.51:-0.13;51.5:-0.12,,
s2,1800,3600,51.51:-0.13;51.5:-0.12,,video
s3,1800,1800,51.51:-0.13;51.5:-0.12,0,
s4,3600,3600,19.08:72.88;19.1:72.9:relay,,
",
    )
    .unwrap();
    let out = dir.path().join("report.json");
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_fleet"))
            .arg("simulate")
            .args(args)
            .output()
            .unwrap()
    };
    let trace_arg = trace.to_str().unwrap();
    let config_arg = config.to_str().unwrap();
    let report_of = |policies: &str, seed: &str| -> serde_json::Value {
        let ok = run(&[
            "--trace",
            trace_arg,
            "--config",
            config_arg,
            "--policy",
            policies,
            "--seed",
            seed,
            "--json",
            out.to_str().unwrap(),
        ]);
        assert!(
            ok.status.success(),
            "{}",
            String::from_utf8_lossy(&ok.stderr)
        );
        serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap()
    };
    let report = report_of("oracle", "1");
    let oracle = &report["policies"][0];
    assert_eq!(
        (&oracle["policy"], &oracle["sessions"]),
        (&"oracle".into(), &4.into())
    );
    let hours = |k: &str| oracle["node_hours"][k].as_f64().unwrap();
    assert!((hours("media") - 3.0).abs() < 1e-9, "{report}");
    assert!((hours("turn") - 1.0).abs() < 1e-9, "{report}");
    assert_eq!(oracle["node_hours_by_pool"]["eu-west-2/media"], 2.0);

    // All three policies, in the documented shape; the same seed gives the same figures.
    let all = report_of("ours,hpa,oracle", "7");
    let names: Vec<&str> = all["policies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["policy"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["ours", "hpa", "oracle"], "{all}");
    for p in all["policies"].as_array().unwrap() {
        for field in [
            "sessions",
            "refused",
            "spilled",
            "dropped",
            "p95_worse_rtt_ms",
            "node_hours_by_pool",
            "actions",
        ] {
            assert!(!p[field].is_null(), "{field} missing: {p}");
        }
        assert_eq!(p["sessions"], 4, "{p}");
        assert!(p["node_hours"]["media"].as_f64().unwrap() > 0.0, "{p}");
        assert!(
            p["ratio_to_oracle"]["media"].as_f64().unwrap() >= 1.0,
            "{p}"
        );
    }
    assert!(all["wall_secs"].as_f64().is_some());
    let figures = |mut v: serde_json::Value| {
        for p in v["policies"].as_array_mut().unwrap() {
            p.as_object_mut().unwrap().remove("sessions_per_sec");
        }
        v["policies"].clone()
    };
    assert_eq!(figures(all), figures(report_of("ours,hpa,oracle", "7")));

    // --plot: one panel per region with the demand and a line per replayed policy; --timeline
    // the same figures as CSV.
    let plot = dir.path().join("plot.svg");
    let timeline = dir.path().join("timeline.csv");
    let plotted = run(&[
        "--trace",
        trace_arg,
        "--config",
        config_arg,
        "--policy",
        "ours,hpa",
        "--plot",
        plot.to_str().unwrap(),
        "--timeline",
        timeline.to_str().unwrap(),
    ]);
    assert!(
        plotted.status.success(),
        "{}",
        String::from_utf8_lossy(&plotted.stderr)
    );
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(200)]);
    for text in ["eu-west-2", "ap-south-1", "demand", "ours", "hpa"] {
        assert!(svg.contains(text), "{text} missing from the plot");
    }
    // 16 regions × (demand + 2 policies), plus the legend samples.
    assert!(svg.matches("<polyline").count() >= 48);
    let csv = std::fs::read_to_string(&timeline).unwrap();
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("policy,t_s,pool,nodes,used"));
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert!(rows.iter().all(|r| r.len() == 5), "{csv}");
    for policy in ["ours", "hpa"] {
        let first = rows
            .iter()
            .filter(|r| r[0] == policy && r[1] == "0")
            .count();
        assert_eq!(first, 32, "{policy}: 16 regions × 2 kinds at t = 0");
        // The London calls ran in eu-west-2 on machines the policy launched.
        assert!(
            rows.iter().any(|r| r[0] == policy
                && r[2] == "eu-west-2/media"
                && r[3].parse::<u32>().unwrap() >= 1
                && r[4].parse::<u64>().unwrap() >= 8),
            "{policy}: {csv}"
        );
    }
    let err = run(&[
        "--trace",
        trace_arg,
        "--config",
        config_arg,
        "--policy",
        "oracle",
        "--plot",
        plot.to_str().unwrap(),
    ]);
    assert!(!err.status.success());
    assert!(String::from_utf8_lossy(&err.stderr).contains("--plot needs"));

    // A malformed row stops the run with its line; an unknown policy is named.
    let bad = dir.path().join("bad.csv");
    std::fs::write(
        &bad,
        "session_id,start_s,duration_s,participants,booked_s,profile\ns1,0,60,1:1,,\ns2,0,60,95:1,,\n",
    )
    .unwrap();
    let err = run(&["--trace", bad.to_str().unwrap(), "--config", config_arg]);
    assert!(!err.status.success());
    let stderr = String::from_utf8_lossy(&err.stderr);
    assert!(
        stderr.contains("trace line 3") && stderr.contains("latitude"),
        "{stderr}"
    );
    for (policy, want) in [("fastest", "unknown policy"), ("ours,", "unknown policy")] {
        let err = run(&[
            "--trace", trace_arg, "--config", config_arg, "--policy", policy,
        ]);
        assert!(!err.status.success());
        let stderr = String::from_utf8_lossy(&err.stderr);
        assert!(stderr.contains(want), "{policy}: {stderr}");
    }
}

#[test]
fn simulate_generate_writes_the_same_week_for_the_same_seed() {
    let dir = tempfile::tempdir().unwrap();
    let generate = |name: &str, seed: &str| {
        let out = dir.path().join(name);
        let status = Command::new(env!("CARGO_BIN_EXE_fleet"))
            .args([
                "simulate",
                "generate",
                "--kind",
                "surge",
                "--sessions",
                "500",
            ])
            .args(["--seed", seed, "--out"])
            .arg(&out)
            .status()
            .unwrap();
        assert!(status.success());
        std::fs::read_to_string(out).unwrap()
    };
    let (a, b, c) = (
        generate("a.csv", "9"),
        generate("b.csv", "9"),
        generate("c.csv", "10"),
    );
    assert_eq!(a, b);
    assert_ne!(a, c);
    // 500 sessions and the surge's 100, after the header.
    assert_eq!(a.lines().count(), 601);
    let scored = Command::new(env!("CARGO_BIN_EXE_fleet"))
        .args(["simulate", "--policy", "oracle", "--trace"])
        .arg(dir.path().join("a.csv"))
        .output()
        .unwrap();
    assert!(
        scored.status.success(),
        "{}",
        String::from_utf8_lossy(&scored.stderr)
    );
    assert!(String::from_utf8_lossy(&scored.stdout).contains("oracle"));
}
