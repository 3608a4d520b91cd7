//! Random sequences of appends (live, and as a rebuild finds records), cuts, retention and
//! expiry on one dedupe index and on a model holding every key as an entry of its own: both
//! answer every key the same after every step, and the index's views agree, point only at
//! records the logs hold, and grow by what [`Dedupe::entries_added`] predicted.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;

const WINDOW_MS: u64 = 20;
const PARTITIONS: usize = 2;
/// Prefixes of numbered keys; `a-b` has a dash of its own.
const PREFIXES: [&str; 3] = ["a", "b", "a-b"];
/// Keys chosen as they are: not numbered canonically, or numbered as `a` and `b` are.
const OTHERS: [&str; 10] = ["a-007", "a-x", "-5", "a-", "q", "a-+1", "a-18446744073709551616", "a-3", "b-0", "a-b-1"];

#[derive(Debug, Clone)]
enum Key {
    None,
    /// The next number of a prefix.
    Next(usize),
    /// A number of a prefix used `back` numbers ago (perhaps expired, cut, or held).
    Again(usize, u64),
    Other(usize),
}

#[derive(Debug, Clone)]
enum Op {
    /// A publish's share of one partition: held keys and repeats are not stored.
    Append {
        partition: usize,
        keys: Vec<Key>,
    },
    /// Records found at open: every key is stored, and the index keeps the newest.
    Rebuild {
        partition: usize,
        keys: Vec<Key>,
    },
    Cut {
        partition: usize,
        back: u64,
    },
    Retain {
        partition: usize,
        forward: u64,
    },
    Advance {
        ms: u64,
    },
}

fn key() -> impl Strategy<Value = Key> {
    prop_oneof![
        1 => Just(Key::None),
        6 => (0..PREFIXES.len()).prop_map(Key::Next),
        2 => (0..PREFIXES.len(), 0u64..6).prop_map(|(prefix, back)| Key::Again(prefix, back)),
        1 => (0..OTHERS.len()).prop_map(Key::Other),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let keys = || proptest::collection::vec(key(), 1..12);
    prop_oneof![
        6 => (0..PARTITIONS, keys()).prop_map(|(partition, keys)| Op::Append { partition, keys }),
        1 => (0..PARTITIONS, keys()).prop_map(|(partition, keys)| Op::Rebuild { partition, keys }),
        2 => (0..PARTITIONS, 0u64..8).prop_map(|(partition, back)| Op::Cut { partition, back }),
        2 => (0..PARTITIONS, 0u64..8).prop_map(|(partition, forward)| Op::Retain { partition, forward }),
        3 => (0u64..8).prop_map(|ms| Op::Advance { ms }),
    ]
}

/// The logs as offsets and publish times, and every key as an entry of its own.
#[derive(Default)]
struct Model {
    keys: BTreeMap<String, Original>,
    /// Publish time of every offset ever written below the end, by partition.
    times: [Vec<u64>; PARTITIONS],
    starts: [u64; PARTITIONS],
    next: [u64; PARTITIONS + 1],
    now_ms: u64,
}

impl Model {
    fn name(&mut self, key: &Key) -> Option<String> {
        match *key {
            Key::None => None,
            Key::Next(prefix) => {
                self.next[prefix] += 1;
                Some(format!("{}-{}", PREFIXES[prefix], self.next[prefix] - 1))
            }
            Key::Again(prefix, back) => {
                let n = self.next[prefix].checked_sub(back + 1)?;
                Some(format!("{}-{n}", PREFIXES[prefix]))
            }
            Key::Other(i) => Some(OTHERS[i].to_string()),
        }
    }

    /// The publish time an append to `partition` is stamped with now.
    fn stamp(&self, partition: usize) -> u64 {
        let times = &self.times[partition];
        let last = times.last().filter(|_| times.len() as u64 > self.starts[partition]);
        self.now_ms.max(last.copied().unwrap_or(0))
    }

    fn forget(&mut self, partition: usize, keep: impl Fn(u64) -> bool) {
        self.keys.retain(|_, o| o.partition as usize != partition || keep(o.offset));
    }

    /// Every key either side may hold.
    fn universe(&self) -> Vec<String> {
        let numbered = PREFIXES.iter().zip(self.next).flat_map(|(p, next)| (0..=next).map(move |n| format!("{p}-{n}")));
        numbered.chain(OTHERS.iter().map(|k| k.to_string())).collect()
    }
}

fn apply(d: &mut Dedupe, m: &mut Model, op: &Op) {
    match op {
        Op::Append { partition, keys } => {
            let (p, offset, time_ms) = (*partition as u32, m.times[*partition].len() as u64, m.stamp(*partition));
            let mut batch = BatchKeys::default();
            let mut stored = 0u64;
            let mut names: Vec<String> = Vec::new();
            for key in keys {
                let name = m.name(key);
                if let Some(name) = &name {
                    if d.get(name).is_some() || names.contains(name) {
                        continue; // a duplicate: answered, not stored
                    }
                    batch.push(stored, name);
                    m.keys.insert(name.clone(), Original { partition: p, offset: offset + stored, time_ms });
                    names.push(name.clone());
                }
                stored += 1;
            }
            m.times[*partition].extend((0..stored).map(|_| time_ms));
            let predicted = d.entries_added(p, offset, m.now_ms, &batch);
            let before = d.len();
            d.insert_batch(p, offset, time_ms, batch);
            assert_eq!(d.len(), before + predicted, "entries_added predicted the entries added");
        }
        Op::Rebuild { partition, keys } => {
            let p = *partition as u32;
            let time_ms = m.stamp(*partition);
            for key in keys {
                let offset = m.times[*partition].len() as u64;
                m.times[*partition].push(time_ms);
                let Some(name) = m.name(key) else { continue };
                let original = Original { partition: p, offset, time_ms };
                d.rebuild_entry(&name, original);
                let newer = |held: &Original| (held.time_ms, held.partition, held.offset) < (time_ms, p, offset);
                if m.keys.get(&name).is_none_or(newer) {
                    m.keys.insert(name, original);
                }
            }
        }
        Op::Cut { partition, back } => {
            let end = m.times[*partition].len() as u64;
            let from = end.saturating_sub(*back).max(m.starts[*partition]);
            m.times[*partition].truncate(from as usize);
            d.cut(*partition as u32, from);
            m.forget(*partition, |offset| offset < from);
        }
        Op::Retain { partition, forward } => {
            let end = m.times[*partition].len() as u64;
            let start = (m.starts[*partition] + forward).min(end);
            m.starts[*partition] = start;
            d.retained_from(*partition as u32, start);
            m.forget(*partition, |offset| offset >= start);
        }
        Op::Advance { ms } => {
            m.now_ms += ms;
            d.expire(m.now_ms);
            let now_ms = m.now_ms;
            m.keys.retain(|_, o| o.time_ms + WINDOW_MS > now_ms);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn runs_answer_every_key_as_entries_of_their_own_would(ops in proptest::collection::vec(op(), 1..60)) {
        let mut d = Dedupe::new(WINDOW_MS);
        let mut m = Model::default();
        for op in &ops {
            apply(&mut d, &mut m, op);
            d.assert_views();
            for (&(partition, offset), span) in &d.by_position {
                let held = m.starts[partition as usize]..m.times[partition as usize].len() as u64;
                prop_assert!(held.contains(&offset) && held.contains(&(offset + span.count - 1)), "{op:?}");
            }
            for key in m.universe() {
                prop_assert_eq!(d.get(&key), m.keys.get(&key).copied(), "key {} after {:?}", key, op);
            }
            prop_assert!(d.len() <= m.keys.len());
        }
    }
}
