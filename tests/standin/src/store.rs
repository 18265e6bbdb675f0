//! The Nodes, their resourceVersions and the bounded event history, as etcd plus the
//! API server's watch cache keep them: one counter for every write, each object
//! serialized once when it is written, and a history that a watch replays from.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

/// A stored Node, serialized with its own resourceVersion.
#[derive(Debug)]
pub struct Obj {
    pub name: String,
    pub rv: u64,
    pub node: Node,
    pub json: Vec<u8>,
}

impl Obj {
    pub fn labels(&self) -> Option<&BTreeMap<String, String>> {
        self.node.metadata.labels.as_ref()
    }

    pub fn unschedulable(&self) -> bool {
        self.node
            .spec
            .as_ref()
            .and_then(|s| s.unschedulable)
            .unwrap_or(false)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

#[derive(Debug)]
pub struct Event {
    pub rv: u64,
    pub kind: EventType,
    pub obj: Arc<Obj>,
    /// The object before a MODIFIED: a watch with a label selector turns the event
    /// into ADDED or DELETED when the change moves the object into or out of it.
    pub prev: Option<Arc<Obj>>,
}

pub type Objects = BTreeMap<String, Arc<Obj>>;

/// The objects as of one resourceVersion. Cheap to take (an `Arc`); a later write
/// copies the map only while a snapshot is still held (a paged list in progress).
#[derive(Clone)]
pub struct Snapshot {
    pub rv: u64,
    pub objects: Arc<Objects>,
}

/// Where a watch starts.
pub enum WatchFrom {
    /// At the current state; `initial` sends it first as synthetic ADDED events.
    Now { initial: bool },
    /// After the given resourceVersion, replaying history.
    After(u64),
}

/// A watch's position: the last resourceVersion it has seen, and the generation of
/// [`Store::expire`] and [`Store::end_watches`] it started in.
pub struct Cursor {
    pub rv: u64,
    epoch: u64,
    ends: u64,
}

pub enum Wake {
    /// Events after the cursor, in order; the cursor has moved past them.
    Events(Vec<Arc<Event>>),
    /// Nothing happened until the deadline; the cursor is at the current resourceVersion.
    Idle,
    /// The watch must get an in-stream 410: history it needs is gone.
    Expired { oldest: u64 },
    /// The watch is to end cleanly (failure injected, server shutting down).
    Ended,
}

/// The requested resourceVersion is older than the history kept.
#[derive(Debug)]
pub struct TooOld {
    pub oldest: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("a Node needs metadata.name")]
    NoName,
    #[error("invalid Node name {0:?}: it must be a DNS subdomain")]
    BadName(String),
}

/// Paged lists usually finish within a second, but a client may be slow: keep this many.
const SNAPSHOTS_KEPT: usize = 32;

struct State {
    rv: u64,
    objects: Arc<Objects>,
    history: VecDeque<Arc<Event>>,
    history_cap: usize,
    /// Every event after this resourceVersion is in `history`; a watch from an older
    /// one gets 410 (what etcd compaction does to a real API server).
    compacted: u64,
    epoch: u64,
    ends: u64,
    snapshots: VecDeque<Snapshot>,
}

pub struct Store {
    state: Mutex<State>,
    changed: Condvar,
}

impl Store {
    pub fn new(initial_rv: u64, history_cap: usize) -> Store {
        Store {
            state: Mutex::new(State {
                rv: initial_rv,
                objects: Arc::new(Objects::new()),
                history: VecDeque::new(),
                history_cap: history_cap.max(1),
                compacted: initial_rv,
                epoch: 0,
                ends: 0,
                snapshots: VecDeque::new(),
            }),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere cannot leave the state half-written (every write is one
        // insert), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn rv(&self) -> u64 {
        self.lock().rv
    }

    /// Creates or replaces Nodes, each with a new resourceVersion. A Node equal to the
    /// stored one is a no-op, as an update that changes nothing is for the API server.
    /// Returns the resourceVersion after the last write.
    pub fn upsert_all(&self, nodes: impl IntoIterator<Item = Node>) -> Result<u64, StoreError> {
        let nodes: Vec<Node> = nodes.into_iter().collect();
        for n in &nodes {
            check_name(n.metadata.name.as_deref())?;
        }
        let mut st = self.lock();
        let mut wrote = false;
        for node in nodes {
            wrote |= st.upsert(node);
        }
        let rv = st.rv;
        drop(st);
        if wrote {
            self.changed.notify_all();
        }
        Ok(rv)
    }

    /// Deletes a Node; `None` when there is none of that name.
    pub fn delete(&self, name: &str) -> Option<u64> {
        let mut st = self.lock();
        let old = st.objects.get(name)?.clone();
        st.rv += 1;
        let rv = st.rv;
        Arc::make_mut(&mut st.objects).remove(name);
        let mut node = old.node.clone();
        node.metadata.resource_version = Some(rv.to_string());
        let obj = Arc::new(make_obj(node, rv));
        st.record(EventType::Deleted, obj, Some(old));
        drop(st);
        self.changed.notify_all();
        Some(rv)
    }

    pub fn get(&self, name: &str) -> Option<Arc<Obj>> {
        self.lock().objects.get(name).cloned()
    }

    pub fn snapshot(&self) -> Snapshot {
        let st = self.lock();
        Snapshot {
            rv: st.rv,
            objects: st.objects.clone(),
        }
    }

    /// Keeps a snapshot for the continue token of a paged list.
    pub fn keep_snapshot(&self, snap: &Snapshot) {
        let mut st = self.lock();
        if st.snapshots.iter().any(|s| s.rv == snap.rv) {
            return;
        }
        if st.snapshots.len() >= SNAPSHOTS_KEPT {
            st.snapshots.pop_front();
        }
        st.snapshots.push_back(snap.clone());
    }

    pub fn snapshot_at(&self, rv: u64) -> Option<Snapshot> {
        let st = self.lock();
        if st.rv == rv {
            return Some(Snapshot {
                rv,
                objects: st.objects.clone(),
            });
        }
        st.snapshots.iter().find(|s| s.rv == rv).cloned()
    }

    /// Drops history and paging snapshots, and ends every open watch with an in-stream
    /// 410: what a compaction past every watcher does to a real API server.
    pub fn expire(&self) {
        let mut st = self.lock();
        st.compacted = st.rv;
        st.history.clear();
        st.snapshots.clear();
        st.epoch += 1;
        drop(st);
        self.changed.notify_all();
    }

    /// Ends every open watch cleanly (as a server-side timeout does), so clients make a
    /// new request and meet whatever failure is now injected.
    pub fn end_watches(&self) {
        self.lock().ends += 1;
        self.changed.notify_all();
    }

    /// Positions a new watch. With [`WatchFrom::Now`] and `initial`, also returns the
    /// snapshot whose objects go out first as ADDED events.
    pub fn start_watch(&self, from: WatchFrom) -> Result<(Cursor, Option<Snapshot>), TooOld> {
        let st = self.lock();
        let mut cursor = Cursor {
            rv: st.rv,
            epoch: st.epoch,
            ends: st.ends,
        };
        match from {
            WatchFrom::Now { initial } => {
                let snap = initial.then(|| Snapshot {
                    rv: st.rv,
                    objects: st.objects.clone(),
                });
                Ok((cursor, snap))
            }
            WatchFrom::After(rv) if rv < st.compacted => Err(TooOld {
                oldest: st.compacted + 1,
            }),
            WatchFrom::After(rv) => {
                // A resourceVersion from the future (a client of an earlier server) is
                // taken as given: the watch sees writes once the counter passes it.
                cursor.rv = rv;
                Ok((cursor, None))
            }
        }
    }

    /// Waits until there are events after the cursor, or the deadline.
    pub fn wait(&self, cursor: &mut Cursor, until: Instant) -> Wake {
        let mut st = self.lock();
        loop {
            if st.epoch != cursor.epoch || cursor.rv < st.compacted {
                return Wake::Expired {
                    oldest: st.compacted + 1,
                };
            }
            if st.ends != cursor.ends {
                return Wake::Ended;
            }
            if st.rv > cursor.rv {
                let start = st.history.partition_point(|e| e.rv <= cursor.rv);
                let events: Vec<_> = st.history.range(start..).cloned().collect();
                cursor.rv = st.rv;
                return Wake::Events(events);
            }
            let now = Instant::now();
            if now >= until {
                return Wake::Idle;
            }
            st = self
                .changed
                .wait_timeout(st, until - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

impl State {
    /// Returns whether anything was written.
    fn upsert(&mut self, mut node: Node) -> bool {
        let Some(name) = node.metadata.name.clone() else {
            return false; // checked by the caller
        };
        let old = self.objects.get(&name).cloned();
        if let Some(old) = &old {
            // The API server keeps what a client may leave out of an update.
            let m = &mut node.metadata;
            m.uid = m.uid.take().or_else(|| old.node.metadata.uid.clone());
            m.creation_timestamp = m
                .creation_timestamp
                .take()
                .or_else(|| old.node.metadata.creation_timestamp.clone());
            m.resource_version = Some(old.rv.to_string());
            if node == old.node {
                return false;
            }
        } else {
            let m = &mut node.metadata;
            if m.uid.is_none() {
                m.uid = Some(uid_for(&name, self.rv + 1));
            }
            if m.creation_timestamp.is_none() {
                m.creation_timestamp = Some(now());
            }
        }
        self.rv += 1;
        let rv = self.rv;
        node.metadata.resource_version = Some(rv.to_string());
        let obj = Arc::new(make_obj(node, rv));
        Arc::make_mut(&mut self.objects).insert(name, obj.clone());
        let kind = if old.is_some() {
            EventType::Modified
        } else {
            EventType::Added
        };
        self.record(kind, obj, old);
        true
    }

    fn record(&mut self, kind: EventType, obj: Arc<Obj>, prev: Option<Arc<Obj>>) {
        if self.history.len() >= self.history_cap
            && let Some(dropped) = self.history.pop_front()
        {
            self.compacted = dropped.rv;
        }
        self.history.push_back(Arc::new(Event {
            rv: obj.rv,
            kind,
            obj,
            prev,
        }));
    }
}

fn make_obj(node: Node, rv: u64) -> Obj {
    // Serializing a k8s-openapi Node cannot fail: it holds only strings, numbers and
    // maps with string keys.
    let json = serde_json::to_vec(&node).unwrap_or_default();
    Obj {
        name: node.metadata.name.clone().unwrap_or_default(),
        rv,
        node,
        json,
    }
}

/// Node names are DNS subdomains: lower-case alphanumerics, `-` and `.`, at most 253.
fn check_name(name: Option<&str>) -> Result<(), StoreError> {
    let name = name.ok_or(StoreError::NoName)?;
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(StoreError::BadName(name.to_string()))
    }
}

pub fn now() -> Time {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    Time(Timestamp::from_second(secs).unwrap_or(Timestamp::UNIX_EPOCH))
}

/// A stable, UUID-shaped uid for a new object.
fn uid_for(name: &str, rv: u64) -> String {
    // FNV-1a over the name, mixed with the resourceVersion (splitmix64).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    let mix = |mut z: u64| {
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let a = mix(h ^ rv);
    let b = mix(a ^ 0x9e37_79b9_7f4a_7c15);
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        (b >> 48) & 0x3fff | 0x8000,
        b & 0xffff_ffff_ffff
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::NodeBuilder;
    use std::time::Duration;

    fn node(name: &str, cidr: &str) -> Node {
        NodeBuilder::new(name).pod_cidr(cidr).build()
    }

    fn events(w: Wake) -> Vec<(EventType, String, u64)> {
        match w {
            Wake::Events(e) => e
                .iter()
                .map(|e| (e.kind, e.obj.name.clone(), e.rv))
                .collect(),
            _ => panic!("expected events"),
        }
    }

    #[test]
    fn writes_bump_one_counter_and_same_content_is_a_no_op() {
        let s = Store::new(100, 10);
        assert_eq!(s.upsert_all([node("a", "10.244.1.0/24")]).unwrap(), 101);
        assert_eq!(s.upsert_all([node("b", "10.244.2.0/24")]).unwrap(), 102);
        assert_eq!(s.upsert_all([node("a", "10.244.1.0/24")]).unwrap(), 102);
        assert_eq!(s.upsert_all([node("a", "10.244.9.0/24")]).unwrap(), 103);
        let a = s.get("a").unwrap();
        assert_eq!(a.rv, 103);
        assert!(String::from_utf8_lossy(&a.json).contains(r#""resourceVersion":"103""#));
        assert_eq!(s.delete("a"), Some(104));
        assert_eq!(s.delete("a"), None);
        assert!(matches!(
            s.upsert_all([Node::default()]),
            Err(StoreError::NoName)
        ));
    }

    #[test]
    fn uid_and_creation_survive_an_update_without_them() {
        let s = Store::new(1, 10);
        s.upsert_all([node("a", "10.244.1.0/24")]).unwrap();
        let before = s.get("a").unwrap();
        let mut n = node("a", "10.244.3.0/24");
        n.metadata.creation_timestamp = None;
        s.upsert_all([n]).unwrap();
        let after = s.get("a").unwrap();
        assert_eq!(before.node.metadata.uid, after.node.metadata.uid);
        assert!(after.node.metadata.uid.as_deref().unwrap().len() == 36);
        assert_eq!(
            before.node.metadata.creation_timestamp,
            after.node.metadata.creation_timestamp
        );
    }

    #[test]
    fn watch_replays_history_and_expires_past_it() {
        let s = Store::new(0, 3);
        for i in 1..=5 {
            s.upsert_all([node(&format!("n{i}"), "10.244.1.0/24")])
                .unwrap();
        }
        // History holds rv 3..=5: a watch after 2 is fine, after 1 is too old.
        assert!(s.start_watch(WatchFrom::After(1)).is_err());
        let (mut c, _) = s.start_watch(WatchFrom::After(2)).unwrap();
        let got = events(s.wait(&mut c, Instant::now()));
        assert_eq!(got.iter().map(|e| e.2).collect::<Vec<_>>(), vec![3, 4, 5]);
        assert!(matches!(s.wait(&mut c, Instant::now()), Wake::Idle));
        s.delete("n1");
        assert_eq!(
            events(s.wait(&mut c, Instant::now())),
            vec![(EventType::Deleted, "n1".to_string(), 6)]
        );
        s.expire();
        assert!(matches!(
            s.wait(&mut c, Instant::now()),
            Wake::Expired { .. }
        ));
        // After expiry a watch from the current resourceVersion is fine.
        assert!(s.start_watch(WatchFrom::After(6)).is_ok());
        assert!(s.start_watch(WatchFrom::After(5)).is_err());
    }

    #[test]
    fn wait_wakes_on_write_from_another_thread() {
        let s = Arc::new(Store::new(0, 10));
        let (mut c, _) = s.start_watch(WatchFrom::Now { initial: false }).unwrap();
        let s2 = s.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            s2.upsert_all([node("a", "10.244.1.0/24")]).unwrap();
        });
        let got = events(s.wait(&mut c, Instant::now() + Duration::from_secs(10)));
        assert_eq!(got[0].0, EventType::Added);
        t.join().unwrap();
    }

    #[test]
    fn snapshot_is_unchanged_by_later_writes() {
        let s = Store::new(0, 10);
        s.upsert_all([node("a", "10.244.1.0/24"), node("b", "10.244.2.0/24")])
            .unwrap();
        let snap = s.snapshot();
        s.keep_snapshot(&snap);
        s.delete("a");
        s.upsert_all([node("c", "10.244.3.0/24")]).unwrap();
        let kept = s.snapshot_at(snap.rv).unwrap();
        assert_eq!(kept.objects.keys().collect::<Vec<_>>(), vec!["a", "b"]);
        assert_eq!(
            s.snapshot().objects.keys().collect::<Vec<_>>(),
            vec!["b", "c"]
        );
    }
}
