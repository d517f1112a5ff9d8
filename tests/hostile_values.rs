//! Bad input (issue 12): every field of every custom resource, found by walking the generated
//! CRD schemas (so a new field is covered the day it is added), set to hostile values (a huge
//! string, a `..` path, an empty string, an unknown enum value, an invalid cron expression,
//! negative and enormous numbers, a string for a boolean) in the deploy/examples manifest of
//! its kind, and sent through the real API server. Each one is either refused by the schema
//! with a message naming the field, or accepted and then read by a running operator, which
//! writes a status for it (a value the schema admits but the operator cannot read would leave
//! the object without status, and its reconciles failing for ever) and never exits.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use kube::api::{Api, DynamicObject, PostParams};
use serde_json::{Value, json};

use support::cluster::{api_resource, cluster_or_skip, crd_manifests, manifests_in};
use support::operator::Operator;

/// A field of a kind's spec: where it is in a manifest, how the API server names it, and the
/// schema of its values.
struct Leaf {
    pointer: String,
    field: String,
    schema: Value,
}

/// Every leaf field under `schema` (at `pointer`, named `field`). An array stands for its
/// first item, a map for an entry `hostile`.
fn walk(schema: &Value, pointer: &str, field: &str, out: &mut Vec<Leaf>) {
    if let Some(props) = schema["properties"].as_object() {
        for (k, s) in props {
            walk(s, &format!("{pointer}/{k}"), &format!("{field}.{k}"), out);
        }
    } else if schema["type"] == "array" {
        walk(
            &schema["items"],
            &format!("{pointer}/0"),
            &format!("{field}[0]"),
            out,
        );
    } else if schema["additionalProperties"].is_object() {
        walk(
            &schema["additionalProperties"],
            &format!("{pointer}/hostile"),
            &format!("{field}.hostile"),
            out,
        );
    } else {
        out.push(Leaf {
            pointer: pointer.to_string(),
            field: field.to_string(),
            schema: schema.clone(),
        });
    }
}

/// The hostile values tried on a field with `schema`, each with what it is.
fn hostile(leaf: &Leaf) -> Vec<(Value, &'static str)> {
    let s = &leaf.schema;
    let int_or_string = s["x-kubernetes-int-or-string"] == true;
    let mut v = Vec::new();
    if s["type"] == "string" || int_or_string {
        v.push((json!("a".repeat(100_000)), "a 100 kB string"));
        v.push((json!("../../etc/passwd"), "a path out of its place"));
        v.push((json!(""), "an empty string"));
        if s["enum"].is_array() {
            v.push((json!("NotAValue"), "an unknown enum value"));
        }
        if leaf.field.ends_with(".cron") {
            v.push((json!("61 25 * * *"), "an invalid cron expression"));
        }
    }
    if s["type"] == "integer" || s["type"] == "number" || int_or_string {
        v.push((json!(-1), "a negative number"));
        v.push((json!(i64::MAX), "an enormous number"));
        v.push((json!(1e30), "a number beyond 64 bits"));
    }
    if s["type"] == "boolean" {
        v.push((json!("yes"), "a string for a boolean"));
    }
    v
}

