//! The config: parsing, defaults, and every refusal naming its field.

use super::*;

fn no_env() -> Vec<(String, String)> {
    Vec::new()
}

#[test]
fn empty_config_is_valid_with_defaults() {
    let c = Config::from_toml("", no_env()).unwrap();
    assert_eq!(c.api.listen.port(), 8080);
    assert_eq!(c.placement.max_participants, 6);
}

#[test]
fn wrong_type_names_the_key() {
    let e = Config::from_toml("[placement]\nrtt_budget_ms = \"fast\"\n", no_env()).unwrap_err();
    let s = e.to_string();
    assert!(s.contains("placement.rtt_budget_ms"), "{s}");
}

#[test]
fn unknown_key_is_rejected() {
    let e = Config::from_toml("[api]\nlisten = \"127.0.0.1:1\"\nlistn = 3\n", no_env())
        .unwrap_err()
        .to_string();
    assert!(e.contains("listn"), "{e}");
}

#[test]
fn bad_address_and_range_are_rejected() {
    let e = Config::from_toml("[api]\nlisten = \"nowhere\"\n", no_env())
        .unwrap_err()
        .to_string();
    assert!(e.contains("api.listen"), "{e}");
    let e = Config::from_toml("[placement]\nmax_participants = 1\n", no_env())
        .unwrap_err()
        .to_string();
    assert!(e.contains("placement.max_participants"), "{e}");
    let e = Config::from_toml("[geoip]\ndefault_region = \"mars-1\"\n", no_env())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("geoip.default_region") && e.contains("mars-1"),
        "{e}"
    );
}

#[test]
fn env_overrides_win_and_are_typed() {
    let env = vec![
        (
            "FLEET__API__LISTEN".to_string(),
            "127.0.0.1:9999".to_string(),
        ),
        (
            "FLEET__PLACEMENT__MAX_PARTICIPANTS".to_string(),
            "4".to_string(),
        ),
        ("FLEET__PLACEMENT__STRATEGY".to_string(), "pack".to_string()),
        ("UNRELATED".to_string(), "x".to_string()),
    ];
    let c = Config::from_toml("[api]\nlisten = \"127.0.0.1:1\"\n", env).unwrap();
    assert_eq!(c.api.listen.port(), 9999);
    assert_eq!(c.placement.max_participants, 4);
    assert_eq!(c.placement.strategy, fleet_core::Strategy::Pack);
    let e = Config::from_toml(
        "",
        vec![("FLEET__PLACEMENT__MAX_PARTICIPANTS".into(), "many".into())],
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("placement.max_participants"), "{e}");
}

#[test]
fn shipped_example_config_is_valid() {
    let text = include_str!("../../../fleet.example.toml");
    let c = Config::from_toml(text, no_env()).unwrap();
    assert_eq!(c.auth.api_keys.len(), 1);
    assert!(!c.link.generate_dev_cert);
}

#[test]
fn ec2_pools_need_their_provider_settings() {
    let pool = "[[pools]]\nregion = \"eu-west-1\"\nkind = \"media\"\nprovider = \"ec2\"\n";
    let e = Config::from_toml(pool, no_env()).unwrap_err().to_string();
    assert!(
        e.contains("providers.ec2") && e.contains("[providers.ec2]"),
        "{e}"
    );
    let section = |entry: &str| {
        format!(
            "{pool}[providers.ec2]\ncluster = \"prod\"\n[[providers.ec2.pools]]\n\
             region = \"eu-west-1\"\nkind = \"media\"\n{entry}"
        )
    };
    let good = "image_id = \"ami-12c6146b\"\ninstance_types = [\"c6i.large\"]\n\
                subnets = { \"eu-west-1a\" = \"subnet-1\", \"eu-west-1b\" = \"subnet-2\" }\n";
    let c = Config::from_toml(&section(good), no_env()).unwrap();
    assert_eq!(
        c.providers.ec2.unwrap().pools[0].instance_types,
        vec!["c6i.large"]
    );
    for (entry, field) in [
        (
            good.replace(
                "\"eu-west-1b\" = \"subnet-2\"",
                "\"eu-west-1c\" = \"subnet-2\"",
            ),
            "no subnet for zone eu-west-1b",
        ),
        (
            good.replace("ami-12c6146b", "my-image"),
            "providers.ec2.pools[0].image_id",
        ),
        (
            good.replace("[\"c6i.large\"]", "[]"),
            "providers.ec2.pools[0].instance_types",
        ),
        (
            good.replace("subnet-1", "sub1"),
            "providers.ec2.pools[0].subnets.eu-west-1a",
        ),
        (
            good.replace("image_id = \"ami-12c6146b\"\n", ""),
            "launch template or an image_id",
        ),
        (
            format!("{good}spot_share_above_base = 1.5\n"),
            "providers.ec2.pools[0].spot_share_above_base",
        ),
    ] {
        let e = Config::from_toml(&section(&entry), no_env())
            .unwrap_err()
            .to_string();
        assert!(e.contains(field), "{field}: {e}");
    }
    // A media pool's spot is its idle buffer: none without a buffer.
    let spot = section(&format!("{good}spot_share_above_base = 0.5\n"));
    assert!(Config::from_toml(&spot, no_env()).is_ok());
    let unbuffered = spot.replacen(
        "provider = \"ec2\"\n",
        "provider = \"ec2\"\nbuffer_sessions = 0\n",
        1,
    );
    let e = Config::from_toml(&unbuffered, no_env())
        .unwrap_err()
        .to_string();
    assert!(e.contains("buffer_sessions is 0"), "{e}");
}

