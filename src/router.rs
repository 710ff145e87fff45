//! The router: which bots get an event, and the processor that runs them.
//!
//! **Which routes fire.** Routes are checked in config order and *every* matching route
//! fires; each bot gets an event at most once however many routes name it. A matching
//! route with `stop = true` ends the search. Card-action events skip the routes: they go
//! straight to the bot that sent the card (the button's value names it).
//!
//! **Processing.** For one event: run each bot (with a timeout), turn its actions into
//! outbox items keyed `<event id>/<bot>/<index>`, and then, in one atomic store write,
//! record the event's fate, drop it from pending and queue the items. Running a bot twice
//! for one event (after a crash) therefore queues nothing twice. A bot error becomes a
//! friendly reply to whoever asked, a log line with the event id, and a failure in the
//! event's fate; it never stops the router.
//!
//! **Clicks.** For a card-action event the bot's `Toast` and its `Update` of the clicked
//! card are also recorded in the fate as the click's answer, and `Clicks` is told, so
//! the platform request that brought the click can answer with them (`crate::clicks`).
//!
//! Flow: connector (in) → journal → **router** → bots → outbox → connector (out).

use crate::action::{Action, ClickAnswer, MessageBody, Operation, Target, ToastKind};
use crate::bots::{Bot, BotContext, BotError, Services};
use crate::cards::markdown as md;
use crate::config::{Config, RouteConfig};
use crate::event::{Event, EventId, EventKind};
use crate::lanes::Lanes;
use crate::store::{BotFailure, Fate, OutboxItem, StoreError};
use crate::telemetry;
use globset::GlobMatcher;
use regex::Regex;
use rust_i18n::t;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Compile a topic glob: `*` matches any run of characters (dots included).
pub fn compile_glob(pattern: &str) -> Result<GlobMatcher, globset::Error> {
    Ok(globset::GlobBuilder::new(pattern)
        .literal_separator(false)
        .build()?
        .compile_matcher())
}

/// A route, compiled.
#[derive(Debug)]
pub struct Route {
    connector: Option<String>,
    kind: Option<EventKind>,
    topic: Option<GlobMatcher>,
    mention: Option<String>,
    command: Option<String>,
    text: Option<Regex>,
    payload: Vec<(String, serde_json::Value)>,
    pub bots: Vec<String>,
    stop: bool,
}

impl Route {
    pub fn compile(r: &RouteConfig) -> Result<Route, String> {
        Ok(Route {
            connector: r.connector.clone(),
            kind: r.kind,
            topic: r
                .topic
                .as_deref()
                .map(compile_glob)
                .transpose()
                .map_err(|e| e.to_string())?,
            mention: r.mention.clone(),
            command: r.command.as_ref().map(|c| c.to_lowercase()),
            text: r
                .text
                .as_deref()
                .map(Regex::new)
                .transpose()
                .map_err(|e| e.to_string())?,
            payload: r
                .payload
                .iter()
                .map(|(k, v)| {
                    Ok((
                        k.clone(),
                        serde_json::to_value(v).map_err(|e| e.to_string())?,
                    ))
                })
                .collect::<Result<_, String>>()?,
            bots: r.bots.clone(),
            stop: r.stop,
        })
    }

    /// Does this route take the event?
    pub fn matches(&self, event: &Event) -> bool {
        if self
            .connector
            .as_ref()
            .is_some_and(|c| *c != event.connector)
        {
            return false;
        }
        if self.kind.is_some_and(|k| k != event.kind) {
            return false;
        }
        if let Some(glob) = &self.topic
            && !event.topic.as_deref().is_some_and(|t| glob.is_match(t))
        {
            return false;
        }
        if let Some(want) = &self.mention {
            let ok = if want == "*" {
                event.is_addressed()
            } else {
                event.mentions.iter().any(|m| {
                    m.is_bot
                        && (m.person.id.eq_ignore_ascii_case(want)
                            || m.person
                                .name
                                .as_deref()
                                .is_some_and(|n| n.eq_ignore_ascii_case(want)))
                })
            };
            if !ok {
                return false;
            }
        }
        if let Some(cmd) = &self.command
            && crate::command::parse(event).is_none_or(|c| c.name != *cmd)
        {
            return false;
        }
        if let Some(re) = &self.text
            && !event.text.as_deref().is_some_and(|t| re.is_match(t))
        {
            return false;
        }
        self.payload
            .iter()
            .all(|(pointer, want)| event.payload.pointer(pointer) == Some(want))
    }
}

