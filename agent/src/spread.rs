//! Which partition a file's lines go to under `"partition": "by_file"`
//! (pure; the producer's partitioner and the shipper call it).
//!
//! Before, a file's `host:path` key was hashed by librdkafka's default
//! partitioner, which spreads a host's files by chance: in the issue #17
//! benchmark all 4 files of a run landed in partition 0 of 4, so one
//! partition (one broker, one transfer) carried everything. Now a file is
//! given a partition the first time one of its messages is partitioned:
//! the one holding the fewest of this agent's files on that topic, ties
//! broken from the partition its key hashes to (so hosts with one file each
//! spread over partitions as hashing spread them). Its messages still carry
//! the `host:path` key.
//!
//! A file keeps its partition, and so its order in Kafka, while the topic
//! has that partition (Kafka only adds partitions; new files fill new ones
//! first) and across restarts: the plan is kept in the checkpoint store
//! (meta key [`META_KEY`], JSON `{"<topic>": {"<host:path>": [partition,
//! day]}}`, `day` the last day (days since the Unix epoch) the file was
//! shipped). A file not shipped for [`FORGET_AFTER_DAYS`] is forgotten:
//! dated file names would otherwise grow the plan without end.
//!
//! Keys of the other modes (`by_host`, `{"key": …}`) are not in the plan:
//! they hash as librdkafka's default partitioner (`consistent_random`)
//! hashes them, the CRC-32 of the key modulo the partition count, so a key
//! lands where it did before and the same key from two hosts lands in the
//! same partition.
//!
//! Once a file has a partition and the topic's partition count is known,
//! the shipper sets the partition on its messages itself; the partitioner
//! (librdkafka calls it per message without one) only sees a file's first
//! messages. The count is the one librdkafka last gave the partitioner: a
//! topic deleted and made again with fewer partitions is noticed only when
//! a file new to the plan is partitioned.

use std::collections::{BTreeMap, HashMap};

/// The checkpoint store's meta key of the plan.
pub const META_KEY: &str = "partitions";
/// Days without a shipped line after which a file's partition is forgotten.
pub const FORGET_AFTER_DAYS: u32 = 7;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    /// `None`: the file is known to be `by_file` but has no partition yet.
    partition: Option<i32>,
    day: u32,
}

#[derive(Debug, Default)]
struct Topic {
    /// The partition count librdkafka last gave the partitioner.
    count: Option<i32>,
    files: HashMap<Box<[u8]>, Slot>,
}

/// Which partition each file goes to; see the module docs.
#[derive(Debug, Default)]
pub struct Plan {
    topics: HashMap<String, Topic>,
    /// The day of the latest [`Plan::route`] (what `day` fields get).
    today: u32,
    /// Changed since the last [`Plan::take_changed`].
    changed: bool,
    /// For empty keys: a rotating partition.
    next_any: u32,
}

/// The day `now_ms` (Unix milliseconds) falls in.
pub fn day_of(now_ms: u64) -> u32 {
    u32::try_from(now_ms / 86_400_000).unwrap_or(u32::MAX)
}

/// librdkafka's `consistent_random` choice for a non-empty key.
pub fn hashed(key: &[u8], count: i32) -> i32 {
    let n = u32::try_from(count.max(1)).unwrap_or(1);
    i32::try_from(crc32fast::hash(key) % n).unwrap_or(0)
}

type Stored = BTreeMap<String, BTreeMap<String, (i32, u32)>>;

impl Plan {
    /// A stored plan, less the files not shipped since [`FORGET_AFTER_DAYS`]
    /// before `today`; unreadable or absent: an empty plan (files are then
    /// given partitions again, as on a first start).
    pub fn decode(bytes: Option<&[u8]>, today: u32) -> Self {
        let stored: Stored = bytes
            .and_then(|b| serde_json::from_slice(b).ok())
            .unwrap_or_default();
        let mut plan = Plan {
            today,
            ..Plan::default()
        };
        for (topic, files) in stored {
            let files: HashMap<Box<[u8]>, Slot> = files
                .into_iter()
                .filter(|(_, (p, day))| *p >= 0 && !forgotten(*day, today))
                .map(|(key, (p, day))| {
                    let slot = Slot {
                        partition: Some(p),
                        day,
                    };
                    (key.into_bytes().into_boxed_slice(), slot)
                })
                .collect();
            if !files.is_empty() {
                plan.topics.insert(topic, Topic { count: None, files });
            }
        }
        plan
    }

