//! Ordered-per-key, concurrent-across-keys work, fed from a durable queue.
//!
//! Both the router (events, one lane per chat) and the outbox (operations, one lane per
//! chat) use this: a **feeder** scans the store's queue in key order, skips what is
//! already in flight, and pushes each item into its **lane**; a lane is a task that
//! handles its items one at a time, in order; lanes run concurrently, bounded by a
//! semaphore. Lanes appear on demand and end when idle.
//!
//! The store, not memory, is the queue: after a crash the feeder simply finds everything
//! that was not completed. Memory is bounded by `max_in_flight` (and `max_per_lane`, so
//! one stuck chat cannot take every slot). Each scan reads the queue **by lane** (the
//! first `max_per_lane` keys of each lane), so a chat with a long backlog costs one seek,
//! not a read of its backlog. Scanning always starts at the front, because ids are not
//! committed in id order under concurrency (a cursor would skip late commits).
//!
//! A scan reads a page and then claims its items one by one; an item completed in
//! between is still on the page. So the keys completed since the scan began are
//! remembered and never claimed again by that scan (else it would run twice).
//!
//! **New work is offered, not scanned for.** Producers (the journal for the router, the
//! router for the outbox) hold a `Doorbell` and offer each item once it is in the store.
//! An offer is dispatched at once if its lane has no older work waiting in the store (the
//! lane is not *starved*) and there is room; otherwise it is left to the scan that the
//! lane's completions trigger. So a steady stream costs no scans at all; scans run at
//! start-up, to refill starved lanes, and every second as a safety net.
//!
//! **A lane stays starved until a scan has refilled it.** Completions only *ask* for the
//! refill; the flag is cleared by the scan that read every stored item of the lane (and
//! saw no offer turned away meanwhile). Clearing it earlier let an offer dispatch a newer
//! item before the scan had reloaded the older ones (per-chat order broken under a
//! sustained backlog).
//!
//! **Several replicas** (a `Store::shared` store) lease lanes (`LaneLeases`): a scan
//! claims the lanes it finds (`Store::hold_lanes`) and dispatches only the items of lanes
//! it holds; every scan renews the leases of live lanes; an item starts only while its
//! lane's lease is valid, else it is handed back (`release`). So a chat is handled by one
//! replica at a time, in order, and the lanes of a replica that died pass to another once
//! their leases expire. Offers only ring for a scan: another replica may have stored
//! older work of the lane that this one has not seen, which an offer would overtake
//! (the replica test saw it). Scans also run every `SHARED_POLL`, since work stored by
//! another replica is never offered here.
//!
//! **Waiting holds no slot.** A handler that must try its item again later (a delivery
//! in backoff) answers `Next::At`: its lane waits — the chat's later items stay behind
//! it — but the concurrency slot is free for other chats meanwhile. On shutdown a waiting
//! lane stops at once, and lanes take no new item: what is left stays in the store.

use futures::future::BoxFuture;
use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long an idle lane task lingers before it ends.
const LANE_IDLE: Duration = Duration::from_secs(5);
/// How often the feeder rescans even without a wake-up (a safety net; wake-ups do the work).
const POLL: Duration = Duration::from_secs(1);
/// With a shared store: how often the feeder rescans, to find work other replicas
/// stored (and to renew its leases).
const SHARED_POLL: Duration = Duration::from_millis(200);
/// With a shared store: how long a lane lease lasts unless renewed. A replica that
/// died holds its lanes this long.
pub const LEASE_TTL: Duration = Duration::from_secs(10);

/// Lanes read per page of a scan.
const LANES_PAGE: usize = 256;

/// What a handler says of the item it was given.
pub enum Next<T> {
    /// Finished with it (the handler has called `complete` or `release`).
    Done,
    /// Run it again at this instant. The lane waits (later items of the chat stay
    /// behind it) without holding a concurrency slot.
    At(tokio::time::Instant, T),
}

pub type Handler<T> = Arc<dyn Fn(T) -> BoxFuture<'static, Next<T>> + Send + Sync>;

/// Limits for a feeder and its lanes.
#[derive(Debug, Clone, Copy)]
pub struct LaneLimits {
    /// Handlers running at once across all lanes.
    pub concurrency: usize,
    /// Items dispatched but not yet completed, across all lanes.
    pub max_in_flight: usize,
    /// Items dispatched but not yet completed, in one lane.
    pub max_per_lane: usize,
}

