//! Topic and subscription admin: thin, typed wrappers over the generated `Admin` client.
//! Answers are the wire types ([`pb::Topic`], [`pb::Subscription`], [`pb::SubscriptionStats`]).

use std::time::Duration;

use super::error::ClientError;
use super::pb::admin_client::AdminClient;
use super::Client;
use crate::wire::pb;

/// Pages a list call follows before giving up: 1000 pages of 1000 is far past the broker's
/// topic and subscription limits (10 000 each by default), so only a server that keeps
/// answering with a next page token reaches it.
const LIST_PAGES_MAX: usize = 1000;
/// Items asked for per page (the server's maximum).
const LIST_PAGE_SIZE: u32 = 1000;

/// How a new topic is made; unset fields take the server's defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopicSettings {
    /// Partitions (1 to the server's `partitions_max`, 1024 by default). Unset: the
    /// server's `--default-partitions`.
    pub partitions: Option<u32>,
    /// How long the topic remembers an idempotency key: 1 s to 24 h, whole milliseconds.
    /// Unset: the server's default (120 s).
    pub dedupe_window: Option<Duration>,
}

/// How long a message whose lease ended unacked waits before it is offered again.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Backoff after the first delivery (0 to 600 s; 0 means none). Unset: 1 s.
    pub minimum_backoff: Option<Duration>,
    /// Longest backoff (minimum_backoff to 600 s). Unset: 60 s.
    pub maximum_backoff: Option<Duration>,
}

/// Where messages go when the subscription gives up on them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeadLetterPolicy {
    /// An existing topic other than the subscription's own.
    pub topic: String,
    /// Deliveries before a message is dead-lettered (1 to 100). Unset: 5.
    pub max_delivery_attempts: Option<u32>,
}

/// How a new subscription is made; unset fields take the server's defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubscriptionSettings {
    /// Lease length in seconds (1 to 600). Unset: the server's `--ack-deadline-seconds` (30).
    pub ack_deadline_seconds: Option<u32>,
    /// Where it starts reading. Unspecified: earliest.
    pub start_position: pb::StartPosition,
    /// Backoff before redelivery; unset redelivers at once.
    pub retry_policy: Option<RetryPolicy>,
    /// Dead-lettering; unset never dead-letters.
    pub dead_letter_policy: Option<DeadLetterPolicy>,
    /// Deliver each key's messages in order, one at a time.
    pub enable_message_ordering: bool,
    /// Shared (members compete for messages) or exclusive (members share partitions).
    pub delivery_mode: pb::DeliveryMode,
}

fn duration(field: &'static str, d: Duration) -> Result<prost_types::Duration, ClientError> {
    prost_types::Duration::try_from(d).map_err(|_| ClientError::invalid(field, format!("{d:?} is too long")))
}

impl Client {
    /// One admin call to the broker requests go to now; a failure that names the leader (or
    /// a broker that cannot be reached) points the next call elsewhere.
    async fn admin_call<Q, R, F>(
        &self,
        request: Q,
        call: impl FnOnce(AdminClient<super::Connection>, Q) -> F,
    ) -> Result<tonic::Response<R>, tonic::Status>
    where
        F: std::future::Future<Output = Result<tonic::Response<R>, tonic::Status>>,
    {
        let (used, channel) = self.target();
        let answer = call(AdminClient::new(channel), request).await;
        if let Err(status) = &answer {
            let _ = self.observe(used, status);
        }
        answer
    }

