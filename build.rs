//! Bakes the git revision into `mlflow_exporter_build_info`; `unknown` outside a checkout.
use std::process::Command;

fn main() {
    let rev = std::env::var("MLFLOW_EXPORTER_BUILD_REVISION")
        .ok()
        .or_else(|| {
            Command::new("git")
                .args(["rev-parse", "--short=12", "HEAD"])
                .output()
                .ok()
                .filter(|o| o.status.success())
                .and_then(|o| String::from_utf8(o.stdout).ok())
                .map(|s| s.trim().to_string())
        });
    println!(
        "cargo:rustc-env=MLFLOW_EXPORTER_BUILD_REVISION={}",
        rev.filter(|r| !r.is_empty())
            .unwrap_or_else(|| "unknown".into())
    );
    println!("cargo:rerun-if-env-changed=MLFLOW_EXPORTER_BUILD_REVISION");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs");
}
