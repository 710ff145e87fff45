//! The Matrix sync loop: `/sync` long polls, invitations accepted, events into the
//! journal, and `next_batch` stored only once the batch is durable.
//!
//! Flow: `Matrix::start` spawns `SyncLoop::run` → `GET /sync?since=<stored next_batch>`
//! → `events::decode` → journal (durable, deduped by event id) → **then** `next_batch`
//! into the store (flushed) → router → bots → outbox → `Matrix::execute`.
//!
//! Why this order: if perch stops after the journal write but before the token is
//! stored, the next start syncs from the old token, gets the same events again, and the
//! journal drops them as duplicates (nothing repeated); if it stops before the journal
//! write, nothing was acknowledged and the token was not moved (nothing lost).
//!
//! The very first sync (no stored token) only accepts invitations: its timelines are
//! history from before perch ran, and answering it would repeat old conversations.
//! A timeline the server cut short (`limited`, more than 100 events in a room between
//! two polls) is logged; the skipped events are not fetched ([known limit]).

use super::events::{self, CardButton};
use super::{Matrix, keys, namespace};
use crate::clock::SharedClock;
use crate::journal::Journal;
use crate::store::Store;
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The first wait after a failed poll; it doubles up to `MAX_BACKOFF`.
const MIN_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Timeline events per room per poll (the server marks a longer gap `limited`).
const TIMELINE_LIMIT: u32 = 100;

/// What `describe()` shows of the loop.
#[derive(Debug, Default)]
pub struct SyncStatus {
    state: Mutex<(bool, Option<String>, u64)>,
}

impl SyncStatus {
    fn set(&self, ok: bool, error: Option<String>) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.0 = ok;
        s.1 = error;
        if ok {
            s.2 += 1;
        }
    }
    /// `syncing` or `failing: <why>`.
    pub fn describe(&self) -> String {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match (&s.0, &s.1) {
            (true, _) => "syncing".to_string(),
            (false, Some(e)) => format!("failing: {e}"),
            (false, None) => "starting".to_string(),
        }
    }
}

/// The filter every poll uses: room messages and reactions, the bot's own membership;
/// no presence, typing or account data.
fn filter() -> String {
    json!({
        "presence": { "types": [] },
        "account_data": { "types": [] },
        "room": {
            "timeline": { "limit": TIMELINE_LIMIT, "types": ["m.room.message", "m.reaction"] },
            "state": { "lazy_load_members": true, "types": ["m.room.member"] },
            "ephemeral": { "types": [] },
            "account_data": { "types": [] },
        }
    })
    .to_string()
}

pub struct SyncLoop {
    /// Weak: the loop ends when perch drops the connector.
    pub matrix: Weak<Matrix>,
    pub name: String,
    pub journal: Journal,
    pub store: Arc<dyn Store>,
    pub clock: SharedClock,
    pub cancel: CancellationToken,
    pub status: Arc<SyncStatus>,
}

