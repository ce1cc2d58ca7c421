//! The `mlflow-exporter` command: flags in the Prometheus style, `check-config`, and the daemon.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

use mlflow_exporter::config::{parse_listen_address, FlagOverrides, LogFormat, LogLevel, Settings};

#[derive(Parser, Debug)]
#[command(
    name = "mlflow-exporter",
    version,
    about = "Prometheus exporter for MLflow: adoption, delivery, cost and reliability of an ML platform"
)]
struct Cli {
    /// YAML configuration file.
    #[arg(long = "config.file", value_name = "PATH", global = true)]
    config_file: Option<PathBuf>,
    /// Address to listen on, `host:port` or `:port` [default: :9868].
    #[arg(long = "web.listen-address", value_name = "ADDR", global = true)]
    listen_address: Option<String>,
    /// Path under which to expose metrics [default: /metrics].
    #[arg(long = "web.telemetry-path", value_name = "PATH", global = true)]
    telemetry_path: Option<String>,
    /// exporter-toolkit web config file: TLS, basic auth and response headers.
    #[arg(long = "web.config.file", value_name = "PATH", global = true)]
    web_config_file: Option<String>,
    /// Only log messages with the given severity or above [default: info].
    #[arg(long = "log.level", value_enum, global = true)]
    log_level: Option<LogLevel>,
    /// Output format of log messages [default: logfmt].
    #[arg(long = "log.format", value_enum, global = true)]
    log_format: Option<LogFormat>,
    /// MLflow tracking server URL (overrides MLFLOW_TRACKING_URI).
    #[arg(long = "mlflow.tracking-uri", value_name = "URL", global = true)]
    tracking_uri: Option<String>,
    /// Time between sync cycles, e.g. 60s [default: 60s].
    #[arg(long = "mlflow.sync-interval", value_name = "DURATION", global = true)]
    sync_interval: Option<String>,
    /// Time between full re-reads of MLflow, e.g. 1h [default: 1h].
    #[arg(
        long = "mlflow.full-resync-interval",
        value_name = "DURATION",
        global = true
    )]
    full_resync_interval: Option<String>,
    /// SQLite file of the delivery history [default: ./data/mlflow-exporter.db].
    #[arg(long = "storage.path", value_name = "PATH", global = true)]
    storage_path: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Validate the configuration and print it with secrets redacted.
    CheckConfig,
    /// Print the stored delivery events as JSON lines, oldest first (for audits).
    Events,
    /// Print the stored outages of probed endpoints as JSON lines, oldest first.
    Outages,
    /// Register with MLflow a webhook that sends alias moves to this exporter, signed with
    /// webhooks.mlflow.secret (MLflow ≥ 3.3).
    RegisterWebhook {
        /// The URL at which MLflow reaches the exporter's receiver, e.g.
        /// https://exporter.example:9868/api/v1/webhooks/mlflow.
        #[arg(long = "webhook.url", value_name = "URL")]
        url: String,
        /// The webhook's name in MLflow.
        #[arg(long = "webhook.name", default_value = "mlflow-exporter")]
        name: String,
    },
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    // First: huge pages merged over a sparse heap would count as memory the exporter does not use.
    mlflow_exporter::memory::disable_transparent_huge_pages();
    let cli = Cli::parse();
    let flags = FlagOverrides {
        listen_address: cli.listen_address.clone(),
        telemetry_path: cli.telemetry_path.clone(),
        web_config_file: cli.web_config_file.clone(),
        log_level: cli.log_level,
        log_format: cli.log_format,
        tracking_uri: cli.tracking_uri.clone(),
        sync_interval: cli.sync_interval.clone(),
        full_resync_interval: cli.full_resync_interval.clone(),
        storage_path: cli.storage_path.clone(),
    };
    let env: HashMap<String, String> = std::env::vars().collect();
    let settings = match Settings::load(cli.config_file.as_deref(), &env, &flags) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("mlflow-exporter: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    match cli.command {
        Some(Command::CheckConfig) => {
            // Reads the probes' header files and variables and TLS files now, as start-up would.
            let probes = settings
                .probes
                .specs()
                .map_err(|e| e.to_string())
                .and_then(|specs| {
                    specs.iter().try_for_each(|s| {
                        mlflow_exporter::source::probe::Prober::new(s)
                            .map(|_| ())
                            .map_err(|e| e.to_string())
                    })
                });
            if let Err(e) = probes {
                eprintln!("mlflow-exporter: {e}");
                return std::process::ExitCode::from(2);
            }
            if let Some(path) = &settings.web.config_file {
                if let Err(e) = mlflow_exporter::server::web_config::WebConfig::load(path) {
                    eprintln!("mlflow-exporter: {e}");
                    return std::process::ExitCode::from(2);
                }
            }
            print!("{}", settings.to_redacted_yaml());
            eprintln!("mlflow-exporter: configuration is valid");
            return std::process::ExitCode::SUCCESS;
        }
        Some(Command::Events) => {
            return match print_events(&settings) {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("mlflow-exporter: {e:#}");
                    std::process::ExitCode::FAILURE
                }
            };
        }
        Some(Command::Outages) => {
            return match print_outages(&settings) {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("mlflow-exporter: {e:#}");
                    std::process::ExitCode::FAILURE
                }
            };
        }
        Some(Command::RegisterWebhook { url, name }) => {
            return match register_webhook(&settings, &name, &url) {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("mlflow-exporter: {e:#}");
                    std::process::ExitCode::FAILURE
                }
            };
        }
        None => {}
    }
    mlflow_exporter::logging::init(&settings.log);
    match serve(settings) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "mlflow-exporter failed");
            eprintln!("mlflow-exporter: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[tokio::main]
async fn serve(settings: Settings) -> anyhow::Result<()> {
    let addr = parse_listen_address(&settings.web.listen_address).map_err(anyhow::Error::msg)?;
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
        format!(
            "cannot listen on {addr}; is another process using the port? (--web.listen-address)"
        )
    })?;
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        let _ = tx.send(true);
    });
    mlflow_exporter::app::run(settings, listener, rx).await?;
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn print_events(settings: &Settings) -> anyhow::Result<()> {
    use std::io::Write;
    let store = mlflow_exporter::store::EventStore::open(&settings.storage.path).await?;
    // Written as read, so a history of millions of events never sits in memory.
    let out = (
        std::io::BufWriter::new(std::io::stdout()),
        None::<std::io::Error>,
    );
    let (mut out, failed) = store
        .fold(out, |(out, failed), e| {
            if failed.is_none() {
                *failed = serde_json::to_writer(&mut *out, &e)
                    .map_err(std::io::Error::from)
                    .and_then(|_| out.write_all(b"\n"))
                    .err();
            }
        })
        .await?;
    if let Some(e) = failed {
        return Err(e.into());
    }
    out.flush()?;
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn print_outages(settings: &Settings) -> anyhow::Result<()> {
    use std::io::Write;
    let store = mlflow_exporter::store::EventStore::open(&settings.storage.path).await?;
    let mut out = std::io::BufWriter::new(std::io::stdout());
    for o in store.outages().await? {
        serde_json::to_writer(&mut out, &o)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn register_webhook(settings: &Settings, name: &str, url: &str) -> anyhow::Result<()> {
    let secret = settings
        .webhooks
        .mlflow
        .secret
        .as_ref()
        .filter(|s| !s.expose().is_empty())
        .context(
            "webhooks.mlflow.secret is not set: the webhook's deliveries must be signed with it",
        )?;
    let client = mlflow_exporter::source::mlflow::MlflowClient::new(&settings.mlflow, None)?;
    let answer = client
        .create_webhook(name, url, secret.expose())
        .await
        .context("MLflow refused the webhook (MLflow ≥ 3.3 with a SQL store is needed; a private or http:// URL also needs MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS / MLFLOW_WEBHOOK_ALLOWED_SCHEMES on the server)")?;
    let id = answer["webhook"]["webhook_id"].as_str().unwrap_or("?");
    println!("registered webhook {id} ({name}) sending alias moves to {url}");
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
