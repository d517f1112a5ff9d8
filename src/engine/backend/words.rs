//! The object store's errors in words a person can act on (#29): what the store said or why it
//! could not be reached, and what to check. object_store's own text ("Generic S3 error: Error
//! performing GET … - HTTP error: error sending request") names neither the cause nor the fix;
//! the cause is further down its source chain (an `io::Error`, a TLS alert, a DNS failure, the
//! store's XML error code), read here. The library's whole text goes to the log at debug.

use std::error::Error as StdError;
use std::io::ErrorKind;

/// One line for `e`: the cause and what to check.
pub fn store_words(e: &object_store::Error) -> String {
    use object_store::Error as E;
    let text = chain_text(e);
    let at = endpoint(&text)
        .map(|u| format!(" at {u}"))
        .unwrap_or_default();
    match e {
        E::PermissionDenied { .. } | E::Unauthenticated { .. } => access_words(&text, &at),
        E::Precondition { .. } | E::AlreadyExists { .. } => {
            "another writer changed the object at the same moment; run again".into()
        }
        _ => unreachable_words(e, &text, &at).unwrap_or_else(|| fallback(&text)),
    }
}

/// Every error's text in `e`'s source chain, joined.
fn chain_text(e: &(dyn StdError + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut next = e.source();
    while let Some(s) = next {
        parts.push(s.to_string());
        next = s.source();
    }
    parts.join(": ")
}

/// The first `scheme://host[:port]` in `text`.
fn endpoint(text: &str) -> Option<String> {
    let start = text.find("https://").or_else(|| text.find("http://"))?;
    let rest = &text[start..];
    let after_scheme = rest.find("://")? + 3;
    let end = rest[after_scheme..]
        .find(|c: char| c == '/' || c.is_whitespace())
        .map_or(rest.len(), |i| after_scheme + i);
    Some(rest[..end].to_string())
}

/// The store's error code (`<Code>…</Code>` of S3 and Azure), if it gave one.
fn error_code(text: &str) -> Option<&str> {
    let start = text.find("<Code>")? + "<Code>".len();
    let len = text[start..].find("</Code>")?;
    Some(&text[start..start + len])
}

fn access_words(text: &str, at: &str) -> String {
    match error_code(text) {
        Some("SignatureDoesNotMatch") => format!(
            "the store{at} refused the credentials: the secret key does not match the access key id (check the credentials Secret)"
        ),
        Some("InvalidAccessKeyId") => {
            format!("the store{at} does not know the access key id (check the credentials Secret)")
        }
        Some(code) => format!(
            "the store{at} refused access ({code}): check the credentials Secret and that they may read, write, list and delete under the repository's prefix"
        ),
        None => format!(
            "the store{at} refused access: check the credentials Secret and that they may read, write, list and delete under the repository's prefix"
        ),
    }
}

/// Words for a store that could not be reached, from the chain's `io::Error` or texts.
fn unreachable_words(e: &object_store::Error, text: &str, at: &str) -> Option<String> {
    let io = io_kind(e);
    let lower = text.to_ascii_lowercase();
    Some(if io == Some(ErrorKind::ConnectionRefused) {
        format!(
            "connection refused{at}: check the repository's endpoint and that the store is running"
        )
    } else if lower.contains("dns error") || lower.contains("failed to lookup address") {
        format!("the store's host name{at} does not resolve: check the repository's endpoint")
    } else if lower.contains("certificate") {
        format!(
            "the store's TLS certificate{at} is not trusted: give the CA that issued it, or check the endpoint"
        )
    } else if lower.contains("tls")
        || lower.contains("handshake")
        || lower.contains("invalidcontenttype")
    {
        format!(
            "the TLS handshake with the store{at} failed: is the endpoint https where the store speaks http?"
        )
    } else if io == Some(ErrorKind::TimedOut) || lower.contains("timed out") {
        format!(
            "no answer from the store{at} in time: check the endpoint, the network and any NetworkPolicy"
        )
    } else if let Some(code) = error_code(text).filter(|c| *c == "NoSuchBucket") {
        format!("the bucket{at} does not exist ({code}): create it, or fix the bucket's name")
    } else {
        return None;
    })
}

fn io_kind(e: &(dyn StdError + 'static)) -> Option<ErrorKind> {
    let mut next: Option<&(dyn StdError + 'static)> = Some(e);
    while let Some(s) = next {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return Some(io.kind());
        }
        next = s.source();
    }
    None
}

/// object_store's first sentence, without the response body it may quote.
fn fallback(text: &str) -> String {
    let line = text.lines().next().unwrap_or_default();
    let line = line.split(": <?xml").next().unwrap_or(line);
    line.trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_endpoint_and_the_code_are_read_from_the_text() {
        let t = "Error performing GET http://127.0.0.1:19000/backups/r/config in 1ms - Server returned non-2xx status code: 403 Forbidden: <?xml version=\"1.0\"?><Error><Code>SignatureDoesNotMatch</Code></Error>";
        assert_eq!(endpoint(t).as_deref(), Some("http://127.0.0.1:19000"));
        assert_eq!(error_code(t), Some("SignatureDoesNotMatch"));
        assert!(
            access_words(t, " at http://127.0.0.1:19000").contains("secret key does not match")
        );
        assert_eq!(fallback("a: b: <?xml x"), "a: b");
    }
}
