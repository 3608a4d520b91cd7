//! The broker's inputs as values. Every change to the broker is a [`Command`], applied by
//! [`Broker::handle`] at the time it carries; every read is a [`Query`], answered by
//! [`Broker::query`]. Both answer with an [`Answer`] or a refusal. A driver that applies
//! the same commands, at the same times, to brokers in the same state gets the same answers
//! and outputs, byte for byte: that is what makes a run recordable and replayable.

use super::name;
use super::{
    AckFloor, AckOp, AckReply, Broker, BrokerError, DeadLetterMove, Delivery, Flow, OutgoingMessage, PendingMessage,
    Published, Redriven, SeekTarget, StreamId, StreamTarget, SubscriptionInfo, SubscriptionSpec, SubscriptionStats,
    SyncFailure, TopicInfo,
};

/// Leases a cluster leader may issue in one term: the next term's leader starts its lease
/// sequence numbers past them.
pub const LEASES_PER_TERM_MAX: u64 = 1 << 40;

/// When a command was decided: the monotonic clock (deadlines, backoffs, sessions) and the
/// wall clock (publish times, retention, dead-letter copies), both in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct At {
    /// Monotonic milliseconds.
    pub now_ms: u64,
    /// Milliseconds since the Unix epoch.
    pub wall_ms: u64,
}

/// An input that may change the broker. The driver stamps each with its [`At`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Appends messages to a topic (auto-creating it when the config allows).
    Publish {
        /// The topic's name.
        topic: String,
        /// The batch, stored in order (each with its key, attributes and idempotency key).
        messages: Vec<OutgoingMessage>,
    },
    /// Creates a topic; `None` takes the broker's default.
    CreateTopic {
        /// The new topic's name.
        name: String,
        /// How many partitions; `None` takes the broker's default.
        partitions: Option<u32>,
        /// How long idempotency keys are remembered; `None` takes the broker's default.
        dedupe_window_ms: Option<u64>,
    },
    /// Deletes a topic; without `force`, one that still has subscriptions is refused.
    DeleteTopic {
        /// The topic's name.
        name: String,
        /// Deletes its subscriptions too (their streams end).
        force: bool,
    },
    /// Creates a subscription.
    CreateSubscription(SubscriptionSpec),
    /// Deletes a subscription; its streams end.
    DeleteSubscription {
        /// The subscription's name.
        name: String,
    },
    /// Opens a Subscribe stream with what its first request carried (its acks, nacks and
    /// deadline changes are applied once it is open; a refused one opens nothing).
    OpenStream {
        /// The subscription it joins, or the topic it reads through an ephemeral one.
        target: StreamTarget,
        /// Its flow control (0 takes the broker default).
        flow: Flow,
        /// `None`: the broker default.
        session_timeout_ms: Option<u64>,
        /// `None`: the stream does not name its client.
        client_id: Option<String>,
        /// Acks, nacks and deadline changes, each with the ack ids it applies to.
        ops: Vec<(AckOp, Vec<String>)>,
    },
    /// A later request on an open stream: a heartbeat, with the acks, nacks and deadline
    /// changes it carries (all applied, or none if one is refused).
    StreamRequest {
        /// The open stream it arrived on.
        stream: StreamId,
        /// Acks, nacks and deadline changes, each with the ack ids it applies to.
        ops: Vec<(AckOp, Vec<String>)>,
    },
    /// The stream went away (the client, the network, or the server ended it).
    CloseStream {
        /// The stream that ended.
        stream: StreamId,
    },
    /// The stream's client said it leaves: its leases are released at once.
    LeaveStream {
        /// The stream whose client left.
        stream: StreamId,
    },
    /// Leases up to `max_messages` (0 = 100) to a Pull.
    Pull {
        /// The subscription's name.
        subscription: String,
        /// At most this many messages (0 = 100); past `pull_messages_max` is refused.
        max_messages: u32,
    },
    /// Acks, nacks or deadline changes by ack id (the unary Ack, Nack, ModifyAckDeadline).
    Acks {
        /// The subscription the ack ids were leased from.
        subscription: String,
        /// What to do with each: ack, nack, or a new deadline.
        op: AckOp,
        /// The ack ids, as deliveries carried them.
        ack_ids: Vec<String>,
    },
    /// Moves a subscription.
    Seek {
        /// The subscription's name.
        subscription: String,
        /// Where it moves to.
        target: SeekTarget,
    },
    /// Moves up to `max_messages` (0 = 100) dead letters back to their subscriptions.
    Redrive {
        /// The subscription whose dead letters go back.
        subscription: String,
        /// At most this many dead letters (0 = 100).
        max_messages: u32,
    },
    /// The clock reached [`Broker::poll_timeout`]: leases expire, backoffs end, sessions lapse.
    Tick,
    /// Makes every append so far durable (a turn's group commit, or the interval sync).
    Sync,
    /// Applies time retention.
    Retention,
    /// Raises subscriptions' ack floors to a cluster leader's (its replicated ack progress).
    AckFloors(Vec<AckFloor>),
    /// This broker leads its cluster from `term` on: its lease sequence numbers start above
    /// any an earlier term's leader issued, so an ack id of an earlier leader never names one
    /// of its leases (it is answered as expired).
    Lead {
        /// The Raft term it leads in.
        term: u64,
    },
    /// Saves committed offsets and metadata when they changed.
    Checkpoint,
    /// Dead-letter moves a cluster leader decided ([`Broker::take_decided`]): every replica
    /// copies each message to its dead-letter topic and counts its source offset done.
    DeadLetters(Vec<DeadLetterMove>),
    /// A redrive a cluster leader decided ([`Broker::take_decided`]): every replica puts
    /// the messages these dead-letter copies name back into their source subscriptions,
    /// and counts the copies done in `subscription`.
    RedriveCopies {
        /// The subscription on the dead-letter topic the copies were read from.
        subscription: String,
        /// Its uid: a redrive of a deleted subscription moves nothing of a namesake.
        uid: u64,
        /// Each copy's (partition, offset) in the dead-letter topic.
        copies: Vec<(u32, u64)>,
    },
}

