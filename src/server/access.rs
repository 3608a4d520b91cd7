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

use tonic::{Request, Status};

use super::auth::Principal;

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

/// The grants in force; `None`: everyone may do everything (nothing configured).
#[derive(Debug, Clone, Default)]
pub struct Access {
    grants: Option<Vec<Grant>>,
}

impl Access {
    /// The access the settings call for (`permissions` checked by `validate`): deny by
    /// default once credentials or permissions are configured.
    pub fn from_config(config: &super::ServerConfig) -> Self {
        let grants = parse_permissions(&config.permissions).unwrap_or_default();
        let active = !grants.is_empty() || !config.tokens.trim().is_empty() || config.tls_client_ca.is_some();
        Self { grants: active.then_some(grants) }
    }

    /// Whether requests are checked at all.
    pub fn active(&self) -> bool {
        self.grants.is_some()
    }

    /// Whether a client without a credential may do something (`anonymous` has a grant).
    pub fn anonymous_granted(&self) -> bool {
        self.grants.as_ref().is_some_and(|grants| grants.iter().any(|g| g.principal == ANONYMOUS))
    }

    /// Whether `principal` may use `permission` on `name`.
    pub fn allows(&self, principal: Option<&Principal>, permission: Permission, name: &str) -> bool {
        let Some(grants) = &self.grants else { return true };
        let who = principal.map_or(ANONYMOUS, |p| p.0.as_str());
        grants.iter().any(|g| g.permission == permission && g.principal == who && g.pattern.matches(name))
    }

    /// PERMISSION_DENIED unless `principal` may use `permission` on `what` (`topic` or
    /// `subscription`) `name`.
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
        let who = principal.map_or(ANONYMOUS, |p| p.0.as_str());
        Err(Status::permission_denied(format!(
            "principal `{who}` may not {} {what} `{name}`: no `{}` grant matches it",
            match permission {
                Permission::Publish => "publish to",
                Permission::Subscribe => "subscribe to",
                Permission::Admin => "administer",
            },
            permission.name()
        )))
    }

    /// PERMISSION_DENIED unless `principal` holds `admin` on every name (`*`): for the
    /// cluster's own operations.
    pub fn check_everything(&self, principal: Option<&Principal>) -> Result<(), Status> {
        let Some(grants) = &self.grants else { return Ok(()) };
        let who = principal.map_or(ANONYMOUS, |p| p.0.as_str());
        let all = Pattern::Prefix(String::new());
        if grants.iter().any(|g| g.permission == Permission::Admin && g.principal == who && g.pattern == all) {
            return Ok(());
        }
        Err(Status::permission_denied(format!(
            "principal `{who}` may not change the cluster: that takes an `admin:*` grant"
        )))
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

    fn access(text: &str) -> Access {
        Access { grants: Some(parse_permissions(text).unwrap()) }
    }

    #[test]
    fn a_grant_covers_its_principal_permission_and_names_only() {
        let access =
            access("publish:orders.*:shop, subscribe:orders-audit:shop, admin:*:ops, subscribe:public.*:anonymous");
        let shop = Some(Principal("shop".into()));
        assert!(access.allows(shop.as_ref(), Permission::Publish, "orders.eu"));
        assert!(!access.allows(shop.as_ref(), Permission::Publish, "orders"), "the prefix is `orders.`");
        assert!(!access.allows(shop.as_ref(), Permission::Admin, "orders.eu"));
        assert!(access.allows(shop.as_ref(), Permission::Subscribe, "orders-audit"));
        assert!(!access.allows(shop.as_ref(), Permission::Subscribe, "orders-audit-2"), "exact");
        let ops = Some(Principal("ops".into()));
        assert!(access.allows(ops.as_ref(), Permission::Admin, "anything"));
        assert!(access.check_everything(ops.as_ref()).is_ok());
        assert!(access.check_everything(shop.as_ref()).is_err());
        assert!(access.allows(None, Permission::Subscribe, "public.news"));
        assert!(access.anonymous_granted());
        let denied = access.check(shop.as_ref(), Permission::Publish, "topic", "payments").unwrap_err();
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
        assert_eq!(
            denied.message(),
            "principal `shop` may not publish to topic `payments`: no `publish` grant matches it"
        );
        assert!(Access::default().allows(None, Permission::Admin, "x"), "nothing configured: everything allowed");
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