/// Put `value` at `pointer` in `obj`, creating the objects and arrays on the way. Returns the
/// field path of the outermost object it had to create, if any.
fn set(obj: &mut Value, pointer: &str, value: Value) -> Option<String> {
    let parts: Vec<&str> = pointer.trim_start_matches('/').split('/').collect();
    let mut created = None;
    let mut here = obj;
    let mut path = String::new();
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        let next_is_index = parts.get(i + 1).is_some_and(|p| *p == "0");
        let fresh = || if next_is_index { json!([]) } else { json!({}) };
        path = if *part == "0" {
            format!("{path}[0]")
        } else if path.is_empty() {
            part.to_string()
        } else {
            format!("{path}.{part}")
        };
        if *part == "0" {
            let arr = here.as_array_mut().expect("an array");
            if last {
                arr.truncate(0);
                arr.push(value);
                return created;
            }
            if arr.is_empty() {
                arr.push(fresh());
                created.get_or_insert(path.clone());
            }
            here = &mut arr[0];
        } else {
            let map = here.as_object_mut().expect("an object");
            if last {
                map.insert(part.to_string(), value);
                return created;
            }
            if !map.contains_key(*part) {
                map.insert(part.to_string(), fresh());
                created.get_or_insert(path.clone());
            }
            here = map.get_mut(*part).expect("just made");
        }
    }
    created
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_field_with_a_hostile_value_is_refused_naming_it_or_read_by_the_operator() {
    let Some(cluster) = cluster_or_skip().await else {
        return;
    };
    cluster.apply_crds().await;
    let ns = cluster.namespace("hostile").await;
    let examples: BTreeMap<String, Value> =
        manifests_in(&support::repo_root().join("deploy/examples"))
            .into_iter()
            .map(|(_, _, mut v)| {
                v["metadata"]["namespace"] = json!(ns.name());
                (v["kind"].as_str().expect("kind").to_string(), v)
            })
            .collect();

    let mut refused = 0;
    let mut accepted: Vec<(String, String, String)> = Vec::new(); // (kind, name, what)
    let mut failures = Vec::new();
    for (_, crd) in crd_manifests() {
        let kind = crd["spec"]["names"]["kind"]
            .as_str()
            .expect("kind")
            .to_string();
        let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        let mut leaves = Vec::new();
        walk(schema, "/spec", "spec", &mut leaves);
        let api: Api<DynamicObject> =
            Api::namespaced_with(cluster.client.clone(), ns.name(), &api_resource(&kind));
        for leaf in &leaves {
            for (value, what) in hostile(leaf) {
                let mut obj = examples[&kind].clone();
                let name = format!("h{}", refused + accepted.len());
                obj["metadata"]["name"] = json!(name);
                let created = set(&mut obj, &leaf.pointer, value);
                let case = format!("{kind} {} = {what}", leaf.field);
                let dynamic: DynamicObject = serde_json::from_value(obj).expect("object");
                match api.create(&PostParams::default(), &dynamic).await {
                    Err(kube::Error::Api(e)) if e.code == 422 => {
                        refused += 1;
                        // A list's item is named as the list by this API server.
                        let list = leaf.field.trim_end_matches("[0]");
                        let named = e.message.contains(&leaf.field)
                            || e.message.contains(&format!("{list}:"))
                            || created
                                .as_ref()
                                .is_some_and(|c| e.message.contains(c.as_str()));
                        if !named {
                            let said: String = e.message.chars().take(300).collect();
                            failures
                                .push(format!("{case}: refused without naming the field: {said}"));
                        }
                    }
                    Err(e) => failures.push(format!("{case}: {e}")),
                    Ok(_) => accepted.push((kind.clone(), name, case)),
                }
            }
        }
    }
    println!(
        "{} hostile values: {refused} refused by the schema, {} accepted",
        refused + accepted.len(),
        accepted.len()
    );
    assert!(
        refused > 100,
        "only {refused} refused: is the walk finding the fields?"
    );

    // What the schema admits, the operator reads: each object gets a status for its
    // generation, and the operator never exits.
    let mut operator = Operator::start(cluster.kubeconfig(), ns.name());
    let started = std::time::Instant::now();
    let mut waiting = accepted;
    while !waiting.is_empty() && started.elapsed() < Duration::from_secs(90) {
        let mut still = Vec::new();
        for (kind, name, case) in waiting {
            let api: Api<DynamicObject> =
                Api::namespaced_with(cluster.client.clone(), ns.name(), &api_resource(&kind));
            let done = api.get(&name).await.is_ok_and(|o| {
                let seen = o.data["status"]["observedGeneration"].as_i64();
                seen.is_some() && seen == o.metadata.generation
            });
            if !done {
                still.push((kind, name, case));
            }
        }
        waiting = still;
        // Pacing only: the loop ends on the condition or the deadline above.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for (_, _, case) in &waiting {
        failures.push(format!(
            "{case}: accepted, but the operator wrote no status for it"
        ));
    }
    assert!(
        operator.is_running(),
        "the operator exited on hostile objects"
    );
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
