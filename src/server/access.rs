//! What each principal may do: `publish`, `subscribe` (Subscribe, Pull, Ack, Nack,
//! ModifyAckDeadline) and `admin` (create, get, list, delete, seek, redrive, stats), each on
//! topic and subscription names that match a pattern: an exact name, or a prefix ending in
//! `*` (`orders.*`, or `*` for every name).
//!
//! Deny by default: once credentials (`tokens`, `tls_client_ca`) or `permissions` are
//! configured, a principal may do only what a grant gives it. The principal `anonymous`
//! stands for a client without a credential; granting it anything lets such clients in for
//! that. With none of these settings everyone may do everything, as before. A refusal is
//! PERMISSION_DENIED naming the principal, the permission and the resource, and is decided
//! before the broker sees the request, so it changes nothing (no topic is auto-created).

use std::sync::{Arc, RwLock};

use tonic::{Request, Status};

use super::auth::{parse_tokens, Authenticator, Principal};
use super::refusals::{Reason, Refusals, UNAUTHENTICATED};

/// The principal of a client that presented no credential.
pub const ANONYMOUS: &str = "anonymous";
/// The most grants `permissions` may hold.
pub const GRANTS_MAX: usize = 10_000;

/// A permission a grant gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Permission {
    /// Publish and PublishStream to a topic.
    Publish,
    /// Subscribe, Pull, Ack, Nack and ModifyAckDeadline on a subscription (or, for an
    /// ephemeral subscription, on its topic).
    Subscribe,
    /// Create, get, list, delete, seek, redrive and stats.
    Admin,
}

impl Permission {
    fn parse(text: &str) -> Option<Self> {
        match text {
            "publish" => Some(Self::Publish),
            "subscribe" => Some(Self::Subscribe),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }

    /// The permission's name, as `permissions` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Publish => "publish",
            Self::Subscribe => "subscribe",
            Self::Admin => "admin",
        }
    }
}

/// The names a grant covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    /// This name only.
    Exact(String),
    /// Every name that starts with this (`orders.*` is `orders.`; `*` is every name).
    Prefix(String),
}

impl Pattern {
    fn matches(&self, name: &str) -> bool {
        match self {
            Pattern::Exact(exact) => exact == name,
            Pattern::Prefix(prefix) => name.starts_with(prefix.as_str()),
        }
    }
}

/// One grant: `principal` may use `permission` on names matching `pattern`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// Who.
    pub principal: String,
    /// What.
    pub permission: Permission,
    /// On which names.
    pub pattern: Pattern,
}

/// Parses `permissions`: `PERMISSION:PATTERN:PRINCIPAL,...` (`publish:orders.*:shop`); the
/// principal is the rest after the second colon, so it may hold colons (a URI SAN).
pub fn parse_permissions(text: &str) -> Result<Vec<Grant>, String> {
    let mut grants = Vec::new();
    for item in text.split(',').map(str::trim).filter(|item| !item.is_empty()) {
        let shape = || {
            format!(
                "expected PERMISSION:PATTERN:PRINCIPAL with PERMISSION publish, subscribe or admin and PATTERN a name or a prefix ending in `*`, got `{item}`"
            )
        };
        let mut parts = item.splitn(3, ':');
        let (Some(permission), Some(pattern), Some(principal)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(shape());
        };
        let permission = Permission::parse(permission.trim()).ok_or_else(shape)?;
        let (pattern, principal) = (pattern.trim(), principal.trim());
        if pattern.is_empty() || principal.is_empty() || pattern.strip_suffix('*').unwrap_or(pattern).contains('*') {
            return Err(shape());
        }
        let pattern = match pattern.strip_suffix('*') {
            Some(prefix) => Pattern::Prefix(prefix.to_string()),
            None => Pattern::Exact(pattern.to_string()),
        };
        grants.push(Grant { principal: principal.to_string(), permission, pattern });
    }
    if grants.len() > GRANTS_MAX {
        return Err(format!("{} grants; at most {GRANTS_MAX}", grants.len()));
    }
    Ok(grants)
}

