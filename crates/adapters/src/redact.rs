//! Connection URLs appear in error messages; their passwords must not.

/// `url` with any password replaced by `***`. Unparseable input is returned
/// as a placeholder rather than verbatim, since it may still hold a secret.
pub(crate) fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                // Only fails for URLs that cannot have credentials at all.
                let _ = parsed.set_password(Some("***"));
            }
            parsed.to_string()
        }
        Err(_) => "<unparseable url>".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn passwords_are_masked() {
        let shown = redact_url("amqp://guest:s3cret@127.0.0.1:5672/%2f");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("guest"), "{shown}");
        assert!(shown.contains("127.0.0.1:5672"), "{shown}");
    }

    #[test]
    fn urls_without_password_are_unchanged() {
        assert_eq!(
            redact_url("redis://127.0.0.1:6379/"),
            "redis://127.0.0.1:6379/"
        );
    }

    #[test]
    fn garbage_is_not_echoed() {
        assert_eq!(redact_url("not a url :pw"), "<unparseable url>");
    }
}