/// Why one poll failed.
#[derive(Debug, thiserror::Error)]
enum PollError {
    #[error(transparent)]
    Api(#[from] super::api::ApiError),
    #[error("{0}")]
    Send(#[from] crate::connectors::SendError),
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("journal: {0}")]
    Journal(#[from] crate::journal::JournalError),
    #[error("{0}")]
    Answer(String),
}

impl SyncLoop {
    /// Poll until perch stops or drops the connector, backing off on failures.
    pub async fn run(self) {
        let mut backoff = MIN_BACKOFF;
        loop {
            let Some(matrix) = self.matrix.upgrade() else {
                return;
            };
            let result = tokio::select! {
                _ = self.cancel.cancelled() => return,
                r = self.poll(&matrix) => r,
            };
            drop(matrix);
            match result {
                Ok(()) => {
                    backoff = MIN_BACKOFF;
                    self.status.set(true, None);
                }
                Err(e) => {
                    let wait = match &e {
                        PollError::Api(super::api::ApiError::RateLimited {
                            retry_after: Some(d),
                            ..
                        }) => *d,
                        _ => backoff,
                    };
                    tracing::warn!(connector = %self.name, error = %e, retry_in = ?wait, "Matrix sync failed; retrying");
                    self.status.set(false, Some(e.to_string()));
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    tokio::select! {
                        _ = self.cancel.cancelled() => return,
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
    }

    /// One long poll, from the stored token to the next, whole or not at all.
    async fn poll(&self, matrix: &Matrix) -> Result<(), PollError> {
        matrix.ensure_token().await?;
        let ns = namespace(&self.name);
        let since = self
            .store
            .kv_get(&ns, keys::NEXT_BATCH)
            .await?
            .map(|v| String::from_utf8_lossy(&v).into_owned());
        let mut query = vec![("filter", filter())];
        if let Some(s) = &since {
            query.push(("since", s.clone()));
            query.push((
                "timeout",
                matrix.config().sync_timeout.as_millis().to_string(),
            ));
        } else {
            query.push(("timeout", "0".to_string()));
        }
        let answer = matrix
            .api()
            .call(
                reqwest::Method::GET,
                "/sync",
                &query,
                None,
                "sync",
                // The long poll plus time for the answer itself.
                Some(matrix.config().sync_timeout + Duration::from_secs(30)),
            )
            .await;
        let sync = match answer {
            Ok(s) => s,
            Err(e) => {
                if e.errcode() == Some("M_UNKNOWN_TOKEN") && matrix.config().password.is_some() {
                    let _ = self.store.kv_delete(&ns, keys::ACCESS_TOKEN).await;
                    matrix.api().clear_token();
                }
                return Err(e.into());
            }
        };
        let batch = self.decode(matrix, &sync, since.is_none()).await?;
        for room in &batch.gaps {
            tracing::warn!(connector = %self.name, room = %room, "Matrix skipped events in a busy room (more than {TIMELINE_LIMIT} since the last poll)");
        }
        for invite in &batch.invites {
            self.accept_invite(matrix, invite).await?;
        }
        // An event the journal could never store (JSON nested too deep, too large) is
        // dropped here with a log line: refusing the whole batch would stop the sync at
        // that token for good.
        let events: Vec<_> = batch
            .events
            .into_iter()
            .filter(|e| match e.check_storable() {
                Ok(()) => true,
                Err(why) => {
                    tracing::warn!(connector = %self.name, event = e.external_id.as_deref().unwrap_or("-"), reason = %why, "Matrix event dropped: perch cannot store it");
                    false
                }
            })
            .collect();
        if !events.is_empty() {
            let mut events = events;
            let secrets = crate::connectors::Connector::secrets(matrix);
            for e in &mut events {
                crate::connectors::redact(e, &secrets);
            }
            self.journal.accept(events).await?;
        }
        self.store
            .kv_put(&ns, keys::NEXT_BATCH, batch.next_batch.as_bytes())
            .await?;
        self.store.flush().await?;
        Ok(())
    }

    /// Decode with the cards that reactions and replies point at, and the direct rooms.
    async fn decode(
        &self,
        matrix: &Matrix,
        sync: &Value,
        first: bool,
    ) -> Result<events::Batch, PollError> {
        let ns = namespace(&self.name);
        let mut cards: HashMap<String, Vec<CardButton>> = HashMap::new();
        for id in events::referenced_events(sync) {
            if let Some(v) = self.store.kv_get(&ns, &keys::card(&id)).await?
                && let Ok(record) = serde_json::from_slice::<super::CardRecord>(&v)
            {
                cards.insert(id, record.buttons);
            }
        }
        let direct: HashSet<String> = self
            .store
            .kv_scan(&ns, "direct/")
            .await?
            .into_iter()
            .filter_map(|(k, _)| k.strip_prefix("direct/").map(str::to_string))
            .collect();
        let names = matrix.bot_names();
        let ctx = events::Context {
            connector: &self.name,
            bot_user_id: &matrix.config().user_id,
            bot_names: &names,
            direct_rooms: &direct,
            cards: &cards,
            now: self.clock.now(),
        };
        events::decode(sync, &ctx, first).map_err(PollError::Answer)
    }

    /// Join an invited room (remembering direct ones). A room that cannot be joined any
    /// more (the invite was withdrawn) is logged and passed over; a transient failure
    /// fails the poll, so the token does not move past the invite.
    async fn accept_invite(
        &self,
        matrix: &Matrix,
        invite: &events::Invite,
    ) -> Result<(), PollError> {
        if !matrix.config().auto_join {
            tracing::info!(connector = %self.name, room = %invite.room_id, "Matrix invitation not accepted (auto_join = false)");
            return Ok(());
        }
        let ns = namespace(&self.name);
        if invite.is_direct {
            self.store
                .kv_put(&ns, &keys::direct(&invite.room_id), b"1")
                .await?;
            if let Some(inviter) = &invite.inviter {
                self.store
                    .kv_put(&ns, &keys::dm(inviter), invite.room_id.as_bytes())
                    .await?;
            }
        }
        let path = format!("/join/{}", super::api::seg(&invite.room_id));
        match matrix.api().post(&path, &json!({}), "join").await {
            Ok(_) => {
                tracing::info!(connector = %self.name, room = %invite.room_id, inviter = invite.inviter.as_deref().unwrap_or("-"), "joined a Matrix room");
                Ok(())
            }
            Err(e) if !e.is_transient() => {
                tracing::warn!(connector = %self.name, room = %invite.room_id, error = %e, "cannot join a Matrix room; passing over the invitation");
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }
}