/// Book-keeping of what is in flight, shared by the feeder and the completion callback.
struct InFlight<K> {
    keys: HashMap<K, String>,
    per_lane: HashMap<String, usize>,
    /// Keys completed since the current scan began.
    completed: std::collections::HashSet<K>,
    /// Lanes that may have more items in the store than were dispatched (a scan found
    /// the lane at its cap, or read a full page of it), each with whether a refill scan
    /// was already asked for. Only a scan clears it (see the module docs).
    starved: HashMap<String, bool>,
    /// Starved lanes to which an offer was turned away since their last scan: the scan
    /// must look again before it clears them.
    deferred: std::collections::HashSet<String>,
    /// A scan stopped at `max_in_flight`.
    all_full: bool,
    /// The first full scan is done: until then the store may hold older work for any
    /// lane, and offers are left to it.
    scanned: bool,
}

/// This replica's leases on the lanes of one queue of a shared store (module docs).
pub struct LaneLeases {
    store: Arc<dyn crate::store::Store>,
    /// `"router"` or `"outbox"`.
    queue: &'static str,
    /// This process (a fresh id per start: a restarted replica waits out its old
    /// leases like any other).
    holder: String,
    ttl: Duration,
    /// Lanes held, each with the instant until which items may start in it: half the
    /// lease after the claim was sent, so this replica stops starting items well before
    /// the lease can pass to another one.
    held: Mutex<HashMap<String, tokio::time::Instant>>,
}

impl LaneLeases {
    pub fn new(
        store: Arc<dyn crate::store::Store>,
        queue: &'static str,
        holder: String,
        ttl: Duration,
    ) -> Self {
        LaneLeases {
            store,
            queue,
            holder,
            ttl,
            held: Mutex::new(HashMap::new()),
        }
    }

