//! Who a client is: the name in its TLS client certificate (mutual TLS, `tls_client_ca`),
//! or the principal of its bearer token (`authorization: bearer TOKEN`, the tokens given by
//! their SHA-256 hashes in `tokens`). With neither configured, every client is let in, as
//! before. With either, a PubSub or Admin request without a credential the broker knows is
//! refused with UNAUTHENTICATED, and the message says which credentials it takes, never the
//! token. Health and reflection answer without one, unless `open_services` leaves them out.

use std::sync::Arc;

use tonic::metadata::MetadataMap;
use tonic::{Request, Status};

use super::access::Access;
use super::refusals::Reason;

/// The largest `authorization` value read; a longer one is malformed.
const AUTHORIZATION_BYTES_MAX: usize = 4096;
/// The most tokens `tokens` may configure.
pub const TOKENS_MAX: usize = 10_000;

/// Which name of a client certificate is its principal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IdentityField {
    /// The subject's common name (CN).
    #[default]
    Subject,
    /// The first DNS or URI subject alternative name.
    San,
}

impl IdentityField {
    /// `subject` or `san`, as `tls_client_identity` takes them.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "subject" => Some(Self::Subject),
            "san" => Some(Self::San),
            _ => None,
        }
    }
}

/// What the server knows of a connection's peer, in every request's extensions.
#[derive(Debug, Clone, Default)]
pub struct Peer {
    /// The principal its verified client certificate names, if it presented one.
    pub identity: Option<Arc<str>>,
    /// Its address, when the network says (for the log lines of refusals).
    pub addr: Option<std::net::SocketAddr>,
}

/// The principal a request was let in as, in its extensions (for permissions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Its name: a token's principal, a certificate's name, or `anonymous`.
    pub name: String,
    /// The address of the peer it came from, if known.
    pub peer: Option<std::net::SocketAddr>,
}

impl Principal {
    /// `name`, from an unknown address.
    pub fn new(name: impl Into<String>) -> Self {
        Self { name: name.into(), peer: None }
    }
}

/// The name `field` picks in a DER certificate, if it has one.
pub fn identity_of(der: &[u8], field: IdentityField) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    match field {
        IdentityField::Subject => cert.subject().iter_common_name().next()?.as_str().ok().map(str::to_string),
        IdentityField::San => {
            let names = cert.subject_alternative_name().ok()??;
            names.value.general_names.iter().find_map(|name| match name {
                x509_parser::extensions::GeneralName::DNSName(dns) => Some(dns.to_string()),
                x509_parser::extensions::GeneralName::URI(uri) => Some(uri.to_string()),
                _ => None,
            })
        }
    }
}

/// A configured token: its principal and the SHA-256 of the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenHash {
    /// Who presents the token.
    pub principal: String,
    /// The SHA-256 of the token's bytes.
    pub sha256: [u8; 32],
}

/// Parses `tokens`: `PRINCIPAL=SHA256HEX,...` (64 hex digits each; the hash of the token's
/// bytes, as `printf %s "$TOKEN" | sha256sum` prints it).
pub fn parse_tokens(text: &str) -> Result<Vec<TokenHash>, String> {
    let mut tokens = Vec::new();
    for item in text.split(',').map(str::trim).filter(|item| !item.is_empty()) {
        let shape = || format!("expected PRINCIPAL=SHA256 (64 hex digits), got `{}`", shown(item));
        let (principal, hex) = item.split_once('=').ok_or_else(shape)?;
        let principal = principal.trim();
        if principal.is_empty() || principal.len() > 256 || principal.chars().any(|c| c.is_control() || c == ',') {
            return Err(shape());
        }
        let sha256 = hex_32(hex.trim()).ok_or_else(shape)?;
        tokens.push(TokenHash { principal: principal.to_string(), sha256 });
    }
    if tokens.len() > TOKENS_MAX {
        return Err(format!("{} tokens; at most {TOKENS_MAX}", tokens.len()));
    }
    Ok(tokens)
}

/// An item as an error may show it: the principal and the first hex digits only, so a
/// token pasted by mistake in place of its hash is not printed whole.
/// What an error may show of a `tokens` item: its principal only, never what follows the
/// `=` (a token pasted in place of its hash must not reach a log line).
fn shown(item: &str) -> String {
    match item.split_once('=') {
        Some((principal, _)) => {
            let principal: String = principal.trim().chars().take(64).collect();
            format!("{principal}=(hidden)")
        }
        None => "(an item without `=`, hidden)".to_string(),
    }
}

fn hex_32(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in hex.as_bytes().chunks(2).enumerate() {
        let text = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(text, 16).ok()?;
    }
    Some(out)
}

/// Why an `authorization` value is not a bearer token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    /// Another scheme, or more than a token after `Bearer`.
    NotBearer,
    /// `Bearer` and nothing after it.
    Empty,
    /// Longer than 4096 bytes.
    TooLong,
    /// Not UTF-8.
    NotText,
}

