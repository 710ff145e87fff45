//! The `perch` command line: `serve`, `check`, `send`, `schedule`, `migrate`, `export`,
//! `import`, `card render`, `config-schema`. It is
//! in the library so that a user's own binary with their own bot kinds
//! (`perch::Hub::builder().bot_kind::<MyBot>("my_kind").run()`) is the same program as
//! `perch`, with the same subcommands. `anyhow` is used here and only here.

use crate::config::Kinds;
use crate::config::{Config, LogFormat};
use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
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
    /// Apply the PostgreSQL store's schema migrations (`[store] kind = "postgres"`) and
    /// exit. `perch serve` applies them too; this runs them ahead of a rolling upgrade.
    Migrate,
    /// Write everything in the configured store (journal, outbox, sent records, dead
    /// letters, state) to a file, one JSON record per line. Run it with perch stopped.
    Export {
        /// The dump file to write.
        #[arg(long)]
        out: PathBuf,
    },
    /// Load a dump written by `perch export` into the configured store, which must be
    /// empty: to move from sled to PostgreSQL, export with the old config and import
    /// with the new one.
    Import {
        /// The dump file to read.
        file: PathBuf,
    },
    /// Print the JSON Schema of the config (the program's own bot and connector kinds
    /// included), as checked in at `docs/perch.schema.json`; with `--markdown`, the
    /// config reference made from it (`docs/config-reference.md`). Reads no config.
    ConfigSchema {
        /// Print the Markdown config reference instead of the schema.
        #[arg(long)]
        markdown: bool,
    },
    /// Card templates.
    Card {
        #[command(subcommand)]
        command: CardCmd,
    },
    /// Local accounts for `[auth] mode = "local"`.
    User {
        #[command(subcommand)]
        command: UserCmd,
    },
}

#[derive(Subcommand)]
enum UserCmd {
    /// Read a password (typed without echo on a terminal, else the first line of stdin),
    /// and print the `[auth.users.<name>]` snippet with its argon2id hash to paste into
    /// the config. The config itself is not changed.
    Add {
        /// The sign-in name, also shown as the author in the web chat.
        name: String,
        /// `member` (chat) or `admin` (console, replay, config view, and chat).
        #[arg(long, default_value = "member", value_parser = ["member", "admin"])]
        role: String,
    },
}

#[derive(Subcommand)]
enum CardCmd {
    /// Render a template with data for a platform and print the result (JSON, or the
    /// text/HTML itself for `text`/`html`).
    Render {
        /// Template name (`cards/<name>.hbs`).
        template: String,
        /// JSON data file. Default: the template's `<name>.sample.json`.
        #[arg(long)]
        data: Option<PathBuf>,
        /// feishu, feishu_webhook, feishu_v1, slack, dingtalk, wecom, matrix, text, html.
        #[arg(long, default_value = "feishu")]
        platform: String,
        /// Write here instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Template directory. Default: server.cards_dir from the config if the config
        /// file exists, else `cards`.
        #[arg(long)]
        cards_dir: Option<PathBuf>,
    },
}

/// Run the command line with these bot kinds. Errors end as one clean line on stderr
/// (`perch: <what>: <why>`) and exit code 1: no `Error:` prefix, no backtrace even with
/// `RUST_BACKTRACE` set (that is for panics).
pub(crate) fn main(kinds: Kinds) -> std::process::ExitCode {
    match run(&kinds) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("perch: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(kinds: &Kinds) -> Result<()> {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Cmd::Serve { json_logs: false }) {
        Cmd::Check => check(&cli.config, kinds),
        Cmd::ConfigSchema { markdown } => {
            let schema = crate::config::config_schema(kinds);
            if markdown {
                print!("{}", crate::config::config_reference(&schema));
            } else {
                println!("{}", serde_json::to_string_pretty(&schema)?);
            }
            Ok(())
        }
        Cmd::Serve { json_logs } => {
            let config = load(&cli.config, kinds)?;
            let json = json_logs || config.server.log_format == LogFormat::Json;
            init_logging(json);
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(serve(config))
        }
        Cmd::Card {
            command:
                CardCmd::Render {
                    template,
                    data,
                    platform,
                    out,
                    cards_dir,
                },
        } => card_render(&cli.config, kinds, template, data, platform, out, cards_dir),
        Cmd::Send {
            connector,
            topic,
            data,
            url,
        } => {
            let config = load(&cli.config, kinds)?;
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(send(config, connector, topic, data, url))
        }
        Cmd::User {
            command: UserCmd::Add { name, role },
        } => user_add(&name, &role),
        Cmd::Migrate => {
            let config = load(&cli.config, kinds)?;
            let Some(settings) = crate::runtime::postgres_settings(&config)? else {
                bail!("store.kind is \"sled\": the embedded store has no schema to migrate");
            };
            let applied = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(crate::store::postgres::migrate_database(&settings))
                .context("migrating the PostgreSQL store")?;
            if applied.is_empty() {
                println!("the PostgreSQL store's schema is up to date");
            } else {
                println!("applied schema migration(s) {applied:?}");
            }
            Ok(())
        }
        Cmd::Export { out } => {
            let config = load(&cli.config, kinds)?;
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(export(config, out))
        }
        Cmd::Import { file } => {
            let config = load(&cli.config, kinds)?;
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(import(config, file))
        }
        Cmd::Schedule { count } => {
            let config = load(&cli.config, kinds)?;
            let schedules = crate::scheduler::Schedules::from_config(&config.schedules)?;
            print!("{}", schedules.describe_next(chrono::Utc::now(), count));
            Ok(())
        }
    }
}