/// A read: it changes nothing, so it is not part of what a recording replays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Query {
    /// One topic.
    Topic {
        /// The topic's name.
        name: String,
    },
    /// Up to `limit` topics in name order after `after`.
    Topics {
        /// The last name of the previous page (`None`: from the first).
        after: Option<String>,
        /// The page's size.
        limit: usize,
    },
    /// One subscription.
    Subscription {
        /// The subscription's name.
        name: String,
    },
    /// Up to `limit` subscriptions in name order after `after`, of `topic` when given.
    Subscriptions {
        /// Only the subscriptions of this topic.
        topic: Option<String>,
        /// The last name of the previous page (`None`: from the first).
        after: Option<String>,
        /// The page's size.
        limit: usize,
    },
    /// A subscription's counts.
    Stats {
        /// The subscription's name.
        subscription: String,
    },
    /// Up to `limit` unfinished messages of a subscription after `after`.
    Pending {
        /// The subscription's name.
        subscription: String,
        /// The (partition, offset) of the previous page's last message.
        after: Option<(u32, u64)>,
        /// The page's size.
        limit: usize,
    },
}

/// What a command or query answered when it was not refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Where each published message went (or, for a duplicate, the original's place).
    Published(Vec<Published>),
    /// A topic created, or read.
    Topic(TopicInfo),
    /// A topic was deleted, and with it these subscriptions.
    TopicDeleted {
        /// The subscriptions deleted with it (only with `force`).
        subscriptions: Vec<String>,
    },
    /// A subscription created, or read.
    Subscription(SubscriptionInfo),
    /// A stream opened: its id, its subscription's name, and the confirmations of what its
    /// first request carried (`None` when it carried nothing).
    Opened {
        /// The new stream's id: later commands on it name it.
        stream: StreamId,
        /// Its subscription's name (an ephemeral one's is made up by the broker).
        subscription: String,
        /// What the first request's acks did, in order.
        confirmations: Option<Vec<AckReply>>,
    },
    /// The confirmations of acks, nacks or deadline changes, in request order.
    Confirmations(Vec<AckReply>),
    /// Messages leased to a Pull.
    Deliveries(Vec<Delivery>),
    /// Each partition's committed offset after a seek.
    Offsets(Vec<(u32, u64)>),
    /// What a redrive did with each dead letter it read.
    Redriven(Vec<Redriven>),
    /// The partitions whose sync failed (their unsynced records were cut), and the error
    /// of the metadata's when neither its journal's sync nor a whole save succeeded.
    Synced(Vec<SyncFailure>, Option<crate::storage::StorageError>),
    /// Whether a checkpoint wrote anything.
    Checkpointed {
        /// False when nothing had changed since the last save.
        saved: bool,
    },
    /// A command with nothing to say (a close, a tick, a retention pass, a deletion).
    Done,
    /// A page of topics, and the token of the next page.
    Topics {
        /// The page, in name order.
        topics: Vec<TopicInfo>,
        /// The name to list after for the next page; `None` on the last.
        next: Option<String>,
    },
    /// A page of subscriptions, and the token of the next page.
    Subscriptions {
        /// The page, in name order.
        subscriptions: Vec<SubscriptionInfo>,
        /// The name to list after for the next page; `None` on the last.
        next: Option<String>,
    },
    /// A subscription's counts.
    Stats(SubscriptionStats),
    /// A page of unfinished messages, and where the next page starts after.
    Pending {
        /// The page, by partition and offset.
        messages: Vec<PendingMessage>,
        /// Where the next page starts after; `None` on the last.
        next: Option<(u32, u64)>,
    },
}

