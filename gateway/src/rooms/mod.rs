//! Live rooms on this gateway: one NATS subscription per room with local
//! viewers ([`chat_nats::subjects::room_all`]), fanned out to every local
//! session that joined it.
//!
//! A room message is stored once, in the room's history; the sequencer
//! publishes it once on the room's live subject. The room's [`Feed`] here
//! keeps the messages in ordinal order with no hole (a skipped ordinal, a
//! lost core notice, is read back from history), serializes each `msg`
//! frame once, and offers it to every [`Viewer`] without waiting: a viewer
//! whose queue holds `CHAT_ROOM_QUEUE_FRAMES` frames skips the message and
//! later gets a `gap` frame saying how many it missed. Nobody's slowness
//! reaches the feed, so the room and the other viewers never wait.
//!
//! Joining ([`access`] and `conn::cmd::join`) registers the viewer first
//! (its live messages are held), then reads the backlog from history, then
//! goes live: held messages at or below the backlog's last ordinal are
//! dropped, so the seam has no gap and no duplicate.

pub mod access;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chat_nats::envelope::{RoomControl, StoredMessage};
use chat_nats::provision::Storage;
use chat_nats::subjects::{self, ConvId};
use chat_nats::wire::{MsgFrame, ServerFrame};
use futures::StreamExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::conn::outbound::Outbound;
use crate::error::frame;
use crate::messaging::history::{self, IndexCache, Page, Reader};
use crate::metrics::Phase;

/// Most messages one fill reads back from history after lost notices;
/// past that, viewers get a `gap` for the rest.
const FILL_MAX: usize = 1000;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The rooms this gateway has viewers of.
#[derive(Debug)]
pub struct Rooms {
    client: async_nats::Client,
    storage: Storage,
    cache: IndexCache,
    feeds: Mutex<HashMap<i64, Arc<Feed>>>,
    next: AtomicU64,
    queue_frames: usize,
}

/// One room's subscription and its local viewers.
#[derive(Debug)]
struct Feed {
    room: i64,
    viewers: Mutex<HashMap<u64, Arc<Viewer>>>,
    /// Ordinal and id of the last message fanned out.
    last: Mutex<Option<(u64, u64)>>,
    ready: watch::Receiver<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
}

/// A room message ready for viewers: its `msg` frame, serialized once.
#[derive(Debug)]
pub struct Live {
    n: u64,
    change: bool,
    ts: u64,
    text: String,
}

impl Live {
    /// The `msg` frame of a stored room message.
    pub fn of(room: i64, m: StoredMessage) -> Live {
        let (n, change, ts) = (m.n, m.kind.is_change(), m.ts);
        let text = frame(&ServerFrame::Msg(MsgFrame {
            id: m.id.to_string(),
            conv: m.conv,
            from: m.from.to_string(),
            kind: m.kind,
            body: m.body,
            ts: m.ts,
            n: m.n,
            cursor: String::new(),
            cid: None,
            target: m.target.map(|t| t.to_string()),
            event: m.event,
            room: Some(room.to_string()),
            reaction: m.reaction.map(Box::new),
            reactions: m.reactions,
            reply_to: m.reply_to,
            mentions: m.mentions,
        }));
        Live { n, change, ts, text }
    }

    /// The frame's text.
    pub fn text(&self) -> &str {
        &self.text
    }
}

/// One session in one room.
#[derive(Debug)]
pub struct Viewer {
    user: i64,
    room: String,
    out: Outbound,
    limit: usize,
    st: Mutex<ViewerState>,
}

#[derive(Debug, Default)]
struct ViewerState {
    /// Live messages held while the backlog is read (`None` once live).
    pending: Option<Vec<Arc<Live>>>,
    /// The last ordinal delivered or skipped.
    last_n: u64,
    /// Messages skipped since the last `gap` notice.
    missed: u64,
    /// Banned: gets nothing more.
    gone: bool,
}

impl Viewer {
    fn offer(&self, live: &Arc<Live>) {
        let mut st = lock(&self.st);
        if st.gone {
            return;
        }
        if let Some(p) = st.pending.as_mut() {
            p.push(live.clone());
            return;
        }
        self.deliver(&mut st, live);
    }