/// The routing table.
#[derive(Debug, Default)]
pub struct Router {
    pub routes: Vec<Route>,
}

impl Router {
    pub fn from_config(config: &Config) -> Result<Router, String> {
        let routes = config
            .routes
            .iter()
            .map(|r| Route::compile(r.get_ref()))
            .collect::<Result<_, _>>()?;
        Ok(Router { routes })
    }

    /// The bots that get `event`, in route order, each once.
    pub fn bots_for(&self, event: &Event) -> Vec<String> {
        if event.kind == EventKind::CardAction {
            return event.card_action.iter().map(|a| a.bot.clone()).collect();
        }
        // Only perch makes these (`POST /api/bots/<name>/actions`), for the bot that
        // posted them.
        if event.kind == EventKind::BotActions {
            return event.payload["bot"]
                .as_str()
                .map(str::to_string)
                .into_iter()
                .collect();
        }
        let mut out: Vec<String> = Vec::new();
        for route in &self.routes {
            if route.matches(event) {
                for b in &route.bots {
                    if !out.contains(b) {
                        out.push(b.clone());
                    }
                }
                if route.stop {
                    break;
                }
            }
        }
        out
    }

    /// Command words that routes on `connector` match on.
    pub fn commands_on<'a>(&'a self, connector: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.routes
            .iter()
            .filter(move |r| r.connector.as_deref().is_none_or(|c| c == connector))
            .filter_map(|r| r.command.as_deref())
    }

    /// For each bot, the connectors some route sends it events from (`None` = any).
    pub fn reachability(&self) -> HashMap<String, Vec<Option<String>>> {
        let mut out: HashMap<String, Vec<Option<String>>> = HashMap::new();
        for r in &self.routes {
            for b in &r.bots {
                let v = out.entry(b.clone()).or_default();
                if !v.contains(&r.connector) {
                    v.push(r.connector.clone());
                }
            }
        }
        out
    }
}

/// A pending event for a router lane.
pub enum PendingEvent {
    /// Found in the store's pending queue by a scan: only its id is known.
    Scanned(EventId),
    /// Handed over by the journal right after it was stored, so not read back.
    Offered(Box<Event>),
}

impl PendingEvent {
    pub fn id(&self) -> EventId {
        match self {
            PendingEvent::Scanned(id) => *id,
            PendingEvent::Offered(event) => event.id,
        }
    }
}

/// What `Processor::process` did with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Processed {
    /// Handled now, or already handled before.
    Done,
    /// Not stored: a scan found its queue entry, but its ingest ended without storing
    /// it (a duplicate's passing entry, or a failed write). Left to later scans.
    NotStoredYet,
}

/// Runs bots on pending events; one `Processor` per perch.
pub struct Processor {
    pub router: Router,
    /// Who may run which commands and press which buttons (`[[permissions]]`).
    pub permissions: Arc<crate::permissions::Permissions>,
    pub bots: HashMap<String, Arc<dyn Bot>>,
    pub services: Arc<Services>,
    pub bot_timeout: Duration,
    /// Hands queued items to the outbox.
    pub outbox: Arc<crate::outbox::OutboxDoor>,
    /// Told when a card click was handled (its request may be waiting for the answer).
    pub clicks: Arc<crate::clicks::Clicks>,
    /// The journal's ingests in progress (a scan may find their events early).
    pub ingesting: Arc<crate::journal::Ingesting>,
    /// Told when an event's fate is recorded (the console's live list).
    pub feed: Arc<crate::live::EventFeed>,
    /// Each bot's events handled, failures and last error (the console's Bots page).
    pub bot_activity: Arc<crate::health::BotActivity>,
}

