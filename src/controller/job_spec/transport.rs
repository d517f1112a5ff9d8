//! How an agent reaches an object store, checked before any pod starts (the schema says the
//! same where the API server runs CEL rules; API servers before 1.25 drop them): an `http://`
//! endpoint only with `insecure: true`, and never the pod's own identity (a workload-identity
//! or metadata-server token) sent to an endpoint the BackupJob names. Pure.

use super::validate::Problem;
use crate::api::destination::Destination;
use crate::controller::reason::Reason;

/// What is wrong with the destination's endpoint, each problem naming its field.
pub fn check_endpoints(d: &Destination, field: &str, problems: &mut Vec<Problem>) {
    // (store, endpoint, insecure, credentials from a Secret)
    let stores = [
        d.s3.as_ref()
            .map(|s| ("s3", s.endpoint.as_deref(), s.insecure, true)),
        d.gcs.as_ref().map(|g| {
            let secret = g.credentials_secret.is_some();
            ("gcs", g.endpoint.as_deref(), g.insecure, secret)
        }),
        d.azure.as_ref().map(|a| {
            let secret = a.credentials_secret.is_some();
            ("azure", a.endpoint.as_deref(), a.insecure, secret)
        }),
    ];
    for (store, endpoint, insecure, secret) in stores.into_iter().flatten() {
        let Some(endpoint) = endpoint else { continue };
        let shown: String = endpoint.chars().take(64).collect();
        if endpoint.starts_with("http://") && !insecure {
            problems.push(Problem::new(
                Reason::InvalidSpec,
                format!(
                    "{field}.{store}.endpoint {shown:?}: http:// sends the credentials and the data unencrypted; use https://, or set {field}.{store}.insecure: true for an emulator or a trusted network"
                ),
            ));
        }
        if !secret {
            problems.push(Problem::new(
                Reason::InvalidSpec,
                format!(
                    "{field}.{store}.endpoint {shown:?}: with the pod's own identity (no credentialsSecret), its token would be sent to this endpoint; name a {field}.{store}.credentialsSecret, or remove the endpoint"
                ),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(destination: serde_json::Value) -> Vec<String> {
        let d: Destination = serde_json::from_value(destination).expect("destination");
        let mut out = Vec::new();
        check_endpoints(&d, "spec.destination", &mut out);
        out.into_iter().map(|p| p.message).collect()
    }

    #[test]
    fn plain_http_needs_insecure_and_ambient_tokens_stay_home() {
        let s3 = |ep: &str, insecure: bool| {
            serde_json::json!({"s3": {"bucket": "bkt", "credentialsSecret": "c",
                                      "endpoint": ep, "insecure": insecure}})
        };
        let got = problems(s3("http://minio:9000", false));
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(
            got[0].starts_with("spec.destination.s3.endpoint \"http://minio:9000\": http://"),
            "{got:?}"
        );
        assert!(problems(s3("http://minio:9000", true)).is_empty());
        assert!(problems(s3("https://minio:9000", false)).is_empty());
        // The pod's own identity with a named endpoint: refused, for GCS and Azure alike.
        let got = problems(serde_json::json!({"gcs": {"bucket": "bkt",
            "endpoint": "https://storage.example", "workloadIdentity": {"serviceAccount": "a@b"}}}));
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(
            got[0].contains("its token would be sent to this endpoint"),
            "{got:?}"
        );
        let got = problems(
            serde_json::json!({"azure": {"account": "acct", "container": "box",
            "endpoint": "http://azurite:10000/acct"}}),
        );
        assert_eq!(got.len(), 2, "{got:?}");
        // With a Secret over https, or no endpoint at all: fine.
        assert!(
            problems(
                serde_json::json!({"azure": {"account": "acct", "container": "box",
            "endpoint": "https://acct.blob.core.chinacloudapi.cn", "credentialsSecret": "c"}})
            )
            .is_empty()
        );
        assert!(problems(serde_json::json!({"gcs": {"bucket": "bkt"}})).is_empty());
    }
}