/// A command's or query's result.
pub type Reply = Result<Answer, BrokerError>;

impl Command {
    /// The command's name, as logs and traces show it.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Publish { .. } => "publish",
            Command::CreateTopic { .. } => "create-topic",
            Command::DeleteTopic { .. } => "delete-topic",
            Command::CreateSubscription(_) => "create-subscription",
            Command::DeleteSubscription { .. } => "delete-subscription",
            Command::OpenStream { .. } => "open-stream",
            Command::StreamRequest { .. } => "stream-request",
            Command::CloseStream { .. } => "close-stream",
            Command::LeaveStream { .. } => "leave-stream",
            Command::Pull { .. } => "pull",
            Command::Acks { .. } => "acks",
            Command::Seek { .. } => "seek",
            Command::Redrive { .. } => "redrive",
            Command::Tick => "tick",
            Command::Sync => "sync",
            Command::Retention => "retention",
            Command::Checkpoint => "checkpoint",
            Command::AckFloors(_) => "ack-floors",
            Command::Lead { .. } => "lead",
            Command::DeadLetters(_) => "dead-letters",
            Command::RedriveCopies { .. } => "redrive-copies",
        }
    }
}

impl Answer {
    /// The answer's kind, as messages name it.
    pub fn name(&self) -> &'static str {
        match self {
            Answer::Published(_) => "published",
            Answer::Topic(_) => "topic",
            Answer::TopicDeleted { .. } => "topic-deleted",
            Answer::Subscription(_) => "subscription",
            Answer::Opened { .. } => "opened",
            Answer::Confirmations(_) => "confirmations",
            Answer::Deliveries(_) => "deliveries",
            Answer::Offsets(_) => "offsets",
            Answer::Redriven(_) => "redriven",
            Answer::Synced(..) => "synced",
            Answer::Checkpointed { .. } => "checkpointed",
            Answer::Done => "done",
            Answer::Topics { .. } => "topics",
            Answer::Subscriptions { .. } => "subscriptions",
            Answer::Stats(_) => "stats",
            Answer::Pending { .. } => "pending",
        }
    }
}