    fn deliver(&self, st: &mut ViewerState, live: &Live) {
        if !live.change {
            if live.n <= st.last_n {
                return; // in the backlog, or fanned out twice by a fill
            }
            st.last_n = live.n;
        }
        if st.missed > 0 {
            // The notice and the message must both fit, else keep skipping.
            if self.out.queued() + 2 > self.limit {
                st.missed += 1;
                return;
            }
            let gap = ServerFrame::Gap { room: self.room.clone(), missed: st.missed };
            self.out.push(frame(&gap));
            st.missed = 0;
        }
        if !self.out.offer(live.text.clone(), self.limit, Some((live.ts, Phase::Live))) {
            st.missed += 1;
        }
    }

    /// Ends the join: `joined` goes out, then the held live messages past
    /// the backlog's last ordinal `backlog_n`, then live ones as they come.
    pub fn go_live(&self, backlog_n: u64, backlog: u64, viewers: u64) {
        let mut st = lock(&self.st);
        st.last_n = st.last_n.max(backlog_n);
        self.out.push(frame(&ServerFrame::Joined { room: self.room.clone(), backlog, viewers }));
        for live in st.pending.take().unwrap_or_default() {
            self.deliver(&mut st, &live);
        }
    }
}

/// A session's place in a room; leaves it when dropped.
#[derive(Debug)]
pub struct Membership {
    rooms: Arc<Rooms>,
    feed: Arc<Feed>,
    id: u64,
    /// The viewer.
    pub viewer: Arc<Viewer>,
}

impl Membership {
    /// Tells the room's feed where the backlog ended, when the feed has
    /// fanned out nothing yet (so it can fill a later skipped ordinal).
    pub fn seed(&self, n: u64, id: u64) {
        let mut last = lock(&self.feed.last);
        if last.is_none() && n > 0 {
            *last = Some((n, id));
        }
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.rooms.leave(&self.feed, self.id);
    }
}

impl Rooms {
    /// No rooms yet.
    pub fn new(client: async_nats::Client, storage: Storage, queue_frames: usize) -> Arc<Rooms> {
        Arc::new(Rooms {
            client,
            storage,
            cache: IndexCache::new(10_000),
            feeds: Mutex::default(),
            next: AtomicU64::new(1),
            queue_frames,
        })
    }

    /// Registers a viewer of `room` (its live messages held until
    /// [`Viewer::go_live`]) once the room's subscription is in place.
    pub async fn join(self: &Arc<Self>, room: i64, user: i64, out: Outbound) -> Result<Membership, async_nats::Error> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let viewer = Arc::new(Viewer {
            user,
            room: room.to_string(),
            out,
            limit: self.queue_frames,
            st: Mutex::new(ViewerState { pending: Some(Vec::new()), ..Default::default() }),
        });
        let feed = {
            let mut feeds = lock(&self.feeds);
            let feed = feeds.entry(room).or_insert_with(|| self.start_feed(room)).clone();
            lock(&feed.viewers).insert(id, viewer.clone());
            feed
        };
        let membership = Membership { rooms: self.clone(), feed: feed.clone(), id, viewer };
        let mut ready = feed.ready.clone();
        let in_place = matches!(tokio::time::timeout(Duration::from_secs(10), ready.wait_for(|r| *r)).await, Ok(Ok(_)));
        if in_place {
            Ok(membership)
        } else {
            Err(format!("subscription to room {room} not in place within 10 s").into())
        }
    }

    fn start_feed(self: &Arc<Self>, room: i64) -> Arc<Feed> {
        let (ready_tx, ready) = watch::channel(false);
        let feed =
            Arc::new(Feed { room, viewers: Mutex::default(), last: Mutex::new(None), ready, task: Mutex::new(None) });
        let task = tokio::spawn(run_feed(self.clone(), feed.clone(), ready_tx));
        *lock(&feed.task) = Some(task);
        feed
    }

    fn leave(&self, feed: &Arc<Feed>, id: u64) {
        let mut feeds = lock(&self.feeds);
        let mut viewers = lock(&feed.viewers);
        viewers.remove(&id);
        if viewers.is_empty() && feeds.get(&feed.room).is_some_and(|f| Arc::ptr_eq(f, feed)) {
            feeds.remove(&feed.room);
            if let Some(t) = lock(&feed.task).take() {
                t.abort();
            }
        }
    }

    /// Local viewers per room (room id → sessions).
    pub fn counts(&self) -> BTreeMap<String, u64> {
        lock(&self.feeds).iter().map(|(r, f)| (r.to_string(), lock(&f.viewers).len() as u64)).collect()
    }

    /// Local viewers of one room.
    pub fn count(&self, room: i64) -> u64 {
        lock(&self.feeds).get(&room).map_or(0, |f| lock(&f.viewers).len() as u64)
    }

    fn reader(&self) -> Reader<'_> {
        Reader { storage: &self.storage, cache: &self.cache }
    }
}

