//! `TestPerch`: a whole perch in the test's process (the same `Perch::start` and
//! `app()` that `perch serve` uses) on 127.0.0.1 and a free port, with its data in a
//! temporary directory; stop it, start it again on the same data. `TestHub` is one with
//! a recording platform and a manual clock; tests of perch's own connectors and API use
//! this directly.

use crate::clock::{SharedClock, SystemClock};
use crate::connectors::SharedConnector;
use crate::event::Event;
use crate::journal::Accepted;
use crate::runtime::Perch;
use crate::store::Store;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// A perch running in this process: see the module docs.
pub struct TestPerch {
    pub addr: SocketAddr,
    /// `http://127.0.0.1:<port>`; a restart moves it to a new port.
    pub base: String,
    pub data_dir: PathBuf,
    config_text: String,
    clock: SharedClock,
    /// The bot and connector kinds the config is read with.
    hub: crate::HubBuilder,
    perch: Option<Perch>,
    server: Option<tokio::task::JoinHandle<()>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    /// Whether `data_dir` is the kit's own temporary directory (removed on drop).
    pub(super) owns_dir: bool,
}

/// `config` with `data_dir` pointed at `dir` (any `data_dir` line is replaced).
fn with_data_dir(config: &str, dir: &Path) -> String {
    let body: String = config
        .lines()
        .filter(|l| !l.trim_start().starts_with("data_dir"))
        .map(|l| format!("{l}\n"))
        .collect();
    let dir_line = format!("data_dir = {:?}\n", dir.display().to_string());
    if body.contains("[server]") {
        body.replacen("[server]\n", &format!("[server]\n{dir_line}"), 1)
    } else {
        format!("[server]\n{dir_line}\n{body}")
    }
}

/// A fresh directory under the system's temporary directory.
pub(crate) fn fresh_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("perch-test-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).expect("create a temporary directory");
    dir
}

impl TestPerch {
    /// Start perch with `config` (TOML text) and the built-in kinds, in a fresh temporary
    /// data directory, on the system clock.
    pub async fn start(config: &str) -> TestPerch {
        Self::start_with(crate::Hub::builder(), config).await
    }

    /// Start perch with `config` and the kinds registered on `hub`.
    pub async fn start_with(hub: crate::HubBuilder, config: &str) -> TestPerch {
        let dir = fresh_dir();
        let mut t = Self::start_in_with(hub, config, &dir, Arc::new(SystemClock)).await;
        t.owns_dir = true;
        t
    }

    /// Start perch with `config` on the data in `dir`, with `clock`.
    pub async fn start_in(config: &str, dir: &Path, clock: SharedClock) -> TestPerch {
        Self::start_in_with(crate::Hub::builder(), config, dir, clock).await
    }

    /// Start perch with `config` and `hub`'s kinds on the data in `dir`, with `clock`.
    /// Panics with the config's problems if it is invalid.
    pub async fn start_in_with(
        hub: crate::HubBuilder,
        config: &str,
        dir: &Path,
        clock: SharedClock,
    ) -> TestPerch {
        let mut t = TestPerch {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            base: String::new(),
            data_dir: dir.to_path_buf(),
            config_text: with_data_dir(config, dir),
            clock,
            hub,
            perch: None,
            server: None,
            stop: None,
            owns_dir: false,
        };
        t.boot().await;
        t
    }

