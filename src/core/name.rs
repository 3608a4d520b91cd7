//! Topic and subscription names.
//!
//! A name is 1 to 249 characters from `[A-Za-z0-9._-]` (Kafka's rule), neither `.` nor `..`.
//! Names beginning with `__` are reserved for the broker (ephemeral subscriptions are
//! `__ephemeral.N`): they can be looked up but not created.

use super::error::BrokerError;

/// Longest topic or subscription name, in characters.
pub const NAME_LENGTH_MAX: usize = 249;

/// The prefix of names only the broker may create.
pub const RESERVED_PREFIX: &str = "__";

const RULE: &str = "names are 1 to 249 characters from [A-Za-z0-9._-], not `.` or `..`";

/// Checks a name that is being looked up.
pub fn check(field: &'static str, name: &str) -> Result<(), BrokerError> {
    let bad = |reason: String| Err(BrokerError::InvalidArgument { field, reason });
    if name.is_empty() {
        return bad(format!("is empty; {RULE}"));
    }
    if name.chars().count() > NAME_LENGTH_MAX {
        return bad(format!("is {} characters; {RULE}", name.chars().count()));
    }
    if name == "." || name == ".." {
        return bad(format!("`{name}` is not allowed; {RULE}"));
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
        return bad(format!("`{name}` has {}; {RULE}", describe(c)));
    }
    Ok(())
}

/// Checks a name that is being created: also refuses the reserved prefix.
pub fn check_new(field: &'static str, name: &str) -> Result<(), BrokerError> {
    check(field, name)?;
    if name.starts_with(RESERVED_PREFIX) {
        return Err(BrokerError::InvalidArgument {
            field,
            reason: format!("`{name}` begins with `{RESERVED_PREFIX}`, which is reserved for the broker"),
        });
    }
    Ok(())
}

fn describe(c: char) -> String {
    match c {
        ' ' => "a space".to_string(),
        c if c.is_control() => format!("the control character {c:?}"),
        c => format!("the character `{c}`"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_names_pass() {
        for name in ["events", "a", "orders.v2", "my_topic-1", &"x".repeat(249)] {
            check_new("topic", name).unwrap();
        }
    }

    #[test]
    fn invalid_names_name_the_problem() {
        let cases = [
            ("", "is empty"),
            ("a b", "a space"),
            ("a/b", "`/`"),
            ("..", "not allowed"),
            (&"x".repeat(250), "250 characters"),
        ];
        for (name, expected) in cases {
            let err = check_new("topic", name).unwrap_err().to_string();
            assert!(err.starts_with("topic: "), "{err}");
            assert!(err.contains(expected), "{name:?}: {err}");
        }
        let err = check_new("subscription", "__mine").unwrap_err().to_string();
        assert!(err.contains("reserved"), "{err}");
        check("subscription", "__ephemeral.1").unwrap();
    }
}