fn load(path: &Path, kinds: &Kinds) -> Result<Config> {
    Config::load_with(path, kinds.clone()).map_err(|e| anyhow::anyhow!("{e}"))
}

fn check(path: &Path, kinds: &Kinds) -> Result<()> {
    match Config::load_with(path, kinds.clone()) {
        Ok(config) => match crate::cards::CardEngine::load_dir(&config.server.cards_dir) {
            Ok(cards) => {
                print!("{} is valid\n{}", path.display(), config.summary());
                let names = cards.names();
                println!(
                    "{} card template(s) in {}: {}",
                    names.len(),
                    config.server.cards_dir.display(),
                    names.join(", ")
                );
                Ok(())
            }
            Err(e) => {
                eprintln!(
                    "card templates in {}:\n{e}",
                    config.server.cards_dir.display()
                );
                std::process::exit(1);
            }
        },
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    }
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sled=warn,hyper=warn"));
    // Colours only on a terminal: a log file or journald gets plain text.
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stdout().is_terminal());
    if json {
        builder.json().init();
    } else {
        builder
            .fmt_fields(crate::telemetry::escaping_fields())
            .init();
    }
}

fn card_render(
    config: &Path,
    kinds: &Kinds,
    template: String,
    data: Option<PathBuf>,
    platform: String,
    out: Option<PathBuf>,
    cards_dir: Option<PathBuf>,
) -> Result<()> {
    let dir = match cards_dir {
        Some(d) => d,
        None if config.exists() => load(config, kinds)?.server.cards_dir,
        None => PathBuf::from("cards"),
    };
    let engine = crate::cards::CardEngine::load_dir(&dir)
        .map_err(|e| anyhow::anyhow!("card templates in {}:\n{e}", dir.display()))?;
    let data: serde_json::Value = match data {
        Some(path) => {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            serde_json::from_str(&text)
                .with_context(|| format!("{} is not JSON", path.display()))?
        }
        None => engine
            .template(&template)
            .and_then(|t| t.sample.clone())
            .with_context(|| {
                format!(
                    "no --data given and no sample data for `{template}` in {}",
                    dir.display()
                )
            })?,
    };
    let rendered = engine
        .render_for(&template, &data, &platform)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let text = match rendered {
        serde_json::Value::String(s) => s,
        other => serde_json::to_string_pretty(&other)?,
    };
    match out {
        Some(path) => std::fs::write(&path, format!("{text}\n"))
            .with_context(|| format!("cannot write {}", path.display()))?,
        None => println!("{text}"),
    }
    Ok(())
}

async fn serve(config: Config) -> Result<()> {
    let listen = config.server.listen;
    let perch = crate::runtime::Perch::start(config, Arc::new(crate::clock::SystemClock))
        .await
        .context("starting perch")?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    tracing::info!("perch listening on http://{listen}");
    crate::server::serve(
        listener,
        perch.app(),
        perch.shared.connection_limits,
        crate::server::stop_signal(),
    )
    .await
    .context("HTTP server")?;
    tracing::info!("draining and flushing");
    perch.shutdown().await;
    tracing::info!("stopped");
    Ok(())
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
    let Some(wh) = c
        .get_ref()
        .typed::<crate::connectors::webhook::WebhookConfig>()
    else {
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
        let sig = crate::connectors::webhook::sign(secret.expose().as_bytes(), &signed);
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

async fn export(config: Config, out: PathBuf) -> Result<()> {
    let store = crate::runtime::open_store(&config).await?;
    let file = tokio::fs::File::create(&out)
        .await
        .with_context(|| format!("creating {}", out.display()))?;
    let mut writer = tokio::io::BufWriter::new(file);
    let counts = crate::store::transfer::export(store.as_ref(), &mut writer).await?;
    writer.into_inner().sync_all().await?;
    println!("exported {counts} to {}", out.display());
    Ok(())
}

async fn import(config: Config, file: PathBuf) -> Result<()> {
    let store = crate::runtime::open_store(&config).await?;
    let input = tokio::fs::File::open(&file)
        .await
        .with_context(|| format!("opening {}", file.display()))?;
    let counts = crate::store::transfer::import(
        store.as_ref(),
        tokio::io::BufReader::new(input),
        config.server.dedupe_window,
    )
    .await
    .with_context(|| format!("importing {}", file.display()))?;
    println!("imported {counts} from {}", file.display());
    Ok(())
}

/// Shortest password `perch user add` accepts.
const MIN_PASSWORD_CHARS: usize = 8;

fn user_add(name: &str, role: &str) -> Result<()> {
    use std::io::IsTerminal;
    crate::auth::check_user_name(name).map_err(|e| anyhow::anyhow!("user name `{name}`: {e}"))?;
    let password = if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password(format!("password for {name}: "))?;
        let again = rpassword::prompt_password("again: ")?;
        anyhow::ensure!(first == again, "the two passwords differ");
        first
    } else {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        line.trim_end_matches(['\r', '\n']).to_string()
    };
    anyhow::ensure!(
        password.chars().count() >= MIN_PASSWORD_CHARS,
        "the password needs at least {MIN_PASSWORD_CHARS} characters"
    );
    let hash =
        crate::auth::hash_password(&password).map_err(|e| anyhow::anyhow!("hashing: {e}"))?;
    let key = toml::Value::String(name.to_string());
    let key = if name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        name.to_string()
    } else {
        key.to_string()
    };
    println!("[auth.users.{key}]\npassword_hash = \"{hash}\"\nrole = \"{role}\"");
    Ok(())
}