impl Processor {
    /// Handle one pending event end to end. Store errors are returned (the event stays
    /// pending and is retried on the next scan); bot errors are not errors here.
    pub async fn process(&self, pending: PendingEvent) -> Result<Processed, StoreError> {
        let store = &self.services.store;
        let event = match pending {
            // No scan handled it before: a scan that finds an event being ingested
            // keeps it in flight (below), so its offer is not dispatched.
            PendingEvent::Offered(event) => *event,
            PendingEvent::Scanned(id) => {
                // Found while its ingest was running: handle it here, in its lane's
                // order, once the ingest is over (the offer then finds it in flight).
                self.ingesting.wait_for(id).await;
                match store.event(id).await? {
                    // The ingest failed, or found a duplicate.
                    None => return Ok(Processed::NotStoredYet),
                    Some(entry) if entry.fate != Fate::Pending => return Ok(Processed::Done),
                    Some(entry) => entry.event,
                }
            }
        };
        self.handle(&event).await?;
        Ok(Processed::Done)
    }

    /// Run the bots on a pending event and record what became of it.
    async fn handle(&self, event: &Event) -> Result<(), StoreError> {
        let store = &self.services.store;
        let id = event.id;
        let now = self.services.clock.now();
        let names = self.bots_for(event);
        let mut items = Vec::new();
        let mut failures = Vec::new();
        let clicked = event.card_action.as_ref().map(|a| a.message_id.clone());
        let mut answer = ClickAnswer::default();

        // A card studio test render: one send, keyed like a bot's first action.
        if let Some((connector, op)) = crate::server::console::test_render_operation(event) {
            let sender = crate::server::console::TEST_RENDER_SENDER;
            if self.services.connectors.contains_key(&connector) {
                items.push(OutboxItem::new(
                    format!("{id}/{sender}/0000"),
                    connector,
                    op,
                    now,
                ));
            } else {
                failures.push(BotFailure {
                    bot: sender.into(),
                    error: format!("connector `{connector}` is not configured any more"),
                });
            }
            let fate = Fate::Routed {
                bots: vec![sender.into()],
                actions: items.len(),
                failures,
                answer: None,
            };
            store.complete_event(event, &fate, &items).await?;
            self.feed.changed(id);
            telemetry::event_handled(&event.connector, "routed");
            self.offer_to_outbox(&items).await;
            return Ok(());
        }

        if names.is_empty() {
            if let Some((author, body)) = self.unknown_command_hint(event)
                && let Some(op) = reply_op(event, body)
            {
                items.push(OutboxItem::new(
                    format!("{id}/{author}/0000"),
                    event.connector.clone(),
                    op,
                    now,
                ));
            }
            store.complete_event(event, &Fate::Unrouted, &items).await?;
            self.feed.changed(id);
            telemetry::event_handled(&event.connector, "unrouted");
            if clicked.is_some() {
                self.clicks.handled(id);
            }
            self.offer_to_outbox(&items).await;
            return Ok(());
        }

        for name in &names {
            let Some(bot) = self.bots.get(name) else {
                // Card values can name a bot that was removed from the config since.
                failures.push(BotFailure {
                    bot: name.clone(),
                    error: "no such bot is configured".into(),
                });
                if clicked.is_some() {
                    answer.toast = Some(crate::action::Toast {
                        kind: ToastKind::Warning,
                        text: t!(
                            "router.button_gone",
                            locale = self.services.locales.pick(None, &event.connector),
                            bot = name
                        )
                        .into_owned(),
                    });
                }
                continue;
            };
            // Not allowed: the bot does not run; the person gets the one-line reason,
            // as a toast for a click, else as a reply (keyed like the bot's own first
            // action, so a re-run after a crash does not answer twice).
            if let Some(refusal) = self.permissions.refusal(name, event) {
                if clicked.is_some() {
                    answer.toast = Some(crate::action::Toast {
                        kind: ToastKind::Error,
                        text: refusal,
                    });
                } else if let Some(op) = reply_op(event, MessageBody::text(refusal)) {
                    items.push(OutboxItem::new(
                        format!("{id}/{name}/0000"),
                        event.connector.clone(),
                        op,
                        now,
                    ));
                }
                continue;
            }
            let mut ctx = BotContext::new(name, event, self.services.clone());
            let result =
                match tokio::time::timeout(self.bot_timeout, bot.handle(event, &mut ctx)).await {
                    Ok(r) => r,
                    Err(_) => Err(BotError::Other(format!(
                        "timed out after {:?}",
                        self.bot_timeout
                    ))),
                };
            let actions = match result {
                Ok(actions) => actions,
                Err(e) => {
                    telemetry::bot_error(name);
                    tracing::warn!(event_id = %id, bot = %name, error = %e, "bot failed");
                    failures.push(BotFailure {
                        bot: name.clone(),
                        error: e.to_string(),
                    });
                    let locale = self.services.locales.pick(Some(name), &event.connector);
                    apology(name, event, &e, locale).into_iter().collect()
                }
            };
            for (index, action) in actions.into_iter().enumerate() {
                let (key, action) = match action {
                    Action::Once { key, then } => (format!("once/{name}/{key}"), *then),
                    action => (format!("{id}/{name}/{index:04}"), action),
                };
                let action = match action {
                    Action::Toast { toast } if clicked.is_some() => {
                        answer.toast = Some(toast);
                        continue;
                    }
                    action => action,
                };
                if let (
                    Some(Some(clicked)),
                    Action::Update {
                        connector,
                        message_id,
                        body: MessageBody::Card { card },
                    },
                ) = (&clicked, &action)
                    && message_id == clicked
                    && connector.as_deref().is_none_or(|c| c == event.connector)
                {
                    answer.card = Some(card.clone());
                }
                match resolve(event, action) {
                    Ok((connector, op)) => {
                        if !self.services.connectors.contains_key(&connector) {
                            failures.push(BotFailure {
                                bot: name.clone(),
                                error: format!(
                                    "action names connector `{connector}`, which is not configured"
                                ),
                            });
                            continue;
                        }
                        items.push(OutboxItem::new(key, connector, op, now));
                    }
                    Err(why) => failures.push(BotFailure {
                        bot: name.clone(),
                        error: why,
                    }),
                }
            }
        }
        let fate = Fate::Routed {
            bots: names,
            actions: items.len(),
            failures,
            answer: (!answer.is_empty()).then_some(answer),
        };
        store.complete_event(event, &fate, &items).await?;
        self.feed.changed(id);
        if let Fate::Routed { bots, failures, .. } = &fate {
            for bot in bots {
                let error = failures.iter().find(|f| &f.bot == bot);
                self.bot_activity
                    .handled(bot, now, error.map(|f| f.error.as_str()));
            }
        }
        if clicked.is_some() {
            self.clicks.handled(id);
        }
        telemetry::event_handled(
            &event.connector,
            if matches!(&fate, Fate::Routed { failures, .. } if !failures.is_empty()) {
                "failed"
            } else {
                "routed"
            },
        );
        self.offer_to_outbox(&items).await;
        Ok(())
    }