    /// Creates a topic. ALREADY_EXISTS if it does.
    ///
    /// ```no_run
    /// # async fn example(client: mini_pubsub::client::Client) -> Result<(), mini_pubsub::client::ClientError> {
    /// use mini_pubsub::client::TopicSettings;
    /// let settings = TopicSettings { partitions: Some(4), ..Default::default() };
    /// let topic = client.create_topic("orders", &settings).await?;
    /// assert_eq!(topic.partitions, 4);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn create_topic(&self, name: &str, settings: &TopicSettings) -> Result<pb::Topic, ClientError> {
        let request = pb::CreateTopicRequest {
            name: name.to_string(),
            partitions: settings.partitions.unwrap_or(0),
            dedupe_window: settings.dedupe_window.map(|d| duration("dedupe_window", d)).transpose()?,
        };
        Ok(self.admin_call(request, |mut a, r| async move { a.create_topic(r).await }).await?.into_inner())
    }

    /// A topic with its partitions' offsets and its subscriptions. NOT_FOUND if missing.
    pub async fn get_topic(&self, name: &str) -> Result<pb::Topic, ClientError> {
        let request = pb::GetTopicRequest { name: name.to_string() };
        Ok(self.admin_call(request, |mut a, r| async move { a.get_topic(r).await }).await?.into_inner())
    }

    /// Every topic, in name order (all pages).
    pub async fn list_topics(&self) -> Result<Vec<pb::Topic>, ClientError> {
        let mut topics = Vec::new();
        let mut page_token = String::new();
        for _ in 0..LIST_PAGES_MAX {
            let request = pb::ListTopicsRequest { page_size: LIST_PAGE_SIZE, page_token };
            let page = self.admin_call(request, |mut a, r| async move { a.list_topics(r).await }).await?.into_inner();
            topics.extend(page.topics);
            if page.next_page_token.is_empty() {
                return Ok(topics);
            }
            page_token = page.next_page_token;
        }
        Err(too_many_pages("list_topics"))
    }

    /// Deletes a topic. Without `force`, a topic with subscriptions (or one that is a
    /// dead-letter topic) is refused with FAILED_PRECONDITION; with it, its subscriptions
    /// go too, and their names are returned.
    pub async fn delete_topic(&self, name: &str, force: bool) -> Result<Vec<String>, ClientError> {
        let request = pb::DeleteTopicRequest { name: name.to_string(), force };
        Ok(self
            .admin_call(request, |mut a, r| async move { a.delete_topic(r).await })
            .await?
            .into_inner()
            .deleted_subscriptions)
    }

    /// Creates a subscription on `topic`. ALREADY_EXISTS if it does.
    ///
    /// ```no_run
    /// # async fn example(client: mini_pubsub::client::Client) -> Result<(), mini_pubsub::client::ClientError> {
    /// use mini_pubsub::client::{RetryPolicy, SubscriptionSettings};
    /// use std::time::Duration;
    /// let settings = SubscriptionSettings {
    ///     ack_deadline_seconds: Some(10),
    ///     retry_policy: Some(RetryPolicy { minimum_backoff: Some(Duration::from_secs(2)), ..Default::default() }),
    ///     ..Default::default()
    /// };
    /// client.create_subscription("orders-audit", "orders", &settings).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn create_subscription(
        &self,
        name: &str,
        topic: &str,
        settings: &SubscriptionSettings,
    ) -> Result<pb::Subscription, ClientError> {
        let retry_policy = match &settings.retry_policy {
            None => None,
            Some(p) => Some(pb::RetryPolicy {
                minimum_backoff: p.minimum_backoff.map(|d| duration("retry_policy.minimum_backoff", d)).transpose()?,
                maximum_backoff: p.maximum_backoff.map(|d| duration("retry_policy.maximum_backoff", d)).transpose()?,
            }),
        };
        let dead_letter_policy = settings.dead_letter_policy.as_ref().map(|p| pb::DeadLetterPolicy {
            dead_letter_topic: p.topic.clone(),
            max_delivery_attempts: p.max_delivery_attempts.unwrap_or(0),
        });
        let request = pb::CreateSubscriptionRequest {
            name: name.to_string(),
            topic: topic.to_string(),
            ack_deadline_seconds: settings.ack_deadline_seconds.unwrap_or(0),
            start_position: settings.start_position.into(),
            retry_policy,
            dead_letter_policy,
            enable_message_ordering: settings.enable_message_ordering,
            delivery_mode: settings.delivery_mode.into(),
        };
        Ok(self.admin_call(request, |mut a, r| async move { a.create_subscription(r).await }).await?.into_inner())
    }

    /// A subscription's settings. NOT_FOUND if missing.
    pub async fn get_subscription(&self, name: &str) -> Result<pb::Subscription, ClientError> {
        let request = pb::GetSubscriptionRequest { name: name.to_string() };
        Ok(self.admin_call(request, |mut a, r| async move { a.get_subscription(r).await }).await?.into_inner())
    }

    /// Every subscription (of `topic` only, when given), in name order (all pages).
    pub async fn list_subscriptions(&self, topic: Option<&str>) -> Result<Vec<pb::Subscription>, ClientError> {
        let mut subscriptions = Vec::new();
        let mut page_token = String::new();
        for _ in 0..LIST_PAGES_MAX {
            let request = pb::ListSubscriptionsRequest {
                topic: topic.unwrap_or_default().to_string(),
                page_size: LIST_PAGE_SIZE,
                page_token,
            };
            let page =
                self.admin_call(request, |mut a, r| async move { a.list_subscriptions(r).await }).await?.into_inner();
            subscriptions.extend(page.subscriptions);
            if page.next_page_token.is_empty() {
                return Ok(subscriptions);
            }
            page_token = page.next_page_token;
        }
        Err(too_many_pages("list_subscriptions"))
    }

    /// Deletes a subscription; its open streams end with NOT_FOUND.
    pub async fn delete_subscription(&self, name: &str) -> Result<(), ClientError> {
        let request = pb::DeleteSubscriptionRequest { name: name.to_string() };
        self.admin_call(request, |mut a, r| async move { a.delete_subscription(r).await }).await?;
        Ok(())
    }

    /// Backlog, leases, streams and per-partition committed offsets of a subscription.
    pub async fn subscription_stats(&self, name: &str) -> Result<pb::SubscriptionStats, ClientError> {
        let request = pb::GetSubscriptionStatsRequest { name: name.to_string() };
        Ok(self.admin_call(request, |mut a, r| async move { a.get_subscription_stats(r).await }).await?.into_inner())
    }
}

fn too_many_pages(call: &'static str) -> ClientError {
    ClientError::Status(tonic::Status::out_of_range(format!(
        "{call}: the server kept answering with a next page after {LIST_PAGES_MAX} pages of {LIST_PAGE_SIZE}"
    )))
}