    /// Leases for `queue` under a fresh holder id if `store` is shared by replicas;
    /// `None` (no leasing) for a store of one process.
    pub fn for_store(store: &Arc<dyn crate::store::Store>, queue: &'static str) -> Option<Self> {
        store.shared().then(|| {
            let holder = format!("{queue}-{}", uuid::Uuid::now_v7().simple());
            LaneLeases::new(store.clone(), queue, holder, LEASE_TTL)
        })
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<String, tokio::time::Instant>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether items of `lane` may start here now.
    pub fn holds(&self, lane: &str) -> bool {
        self.held()
            .get(lane)
            .is_some_and(|until| *until > tokio::time::Instant::now())
    }

    /// Claim or renew `lanes`; afterwards `holds` answers for each of them. On a store
    /// error nothing is granted (the lanes' items wait; held leases run out locally).
    async fn hold(&self, lanes: Vec<String>) {
        if lanes.is_empty() {
            return;
        }
        let sent = tokio::time::Instant::now();
        let granted = match self
            .store
            .hold_lanes(self.queue, &self.holder, &lanes, self.ttl)
            .await
        {
            Ok(granted) => granted,
            Err(e) => {
                tracing::warn!(queue = self.queue, error = %e, "lane leases could not be claimed or renewed");
                return;
            }
        };
        let granted: std::collections::HashSet<String> = granted.into_iter().collect();
        let mut held = self.held();
        for lane in lanes {
            if granted.contains(&lane) {
                held.insert(lane, sent + self.ttl / 2);
            } else {
                held.remove(&lane);
            }
        }
    }

    /// Give every lease up (after the lanes drained at shutdown).
    async fn release_all(&self) {
        let lanes: Vec<String> = self.held().drain().map(|(lane, _)| lane).collect();
        if let Err(e) = self
            .store
            .release_lanes(self.queue, &self.holder, &lanes)
            .await
        {
            tracing::warn!(queue = self.queue, error = %e, "lane leases not released; they expire on their own");
        }
    }
}

/// A set of lanes processing `T`s keyed by `K`.
pub struct Lanes<K, T> {
    /// Live lanes: a generation number (to tell a lane from its successor) and its
    /// mailbox of `(key, item)`.
    lanes: Mutex<HashMap<String, (u64, mpsc::Sender<(K, T)>)>>,
    generation: std::sync::atomic::AtomicU64,
    handler: Handler<T>,
    active: Arc<Semaphore>,
    in_flight: Mutex<InFlight<K>>,
    limits: LaneLimits,
    wake: Arc<Notify>,
    tracker: TaskTracker,
    /// Cancelled when the feeder stops: lanes take no new item, waits end.
    stop: CancellationToken,
    /// With a shared store: the lanes this replica may work on.
    leases: Option<LaneLeases>,
}

impl<K, T> Lanes<K, T>
where
    K: Clone + Eq + Hash + Send + 'static,
    T: Send + 'static,
{
    #[cfg(test)]
    /// `handler` processes one item; it must call `Lanes::complete` with the item's key
    /// when the item no longer needs to be in flight (done, or handed back to the store).
    /// `door` is how producers reach these lanes from now on.
    pub fn new(limits: LaneLimits, door: &Doorbell<K, T>, handler: Handler<T>) -> Arc<Self> {
        Self::with_leases(limits, door, handler, None)
    }

    /// `new`, working only on the lanes `leases` holds (a store shared by replicas).
    pub fn with_leases(
        limits: LaneLimits,
        door: &Doorbell<K, T>,
        handler: Handler<T>,
        leases: Option<LaneLeases>,
    ) -> Arc<Self> {
        let lanes = Arc::new(Lanes {
            lanes: Mutex::new(HashMap::new()),
            generation: std::sync::atomic::AtomicU64::new(0),
            handler,
            active: Arc::new(Semaphore::new(limits.concurrency.max(1))),
            in_flight: Mutex::new(InFlight {
                keys: HashMap::new(),
                per_lane: HashMap::new(),
                completed: std::collections::HashSet::new(),
                starved: HashMap::new(),
                deferred: std::collections::HashSet::new(),
                all_full: false,
                scanned: false,
            }),
            limits,
            wake: door.wake.clone(),
            tracker: TaskTracker::new(),
            stop: CancellationToken::new(),
            leases,
        });
        let _ = door.lanes.set(Arc::downgrade(&lanes));
        lanes
    }

    /// The item `key` is finished: free its slot, and wake the feeder if the store may
    /// hold more for this lane: the lane was left *starved* by a scan and is now down to
    /// half its cap, or a scan stopped at `max_in_flight`. New items are offered through
    /// the `Doorbell` (by the journal and the router), so this is the only refill signal
    /// needed; the 1 s poll is a safety net. Waking at half the cap rather than on every
    /// completion means one scan per `max_per_lane / 2` items of a busy chat instead of
    /// one per item (bench/README.md).
    pub fn complete(&self, key: &K) {
        self.free(key, true);
    }

    /// The item `key` is not in the store yet (a scan found its queue entry while the
    /// write that stores it was still running): free its slot without counting it as
    /// done, so the offer that follows that write dispatches it.
    pub fn release(&self, key: &K) {
        self.free(key, false);
    }

    fn free(&self, key: &K, done: bool) {
        let wake = {
            let mut f = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
            if done {
                f.completed.insert(key.clone());
            }
            let mut wake = std::mem::take(&mut f.all_full);
            if let Some(lane) = f.keys.remove(key) {
                let left = match f.per_lane.get_mut(&lane) {
                    Some(n) => {
                        *n -= 1;
                        *n
                    }
                    None => 0,
                };
                if left == 0 {
                    f.per_lane.remove(&lane);
                }
                if left <= self.limits.max_per_lane / 2
                    && let Some(asked) = f.starved.get_mut(&lane)
                    && !*asked
                {
                    *asked = true;
                    wake = true;
                }
            }
            wake
        };
        if wake {
            self.wake.notify_one();
        }
    }

    #[cfg(test)]
    pub fn in_flight(&self) -> usize {
        self.in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys
            .len()
    }

    /// Claim a slot for `key` in `lane`. `Ok(false)`: already in flight, or no room in
    /// the lane (which is then starved).
    fn claim(&self, key: &K, lane: &str) -> Result<bool, Full> {
        let mut f = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        self.claim_in(&mut f, key, lane)
    }

    fn claim_in(&self, f: &mut InFlight<K>, key: &K, lane: &str) -> Result<bool, Full> {
        if f.keys.contains_key(key) || f.completed.contains(key) {
            return Ok(false);
        }
        if f.keys.len() >= self.limits.max_in_flight {
            f.all_full = true;
            return Err(Full);
        }
        let n = f.per_lane.get(lane).copied().unwrap_or(0);
        if n >= self.limits.max_per_lane {
            f.starved.insert(lane.to_string(), false);
            return Ok(false);
        }
        f.per_lane.insert(lane.to_string(), n + 1);
        f.keys.insert(key.clone(), lane.to_string());
        Ok(true)
    }

    /// New work, already in the store: dispatch it now if its lane may take it. `false`
    /// if it was left to a scan that nothing has asked for yet (before the first scan).
    pub async fn offer(self: &Arc<Self>, key: K, lane: &str, item: T) -> bool {
        {
            let mut f = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
            if !f.scanned {
                return false;
            }
            // Shared store: older work of this lane may have been stored by another
            // replica and not be known here yet, so an offer could overtake it. The scan
            // reads the lane in order (and claims or leaves its lease).
            if self.leases.is_some() {
                return false;
            }
            // Older work of this lane waits in the store: the scan keeps the order.
            if f.starved.contains_key(lane) {
                f.deferred.insert(lane.to_string());
                return true;
            }
            match self.claim_in(&mut f, &key, lane) {
                Ok(true) => {}
                // In flight already, or the lane is full and now starved: its
                // completions bring the scan.
                Ok(false) => {
                    if f.starved.contains_key(lane) {
                        f.deferred.insert(lane.to_string());
                    }
                    return true;
                }
                Err(Full) => {
                    // `all_full` is set: the next completion brings the scan; the lane
                    // must not take newer work before this item.
                    f.starved.insert(lane.to_string(), false);
                    f.deferred.insert(lane.to_string());
                    return true;
                }
            }
        }
        self.push(lane, key, item).await;
        true
    }

    /// Put an item into its lane, starting the lane if needed. Waits while the lane's
    /// mailbox is full.
    async fn push(self: &Arc<Self>, lane: &str, key: K, item: T) {
        let mut work = (key, item);
        loop {
            let tx = {
                let mut lanes = self.lanes.lock().unwrap_or_else(|e| e.into_inner());
                lanes
                    .entry(lane.to_string())
                    .or_insert_with(|| self.spawn_lane(lane.to_string()))
                    .1
                    .clone()
            };
            match tx.send(work).await {
                Ok(()) => return,
                // The lane ended between our lookup and the send: start a new one.
                Err(mpsc::error::SendError(back)) => work = back,
            }
        }
    }

    fn spawn_lane(self: &Arc<Self>, lane: String) -> (u64, mpsc::Sender<(K, T)>) {
        let (tx, mut rx) = mpsc::channel::<(K, T)>(self.limits.max_per_lane.max(1));
        let this = self.clone();
        let my_gen = self
            .generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.tracker.spawn(async move {
            loop {
                if this.stop.is_cancelled() {
                    // Shutting down: what is left in the mailbox stays in the store.
                    break;
                }
                let item = match tokio::time::timeout(LANE_IDLE, rx.recv()).await {
                    Ok(Some(item)) => item,
                    Ok(None) => break,
                    Err(_idle) => {
                        // Retire the lane, unless work arrived meanwhile. Close the mailbox
                        // under the map lock, then finish whatever got in before the close.
                        let retired = {
                            let mut lanes = this.lanes.lock().unwrap_or_else(|e| e.into_inner());
                            if rx.is_empty() {
                                if lanes.get(&lane).is_some_and(|(g, _)| *g == my_gen) {
                                    lanes.remove(&lane);
                                }
                                rx.close();
                                true
                            } else {
                                false
                            }
                        };
                        if !retired {
                            continue;
                        }
                        while let Ok((key, item)) = rx.try_recv() {
                            if this.stop.is_cancelled() {
                                break;
                            }
                            this.run(&lane, key, item).await;
                        }
                        break;
                    }
                };
                let (key, item) = item;
                this.run(&lane, key, item).await;
            }
        });
        (my_gen, tx)
    }

    /// Run the handler on `item`, again and again while it answers `Next::At`, with a
    /// concurrency slot only while it runs. Each start needs `lane`'s lease (with a
    /// shared store); without it the item is handed back to the store.
    async fn run(&self, lane: &str, key: K, mut item: T) {
        loop {
            let next = {
                let Ok(_permit) = self.active.clone().acquire_owned().await else {
                    return;
                };
                if self.leases.as_ref().is_some_and(|l| !l.holds(lane)) {
                    self.release(&key);
                    return;
                }
                (self.handler)(item).await
            };
            match next {
                Next::Done => return,
                Next::At(at, again) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at) => item = again,
                        // Shutting down: the item stays in the store for the next start.
                        _ = self.stop.cancelled() => return,
                    }
                }
            }
        }
    }

    /// Scan the queue with `load` and dispatch until cancelled. `load(after_lane,
    /// max_lanes, per_lane)` returns the next lanes after `after_lane`, each with its
    /// first `per_lane` `(key, item)`s in order.
    pub async fn feed<F, Fut, E>(self: Arc<Self>, load: F, cancel: CancellationToken)
    where
        F: Fn(Option<String>, usize, usize) -> Fut,
        Fut: Future<Output = Result<Vec<(String, Vec<(K, T)>)>, E>>,
        E: std::fmt::Display,
    {
        loop {
            let notified = self.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            self.in_flight
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .completed
                .clear();
            if let Some(leases) = &self.leases {
                // Renew the leases of live lanes; the others run out.
                let live: std::collections::HashSet<String> = self
                    .lanes
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .keys()
                    .cloned()
                    .collect();
                leases.held().retain(|lane, _| live.contains(lane));
                leases.hold(live.into_iter().collect()).await;
            }
            let mut after: Option<String> = None;
            'scan: loop {
                let page = match load(after.clone(), LANES_PAGE, self.limits.max_per_lane).await {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::error!(error = %e, "queue scan failed; retrying in 1 s");
                        break 'scan;
                    }
                };
                let page = match &self.leases {
                    None => page,
                    Some(leases) => {
                        let unheld = page
                            .iter()
                            .map(|(lane, _)| lane)
                            .filter(|lane| !leases.holds(lane))
                            .cloned()
                            .collect();
                        leases.hold(unheld).await;
                        // Lanes held elsewhere are left alone (and still move the scan on).
                        page.into_iter()
                            .map(|(lane, items)| {
                                let items = if leases.holds(&lane) {
                                    items
                                } else {
                                    Vec::new()
                                };
                                (lane, items)
                            })
                            .collect()
                    }
                };
                let full_page = page.len() == LANES_PAGE;
                for (lane, items) in page {
                    let complete = items.len() < self.limits.max_per_lane;
                    if !complete {
                        // A full page: the lane may hold more than it reads. Marked before
                        // dispatching, so completions during the dispatch see it.
                        self.in_flight
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .starved
                            .insert(lane.clone(), false);
                    }
                    if items.is_empty() {
                        // Held by another replica.
                        after = Some(lane);
                        continue;
                    }
                    for (key, item) in items {
                        match self.claim(&key, &lane) {
                            Ok(true) => self.push(&lane, key, item).await,
                            Ok(false) => {}
                            Err(Full) => {
                                // The rest of this lane waits in the store: offers must
                                // not overtake it.
                                self.in_flight
                                    .lock()
                                    .unwrap_or_else(|e| e.into_inner())
                                    .starved
                                    .insert(lane.clone(), false);
                                break 'scan;
                            }
                        }
                    }
                    if complete {
                        // Every stored item of the lane is in flight now, unless an offer
                        // was turned away since this page was read: then look again.
                        let mut f = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
                        if f.deferred.remove(&lane) {
                            if f.starved.contains_key(&lane) {
                                f.starved.insert(lane.clone(), true);
                                self.wake.notify_one();
                            }
                        } else {
                            f.starved.remove(&lane);
                        }
                    }
                    after = Some(lane);
                }
                if !full_page {
                    self.in_flight
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .scanned = true;
                    break;
                }
            }
            let poll = if self.leases.is_some() {
                SHARED_POLL
            } else {
                POLL
            };
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep(poll) => {}
                _ = cancel.cancelled() => break,
            }
        }
        self.stop.cancel();
    }

    /// Wait until every lane has drained and ended (after the feeder stopped).
    pub async fn drain(&self) {
        // Dropping the senders lets idle lanes end at once instead of after LANE_IDLE.
        self.lanes.lock().unwrap_or_else(|e| e.into_inner()).clear();
        self.tracker.close();
        self.tracker.wait().await;
        // Nothing runs here any more: another replica may take the lanes at once.
        if let Some(leases) = &self.leases {
            leases.release_all().await;
        }
    }
}