    /// The plan as stored; forgets (here too) the files not shipped for
    /// [`FORGET_AFTER_DAYS`].
    pub fn encode(&mut self) -> Vec<u8> {
        let today = self.today;
        let mut stored = Stored::new();
        for (name, t) in &mut self.topics {
            t.files.retain(|_, s| !forgotten(s.day, today));
            for (key, s) in &t.files {
                if let (Some(p), Ok(k)) = (s.partition, std::str::from_utf8(key)) {
                    stored
                        .entry(name.clone())
                        .or_default()
                        .insert(k.to_string(), (p, s.day));
                }
            }
        }
        self.topics.retain(|_, t| !t.files.is_empty());
        serde_json::to_vec(&stored).unwrap_or_default()
    }

    /// Whether the plan changed (a file got a partition, or a day went by
    /// for one) since the last call: it is then worth saving.
    pub fn take_changed(&mut self) -> bool {
        std::mem::take(&mut self.changed)
    }

    /// The shipper, once per record of a `by_file` file: makes `key` part
    /// of the plan and returns its partition when it has one the topic
    /// has (else the message goes without one, to the partitioner).
    pub fn route(&mut self, topic: &str, key: &[u8], today: u32) -> Option<i32> {
        self.today = today;
        let t = match self.topics.get_mut(topic) {
            Some(t) => t,
            None => self.topics.entry(topic.to_string()).or_default(),
        };
        let count = t.count;
        let slot = match t.files.get_mut(key) {
            Some(s) => s,
            None => t.files.entry(key.into()).or_insert(Slot {
                partition: None,
                day: today,
            }),
        };
        if slot.day != today {
            slot.day = today;
            self.changed |= slot.partition.is_some();
        }
        match (slot.partition, count) {
            (Some(p), Some(n)) if p < n => Some(p),
            _ => None,
        }
    }

    /// The partitioner: the partition of a message of `topic` with `key`
    /// when the topic has `count` partitions (module docs).
    pub fn partition(&mut self, topic: &str, key: Option<&[u8]>, count: i32) -> i32 {
        if count <= 0 {
            return -1; // RD_KAFKA_PARTITION_UA: cannot partition (yet).
        }
        let key = match key {
            Some(k) if !k.is_empty() => k,
            _ => {
                self.next_any = self.next_any.wrapping_add(1);
                return hashed(&self.next_any.to_le_bytes(), count);
            }
        };
        let Some(t) = self.topics.get_mut(topic) else {
            return hashed(key, count);
        };
        t.count = Some(count);
        let Some(slot) = t.files.get(key).copied() else {
            return hashed(key, count);
        };
        if let Some(p) = slot.partition.filter(|p| *p < count) {
            return p;
        }
        let mut load = vec![0usize; usize::try_from(count).unwrap_or(1)];
        for s in t.files.values() {
            if let Some(p) = s.partition.filter(|p| *p < count) {
                if let Some(l) = load.get_mut(usize::try_from(p).unwrap_or(0)) {
                    *l += 1;
                }
            }
        }
        let start = hashed(key, count);
        let chosen = (0..count)
            .map(|i| (start + i) % count)
            .min_by_key(|p| load[usize::try_from(*p).unwrap_or(0)])
            .unwrap_or(start);
        if let Some(s) = t.files.get_mut(key) {
            s.partition = Some(chosen);
        }
        self.changed = true;
        chosen
    }
}

