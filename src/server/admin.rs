//! The `pubsub.Admin` service.

use std::collections::BTreeMap;
use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::access::{principal_of, Permission};
use super::driver::{unexpected, DriverHandle};
use crate::cluster::ClusterNode;
use crate::core::{Answer, BrokerError, Command, LeaderHint, Query, SubscriptionSpec};
use crate::wire::{self, pb};

/// Topic and subscription management, backed by the driver.
pub struct AdminService {
    pub(super) driver: DriverHandle,
    /// This node's cluster, when it is one.
    pub(super) cluster: Option<ClusterView>,
    /// What each principal may do.
    pub(super) access: Arc<crate::server::access::Access>,
}

/// What stops a node's peer port, and the task that serves it.
pub(super) type PeerPort =
    Arc<std::sync::Mutex<Option<(tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>)>>>;

/// What `GetCluster` reads: the node, and every node's addresses.
#[derive(Clone)]
pub(super) struct ClusterView {
    pub(super) node: Arc<ClusterNode>,
    /// Raft peer addresses, by node id.
    pub(super) peers: BTreeMap<u64, String>,
    /// Client addresses, by node id (those the `brokers` setting names).
    pub(super) brokers: BTreeMap<u64, String>,
    /// Stops the peer port, and the task serving it (taken once, at shutdown).
    pub(super) peer_port: PeerPort,
}

impl ClusterView {
    fn describe(&self) -> pb::Cluster {
        let state = self.node.state();
        let leader = state.leader.unwrap_or(0);
        pb::Cluster {
            node_id: state.id,
            role: state.role.to_string(),
            term: state.term,
            leader_id: leader,
            leader_address: self.brokers.get(&leader).cloned().unwrap_or_default(),
            committed_index: state.committed,
            applied_index: state.applied,
            last_log_index: state.last_log,
            serving: state.serving,
            nodes: self
                .peers
                .iter()
                .map(|(id, peer)| pb::ClusterNode {
                    id: *id,
                    address: self.brokers.get(id).cloned().unwrap_or_default(),
                    peer_address: peer.clone(),
                })
                .collect(),
        }
    }
}

