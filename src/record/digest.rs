//! Digests of replies and outputs: what a replay compares with what the recorded broker
//! answered. FNV-1a 64 over the Debug form, which names every field and value, written
//! straight into the hash without building a string.

use std::fmt::{self, Write};

use crate::core::{Answer, Broker, Output, Query, Reply};

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

struct Fnv(u64);

impl Write for Fnv {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.bytes(s.as_bytes());
        Ok(())
    }
}

/// The digest of a command's reply. A publish's answer, the hot path, is hashed field by
/// field; every other reply through its Debug form.
pub fn digest_reply(reply: &Reply) -> u64 {
    let mut hash = Fnv(FNV_OFFSET);
    match reply {
        Ok(Answer::Published(published)) => {
            hash.bytes(b"published");
            for p in published {
                hash.bytes(p.message_id.as_bytes());
                hash.bytes(&p.partition.to_le_bytes());
                hash.bytes(&p.offset.to_le_bytes());
                hash.bytes(&[u8::from(p.duplicate)]);
            }
        }
        _ => {
            let _ = write!(hash, "{reply:?}");
        }
    }
    hash.0
}

impl Fnv {
    fn bytes(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 ^= u64::from(*byte);
            self.0 = self.0.wrapping_mul(FNV_PRIME);
        }
    }
}

/// The digest of the outputs a command produced, in order (0 for none).
pub fn digest_outputs<'a>(outputs: impl IntoIterator<Item = &'a Output>) -> u64 {
    let mut outputs = outputs.into_iter().peekable();
    if outputs.peek().is_none() {
        return 0;
    }
    let mut hash = Fnv(FNV_OFFSET);
    for output in outputs {
        let _ = write!(hash, "{output:?};");
    }
    hash.0
}

/// Rows read per query while digesting a broker's state.
const STATE_PAGE: usize = 1000;

/// The digest of what a broker holds, as its queries show it at `now_ms`: every topic,
/// every subscription with its counts, and every unfinished message with its state. Two
/// brokers that answered every command alike end with equal digests.
pub fn digest_state(broker: &Broker, now_ms: u64) -> u64 {
    let mut hash = Fnv(FNV_OFFSET);
    let mut after: Option<String> = None;
    while let Ok(Answer::Topics { topics, next }) = broker.query(now_ms, Query::Topics { after, limit: STATE_PAGE }) {
        let _ = write!(hash, "{topics:?}");
        let Some(next) = next else { break };
        after = Some(next);
    }
    let mut after: Option<String> = None;
    let subscriptions = |after| Query::Subscriptions { topic: None, after, limit: STATE_PAGE };
    while let Ok(Answer::Subscriptions { subscriptions, next }) = broker.query(now_ms, subscriptions(after)) {
        for sub in &subscriptions {
            let stats = broker.query(now_ms, Query::Stats { subscription: sub.name.clone() });
            let _ = write!(hash, "{sub:?}{stats:?}");
            let mut after = None;
            loop {
                let pending = Query::Pending { subscription: sub.name.clone(), after, limit: STATE_PAGE };
                let page = broker.query(now_ms, pending);
                let _ = write!(hash, "{page:?}");
                match page {
                    Ok(Answer::Pending { next: Some(next), .. }) => after = Some(next),
                    _ => break,
                }
            }
        }
        let Some(next) = next else { break };
        after = Some(next);
    }
    hash.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{BrokerError, Published};

    #[test]
    fn equal_replies_digest_equal_and_different_ones_differ() {
        let a: Reply = Ok(Answer::Checkpointed { saved: true });
        let b: Reply = Ok(Answer::Checkpointed { saved: false });
        let c: Reply = Err(BrokerError::TopicNotFound { topic: "t".into() });
        assert_eq!(digest_reply(&a), digest_reply(&a.clone()));
        assert_ne!(digest_reply(&a), digest_reply(&b));
        assert_ne!(digest_reply(&b), digest_reply(&c));
        assert_eq!(digest_outputs(&[]), 0);
        let place = |offset| Published { message_id: format!("1-0-{offset}"), partition: 0, offset, duplicate: false };
        let (one, two) = (Ok(Answer::Published(vec![place(1)])), Ok(Answer::Published(vec![place(2)])));
        assert_ne!(digest_reply(&one), digest_reply(&two));
        assert_eq!(digest_reply(&one), digest_reply(&one.clone()));
    }
}
