//! The `pubsub.Admin` service.

use tonic::{Request, Response, Status};

use super::driver::DriverHandle;
use crate::core::SubscriptionSpec;
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
        let info = self.driver.call(move |d| d.broker.create_topic_with(&req.name, partitions, window_ms)).await??;
        Ok(Response::new(wire::topic(info)))
    }

    async fn get_topic(&self, request: Request<pb::GetTopicRequest>) -> Reply<pb::Topic> {
        let req = request.into_inner();
        let info = self.driver.call(move |d| d.broker.topic_info(&req.name)).await??;
        Ok(Response::new(wire::topic(info)))
    }

    async fn list_topics(&self, request: Request<pb::ListTopicsRequest>) -> Reply<pb::ListTopicsResponse> {
        let req = request.into_inner();
        let limit = wire::page_size(req.page_size)?;
        let (topics, next) =
            self.driver.call(move |d| d.broker.list_topics(wire::page_token(&req.page_token), limit)).await?;
        Ok(Response::new(pb::ListTopicsResponse {
            topics: topics.into_iter().map(wire::topic).collect(),
            next_page_token: next.unwrap_or_default(),
        }))
    }

    async fn delete_topic(&self, request: Request<pb::DeleteTopicRequest>) -> Reply<pb::DeleteTopicResponse> {
        let req = request.into_inner();
        let deleted = self.driver.call(move |d| d.broker.delete_topic(&req.name, req.force)).await??;
        Ok(Response::new(pb::DeleteTopicResponse { deleted_subscriptions: deleted }))
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
        let info = self.driver.call(move |d| d.broker.create_subscription(spec)).await??;
        Ok(Response::new(wire::subscription(info)))
    }

    async fn get_subscription(&self, request: Request<pb::GetSubscriptionRequest>) -> Reply<pb::Subscription> {
        let req = request.into_inner();
        let info = self.driver.call(move |d| d.broker.subscription_info(&req.name)).await??;
        Ok(Response::new(wire::subscription(info)))
    }

    async fn list_subscriptions(
        &self,
        request: Request<pb::ListSubscriptionsRequest>,
    ) -> Reply<pb::ListSubscriptionsResponse> {
        let req = request.into_inner();
        let limit = wire::page_size(req.page_size)?;
        let (subscriptions, next) = self
            .driver
            .call(move |d| {
                let topic = (!req.topic.is_empty()).then_some(req.topic.as_str());
                d.broker.list_subscriptions(topic, wire::page_token(&req.page_token), limit)
            })
            .await??;
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
        self.driver.call(move |d| d.broker.delete_subscription(&req.name)).await??;
        Ok(Response::new(pb::DeleteSubscriptionResponse {}))
    }

    async fn get_subscription_stats(
        &self,
        request: Request<pb::GetSubscriptionStatsRequest>,
    ) -> Reply<pb::SubscriptionStats> {
        let req = request.into_inner();
        let stats = self.driver.call(move |d| d.broker.subscription_stats(&req.name)).await??;
        Ok(Response::new(wire::subscription_stats(stats)))
    }

    async fn list_pending(&self, request: Request<pb::ListPendingRequest>) -> Reply<pb::ListPendingResponse> {
        let req = request.into_inner();
        let limit = wire::page_size(req.page_size)?;
        let after = wire::pending_token(&req.page_token)?;
        let (page, next, wall) = self
            .driver
            .call(move |d| {
                let (now, wall) = (d.now_ms(), d.wall_ms());
                d.broker.list_pending(now, &req.subscription, after, limit).map(|(page, next)| (page, next, wall))
            })
            .await??;
        Ok(Response::new(pb::ListPendingResponse {
            messages: page.into_iter().map(|m| wire::pending_message(m, wall)).collect(),
            next_page_token: wire::pending_token_of(next),
        }))
    }

    async fn redrive_dead_letters(
        &self,
        request: Request<pb::RedriveDeadLettersRequest>,
    ) -> Reply<pb::RedriveDeadLettersResponse> {
        let req = request.into_inner();
        let results = self
            .driver
            .call(move |d| {
                let now = d.now_ms();
                d.broker.redrive_dead_letters(now, &req.subscription, req.max_messages)
            })
            .await??;
        Ok(Response::new(pb::RedriveDeadLettersResponse {
            results: results.into_iter().map(wire::redrive_result).collect(),
        }))
    }
}