type Reply<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    async fn create_topic(&self, request: Request<pb::CreateTopicRequest>) -> Reply<pb::Topic> {
        self.access.check_request(&request, Permission::Admin, "topic", |r| &r.name)?;
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
        self.access.check_request(&request, Permission::Admin, "topic", |r| &r.name)?;
        let req = request.into_inner();
        match self.driver.query(Query::Topic { name: req.name }).await?.0 {
            Answer::Topic(info) => Ok(Response::new(wire::topic(info))),
            other => Err(unexpected(&other)),
        }
    }

    async fn list_topics(&self, request: Request<pb::ListTopicsRequest>) -> Reply<pb::ListTopicsResponse> {
        let principal = principal_of(&request);
        let req = request.into_inner();
        let limit = wire::page_size(req.page_size)?;
        let after = wire::page_token(&req.page_token).map(str::to_string);
        let (topics, next) = match self.driver.query(Query::Topics { after, limit }).await?.0 {
            Answer::Topics { topics, next } => (topics, next),
            other => return Err(unexpected(&other)),
        };
        // Only the topics the principal administers (a page may come back short).
        let topics = topics.into_iter().filter(|t| self.access.allows(principal.as_ref(), Permission::Admin, &t.name));
        Ok(Response::new(pb::ListTopicsResponse {
            topics: topics.map(wire::topic).collect(),
            next_page_token: next.unwrap_or_default(),
        }))
    }

    async fn delete_topic(&self, request: Request<pb::DeleteTopicRequest>) -> Reply<pb::DeleteTopicResponse> {
        self.access.check_request(&request, Permission::Admin, "topic", |r| &r.name)?;
        let req = request.into_inner();
        match self.driver.handle(Command::DeleteTopic { name: req.name, force: req.force }).await? {
            Answer::TopicDeleted { subscriptions } => {
                Ok(Response::new(pb::DeleteTopicResponse { deleted_subscriptions: subscriptions }))
            }
            other => Err(unexpected(&other)),
        }
    }

    async fn create_subscription(&self, request: Request<pb::CreateSubscriptionRequest>) -> Reply<pb::Subscription> {
        self.access.check_request(&request, Permission::Admin, "subscription", |r| &r.name)?;
        // Dead-lettering is the broker's own act, but it publishes where its creator says.
        if !dead_letter_topic(request.get_ref()).is_empty() {
            self.access.check_request(&request, Permission::Publish, "dead-letter topic", dead_letter_topic)?;
        }
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
        self.access.check_request(&request, Permission::Admin, "subscription", |r| &r.name)?;
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
        let principal = principal_of(&request);
        let req = request.into_inner();
        let limit = wire::page_size(req.page_size)?;
        let topic = (!req.topic.is_empty()).then_some(req.topic);
        let after = wire::page_token(&req.page_token).map(str::to_string);
        let query = Query::Subscriptions { topic, after, limit };
        let (subscriptions, next) = match self.driver.query(query).await?.0 {
            Answer::Subscriptions { subscriptions, next } => (subscriptions, next),
            other => return Err(unexpected(&other)),
        };
        let access = &self.access;
        let subscriptions =
            subscriptions.into_iter().filter(|s| access.allows(principal.as_ref(), Permission::Admin, &s.name));
        Ok(Response::new(pb::ListSubscriptionsResponse {
            subscriptions: subscriptions.map(wire::subscription).collect(),
            next_page_token: next.unwrap_or_default(),
        }))
    }

    async fn delete_subscription(
        &self,
        request: Request<pb::DeleteSubscriptionRequest>,
    ) -> Reply<pb::DeleteSubscriptionResponse> {
        self.access.check_request(&request, Permission::Admin, "subscription", |r| &r.name)?;
        let req = request.into_inner();
        self.driver.handle(Command::DeleteSubscription { name: req.name }).await?;
        Ok(Response::new(pb::DeleteSubscriptionResponse {}))
    }

    async fn get_subscription_stats(
        &self,
        request: Request<pb::GetSubscriptionStatsRequest>,
    ) -> Reply<pb::SubscriptionStats> {
        self.access.check_request(&request, Permission::Admin, "subscription", |r| &r.name)?;
        let req = request.into_inner();
        match self.driver.query(Query::Stats { subscription: req.name }).await?.0 {
            Answer::Stats(stats) => Ok(Response::new(wire::subscription_stats(stats))),
            other => Err(unexpected(&other)),
        }
    }

    async fn list_pending(&self, request: Request<pb::ListPendingRequest>) -> Reply<pb::ListPendingResponse> {
        self.access.check_request(&request, Permission::Admin, "subscription", |r| &r.subscription)?;
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
        self.access.check_request(&request, Permission::Admin, "subscription", |r| &r.subscription)?;
        let req = request.into_inner();
        let command = Command::Redrive { subscription: req.subscription, max_messages: req.max_messages };
        match self.driver.handle(command).await? {
            Answer::Redriven(results) => Ok(Response::new(pb::RedriveDeadLettersResponse {
                results: results.into_iter().map(wire::redrive_result).collect(),
            })),
            other => Err(unexpected(&other)),
        }
    }

    async fn get_cluster(&self, _request: Request<pb::GetClusterRequest>) -> Reply<pb::Cluster> {
        let cluster = match &self.cluster {
            Some(view) => view.describe(),
            None => pb::Cluster { role: "standalone".into(), serving: true, ..Default::default() },
        };
        Ok(Response::new(cluster))
    }

    async fn transfer_leadership(&self, request: Request<pb::TransferLeadershipRequest>) -> Reply<pb::Cluster> {
        self.access.check_everything(request.extensions().get())?;
        let to = request.into_inner().node_id;
        let Some(view) = &self.cluster else {
            return Err(Status::failed_precondition(
                "this broker is not a cluster: there is no leadership to transfer",
            ));
        };
        if !view.peers.contains_key(&to) {
            let ids: Vec<String> = view.peers.keys().map(u64::to_string).collect();
            return Err(Status::invalid_argument(format!(
                "node_id: {to} is not a node of this cluster ({})",
                ids.join(", ")
            )));
        }
        let state = view.node.state();
        if state.leader != Some(state.id) {
            let leader = state.leader.map(|id| LeaderHint { id, addr: view.brokers.get(&id).cloned() });
            return Err(BrokerError::NotLeader { leader }.into());
        }
        // The target refuses while its log lacks the leader's last entry (a busy leader's
        // moves on), so the hand-over is asked for again until it takes or time runs out.
        let moved = tokio::time::timeout(TRANSFER_WAIT, async {
            while view.node.state().leader != Some(to) {
                if view.node.state().leader == Some(state.id) {
                    view.node.transfer_leader(to).await.map_err(Status::unavailable)?;
                }
                let mut watcher = view.node.watcher();
                let retry = tokio::time::sleep(TRANSFER_RETRY);
                tokio::pin!(retry);
                loop {
                    tokio::select! {
                        biased;
                        () = &mut retry => break,
                        alive = watcher.changed() => if !alive || view.node.state().leader == Some(to) { break },
                    }
                }
            }
            Ok::<(), Status>(())
        })
        .await;
        match moved {
            Ok(Ok(())) => Ok(Response::new(view.describe())),
            Ok(Err(status)) => Err(status),
            Err(_) => Err(Status::deadline_exceeded(format!(
                "node {to} did not take the leadership within {} s; GetCluster shows who leads",
                TRANSFER_WAIT.as_secs()
            ))),
        }
    }
}

/// How long TransferLeadership waits for the new leader.
const TRANSFER_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// How often TransferLeadership asks again while the target has not taken over.
const TRANSFER_RETRY: std::time::Duration = std::time::Duration::from_millis(500);

/// The dead-letter topic a subscription is created with; empty without one.
fn dead_letter_topic(request: &pb::CreateSubscriptionRequest) -> &str {
    request.dead_letter_policy.as_ref().map_or("", |p| p.dead_letter_topic.as_str())
}