impl Broker {
    /// Decides a command: refuses what cannot be applied (bad input, an unknown name, a
    /// limit reached), reading the state and changing nothing. A leader answers these
    /// refusals itself; what passes is applied by [`Broker::handle`], which checks again.
    /// Publishes, topic and subscription creation and deletion, seeks, acks, pulls and
    /// redrives are decided here in full; a stream opening is decided up to its target
    /// (an unknown subscription, or the stream limit, is refused when it is applied).
    pub fn check(&self, command: &Command) -> Result<(), BrokerError> {
        match command {
            Command::Publish { topic, messages } => self.check_publish(topic, messages).map(|_| ()),
            Command::CreateTopic { name, partitions, dedupe_window_ms } => {
                self.check_new_topic(name, *partitions, *dedupe_window_ms).map(|_| ())
            }
            Command::DeleteTopic { name, force } => self.check_delete_topic(name, *force).map(|_| ()),
            Command::CreateSubscription(spec) => {
                name::check_new("name", &spec.name)?;
                name::check("topic", &spec.topic)?;
                self.check_new_subscription(spec).map(|_| ())
            }
            Command::DeleteSubscription { name } => {
                name::check("name", name)?;
                self.subscription_uid(name).map(|_| ())
            }
            Command::OpenStream { target, session_timeout_ms, client_id, ops, .. } => {
                self.check_stream_ops(target, ops)?;
                self.check_member(*session_timeout_ms, client_id.as_deref())
            }
            Command::StreamRequest { stream, ops } => self.check_stream_request(*stream, ops),
            Command::Pull { subscription, max_messages } | Command::Redrive { subscription, max_messages } => {
                name::check("subscription", subscription)?;
                self.batch_size(*max_messages)?;
                self.subscription_uid(subscription).map(|_| ())
            }
            Command::Acks { subscription, op, ack_ids } => self.check_acks(subscription, op, ack_ids).map(|_| ()),
            Command::Seek { subscription, target } => self.check_seek(subscription, target).map(|_| ()),
            Command::CloseStream { .. }
            | Command::LeaveStream { .. }
            | Command::Tick
            | Command::Sync
            | Command::Retention
            | Command::Checkpoint
            | Command::AckFloors(_)
            | Command::Lead { .. }
            | Command::DeadLetters(_) => Ok(()),
            Command::RedriveCopies { subscription, uid, .. } => {
                if self.subscription_uids.get(subscription) == Some(uid) {
                    Ok(())
                } else {
                    Err(BrokerError::SubscriptionNotFound { subscription: subscription.clone() })
                }
            }
        }
    }

