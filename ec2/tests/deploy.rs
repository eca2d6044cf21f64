//! The deployment files agree with the code: the tag keys and ports Terraform uses are the
//! ones `fleet_ec2::tags` and `fleet_ec2::ports` own (`fleet.auto.tfvars.json` is generated
//! from them: run with `FLEET_REGENERATE_DEPLOY=1` after changing one), no `.tf` file spells
//! one out itself, and the controller's defaults listen on the same ports.
//! (scripts/check-deploy.sh parses the HCL and runs checkov on it.)

use std::path::PathBuf;

use fleet_ec2::ports;

fn terraform_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/terraform")
}

#[test]
fn terraform_takes_its_tag_keys_and_ports_from_the_code() {
    let path = terraform_dir().join("fleet.auto.tfvars.json");
    let want = serde_json::to_string_pretty(&ports::deploy_constants()).unwrap() + "\n";
    if std::env::var_os("FLEET_REGENERATE_DEPLOY").is_some() {
        std::fs::write(&path, &want).unwrap();
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert_eq!(
        have,
        want,
        "{} is not what the code owns: run FLEET_REGENERATE_DEPLOY=1 cargo test -p fleet-ec2 --test deploy",
        path.display()
    );

    // No .tf file writes a tag key or one of the ports itself.
    let constants = ports::deploy_constants();
    let port_values: Vec<u64> = constants["ports"]
        .as_object()
        .unwrap()
        .values()
        .filter_map(|v| v.as_u64())
        // The top of every port range (egress to any port), not a fleet choice.
        .filter(|&p| p != u64::from(u16::MAX))
        .collect();
    let mut files = 0;
    for entry in std::fs::read_dir(terraform_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "tf") {
            continue;
        }
        files += 1;
        let text = std::fs::read_to_string(&path).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.split('#').next().unwrap_or_default();
            assert!(
                !code.contains("fleet:"),
                "{}:{}: a tag key spelled out; use var.tag_keys",
                path.display(),
                n + 1
            );
            for port in &port_values {
                let spelled = code
                    .split(|c: char| !c.is_ascii_digit())
                    .any(|word| word == port.to_string());
                assert!(
                    !spelled,
                    "{}:{}: port {port} spelled out; use var.ports",
                    path.display(),
                    n + 1
                );
            }
        }
    }
    assert!(files >= 5, "the Terraform files are missing");
}

#[test]
fn the_controller_listens_where_the_security_groups_open() {
    let config = fleet_controller::config::Config::default();
    assert_eq!(config.link.listen.port(), ports::LINK_UDP);
    assert_eq!(config.api.listen.port(), ports::API_TCP);
}