impl Feed {
    fn dispatch(&self, live: Arc<Live>) {
        for v in lock(&self.viewers).values() {
            v.offer(&live);
        }
    }

    /// A ban: the user's sessions leave the room now.
    fn kick(&self, user: i64) {
        let mut viewers = lock(&self.viewers);
        viewers.retain(|_, v| {
            if v.user != user {
                return true;
            }
            lock(&v.st).gone = true;
            v.out.push(frame(&ServerFrame::Left { room: v.room.clone(), reason: Some("banned".into()) }));
            false
        });
    }
}

/// Receives one room's notices and fans them out, until aborted.
async fn run_feed(rooms: Arc<Rooms>, feed: Arc<Feed>, ready: watch::Sender<bool>) {
    let room = feed.room;
    let mut sub = loop {
        match rooms.client.subscribe(subjects::room_all(room)).await {
            Ok(s) => break s,
            Err(e) => {
                tracing::warn!(room, error = %e, "room subscription failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    // In place on the server once a round trip after it has completed.
    while let Err(e) = rooms.client.flush().await {
        tracing::debug!(room, error = %e, "flush after subscribe failed; retrying");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = ready.send(true);
    let control = subjects::room_control(room);
    while let Some(m) = sub.next().await {
        if m.subject.as_str() == control {
            match serde_json::from_slice::<RoomControl>(&m.payload) {
                Ok(RoomControl::Ban { user }) => feed.kick(user),
                Err(e) => tracing::warn!(room, error = %e, "malformed room control notice"),
            }
            continue;
        }
        let msg: StoredMessage = match serde_json::from_slice(&m.payload) {
            Ok(msg) => msg,
            Err(e) => {
                tracing::warn!(room, error = %e, "malformed room notice");
                continue;
            }
        };
        if !msg.kind.is_change() {
            let last = *lock(&feed.last);
            if let Some((n, id)) = last {
                if msg.n <= n {
                    continue;
                }
                if msg.n > n + 1 {
                    fill(&rooms, &feed, id, msg.n).await;
                }
            }
            *lock(&feed.last) = Some((msg.n, msg.id));
        }
        feed.dispatch(Arc::new(Live::of(room, msg)));
    }
}

/// Reads back from history the messages after id `after` and below
/// ordinal `upto` (their notices were lost) and fans them out in order.
async fn fill(rooms: &Rooms, feed: &Feed, mut after: u64, upto: u64) {
    let conv = ConvId::room(feed.room);
    let mut read = 0;
    while read < FILL_MAX {
        let page = match history::page(rooms.reader(), &conv, Page::After(after), 100).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(room = feed.room, error = %e, "cannot fill skipped room messages from history");
                return;
            }
        };
        let more = page.has_more;
        for (_, m) in page.messages {
            if m.n >= upto {
                return;
            }
            read += 1;
            after = m.id;
            *lock(&feed.last) = Some((m.n, m.id));
            if !m.deleted {
                feed.dispatch(Arc::new(Live::of(feed.room, m)));
            }
        }
        if !more {
            return;
        }
    }
}