/// The token of an `authorization: Bearer TOKEN` value (the scheme in any case, one or more
/// spaces after it).
pub fn parse_bearer(value: &[u8]) -> Result<&str, Malformed> {
    if value.len() > AUTHORIZATION_BYTES_MAX {
        return Err(Malformed::TooLong);
    }
    let text = std::str::from_utf8(value).map_err(|_| Malformed::NotText)?;
    let (scheme, rest) = text.split_once(' ').ok_or(Malformed::NotBearer)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(Malformed::NotBearer);
    }
    let token = rest.trim_start_matches(' ');
    if token.is_empty() {
        return Err(Malformed::Empty);
    }
    if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(Malformed::NotBearer);
    }
    Ok(token)
}

/// Lets in the clients with a credential the broker knows.
#[derive(Debug, Clone)]
pub struct Authenticator {
    tokens: Vec<TokenHash>,
    client_certificates: bool,
}

impl Authenticator {
    /// The authenticator `tokens` and a client CA call for; `None` when neither is set
    /// (everyone is let in).
    pub fn new(tokens: Vec<TokenHash>, client_certificates: bool) -> Option<Self> {
        (!tokens.is_empty() || client_certificates).then_some(Self { tokens, client_certificates })
    }

    /// What a client must present, for refusals.
    fn expected(&self) -> &'static str {
        match (self.client_certificates, self.tokens.is_empty()) {
            (true, true) => "a TLS client certificate signed by the broker's client CA",
            (true, false) => {
                "a TLS client certificate signed by the broker's client CA, or an `authorization: bearer TOKEN` header"
            }
            (false, _) => "an `authorization: bearer TOKEN` header",
        }
    }

    /// The principal of a request with `metadata` from a peer whose certificate named
    /// `identity`; UNAUTHENTICATED, saying what was expected, otherwise.
    pub fn authenticate(
        &self,
        metadata: &MetadataMap,
        identity: Option<&str>,
        anonymous: bool,
    ) -> Result<Principal, Refused> {
        let expected = self.expected();
        let refused = |reason, message: String| Refused { reason, status: Status::unauthenticated(message) };
        if let Some(value) = metadata.get("authorization") {
            if self.tokens.is_empty() {
                return Err(refused(
                    Reason::TokensNotAccepted,
                    format!("this broker takes no bearer tokens; it expects {expected}"),
                ));
            }
            let token = parse_bearer(value.as_bytes()).map_err(|why| {
                let what = match why {
                    Malformed::NotBearer => "is not `Bearer TOKEN`",
                    Malformed::Empty => "has no token after `Bearer`",
                    Malformed::TooLong => "is longer than 4096 bytes",
                    Malformed::NotText => "is not text",
                };
                refused(
                    Reason::MalformedCredential,
                    format!("authorization: the header {what}; this broker expects {expected}"),
                )
            })?;
            return self.principal_of(token).ok_or_else(|| {
                refused(
                    Reason::UnknownToken,
                    format!("authorization: the bearer token is not one this broker knows; it expects {expected}"),
                )
            });
        }
        if self.client_certificates {
            if let Some(name) = identity {
                return Ok(Principal::new(name));
            }
        }
        if anonymous {
            return Ok(Principal::new(super::access::ANONYMOUS));
        }
        Err(refused(Reason::NoCredential, format!("no credential; this broker expects {expected}")))
    }

    /// How many tokens it knows.
    pub fn token_count(&self) -> usize {
        self.tokens.len()
    }

    /// The principal whose hash is the token's: every configured hash is compared in full,
    /// in constant time, whichever matches.
    fn principal_of(&self, token: &str) -> Option<Principal> {
        let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
        let mut found = None;
        for configured in &self.tokens {
            let difference = configured.sha256.iter().zip(digest.as_ref()).fold(0u8, |acc, (a, b)| acc | (a ^ b));
            if difference == 0 && found.is_none() {
                found = Some(configured.principal.clone());
            }
        }
        found.map(Principal::new)
    }
}

/// A refused credential: why (the metrics' reason) and the status the client gets.
#[derive(Debug)]
pub struct Refused {
    /// Why, for the count and the log line.
    pub reason: Reason,
    /// UNAUTHENTICATED, saying what the broker expects.
    pub status: Status,
}

/// The interceptor of the PubSub and Admin services: lets every request in when no
/// credentials are configured, otherwise only an authenticated one, with its [`Principal`]
/// in its extensions. It reads the credentials in force from the [`Access`], so a reload
/// applies to the next request.
#[derive(Debug, Clone)]
pub struct Authenticate {
    access: Arc<Access>,
    /// Lets every request in, credential or not (health and reflection, by default).
    open: bool,
}

impl Authenticate {
    /// The interceptor for the credentials and grants in `access`.
    pub fn new(access: Arc<Access>) -> Self {
        Self { access, open: false }
    }

    /// [`Authenticate::new`], or, when `open`, one that lets every request in.
    pub fn open_if(access: Arc<Access>, open: bool) -> Self {
        Self { access, open }
    }
}

impl tonic::service::Interceptor for Authenticate {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if self.open {
            return Ok(request);
        }
        let peer = request.extensions().get::<Peer>();
        let addr = peer.and_then(|peer| peer.addr);
        let identity = peer.and_then(|peer| peer.identity.clone());
        if let Some(principal) = self.access.authenticate(request.metadata(), identity.as_deref(), addr)? {
            request.extensions_mut().insert(principal);
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests;