#[test]
fn kubernetes_pools_need_their_provider_settings() {
    let pool = "[[pools]]\nregion = \"eu-west-1\"\nkind = \"media\"\nprovider = \"kubernetes\"\n";
    let e = Config::from_toml(pool, no_env()).unwrap_err().to_string();
    assert!(e.contains("[providers.kubernetes]"), "{e}");
    let section = |entry: &str| {
        format!(
            "{pool}[providers.kubernetes]\ncluster = \"prod\"\n[[providers.kubernetes.pools]]\n\
             region = \"eu-west-1\"\nkind = \"media\"\n{entry}"
        )
    };
    let good = "namespace = \"fleet\"\ndeployment = \"media-eu-west-1\"\ncontext = \"eks-eu\"\n";
    let c = Config::from_toml(&section(good), no_env()).unwrap();
    assert_eq!(
        c.providers.kubernetes.unwrap().pools[0].deployment,
        "media-eu-west-1"
    );
    for (entry, field) in [
        (
            good.replace("\"fleet\"", "\"Fleet_NS\""),
            "providers.kubernetes.pools[0].namespace",
        ),
        (
            good.replace("media-eu-west-1", "-media"),
            "providers.kubernetes.pools[0].deployment",
        ),
        (
            format!("{good}api_url = \"http://127.0.0.1:1\"\n"),
            "providers.kubernetes.pools[0].api_url",
        ),
    ] {
        let e = Config::from_toml(&section(&entry), no_env())
            .unwrap_err()
            .to_string();
        assert!(e.contains(field), "{field}: {e}");
    }
    let e = Config::from_toml(&section("namespace = \"fleet\"\n"), no_env())
        .unwrap_err()
        .to_string();
    assert!(e.contains("deployment"), "{e}");
}

#[test]
fn cost_caps_need_prices_and_take_them_from_the_table() {
    let pool = "[[pools]]\nregion = \"eu-west-1\"\nkind = \"media\"\nprovider = \"local\"\n";
    let e = Config::from_toml(&format!("{pool}max_hourly_cost = 2.0\n"), no_env())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("pools[0].max_hourly_cost") && e.contains("[[prices]]"),
        "{e}"
    );
    let e = Config::from_toml(&format!("{pool}max_hourly_cost = -1\n"), no_env())
        .unwrap_err()
        .to_string();
    assert!(e.contains("pools[0].max_hourly_cost"), "{e}");
    let e = Config::from_toml("[autoscale]\nmax_hourly_total = 10.0\n", no_env())
        .unwrap_err()
        .to_string();
    assert!(e.contains("autoscale.max_hourly_total"), "{e}");
    let priced = format!(
        "[autoscale]\nmax_hourly_total = 10.0\n{pool}max_hourly_cost = 2.0\n\
         [[prices]]\nkind = \"media\"\non_demand_hourly = 0.5\n\
         [[prices]]\nregion = \"eu-west-1\"\nkind = \"media\"\non_demand_hourly = 0.34\n\
         spot_hourly = 0.1\n"
    );
    let c = Config::from_toml(&priced, no_env()).unwrap();
    let setups = c.pool_setups().unwrap();
    let (_, setup) = &setups[0];
    assert_eq!(setup.max_hourly_cost, Some(2.0));
    assert_eq!(setup.prices.on_demand, 0.34, "the region's own price wins");
    assert_eq!(setup.prices.spot, Some(0.1));
}

#[test]
fn operators_are_named_and_have_tokens_of_their_own() {
    let op = |name: &str, token: &str| {
        format!("[[auth.operators]]\nname = \"{name}\"\ntoken = \"{token}\"\n")
    };
    let admin = "[auth]\nadmin_token = \"admin-token-0123456789\"\n";
    let ok = format!("{admin}{}", op("alice", "alice-token-0123456789"));
    assert_eq!(
        Config::from_toml(&ok, no_env()).unwrap().auth.operators[0].name,
        "alice"
    );
    for (text, field) in [
        (
            op("al ice", "alice-token-0123456789"),
            "auth.operators[0].name",
        ),
        (
            op("admin", "alice-token-0123456789"),
            "auth.operators[0].name",
        ),
        (op("alice", "short"), "auth.operators[0].token"),
        (
            format!(
                "{}{}",
                op("a", "same-token-0123456789"),
                op("b", "same-token-0123456789")
            ),
            "auth.operators[1].token",
        ),
        (
            op("alice", "admin-token-0123456789"),
            "auth.operators[0].token",
        ),
    ] {
        let e = Config::from_toml(&format!("{admin}{text}"), no_env())
            .unwrap_err()
            .to_string();
        assert!(e.contains(field), "{field}: {e}");
    }
}

#[test]
fn short_secrets_are_rejected() {
    let e = Config::from_toml("[auth]\nadmin_token = \"short\"\n", no_env())
        .unwrap_err()
        .to_string();
    assert!(e.contains("auth.admin_token"), "{e}");
    let e = Config::from_toml("[[auth.api_keys]]\nkid = \"a\"\nsecret = \"x\"\n", no_env())
        .unwrap_err()
        .to_string();
    assert!(e.contains("auth.api_keys[0].secret"), "{e}");
}
