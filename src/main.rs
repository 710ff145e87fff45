//! The `perch` command: `serve`, `check`, `send`, `schedule`. (`card render` comes with
//! the cards work.)

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use perch::config::{Config, LogFormat};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Parser)]
#[command(
    name = "perch",
    version,
    about = "Self-hosted chat-bot framework and integration hub"
)]
struct Cli {
    /// Config file.
    #[arg(
        long,
        short,
        global = true,
        default_value = "config.toml",
        env = "PERCH_CONFIG"
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run perch (the default).
    Serve {
        /// Log as JSON lines (overrides server.log_format).
        #[arg(long)]
        json_logs: bool,
    },
    /// Validate the config: print every problem and exit 1, or a summary and exit 0.
    Check,
    /// Post a test event to a running perch through a webhook connector, signed with
    /// that connector's secret from the config.
    Send {
        /// The webhook connector to post through.
        #[arg(long)]
        connector: String,
        /// The event's topic (sent in the connector's topic header, if it has one).
        #[arg(long)]
        topic: Option<String>,
        /// The JSON body.
        #[arg(long, default_value = "{}")]
        data: String,
        /// perch's base URL. Default: http://<server.listen>.
        #[arg(long)]
        url: Option<String>,
    },
    /// Print each schedule's next fire times in its own time zone (from the config; no
    /// server needed).
    Schedule {
        /// How many fire times per job.
        #[arg(long, short = 'n', default_value_t = 5)]
        count: usize,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Cmd::Serve { json_logs: false }) {
        Cmd::Check => check(&cli.config),
        Cmd::Serve { json_logs } => {
            let config = load(&cli.config)?;
            let json = json_logs || config.server.log_format == LogFormat::Json;
            init_logging(json);
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(serve(config))
        }
        Cmd::Send {
            connector,
            topic,
            data,
            url,
        } => {
            let config = load(&cli.config)?;
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(send(config, connector, topic, data, url))
        }
        Cmd::Schedule { count } => {
            let config = load(&cli.config)?;
            let schedules = perch::scheduler::Schedules::from_config(&config.schedules)?;
            print!("{}", schedules.describe_next(chrono::Utc::now(), count));
            Ok(())
        }
    }
}

fn load(path: &PathBuf) -> Result<Config> {
    Config::load(path).map_err(|e| anyhow::anyhow!("{e}"))
}

fn check(path: &PathBuf) -> Result<()> {
    match Config::load(path) {
        Ok(config) => {
            print!("{} is valid\n{}", path.display(), config.summary());
            Ok(())
        }
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    }
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sled=warn,hyper=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn serve(config: Config) -> Result<()> {
    let listen = config.server.listen;
    let perch = perch::runtime::Perch::start(config, Arc::new(perch::clock::SystemClock))
        .await
        .context("starting perch")?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    tracing::info!("perch listening on http://{listen}");
    axum::serve(listener, perch.app())
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("HTTP server")?;
    tracing::info!("draining and flushing");
    perch.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

async fn send(
    config: Config,
    connector: String,
    topic: Option<String>,
    data: String,
    url: Option<String>,
) -> Result<()> {
    let Some(c) = config.connectors.get(&connector) else {
        bail!("no connector `{connector}` in the config");
    };
    let perch::connectors::ConnectorConfig::Webhook(wh) = c.get_ref() else {
        bail!("connector `{connector}` is not a webhook connector");
    };
    serde_json::from_str::<serde_json::Value>(&data).context("--data is not JSON")?;
    let base = url.unwrap_or_else(|| format!("http://{}", config.server.listen));
    let mut req = reqwest::Client::new()
        .post(format!("{}/hooks/{connector}", base.trim_end_matches('/')))
        .header("content-type", "application/json");
    if let (Some(h), Some(t)) = (&wh.topic_header, &topic) {
        req = req.header(h.as_str(), t.as_str());
    }
    if let Some(h) = &wh.id_header {
        req = req.header(h.as_str(), uuid::Uuid::now_v7().to_string());
    }
    if let Some(secret) = wh.secret.as_ref().filter(|s| !s.is_empty()) {
        let mut signed = Vec::new();
        if let Some(h) = &wh.timestamp_header {
            let ts = chrono::Utc::now().timestamp().to_string();
            req = req.header(h.as_str(), ts.as_str());
            signed.extend_from_slice(ts.as_bytes());
            signed.extend_from_slice(wh.timestamp_separator.as_bytes());
        }
        signed.extend_from_slice(data.as_bytes());
        let sig = perch::connectors::webhook::sign(secret.expose().as_bytes(), &signed);
        req = req.header(
            wh.signature_header.as_str(),
            format!("{}{sig}", wh.signature_prefix),
        );
    }
    let resp = req.body(data).send().await.context("posting the event")?;
    let status = resp.status();
    println!(
        "{} {}",
        status.as_u16(),
        resp.text().await.unwrap_or_default()
    );
    if !status.is_success() {
        std::process::exit(1);
    }
    Ok(())
}