struct Full;

/// How a producer reaches `Lanes` that are built after it (the journal before the router,
/// the router before the outbox): `offer` new work, or `ring` to have the store scanned.
pub struct Doorbell<K, T> {
    wake: Arc<Notify>,
    lanes: std::sync::OnceLock<std::sync::Weak<Lanes<K, T>>>,
}

impl<K, T> Doorbell<K, T>
where
    K: Clone + Eq + Hash + Send + 'static,
    T: Send + 'static,
{
    pub fn new() -> Arc<Self> {
        Arc::new(Doorbell {
            wake: Arc::new(Notify::new()),
            lanes: std::sync::OnceLock::new(),
        })
    }

    /// Have the feeder scan the store (work arrived that was not offered).
    pub fn ring(&self) {
        self.wake.notify_one();
    }

    /// Offer work that is already in the store, as `(key, lane, item)`.
    pub async fn offer(&self, work: impl IntoIterator<Item = (K, String, T)>) {
        let Some(lanes) = self.lanes.get().and_then(std::sync::Weak::upgrade) else {
            return self.ring();
        };
        let mut left = false;
        for (key, lane, item) in work {
            left |= !lanes.offer(key, &lane, item).await;
        }
        if left {
            self.ring();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Where a test's handler finds the lanes it runs in (they are built after it).
    type LanesSlot<T> = Arc<Mutex<Option<Arc<Lanes<u32, T>>>>>;

    /// Lanes with these limits, put where `handler` finds them.
    fn lanes_in<T: Send + 'static>(
        slot: &LanesSlot<T>,
        (concurrency, max_in_flight, max_per_lane): (usize, usize, usize),
        door: &Doorbell<u32, T>,
        handler: Handler<T>,
    ) -> Arc<Lanes<u32, T>> {
        let limits = LaneLimits {
            concurrency,
            max_in_flight,
            max_per_lane,
        };
        let lanes = Lanes::new(limits, door, handler);
        *slot.lock().unwrap() = Some(lanes.clone());
        lanes
    }

    #[tokio::test]
    async fn keeps_order_per_lane_and_runs_each_item_once() {
        let queue: Arc<Mutex<Vec<(u32, String)>>> = Arc::new(Mutex::new(
            (0..300).map(|i| (i, format!("lane{}", i % 7))).collect(),
        ));
        let seen: Arc<Mutex<HashMap<String, Vec<u32>>>> = Arc::default();
        let runs = Arc::new(AtomicUsize::new(0));
        let door = Doorbell::new();
        let lanes_slot: LanesSlot<(u32, String)> = Arc::default();
        let handler: Handler<(u32, String)> = {
            let (seen, runs, queue, slot) = (
                seen.clone(),
                runs.clone(),
                queue.clone(),
                lanes_slot.clone(),
            );
            Arc::new(move |(k, lane): (u32, String)| {
                let (seen, runs, queue, slot) =
                    (seen.clone(), runs.clone(), queue.clone(), slot.clone());
                Box::pin(async move {
                    tokio::time::sleep(Duration::from_micros(50)).await;
                    let lanes = slot.lock().unwrap().clone().unwrap();
                    // Like the real handlers: work no longer in the store is done.
                    if !queue.lock().unwrap().iter().any(|(q, _)| *q == k) {
                        lanes.complete(&k);
                        return Next::Done;
                    }
                    seen.lock().unwrap().entry(lane).or_default().push(k);
                    runs.fetch_add(1, Ordering::SeqCst);
                    queue.lock().unwrap().retain(|(q, _)| *q != k);
                    lanes.complete(&k);
                    Next::Done
                })
            })
        };
        let lanes = lanes_in(&lanes_slot, (4, 40, 8), &door, handler);
        let cancel = CancellationToken::new();
        let q = queue.clone();
        let feeder = tokio::spawn(lanes.clone().feed(
            move |after: Option<String>, max_lanes, per_lane| {
                let q = q.clone();
                async move {
                    type Work = (u32, (u32, String));
                    let mut by_lane: std::collections::BTreeMap<String, Vec<Work>> =
                        Default::default();
                    for (k, l) in q.lock().unwrap().iter() {
                        if after.as_ref().is_none_or(|a| l > a) {
                            let v = by_lane.entry(l.clone()).or_default();
                            if v.len() < per_lane {
                                v.push((*k, (*k, l.clone())));
                            }
                        }
                    }
                    Ok::<_, String>(by_lane.into_iter().take(max_lanes).collect::<Vec<_>>())
                }
            },
            cancel.clone(),
        ));
        let wait_for = |n: usize| {
            let runs = runs.clone();
            async move {
                for _ in 0..200 {
                    if runs.load(Ordering::SeqCst) == n {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        wait_for(300).await;
        // New work is stored, then offered (some of it twice); lanes fill past their cap
        // (8), so offers meet starved lanes and scans take over.
        for batch in (300..600u32).collect::<Vec<_>>().chunks(30) {
            let work: Vec<_> = batch
                .iter()
                .map(|i| (*i, format!("lane{}", i % 7)))
                .collect();
            queue.lock().unwrap().extend(work.iter().cloned());
            let offers = work.iter().chain(&work[..5]);
            door.offer(
                offers
                    .map(|(k, l)| (*k, l.clone(), (*k, l.clone())))
                    .collect::<Vec<_>>(),
            )
            .await;
        }
        wait_for(600).await;
        cancel.cancel();
        feeder.await.unwrap();
        lanes.drain().await;
        assert_eq!(runs.load(Ordering::SeqCst), 600);
        for (_, ks) in seen.lock().unwrap().iter() {
            let mut sorted = ks.clone();
            sorted.sort();
            assert_eq!(ks, &sorted, "per-lane order");
        }
    }

    /// A released item (not stored yet when its lane got it) is dispatched again by the
    /// offer that follows its store write; a completed one is not.
    #[tokio::test]
    async fn a_released_item_comes_back_with_its_offer() {
        let door = Doorbell::new();
        let runs = Arc::new(AtomicUsize::new(0));
        let slot: LanesSlot<u32> = Arc::default();
        let handler: Handler<u32> = {
            let (runs, slot) = (runs.clone(), slot.clone());
            Arc::new(move |k: u32| {
                let (runs, slot) = (runs.clone(), slot.clone());
                Box::pin(async move {
                    let lanes = slot.lock().unwrap().clone().unwrap();
                    if runs.fetch_add(1, Ordering::SeqCst) == 0 {
                        lanes.release(&k);
                    } else {
                        lanes.complete(&k);
                    }
                    Next::Done
                })
            })
        };
        let lanes = lanes_in(&slot, (1, 4, 4), &door, handler);
        let cancel = CancellationToken::new();
        let feeder = tokio::spawn(lanes.clone().feed(
            |_, _, _| async { Ok::<_, String>(Vec::<(String, Vec<(u32, u32)>)>::new()) },
            cancel.clone(),
        ));
        // Offers are left to the first scan until it has run.
        while !lanes.offer(7, "a", 7).await {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let settle = || async {
            for _ in 0..100 {
                tokio::time::sleep(Duration::from_millis(5)).await;
                if lanes.in_flight() == 0 {
                    break;
                }
            }
        };
        settle().await;
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert!(lanes.offer(7, "a", 7).await);
        settle().await;
        assert_eq!(runs.load(Ordering::SeqCst), 2, "released: dispatched again");
        assert!(lanes.offer(7, "a", 7).await);
        settle().await;
        assert_eq!(runs.load(Ordering::SeqCst), 2, "completed: not again");
        cancel.cancel();
        feeder.await.unwrap();
        lanes.drain().await;
    }

    /// A stored queue for tests: (key, lane) in key order; `load` reads it like the
    /// store does (the first `per_lane` keys of each lane, lanes in order).
    type Queue = Arc<Mutex<Vec<(u32, String)>>>;

    fn load_from(
        q: &Queue,
        after: Option<String>,
        max_lanes: usize,
        per_lane: usize,
    ) -> Vec<(String, Vec<(u32, u32)>)> {
        let mut by_lane: std::collections::BTreeMap<String, Vec<(u32, u32)>> = Default::default();
        let mut items = q.lock().unwrap().clone();
        items.sort();
        for (k, l) in items {
            if after.as_ref().is_none_or(|a| &l > a) {
                let v = by_lane.entry(l.clone()).or_default();
                if v.len() < per_lane {
                    v.push((k, k));
                }
            }
        }
        by_lane.into_iter().take(max_lanes).collect()
    }

    /// The backlog race: a lane at its cap is starved; completions ask for a refill, and
    /// before that scan has reloaded the older items, a newer item is offered. It must
    /// wait for them (the scan here is held back until the offer has been made).
    #[tokio::test]
    async fn an_offer_never_overtakes_older_items_waiting_in_the_store() {
        let queue: Queue = Arc::new(Mutex::new((1..=10).map(|k| (k, "a".to_string())).collect()));
        let order: Arc<Mutex<Vec<u32>>> = Arc::default();
        let door = Doorbell::new();
        let slot: LanesSlot<u32> = Arc::default();
        let handler: Handler<u32> = {
            let (queue, order, slot) = (queue.clone(), order.clone(), slot.clone());
            Arc::new(move |k: u32| {
                let (queue, order, slot) = (queue.clone(), order.clone(), slot.clone());
                Box::pin(async move {
                    let lanes = slot.lock().unwrap().clone().unwrap();
                    if queue.lock().unwrap().iter().any(|(q, _)| *q == k) {
                        order.lock().unwrap().push(k);
                        queue.lock().unwrap().retain(|(q, _)| *q != k);
                    }
                    lanes.complete(&k);
                    Next::Done
                })
            })
        };
        let lanes = lanes_in(&slot, (1, 100, 4), &door, handler);
        let gate = Arc::new(Notify::new());
        let scans = Arc::new(AtomicUsize::new(0));
        let cancel = CancellationToken::new();
        let feeder = {
            let (q, gate, scans) = (queue.clone(), gate.clone(), scans.clone());
            tokio::spawn(lanes.clone().feed(
                move |after: Option<String>, max_lanes, per_lane| {
                    let (q, gate, scans) = (q.clone(), gate.clone(), scans.clone());
                    async move {
                        // Every scan after the first waits for the gate.
                        if scans.fetch_add(1, Ordering::SeqCst) > 0 {
                            gate.notified().await;
                        }
                        Ok::<_, String>(load_from(&q, after, max_lanes, per_lane))
                    }
                },
                cancel.clone(),
            ))
        };
        // The first scan dispatches 1..=4 (the lane's cap); they run.
        for _ in 0..200 {
            if order.lock().unwrap().len() == 4 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(*order.lock().unwrap(), vec![1, 2, 3, 4]);
        // A new item, stored then offered while the refill scan is held back.
        queue.lock().unwrap().push((11, "a".to_string()));
        door.offer(vec![(11, "a".to_string(), 11)]).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(order.lock().unwrap().len(), 4, "11 waits for 5..=10");
        for _ in 0..400 {
            gate.notify_one();
            if order.lock().unwrap().len() == 11 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(*order.lock().unwrap(), (1..=11).collect::<Vec<_>>());
        cancel.cancel();
        gate.notify_waiters();
        feeder.await.unwrap();
        lanes.drain().await;
    }

    /// Items waiting to be tried again (`Next::At`) hold no concurrency slot: with one
    /// slot and 20 lanes in backoff, a healthy lane's item runs at once.
    #[tokio::test]
    async fn waiting_items_hold_no_slot() {
        let queue: Queue = Arc::new(Mutex::new(
            (0..20)
                .map(|k| (k, format!("failing{k:02}")))
                .chain([(100, "healthy".to_string())])
                .collect(),
        ));
        let healthy_at: Arc<Mutex<Option<std::time::Instant>>> = Arc::default();
        let door = Doorbell::new();
        let slot: LanesSlot<u32> = Arc::default();
        let handler: Handler<u32> = {
            let (healthy_at, slot) = (healthy_at.clone(), slot.clone());
            Arc::new(move |k: u32| {
                let (healthy_at, slot) = (healthy_at.clone(), slot.clone());
                Box::pin(async move {
                    if k == 100 {
                        *healthy_at.lock().unwrap() = Some(std::time::Instant::now());
                        slot.lock().unwrap().clone().unwrap().complete(&k);
                        return Next::Done;
                    }
                    // Always failing: try again in an hour.
                    Next::At(tokio::time::Instant::now() + Duration::from_secs(3600), k)
                })
            })
        };
        let lanes = lanes_in(&slot, (1, 100, 4), &door, handler);
        let cancel = CancellationToken::new();
        let started = std::time::Instant::now();
        let q = queue.clone();
        let feeder = tokio::spawn(lanes.clone().feed(
            move |after: Option<String>, max_lanes, per_lane| {
                let q = q.clone();
                async move { Ok::<_, String>(load_from(&q, after, max_lanes, per_lane)) }
            },
            cancel.clone(),
        ));
        for _ in 0..200 {
            if healthy_at.lock().unwrap().is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let at = healthy_at.lock().unwrap().expect("the healthy lane ran");
        assert!(at - started < Duration::from_secs(1));
        // Shutdown does not wait for the hour-long backoffs.
        cancel.cancel();
        feeder.await.unwrap();
        tokio::time::timeout(Duration::from_secs(2), lanes.drain())
            .await
            .expect("drain ends without waiting out the backoffs");
    }
}