    /// The items are in the store now: hand them to the outbox's lanes.
    async fn offer_to_outbox(&self, items: &[OutboxItem]) {
        if !items.is_empty() {
            let work = items.iter().map(|it| {
                let lane = it.lane_key();
                let queued = crate::outbox::Queued {
                    lane: lane.clone(),
                    key: it.key.clone(),
                };
                (it.key.clone(), lane, queued)
            });
            self.outbox.offer(work.collect::<Vec<_>>()).await;
        }
    }

    fn bots_for(&self, event: &Event) -> Vec<String> {
        self.router.bots_for(event)
    }

    /// For a message that addressed a bot but matched no route: name the nearest command.
    /// Answered in the name of the bot that was mentioned, where perch has one by that
    /// name (the web chat shows each bot as a user), else of `router` (shown as perch).
    fn unknown_command_hint(&self, event: &Event) -> Option<(String, MessageBody)> {
        if event.kind != EventKind::Message || !event.is_addressed() {
            return None;
        }
        let cmd = crate::command::parse(event)?;
        let dir = &self.services.directory;
        let mentioned = event
            .mentions
            .iter()
            .filter(|m| m.is_bot)
            .find_map(|m| dir.bots.iter().find(|b| b.name == m.person.id));
        if let Some(bot) = mentioned
            && bot.commands.is_empty()
        {
            // A bot that takes no commands (it reacts to events): say so, not "I don't
            // know" with a guess at another bot's command.
            let text = t!(
                "router.no_commands",
                locale = self
                    .services
                    .locales
                    .pick(Some(&bot.name), &event.connector),
                bot = md::code(&format!("@{}", bot.name)),
                kind = md::code(bot.kind)
            )
            .into_owned();
            return Some((bot.name.clone(), MessageBody::markdown(text)));
        }
        let author = mentioned.map_or_else(|| "router".to_string(), |b| b.name.clone());
        Some((author, self.hint_text(&cmd, event)?))
    }