fn forgotten(day: u32, today: u32) -> bool {
    today.saturating_sub(day) > FORGET_AFTER_DAYS
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(i: usize) -> Vec<u8> {
        format!("host-1:/var/log/app/f{i}.log").into_bytes()
    }

    /// Partitions `files` new files of topic `t` with `count` partitions
    /// the way a session does: route (none yet), then the partitioner.
    fn place(plan: &mut Plan, files: std::ops::Range<usize>, count: i32) -> Vec<i32> {
        files
            .map(|i| {
                assert_eq!(plan.route("t", &key(i), 100), None);
                plan.partition("t", Some(&key(i)), count)
            })
            .collect()
    }

    #[test]
    fn four_files_take_four_partitions_and_keep_them() {
        let mut plan = Plan::decode(None, 100);
        let mut got = place(&mut plan, 0..4, 4);
        got.sort_unstable();
        assert_eq!(got, vec![0, 1, 2, 3]);
        assert!(plan.take_changed());
        // From now on the shipper sets them itself, the same ones.
        for i in 0..4 {
            let p = plan.route("t", &key(i), 100);
            assert_eq!(p, Some(plan.partition("t", Some(&key(i)), 4)));
        }
        assert!(!plan.take_changed(), "nothing new to save");
    }

    #[test]
    fn a_restart_keeps_each_files_partition() {
        let mut plan = Plan::decode(None, 100);
        let before = place(&mut plan, 0..6, 4);
        let bytes = plan.encode();
        let mut again = Plan::decode(Some(&bytes), 101);
        for (i, p) in before.iter().enumerate() {
            // The count is unknown after a restart until the partitioner
            // first runs: it decides then, alike.
            let first = again.route("t", &key(i), 101);
            assert_eq!(first, (i > 0).then_some(*p));
            assert_eq!(again.partition("t", Some(&key(i)), 4), *p);
            assert_eq!(again.route("t", &key(i), 101), Some(*p));
        }
        assert!(again.take_changed(), "a new day for each file is saved");
    }

    #[test]
    fn files_unshipped_for_a_week_are_forgotten() {
        let mut plan = Plan::decode(None, 100);
        place(&mut plan, 0..2, 4);
        let _ = plan.route("t", &key(0), 100 + FORGET_AFTER_DAYS + 1);
        let kept = Plan::decode(Some(&plan.encode()), 100 + FORGET_AFTER_DAYS + 1);
        assert_eq!(kept.topics["t"].files.len(), 1);
        assert!(kept.topics["t"].files.contains_key(key(0).as_slice()));
        // And a week later with nothing shipped, none.
        assert!(Plan::decode(Some(&plan.encode()), 200).topics.is_empty());
    }

    #[test]
    fn a_grown_topic_gets_new_files_and_a_shrunk_one_moves_them() {
        let mut plan = Plan::decode(None, 100);
        let first = place(&mut plan, 0..2, 2);
        // Grown to 4: the two files stay, the next two take the new ones.
        let next = place(&mut plan, 2..4, 4);
        for (i, p) in first.iter().enumerate() {
            assert_eq!(plan.partition("t", Some(&key(i)), 4), *p);
        }
        let mut all: Vec<i32> = first.iter().chain(&next).copied().collect();
        all.sort_unstable();
        assert_eq!(all, vec![0, 1, 2, 3]);
        // Made again with one partition: every file is in partition 0.
        for i in 0..4 {
            assert_eq!(plan.partition("t", Some(&key(i)), 1), 0);
            assert_eq!(plan.route("t", &key(i), 100), Some(0));
        }
    }

    #[test]
    fn other_keys_hash_like_librdkafka() {
        let mut plan = Plan::decode(None, 100);
        for i in 0..200 {
            let k = format!("host-{i}");
            let ours = plan.partition("t", Some(k.as_bytes()), 7);
            // SAFETY: with a non-empty key librdkafka's function only
            // hashes it (the topic pointer is not read).
            let theirs = unsafe {
                rdkafka::bindings::rd_kafka_msg_partitioner_consistent_random(
                    std::ptr::null(),
                    k.as_ptr().cast(),
                    k.len(),
                    7,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                )
            };
            assert_eq!(ours, theirs, "{k}");
        }
        assert!(plan.topics.is_empty(), "hashed keys are not remembered");
        assert_eq!(plan.partition("t", None, 0), -1);
        let empty: Vec<i32> = (0..8).map(|_| plan.partition("t", Some(b""), 4)).collect();
        assert!(empty.iter().all(|p| (0..4).contains(p)));
    }

    proptest! {
        /// However many files and partitions, new files are spread so that
        /// no partition holds more than one file more than another.
        #[test]
        fn new_files_spread_evenly(files in 1usize..60, count in 1i32..17) {
            let mut plan = Plan::decode(None, 100);
            let got = place(&mut plan, 0..files, count);
            let mut load = vec![0usize; usize::try_from(count).unwrap()];
            for p in got {
                prop_assert!((0..count).contains(&p));
                load[usize::try_from(p).unwrap()] += 1;
            }
            let (lo, hi) = (load.iter().min().unwrap(), load.iter().max().unwrap());
            prop_assert!(hi - lo <= 1, "{load:?}");
        }
    }
}