    /// Applies one command at the time it carries: [`Broker::check`] decides it, then it
    /// takes effect. Outputs it produces wait in [`Broker::poll_output`]; what the broker
    /// noticed, in [`Broker::poll_notice`].
    pub fn handle(&mut self, at: At, command: Command) -> Reply {
        self.set_wall_ms(at.wall_ms);
        let now = at.now_ms;
        if let Command::Publish { topic, messages } = command {
            let create = self.check_publish(&topic, &messages)?;
            return self.apply_publish(now, at.wall_ms, &topic, messages, create).map(Answer::Published);
        }
        self.check(&command)?;
        match command {
            Command::Publish { .. } => unreachable!("applied above"),
            Command::CreateTopic { name, partitions, dedupe_window_ms } => {
                self.create_topic_with(&name, partitions, dedupe_window_ms).map(Answer::Topic)
            }
            Command::DeleteTopic { name, force } => {
                self.delete_topic(&name, force).map(|subscriptions| Answer::TopicDeleted { subscriptions })
            }
            Command::CreateSubscription(spec) => self.create_subscription(spec).map(Answer::Subscription),
            Command::DeleteSubscription { name } => self.delete_subscription(&name).map(|()| Answer::Done),
            Command::OpenStream { target, flow, session_timeout_ms, client_id, ops } => {
                self.check_stream_ops(&target, &ops)?;
                let (stream, subscription) = self.open_member(now, target, flow, session_timeout_ms, client_id)?;
                let confirmations = match self.stream_request(now, stream, ops) {
                    Ok(confirmations) => confirmations,
                    Err(refused) => {
                        // Checked above, so this does not happen; if it did, the stream
                        // opens nothing.
                        self.leave_stream(now, stream);
                        return Err(refused);
                    }
                };
                Ok(Answer::Opened { stream, subscription, confirmations })
            }
            Command::StreamRequest { stream, ops } => {
                Ok(self.stream_request(now, stream, ops)?.map_or(Answer::Done, Answer::Confirmations))
            }
            Command::CloseStream { stream } => {
                self.close_stream(now, stream);
                Ok(Answer::Done)
            }
            Command::LeaveStream { stream } => {
                self.leave_stream(now, stream);
                Ok(Answer::Done)
            }
            Command::Pull { subscription, max_messages } => {
                self.pull(now, &subscription, max_messages).map(Answer::Deliveries)
            }
            Command::Acks { subscription, op, ack_ids } => {
                self.acks(now, &subscription, op, ack_ids).map(Answer::Confirmations)
            }
            Command::Seek { subscription, target } => self.seek(now, &subscription, target).map(Answer::Offsets),
            Command::Redrive { subscription, max_messages } => {
                self.redrive_dead_letters(now, &subscription, max_messages).map(Answer::Redriven)
            }
            Command::Tick => {
                self.handle_timeout(now);
                Ok(Answer::Done)
            }
            Command::Sync => {
                let (partitions, metadata) = self.sync_all(now);
                Ok(Answer::Synced(partitions, metadata))
            }
            Command::Retention => self.enforce_retention(now, at.wall_ms).map(|()| Answer::Done),
            Command::AckFloors(floors) => {
                self.raise_floors(now, floors);
                Ok(Answer::Done)
            }
            Command::Lead { term } => {
                self.next_lease_seq = self.next_lease_seq.max(term.saturating_mul(LEASES_PER_TERM_MAX));
                self.replicated = true;
                self.term = self.term.max(term);
                self.drop_moves_in_flight(now, term);
                Ok(Answer::Done)
            }
            Command::DeadLetters(moves) => {
                self.apply_dead_letters(now, moves);
                Ok(Answer::Done)
            }
            Command::RedriveCopies { uid, copies, .. } => Ok(Answer::Redriven(self.apply_redrive(now, uid, copies))),
            Command::Checkpoint => {
                self.tell_damage();
                self.checkpoint().map(|saved| Answer::Checkpointed { saved })
            }
        }
    }

    /// Answers a read at monotonic time `now_ms` (pending messages show their deadlines).
    pub fn query(&self, now_ms: u64, query: Query) -> Reply {
        match query {
            Query::Topic { name } => self.topic_info(&name).map(Answer::Topic),
            Query::Topics { after, limit } => {
                let (topics, next) = self.list_topics(after.as_deref(), limit);
                Ok(Answer::Topics { topics, next })
            }
            Query::Subscription { name } => self.subscription_info(&name).map(Answer::Subscription),
            Query::Subscriptions { topic, after, limit } => self
                .list_subscriptions(topic.as_deref(), after.as_deref(), limit)
                .map(|(subscriptions, next)| Answer::Subscriptions { subscriptions, next }),
            Query::Stats { subscription } => self.subscription_stats(&subscription).map(Answer::Stats),
            Query::Pending { subscription, after, limit } => self
                .list_pending(now_ms, &subscription, after, limit)
                .map(|(messages, next)| Answer::Pending { messages, next }),
        }
    }

    /// A request on a stream: a heartbeat, then its acks, nacks and deadline changes
    /// (`None` when it carried none).
    fn stream_request(
        &mut self,
        now_ms: u64,
        stream: StreamId,
        ops: Vec<(AckOp, Vec<String>)>,
    ) -> Result<Option<Vec<AckReply>>, BrokerError> {
        self.heartbeat(now_ms, stream);
        if ops.is_empty() {
            return Ok(None);
        }
        self.stream_acks(now_ms, stream, ops).map(Some)
    }
}