/// Grants as configured; `None`: everyone may do everything (nothing configured).
#[derive(Debug, Clone, Default)]
pub struct Grants {
    grants: Option<Vec<Grant>>,
}

impl Grants {
    /// The grants `permissions` and `tokens` call for (both checked by `validate`), with a
    /// client CA or not: deny by default once credentials or permissions are configured.
    fn new(permissions: &str, tokens: &str, client_certificates: bool) -> Result<Self, String> {
        let grants = parse_permissions(permissions)?;
        let active = !grants.is_empty() || !tokens.trim().is_empty() || client_certificates;
        Ok(Self { grants: active.then_some(grants) })
    }

    /// Whether requests are checked at all.
    pub fn active(&self) -> bool {
        self.grants.is_some()
    }

    /// How many grants are configured.
    pub fn count(&self) -> usize {
        self.grants.as_ref().map_or(0, Vec::len)
    }

    /// Whether a client without a credential may do something (`anonymous` has a grant).
    pub fn anonymous_granted(&self) -> bool {
        self.grants.as_ref().is_some_and(|grants| grants.iter().any(|g| g.principal == ANONYMOUS))
    }

    /// Whether `principal` may use `permission` on `name`.
    pub fn allows(&self, principal: Option<&Principal>, permission: Permission, name: &str) -> bool {
        let Some(grants) = &self.grants else { return true };
        let who = principal.map_or(ANONYMOUS, |p| p.name.as_str());
        grants.iter().any(|g| g.permission == permission && g.principal == who && g.pattern.matches(name))
    }

    /// Whether `principal` holds `admin` on every name (`*`).
    fn allows_everything(&self, principal: Option<&Principal>) -> bool {
        let Some(grants) = &self.grants else { return true };
        let who = principal.map_or(ANONYMOUS, |p| p.name.as_str());
        let all = Pattern::Prefix(String::new());
        grants.iter().any(|g| g.permission == Permission::Admin && g.principal == who && g.pattern == all)
    }
}

/// The credentials and grants in force, replaced whole by a reload.
#[derive(Debug)]
struct Policy {
    grants: Grants,
    auth: Option<Authenticator>,
}

/// Who may do what: the credentials (`tokens`, and client certificates with a client CA)
/// and grants (`permissions`) in force, reloadable while the server runs ([`Access::reload`],
/// on SIGHUP), and the record of what they refused.
#[derive(Debug)]
pub struct Access {
    policy: RwLock<Arc<Policy>>,
    client_certificates: bool,
    refusals: Arc<Refusals>,
    /// Counts the reloads, so open streams check their credential again after one.
    reloads: tokio::sync::watch::Sender<u64>,
}

impl Access {
    /// The access the settings call for (`tokens` and `permissions` checked by `validate`);
    /// refusals are counted and logged in `refusals`.
    pub fn from_config(config: &super::ServerConfig, refusals: Arc<Refusals>) -> Self {
        let client_certificates = config.tls_client_ca.is_some();
        let policy = Self::policy_of(config, client_certificates).unwrap_or_else(|_| Policy {
            grants: Grants { grants: Some(Vec::new()) },
            auth: Authenticator::new(Vec::new(), client_certificates),
        });
        let (reloads, _) = tokio::sync::watch::channel(0);
        Self { policy: RwLock::new(Arc::new(policy)), client_certificates, refusals, reloads }
    }

    fn policy_of(config: &super::ServerConfig, client_certificates: bool) -> Result<Policy, String> {
        let tokens = parse_tokens(&config.tokens).map_err(|e| format!("tokens: {e}"))?;
        let grants = Grants::new(&config.permissions, &config.tokens, client_certificates)
            .map_err(|e| format!("permissions: {e}"))?;
        Ok(Policy { grants, auth: Authenticator::new(tokens, client_certificates) })
    }