    fn hint_text(&self, cmd: &crate::command::Command, event: &Event) -> Option<MessageBody> {
        let dir = &self.services.directory;
        // Known commands: those the reachable bots declare, and those routes match on.
        let known: Vec<&str> = dir
            .reachable_from(&event.connector)
            .flat_map(|b| b.commands.iter().map(|c| c.name.as_str()))
            .chain(self.router.commands_on(&event.connector))
            .filter(|n| !n.starts_with('<'))
            .collect();
        let locale = self.services.locales.pick(None, &event.connector);
        // Nothing after the mention: say what can be asked, not "I don't know".
        if cmd.name.is_empty() {
            let mut names: Vec<&str> = known.clone();
            names.sort_unstable();
            names.dedup();
            let text = if names.is_empty() {
                t!("router.say_help", locale = locale).into_owned()
            } else {
                let names = names
                    .iter()
                    .map(|n| md::code(n))
                    .collect::<Vec<_>>()
                    .join(", ");
                t!("router.ask_one_of", locale = locale, names = names).into_owned()
            };
            return Some(MessageBody::markdown(text));
        }
        let what = md::code(&cmd.name);
        let hint = match crate::command::nearest(&cmd.name, known.iter().copied()) {
            Some(near) => t!(
                "router.unknown_command_near",
                locale = locale,
                what = what,
                near = md::code(near)
            ),
            None => t!("router.unknown_command", locale = locale, what = what),
        }
        .into_owned();
        Some(MessageBody::markdown(hint))
    }
}

/// The friendly answer to a person whose request made a bot fail.
fn apology(bot: &str, event: &Event, e: &BotError, locale: &str) -> Option<Action> {
    if event.kind != EventKind::Message && event.kind != EventKind::CardAction {
        return None;
    }
    let text = match e {
        BotError::User(msg) => msg.clone(),
        BotError::Source(e) => t!("router.no_data", locale = locale, error = e).into_owned(),
        _ => t!(
            "router.failed",
            locale = locale,
            bot = md::code(bot),
            event = event.id
        )
        .into_owned(),
    };
    // A click is answered where it happened, not with a message to the whole chat; a
    // toast is plain text everywhere.
    if event.kind == EventKind::CardAction {
        return Some(Action::toast(
            ToastKind::Error,
            crate::cards::markdown::to_plain(&text),
        ));
    }
    Some(Action::reply_markdown(text))
}

/// The operation that answers `event` in its chat (or to its sender directly).
fn reply_op(event: &Event, body: MessageBody) -> Option<Operation> {
    let to = match (&event.chat, &event.sender) {
        (Some(chat), _) => Target::chat(chat.id.clone()),
        (None, Some(sender)) => Target::person(sender.id.clone()),
        (None, None) => return None,
    };
    Some(Operation::Send {
        to,
        body,
        reply_to: event.message_id.clone(),
    })
}

