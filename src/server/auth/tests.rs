use proptest::prelude::*;
use tonic::metadata::{MetadataMap, MetadataValue};

use super::*;

/// The SHA-256 of `token`, as `tokens` takes it.
fn hash_hex(token: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

fn with_authorization(value: &str) -> MetadataMap {
    let mut metadata = MetadataMap::new();
    metadata.insert("authorization", MetadataValue::try_from(value).unwrap());
    metadata
}

fn tokens_auth() -> Authenticator {
    let tokens = parse_tokens(&format!("alice={},bob={}", hash_hex("s3cret-a"), hash_hex("s3cret-b"))).unwrap();
    Authenticator::new(tokens, false).unwrap()
}

#[test]
fn a_known_token_names_its_principal_and_anything_else_is_unauthenticated() {
    let auth = tokens_auth();
    let principal = auth.authenticate(&with_authorization("Bearer s3cret-b"), None, false).unwrap();
    assert_eq!(principal, Principal::new("bob"));
    assert_eq!(auth.authenticate(&with_authorization("bearer  s3cret-a"), None, false).unwrap().name, "alice");
    for (value, says) in [
        ("Bearer wrong", "the bearer token is not one this broker knows"),
        ("Basic czNjcmV0LWE=", "the header is not `Bearer TOKEN`"),
        ("Bearer ", "has no token"),
        ("Bearer s3cret-a extra", "is not `Bearer TOKEN`"),
    ] {
        let refused = auth.authenticate(&with_authorization(value), None, false).unwrap_err().status;
        assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{value}");
        assert!(refused.message().contains(says), "{value}: {}", refused.message());
        assert!(refused.message().ends_with("an `authorization: bearer TOKEN` header"), "{}", refused.message());
    }
    let missing = auth.authenticate(&MetadataMap::new(), Some("dev-client"), false).unwrap_err().status;
    assert_eq!(missing.message(), "no credential; this broker expects an `authorization: bearer TOKEN` header");
}

#[test]
fn a_client_certificate_names_the_principal_when_the_broker_has_a_client_ca() {
    let auth = Authenticator::new(Vec::new(), true).unwrap();
    assert_eq!(auth.authenticate(&MetadataMap::new(), Some("dev-client"), false).unwrap().name, "dev-client");
    let missing = auth.authenticate(&MetadataMap::new(), None, false).unwrap_err().status;
    assert_eq!(
        missing.message(),
        "no credential; this broker expects a TLS client certificate signed by the broker's client CA"
    );
    let token = auth.authenticate(&with_authorization("Bearer x"), Some("dev-client"), false).unwrap_err().status;
    assert!(token.message().starts_with("this broker takes no bearer tokens"), "{}", token.message());
    assert!(Authenticator::new(Vec::new(), false).is_none(), "nothing configured: everyone is let in");
}

#[test]
fn tokens_are_given_as_principal_and_64_hex_digits() {
    let tokens = parse_tokens(&format!(" ops = {} ", hash_hex("t"))).unwrap();
    assert_eq!(tokens[0].principal, "ops");
    assert!(parse_tokens("").unwrap().is_empty());
    for bad in ["ops", "=abcd", "ops=abcd", &format!("ops={}z", &hash_hex("t")[..63])] {
        let error = parse_tokens(bad).unwrap_err();
        assert!(error.starts_with("expected PRINCIPAL=SHA256 (64 hex digits), got `"), "{error}");
    }
    // A token pasted in place of its hash is not printed whole.
    let error = parse_tokens("ops=s3cret-pasted-by-mistake").unwrap_err();
    assert!(!error.contains("s3cret"), "{error}");
    assert!(error.ends_with("got `ops=(hidden)`"), "{error}");
    let error = parse_tokens("s3cret-without-a-principal").unwrap_err();
    assert!(!error.contains("s3cret"), "{error}");
}

#[test]
fn the_certificates_names_are_read_from_the_dev_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    crate::certs::write_dev(dir.path()).unwrap();
    let pem = std::fs::read(dir.path().join(crate::certs::CLIENT_CERT)).unwrap();
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::CertificateDer::from_pem_slice(&pem).unwrap();
    assert_eq!(identity_of(&der, IdentityField::Subject).as_deref(), Some(crate::certs::CLIENT_NAME));
    assert_eq!(identity_of(&der, IdentityField::San).as_deref(), Some(crate::certs::CLIENT_NAME));
    assert_eq!(identity_of(b"not a certificate", IdentityField::Subject), None);
}

proptest! {
    #[test]
    fn any_authorization_value_is_parsed_without_panic_and_refusals_never_show_it(
        value in proptest::collection::vec(any::<u8>(), 0..200),
        token in "[ -~]{1,40}",
    ) {
        let _ = parse_bearer(&value);
        let auth = tokens_auth();
        let header = format!("Bearer {token}");
        if let Ok(metadata_value) = MetadataValue::try_from(header.as_str()) {
            let mut metadata = MetadataMap::new();
            metadata.insert("authorization", metadata_value);
            match auth.authenticate(&metadata, None, false) {
                Ok(principal) => prop_assert!(token == "s3cret-a" || token == "s3cret-b", "{principal:?}"),
                Err(refused) => {
                    prop_assert_eq!(refused.status.code(), tonic::Code::Unauthenticated);
                    prop_assert!(token.len() < 4 || !refused.status.message().contains(token.trim()), "{}", refused.status.message());
                }
            }
        }
    }
}
