//! Arbitrary JSON for the property tests of what clients send.

use proptest::prelude::*;
use serde_json::Value;

/// Any JSON value, with the keys join and REST payloads look for mixed in.
pub fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        any::<String>().prop_map(Value::from),
        "[a-z]{0,6}".prop_map(Value::from),
    ];
    let key = prop_oneof![
        Just("config"),
        Just("broadcast"),
        Just("presence"),
        Just("postgres_changes"),
        Just("private"),
        Just("replay"),
        Just("since"),
        Just("limit"),
        Just("self"),
        Just("ack"),
        Just("key"),
        Just("enabled"),
        Just("access_token"),
        Just("user_token"),
        Just("messages"),
        Just("topic"),
        Just("event"),
        Just("payload"),
        Just("id"),
        Just("x"),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::btree_map(key.clone().prop_map(str::to_owned), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}