/// Turn a bot's action into (connector, operation).
pub fn resolve(event: &Event, action: Action) -> Result<(String, Operation), String> {
    let here = || event.connector.clone();
    Ok(match action {
        Action::Send {
            connector,
            to,
            body,
        } => (
            connector.unwrap_or_else(here),
            Operation::Send {
                to,
                body,
                reply_to: None,
            },
        ),
        Action::Once { .. } => {
            return Err("`once` wraps an action once; it cannot wrap another `once`".into());
        }
        // Outside a click there is nobody to pop up for: say it in the chat.
        Action::Toast { toast } => (
            here(),
            reply_op(event, MessageBody::text(toast.text)).ok_or_else(|| {
                format!(
                    "cannot answer event {} with a toast: it is not a click and has no chat or sender",
                    event.id
                )
            })?,
        ),
        Action::Reply { body } => (
            here(),
            reply_op(event, body).ok_or_else(|| {
                format!(
                    "cannot reply to event {}: it has no chat and no sender",
                    event.id
                )
            })?,
        ),
        Action::Update {
            connector,
            message_id,
            body,
        } => {
            let same = connector.as_deref().is_none_or(|c| c == event.connector);
            let chat_id = if same {
                event.chat.as_ref().map(|c| c.id.clone())
            } else {
                None
            };
            (
                connector.unwrap_or_else(here),
                Operation::Update {
                    chat_id,
                    message_id,
                    body,
                },
            )
        }
        Action::CreateChat { connector, spec } => (
            connector.unwrap_or_else(here),
            Operation::CreateChat { spec },
        ),
        Action::AddMembers {
            connector,
            chat_id,
            members,
            member_id_type,
        } => (
            connector.unwrap_or_else(here),
            Operation::AddMembers {
                chat_id,
                members,
                member_id_type,
            },
        ),
    })
}

/// Start feeding pending events to the processor, one lane per chat.
pub fn start(
    processor: Arc<Processor>,
    concurrency: usize,
    door: &crate::lanes::Doorbell<EventId, PendingEvent>,
    cancel: tokio_util::sync::CancellationToken,
) -> (
    Arc<Lanes<EventId, PendingEvent>>,
    tokio::task::JoinHandle<()>,
) {
    let store = processor.services.store.clone();
    // Weak: the lanes own this handler, so a strong reference back would be a cycle
    // that keeps the store (and its file lock) alive after shutdown.
    let slot: Arc<std::sync::OnceLock<std::sync::Weak<Lanes<EventId, PendingEvent>>>> =
        Arc::default();
    let handler = {
        let slot = slot.clone();
        Arc::new(move |pending: PendingEvent| {
            let processor = processor.clone();
            let slot = slot.clone();
            Box::pin(async move {
                let id = pending.id();
                let processed = match processor.process(pending).await {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::error!(event_id = %id, error = %e, "event could not be processed; it stays pending");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        Processed::Done
                    }
                };
                if let Some(lanes) = slot.get().and_then(std::sync::Weak::upgrade) {
                    match processed {
                        Processed::Done => lanes.complete(&id),
                        Processed::NotStoredYet => lanes.release(&id),
                    }
                }
                crate::lanes::Next::Done
            }) as futures::future::BoxFuture<'static, crate::lanes::Next<PendingEvent>>
        })
    };
    let limits = crate::lanes::LaneLimits {
        concurrency,
        max_in_flight: 4096,
        max_per_lane: 64,
    };
    let lanes = Lanes::with_leases(
        limits,
        door,
        handler,
        crate::lanes::LaneLeases::for_store(&store, "router"),
    );
    let _ = slot.set(Arc::downgrade(&lanes));
    let feeder = tokio::spawn(lanes.clone().feed(
        move |after: Option<String>, max_lanes, per_lane| {
            let store = store.clone();
            async move {
                // The lane is the event's chat: events of one chat are handled in order.
                let lanes = store
                    .pending_lanes(after.as_deref(), max_lanes, per_lane)
                    .await?;
                Ok::<_, StoreError>(
                    lanes
                        .into_iter()
                        .map(|(lane, ids)| {
                            let items = ids.into_iter().map(|id| (id, PendingEvent::Scanned(id)));
                            (lane, items.collect())
                        })
                        .collect::<Vec<_>>(),
                )
            }
        },
        cancel,
    ));
    (lanes, feeder)
}