    /// Puts `config`'s `tokens` and `permissions` in force for the requests that come next,
    /// and says how many of each there are now; a setting that does not parse changes
    /// nothing and is named in the error. The client CA stays as the server started.
    pub fn reload(&self, config: &super::ServerConfig) -> Result<(usize, usize), String> {
        let policy = Self::policy_of(config, self.client_certificates)?;
        let counts = (policy.auth.as_ref().map_or(0, Authenticator::token_count), policy.grants.count());
        {
            let mut current = self.policy.write().map_err(|_| "the policy lock is poisoned".to_string())?;
            *current = Arc::new(policy);
        }
        self.reloads.send_modify(|n| *n += 1);
        Ok(counts)
    }

    /// A guard for a stream opened by `request`: it resolves when a reload took away the
    /// stream's credential (or its grant), so the stream can be ended.
    pub fn guard<T>(self: &Arc<Self>, request: &Request<T>) -> StreamGuard {
        let peer = request.extensions().get::<super::auth::Peer>();
        StreamGuard {
            access: self.clone(),
            authorization: request.metadata().get("authorization").cloned(),
            identity: peer.and_then(|peer| peer.identity.clone()),
            addr: peer.and_then(|peer| peer.addr),
            reloads: self.reloads.subscribe(),
        }
    }