    async fn boot(&mut self) {
        // After an in-process `stop`, a keep-alive connection task of the old server can
        // hold the old store (through the app state) for a moment after `shutdown`
        // returns, and with it sled's file lock. A new process never meets this; a
        // restart in the same process waits for the lock (at most 5 s).
        let mut tries = 0;
        let perch = loop {
            let config = self
                .hub
                .parse(&self.config_text, Path::new("test.toml"))
                .unwrap_or_else(|e| panic!("test config: {e}"));
            match self.hub.start(config, self.clock.clone()).await {
                Ok(perch) => break perch,
                Err(e) if tries < 250 && format!("{e:?}").contains("could not acquire lock") => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("perch starts: {e:?}"),
            }
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind perch on 127.0.0.1");
        self.addr = listener.local_addr().expect("a bound address");
        self.base = format!("http://{}", self.addr);
        let app = perch.app();
        let limits = perch.shared.connection_limits;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        // The same accept loop as `perch serve`, with its timeouts and connection cap.
        self.server = Some(tokio::spawn(async move {
            let _ = crate::server::serve(listener, app, limits, async {
                let _ = rx.await;
            })
            .await;
        }));
        self.stop = Some(tx);
        self.perch = Some(perch);
    }

    /// The running perch.
    pub fn perch(&self) -> &Perch {
        self.perch.as_ref().expect("perch is running")
    }

    /// `base` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// The connector `name` as perch built it (to call `send`, `describe`, ...).
    pub fn connector(&self, name: &str) -> SharedConnector {
        self.perch()
            .shared
            .connectors
            .get(name)
            .unwrap_or_else(|| panic!("no connector {name:?} in the test config"))
            .clone()
    }

    /// The journal's door: events accepted through it are handled as if a connector had
    /// received them.
    pub fn journal(&self) -> JournalDoor<'_> {
        JournalDoor(&self.perch().shared.journal)
    }

    /// What perch answered to the card click `event` (a toast, a replacement card), once
    /// its bot has handled it; `None` after `within`.
    pub async fn click_answer(
        &self,
        event: crate::event::EventId,
        within: Duration,
    ) -> Option<crate::action::ClickAnswer> {
        self.perch().shared.clicks.answer(event, within).await
    }

    /// The store perch runs on.
    pub fn store(&self) -> Arc<dyn Store> {
        self.perch().shared.store.clone()
    }

    /// Graceful stop: HTTP first, then drain and flush.
    pub async fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(s) = self.server.take() {
            let _ = s.await;
        }
        if let Some(p) = self.perch.take() {
            p.shutdown().await;
        }
    }

    /// Start again after `stop` on the same data directory (on a new port): for tests
    /// that do something while perch is down.
    pub async fn start_again(&mut self) {
        self.boot().await;
    }

    /// Stop and start again on the same data directory (on a new port).
    pub async fn restart(&mut self) {
        self.stop().await;
        self.boot().await;
    }

    /// GET `path` and return the body as text (e.g. `/metrics`).
    pub async fn get_text(&self, path: &str) -> String {
        reqwest::get(self.url(path))
            .await
            .expect("GET")
            .text()
            .await
            .expect("body")
    }

    /// Assert that `/metrics` has the line `sample`: `name{labels} value`, or without
    /// the value, any value. Every perch in a test process shares one metrics recorder,
    /// so a test asserts only series whose labels no other test touches (its own
    /// connector or bot name); otherwise the result would depend on test order.
    pub async fn assert_metric(&self, sample: &str) {
        let metrics = self.get_text("/metrics").await;
        let found = metrics.lines().any(|l| {
            l == sample
                || (!sample.contains("} ")
                    && l.starts_with(sample)
                    && l[sample.len()..].starts_with(' '))
        });
        assert!(found, "no line {sample:?} in:\n{metrics}");
    }
}

impl Drop for TestPerch {
    /// A test that ends without `stop()` leaves no temporary directory of the kit's
    /// behind (the store is torn down with the runtime; its files are not needed).
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if self.owns_dir {
            let _ = std::fs::remove_dir_all(&self.data_dir);
        }
    }
}

/// Accepts events into a running perch's journal, as a connector does after verifying a
/// request (`TestPerch::journal`).
pub struct JournalDoor<'a>(&'a crate::journal::Journal);

impl JournalDoor<'_> {
    /// Journal `events` durably; each is new or a duplicate of an earlier one (same
    /// connector and external id).
    pub async fn accept(&self, events: Vec<Event>) -> Result<Vec<Accepted>, String> {
        self.0.accept(events).await.map_err(|e| e.to_string())
    }
}
