//! Admin steps, run by the admin host one after another: each leaves a trace line saying
//! what the broker answered.

use std::time::Duration;

use mini_pubsub::wire::pb;
use tonic::Code;

use super::{code_name, is_definite, App, PUBLISH_ATTEMPTS_MAX, RETRY_DELAY};
use crate::history::Event;
use crate::scenario::{Admin, SeekTo};

impl App {
    /// Runs an admin step, retrying while the broker is unreachable, and records the
    /// answer. A create that meets ALREADY_EXISTS on a retry had succeeded before its
    /// answer was lost.
    pub(super) async fn admin(&self, command: Admin, ack_deadline: Duration) {
        let what = command.to_string();
        for attempt in 1..=PUBLISH_ATTEMPTS_MAX {
            let status = match self.admin_once(&command, ack_deadline).await {
                Ok(detail) => {
                    self.record(Event::AdminAnswered { what, refused: None, detail });
                    return;
                }
                Err(status) => status,
            };
            let code = status.code();
            if attempt > 1 && code == Code::AlreadyExists {
                let detail = "created (the answer to an earlier attempt was lost)".to_string();
                self.record(Event::AdminAnswered { what, refused: None, detail });
                return;
            }
            if is_definite(code) || attempt == PUBLISH_ATTEMPTS_MAX {
                let detail = if is_definite(code) {
                    status.message().to_string()
                } else {
                    format!("gave up after {attempt} attempts: {}", status.message())
                };
                self.record(Event::AdminAnswered { what, refused: Some(code_name(code)), detail });
                return;
            }
            tokio::time::sleep(RETRY_DELAY).await;
        }
    }

    /// Sends an admin step once; answers what the broker did, in a few words.
    async fn admin_once(&self, command: &Admin, ack_deadline: Duration) -> Result<String, tonic::Status> {
        let (used, channel) = self.client.target();
        let answer = self.admin_at(channel, command, ack_deadline).await;
        if let Err(status) = &answer {
            self.client.observe(used, status);
        }
        answer
    }

    async fn admin_at(
        &self,
        channel: mini_pubsub::client::Connection,
        command: &Admin,
        ack_deadline: Duration,
    ) -> Result<String, tonic::Status> {
        let mut admin = pb::admin_client::AdminClient::new(channel.clone());
        let mut pubsub = pb::pub_sub_client::PubSubClient::new(channel);
        let start =
            |to| if to == SeekTo::Latest { pb::StartPosition::Latest } else { pb::StartPosition::Earliest } as i32;
        match command.clone() {
            Admin::TopicCreate { topic, partitions } => {
                let partitions = partitions.unwrap_or(0);
                let req = pb::CreateTopicRequest { name: topic, partitions, ..Default::default() };
                let created = admin.create_topic(req).await?.into_inner();
                let s = if created.partitions == 1 { "" } else { "s" };
                Ok(format!("created with {} partition{s}", created.partitions))
            }
            Admin::TopicDelete { topic, force } => {
                let req = pb::DeleteTopicRequest { name: topic, force };
                let deleted = admin.delete_topic(req).await?.into_inner().deleted_subscriptions;
                Ok(match deleted.is_empty() {
                    true => "deleted".to_string(),
                    false => format!("deleted, with subscriptions {}", deleted.join(", ")),
                })
            }
            Admin::SubCreate(spec) => {
                let duration =
                    |d: Duration| prost_types::Duration { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() as i32 };
                let req = pb::CreateSubscriptionRequest {
                    name: spec.sub,
                    topic: spec.topic,
                    ack_deadline_seconds: spec.ack_deadline.unwrap_or(ack_deadline).as_secs() as u32,
                    start_position: start(spec.start),
                    retry_policy: spec.retry.map(|(min, max)| pb::RetryPolicy {
                        minimum_backoff: min.map(duration),
                        maximum_backoff: max.map(duration),
                    }),
                    dead_letter_policy: spec.dead_letter.map(|(topic, attempts)| pb::DeadLetterPolicy {
                        dead_letter_topic: topic,
                        max_delivery_attempts: attempts,
                    }),
                    enable_message_ordering: spec.ordered,
                    delivery_mode: if spec.exclusive {
                        pb::DeliveryMode::Exclusive
                    } else {
                        pb::DeliveryMode::Unspecified
                    }
                    .into(),
                };
                admin.create_subscription(req).await?;
                Ok("created".to_string())
            }
            Admin::SubDelete { sub } => {
                admin.delete_subscription(pb::DeleteSubscriptionRequest { name: sub }).await?;
                Ok("deleted".to_string())
            }
            Admin::Seek { sub, to } => {
                let target = if to == SeekTo::Latest {
                    pb::seek_request::Target::Latest(true)
                } else {
                    pb::seek_request::Target::Earliest(true)
                };
                let req = pb::SeekRequest { subscription: sub, target: Some(target) };
                let offsets = pubsub.seek(req).await?.into_inner().offsets;
                let at: Vec<String> = offsets.iter().map(|o| format!("p{}@{}", o.partition, o.offset)).collect();
                Ok(format!("committed offsets now {}", at.join(" ")))
            }
            Admin::TransferLeader { to } => transfer_leader(&mut admin, &to).await,
            Admin::Redrive { sub, max } => {
                let req = pb::RedriveDeadLettersRequest { subscription: sub.clone(), max_messages: max };
                let results = admin.redrive_dead_letters(req).await?.into_inner().results;
                let back = results.iter().filter(|r| r.redriven).count();
                for r in results {
                    let error = (!r.redriven).then_some(r.error);
                    let (partition, offset) = (r.partition, r.offset);
                    let source = r.source_subscription;
                    self.record(Event::Redriven { dead: sub.clone(), sub: source, partition, offset, error });
                }
                Ok(format!("{back} moved back"))
            }
        }
    }
}

/// Asks the leader to hand over to broker `to` (`brokerN` is node N: see the driver's
/// `Node`); says who leads after.
async fn transfer_leader(
    admin: &mut pb::admin_client::AdminClient<mini_pubsub::client::Connection>,
    to: &str,
) -> Result<String, tonic::Status> {
    let node_id = to.trim_start_matches("broker").parse().unwrap_or(0);
    let cluster = admin.transfer_leadership(pb::TransferLeadershipRequest { node_id }).await?.into_inner();
    Ok(format!("broker{} leads term {}", cluster.leader_id, cluster.term))
}