    fn policy(&self) -> Arc<Policy> {
        match self.policy.read() {
            Ok(policy) => policy.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The principal (from `addr`) of a request with `metadata` from `addr` whose
    /// certificate named `identity`: `None` when no credential is configured and nothing is
    /// checked.
    /// UNAUTHENTICATED (counted and logged) when a credential is needed and missing or
    /// wrong.
    pub fn authenticate(
        &self,
        metadata: &tonic::metadata::MetadataMap,
        identity: Option<&str>,
        addr: Option<std::net::SocketAddr>,
    ) -> Result<Option<Principal>, Status> {
        let policy = self.policy();
        match &policy.auth {
            Some(auth) => match auth.authenticate(metadata, identity, policy.grants.anonymous_granted()) {
                Ok(principal) => Ok(Some(Principal { peer: addr, ..principal })),
                Err(refused) => {
                    self.refusals.refused(UNAUTHENTICATED, refused.reason, addr, refused.status.message());
                    Err(refused.status)
                }
            },
            None if policy.grants.active() => Ok(Some(Principal { peer: addr, ..Principal::new(ANONYMOUS) })),
            None => Ok(None),
        }
    }

    /// Whether `principal` may use `permission` on `name`.
    pub fn allows(&self, principal: Option<&Principal>, permission: Permission, name: &str) -> bool {
        self.policy().grants.allows(principal, permission, name)
    }

    /// PERMISSION_DENIED (counted and logged) unless `principal` may use `permission` on
    /// `what` (`topic` or `subscription`) `name`.
    pub fn check(
        &self,
        principal: Option<&Principal>,
        permission: Permission,
        what: &str,
        name: &str,
    ) -> Result<(), Status> {
        if self.allows(principal, permission, name) {
            return Ok(());
        }
        let who = principal.map_or(ANONYMOUS, |p| p.name.as_str());
        // The name is not validated yet: shown escaped and cut, so it cannot forge log lines.
        let name = shown_name(name);
        let status = Status::permission_denied(format!(
            "principal `{who}` may not {} {what} `{name}`: no `{}` grant matches it",
            match permission {
                Permission::Publish => "publish to",
                Permission::Subscribe => "subscribe to",
                Permission::Admin => "administer",
            },
            permission.name()
        ));
        let reason = match permission {
            Permission::Publish => Reason::NoPublishGrant,
            Permission::Subscribe => Reason::NoSubscribeGrant,
            Permission::Admin => Reason::NoAdminGrant,
        };
        self.refusals.refused(who, reason, principal.and_then(|p| p.peer), status.message());
        Err(status)
    }

    /// PERMISSION_DENIED (counted and logged) unless `principal` holds `admin` on every
    /// name (`*`): for the cluster's own operations.
    pub fn check_everything(&self, principal: Option<&Principal>) -> Result<(), Status> {
        if self.policy().grants.allows_everything(principal) {
            return Ok(());
        }
        let who = principal.map_or(ANONYMOUS, |p| p.name.as_str());
        let status = Status::permission_denied(format!(
            "principal `{who}` may not change the cluster: that takes an `admin:*` grant"
        ));
        self.refusals.refused(who, Reason::NoClusterGrant, principal.and_then(|p| p.peer), status.message());
        Err(status)
    }
}

/// What a stream was opened with, checked again after every reload of tokens and grants:
/// a stream whose token was removed, or whose principal lost its grant, is ended, as NATS
/// closes the connections of a user a reload removed.
#[derive(Debug)]
pub struct StreamGuard {
    access: Arc<Access>,
    authorization: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
    identity: Option<Arc<str>>,
    addr: Option<std::net::SocketAddr>,
    reloads: tokio::sync::watch::Receiver<u64>,
}

impl StreamGuard {
    /// Resolves, after a reload, with the status to end the stream with when its credential
    /// is no longer let in, or (given `grant`: permission, resource kind, name) no longer
    /// holds that grant. Never resolves otherwise. Cancel-safe.
    pub async fn revoked(&mut self, grant: Option<(Permission, &str, &str)>) -> Status {
        // One pass per reload, for as long as the stream lives.
        loop {
            if self.reloads.changed().await.is_err() {
                return std::future::pending().await;
            }
            let mut metadata = tonic::metadata::MetadataMap::new();
            if let Some(value) = &self.authorization {
                metadata.insert("authorization", value.clone());
            }
            let principal = match self.access.authenticate(&metadata, self.identity.as_deref(), self.addr) {
                Ok(principal) => principal,
                Err(status) => return status,
            };
            if let Some((permission, what, name)) = grant {
                if let Err(status) = self.access.check(principal.as_ref(), permission, what, name) {
                    return status;
                }
            }
        }
    }
}

/// The most characters of a refused name a refusal shows.
const SHOWN_NAME_CHARS: usize = 256;

/// `name` as a refusal shows it: escaped (no newline or control character reaches a log
/// line) and cut at [`SHOWN_NAME_CHARS`].
fn shown_name(name: &str) -> String {
    let shown: String = name.chars().take(SHOWN_NAME_CHARS).flat_map(char::escape_debug).collect();
    if name.chars().count() > SHOWN_NAME_CHARS {
        format!("{shown}...")
    } else {
        shown
    }
}

/// The principal a request was let in as (set by the authentication interceptor).
pub fn principal_of<T>(request: &Request<T>) -> Option<Principal> {
    request.extensions().get::<Principal>().cloned()
}

impl Access {
    /// [`Access::check`] for the principal `request` was let in as, on the name `name`
    /// reads from its message.
    pub fn check_request<T>(
        &self,
        request: &Request<T>,
        permission: Permission,
        what: &str,
        name: impl FnOnce(&T) -> &str,
    ) -> Result<(), Status> {
        let principal = request.extensions().get::<Principal>();
        self.check(principal, permission, what, name(request.get_ref()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusals() -> Arc<Refusals> {
        Arc::new(Refusals::new(Arc::new(crate::env::TokioClock::new())))
    }

    fn access(text: &str) -> Access {
        let config = crate::server::ServerConfig { permissions: text.into(), ..Default::default() };
        Access::from_config(&config, refusals())
    }

    #[test]
    fn a_grant_covers_its_principal_permission_and_names_only() {
        let access =
            access("publish:orders.*:shop, subscribe:orders-audit:shop, admin:*:ops, subscribe:public.*:anonymous");
        let shop = Some(Principal::new("shop"));
        assert!(access.allows(shop.as_ref(), Permission::Publish, "orders.eu"));
        assert!(!access.allows(shop.as_ref(), Permission::Publish, "orders"), "the prefix is `orders.`");
        assert!(!access.allows(shop.as_ref(), Permission::Admin, "orders.eu"));
        assert!(access.allows(shop.as_ref(), Permission::Subscribe, "orders-audit"));
        assert!(!access.allows(shop.as_ref(), Permission::Subscribe, "orders-audit-2"), "exact");
        let ops = Some(Principal::new("ops"));
        assert!(access.allows(ops.as_ref(), Permission::Admin, "anything"));
        let forged = access.check(shop.as_ref(), Permission::Admin, "topic", "a\nWARN forged").unwrap_err();
        assert!(forged.message().contains("`a\\nWARN forged`"), "{}", forged.message());
        let long = access.check(shop.as_ref(), Permission::Admin, "topic", &"x".repeat(10_000)).unwrap_err();
        assert!(long.message().len() < 400, "{}", long.message().len());
        assert!(access.check_everything(ops.as_ref()).is_ok());
        assert!(access.check_everything(shop.as_ref()).is_err());
        assert!(access.allows(None, Permission::Subscribe, "public.news"));
        assert!(access.policy().grants.anonymous_granted());
        let denied = access.check(shop.as_ref(), Permission::Publish, "topic", "payments").unwrap_err();
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
        assert_eq!(
            denied.message(),
            "principal `shop` may not publish to topic `payments`: no `publish` grant matches it"
        );
        let open = super::tests::access("");
        assert!(open.allows(None, Permission::Admin, "x"), "nothing configured: everything allowed");
    }

    #[test]
    fn a_reload_replaces_tokens_and_grants_whole_and_a_bad_one_changes_nothing() {
        let refusals = refusals();
        let config = crate::server::ServerConfig { permissions: "publish:a:shop".into(), ..Default::default() };
        let access = Access::from_config(&config, refusals.clone());
        let shop = Some(Principal::new("shop"));
        assert!(access.check(shop.as_ref(), Permission::Publish, "topic", "b").is_err());
        let hash = "ab".repeat(32);
        let next = crate::server::ServerConfig {
            permissions: "publish:b:shop, admin:*:ops".into(),
            tokens: format!("shop={hash}"),
            ..Default::default()
        };
        assert_eq!(access.reload(&next), Ok((1, 2)));
        assert!(access.allows(shop.as_ref(), Permission::Publish, "b"));
        assert!(!access.allows(shop.as_ref(), Permission::Publish, "a"), "the old grant is gone");
        let bad = crate::server::ServerConfig { permissions: "write:b:shop".into(), ..next.clone() };
        let error = access.reload(&bad).unwrap_err();
        assert!(error.starts_with("permissions: expected PERMISSION:PATTERN:PRINCIPAL"), "{error}");
        assert!(access.allows(shop.as_ref(), Permission::Publish, "b"), "a bad reload keeps what was in force");
        // Without a credential, a request is now refused, and counted.
        let refused = access.authenticate(&tonic::metadata::MetadataMap::new(), None, None).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unauthenticated);
        assert_eq!(
            refusals.counts(),
            [("shop".to_string(), "no_publish_grant", 1), ("unauthenticated".to_string(), "no_credential", 1)]
        );
    }

    #[test]
    fn permissions_name_a_permission_a_pattern_and_a_principal() {
        let grants = parse_permissions("admin:*:spiffe://example.org/ops").unwrap();
        assert_eq!(grants[0].principal, "spiffe://example.org/ops");
        for bad in ["publish:orders", "write:orders:shop", "publish:or*ders:shop", "publish::shop", "publish:x:"] {
            let error = parse_permissions(bad).unwrap_err();
            assert!(error.starts_with("expected PERMISSION:PATTERN:PRINCIPAL"), "{bad}: {error}");
        }
    }
}
