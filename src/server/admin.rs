//! The `pubsub.Admin` service.

use tonic::{Request, Response, Status};

use super::driver::{unexpected, DriverHandle};
use crate::core::{Answer, Command, Query, SubscriptionSpec};
use crate::wire::{self, pb};

/// Topic and subscription management, backed by the driver.
pub struct AdminService {
    pub(super) driver: DriverHandle,
}

type Reply<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    async fn create_topic(&self, request: Request<pb::CreateTopicRequest>) -> Reply<pb::Topic> {
        let req = request.into_inner();
        let partitions = (req.partitions != 0).then_some(req.partitions);
        let window_ms = wire::dedupe_window_ms(req.dedupe_window.as_ref())?;
        let command = Command::CreateTopic { name: req.name, partitions, dedupe_window_ms: window_ms };
        match self.driver.handle(command).await? {
            Answer::Topic(info) => Ok(Response::new(wire::topic(info))),
            other => Err(unexpected(&other)),
        }
    }

    async fn get_topic(&self, request: Request<pb::GetTopicRequest>) -> Reply<pb::Topic> {
        let req = request.into_inner();
        match self.driver.query(Query::Topic { name: req.name }).await?.0 {
            Answer::Topic(info) => Ok(Response::new(wire::topic(info))),
            other => Err(unexpected(&other)),
        }
    }

    async fn list_topics(&self, request: Request<pb::ListTopicsRequest>) -> Reply<pb::ListTopicsResponse> {
        let req = request.into_inner();
        let limit = wire::page_size(req.page_size)?;
        let after = wire::page_token(&req.page_token).map(str::to_string);
        let (topics, next) = match self.driver.query(Query::Topics { after, limit }).await?.0 {
            Answer::Topics { topics, next } => (topics, next),
            other => return Err(unexpected(&other)),
        };
        Ok(Response::new(pb::ListTopicsResponse {
            topics: topics.into_iter().map(wire::topic).collect(),
            next_page_token: next.unwrap_or_default(),
        }))
    }

    async fn delete_topic(&self, request: Request<pb::DeleteTopicRequest>) -> Reply<pb::DeleteTopicResponse> {
        let req = request.into_inner();
        match self.driver.handle(Command::DeleteTopic { name: req.name, force: req.force }).await? {
            Answer::TopicDeleted { subscriptions } => {
                Ok(Response::new(pb::DeleteTopicResponse { deleted_subscriptions: subscriptions }))
            }
            other => Err(unexpected(&other)),
        }
    }

    async fn create_subscription(&self, request: Request<pb::CreateSubscriptionRequest>) -> Reply<pb::Subscription> {
        let req = request.into_inner();
        let spec = SubscriptionSpec {
            name: req.name,
            topic: req.topic,
            ack_deadline_ms: wire::ack_deadline_ms(req.ack_deadline_seconds),
            start: wire::start_position("start_position", req.start_position)?,
            retry: wire::retry_spec(req.retry_policy)?,
            dead_letter: wire::dead_letter_spec(req.dead_letter_policy),
            ordered: req.enable_message_ordering,
            delivery_mode: wire::delivery_mode("delivery_mode", req.delivery_mode)?,
        };
        match self.driver.handle(Command::CreateSubscription(spec)).await? {
            Answer::Subscription(info) => Ok(Response::new(wire::subscription(info))),
            other => Err(unexpected(&other)),
        }
    }

    async fn get_subscription(&self, request: Request<pb::GetSubscriptionRequest>) -> Reply<pb::Subscription> {
        let req = request.into_inner();
        match self.driver.query(Query::Subscription { name: req.name }).await?.0 {
            Answer::Subscription(info) => Ok(Response::new(wire::subscription(info))),
            other => Err(unexpected(&other)),
        }
    }

    async fn list_subscriptions(
        &self,
        request: Request<pb::ListSubscriptionsRequest>,
    ) -> Reply<pb::ListSubscriptionsResponse> {
        let req = request.into_inner();
        let limit = wire::page_size(req.page_size)?;
        let topic = (!req.topic.is_empty()).then_some(req.topic);
        let after = wire::page_token(&req.page_token).map(str::to_string);
        let query = Query::Subscriptions { topic, after, limit };
        let (subscriptions, next) = match self.driver.query(query).await?.0 {
            Answer::Subscriptions { subscriptions, next } => (subscriptions, next),
            other => return Err(unexpected(&other)),
        };
        Ok(Response::new(pb::ListSubscriptionsResponse {
            subscriptions: subscriptions.into_iter().map(wire::subscription).collect(),
            next_page_token: next.unwrap_or_default(),
        }))
    }

    async fn delete_subscription(
        &self,
        request: Request<pb::DeleteSubscriptionRequest>,
    ) -> Reply<pb::DeleteSubscriptionResponse> {
        let req = request.into_inner();
        self.driver.handle(Command::DeleteSubscription { name: req.name }).await?;
        Ok(Response::new(pb::DeleteSubscriptionResponse {}))
    }

    async fn get_subscription_stats(
        &self,
        request: Request<pb::GetSubscriptionStatsRequest>,
    ) -> Reply<pb::SubscriptionStats> {
        let req = request.into_inner();
        match self.driver.query(Query::Stats { subscription: req.name }).await?.0 {
            Answer::Stats(stats) => Ok(Response::new(wire::subscription_stats(stats))),
            other => Err(unexpected(&other)),
        }
    }

    async fn list_pending(&self, request: Request<pb::ListPendingRequest>) -> Reply<pb::ListPendingResponse> {
        let req = request.into_inner();
        let limit = wire::page_size(req.page_size)?;
        let after = wire::pending_token(&req.page_token)?;
        let query = Query::Pending { subscription: req.subscription, after, limit };
        let (messages, next, at) = match self.driver.query(query).await? {
            (Answer::Pending { messages, next }, at) => (messages, next, at),
            (other, _) => return Err(unexpected(&other)),
        };
        Ok(Response::new(pb::ListPendingResponse {
            messages: messages.into_iter().map(|m| wire::pending_message(m, at.wall_ms)).collect(),
            next_page_token: wire::pending_token_of(next),
        }))
    }

    async fn redrive_dead_letters(
        &self,
        request: Request<pb::RedriveDeadLettersRequest>,
    ) -> Reply<pb::RedriveDeadLettersResponse> {
        let req = request.into_inner();
        let command = Command::Redrive { subscription: req.subscription, max_messages: req.max_messages };
        match self.driver.handle(command).await? {
            Answer::Redriven(results) => Ok(Response::new(pb::RedriveDeadLettersResponse {
                results: results.into_iter().map(wire::redrive_result).collect(),
            })),
            other => Err(unexpected(&other)),
        }
    }
}
