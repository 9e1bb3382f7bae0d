//! A small validator of the JSON Schema keywords asyncapi.json uses.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Value};

use super::resolve;

fn as_int(v: &Value) -> Option<i128> {
    v.as_i64()
        .map(i128::from)
        .or_else(|| v.as_u64().map(i128::from))
}

fn type_matches(t: &str, v: &Value) -> bool {
    match t {
        "null" => v.is_null(),
        "boolean" => v.is_boolean(),
        "string" => v.is_string(),
        "integer" => as_int(v).is_some(),
        "number" => v.is_number(),
        "array" => v.is_array(),
        "object" => v.is_object(),
        other => panic!("unknown JSON Schema type {other}"),
    }
}

/// Whether `v` is valid against `schema`; the error says where it is not.
pub(super) fn validate(schema: &Value, v: &Value, at: &str) -> Result<(), String> {
    let s = resolve(schema);
    if let Some(ok) = s.as_bool() {
        return if ok {
            Ok(())
        } else {
            Err(format!("{at}: not allowed"))
        };
    }
    let fail = |why: String| Err(format!("{at}: {why} ({v})"));
    match s.get("type") {
        Some(Value::String(t)) if !type_matches(t, v) => return fail(format!("not a {t}")),
        Some(Value::Array(ts)) if !ts.iter().any(|t| type_matches(t.as_str().unwrap(), v)) => {
            return fail(format!("not one of {ts:?}"))
        }
        _ => {}
    }
    if let Some(c) = s.get("const") {
        if c != v {
            return fail(format!("not {c}"));
        }
    }
    if let Some(e) = s.get("enum").and_then(Value::as_array) {
        if !e.contains(v) {
            return fail("not in the enum".into());
        }
    }
    if let Some(text) = v.as_str() {
        let n = text.chars().count() as u64;
        if s.get("minLength")
            .and_then(Value::as_u64)
            .is_some_and(|m| n < m)
        {
            return fail("too short".into());
        }
        if s.get("maxLength")
            .and_then(Value::as_u64)
            .is_some_and(|m| n > m)
        {
            return fail("too long".into());
        }
    }
    if let Some(n) = as_int(v) {
        if s.get("minimum").and_then(as_int).is_some_and(|m| n < m) {
            return fail("below the minimum".into());
        }
        if s.get("maximum").and_then(as_int).is_some_and(|m| n > m) {
            return fail("above the maximum".into());
        }
    }
    if let Some(items) = v.as_array() {
        let n = items.len() as u64;
        if s.get("minItems")
            .and_then(Value::as_u64)
            .is_some_and(|m| n < m)
        {
            return fail("too few items".into());
        }
        if s.get("maxItems")
            .and_then(Value::as_u64)
            .is_some_and(|m| n > m)
        {
            return fail("too many items".into());
        }
        if let Some(item) = s.get("items") {
            for (i, x) in items.iter().enumerate() {
                validate(item, x, &format!("{at}[{i}]"))?;
            }
        }
    }
    if let Some(obj) = v.as_object() {
        for r in s
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let r = r.as_str().unwrap();
            if !obj.contains_key(r) {
                return fail(format!("{r} is required"));
            }
        }
        let props = s.get("properties").and_then(Value::as_object);
        for (k, x) in obj {
            match (props.and_then(|p| p.get(k)), s.get("additionalProperties")) {
                (Some(p), _) => validate(p, x, &format!("{at}.{k}"))?,
                (None, Some(extra)) => validate(extra, x, &format!("{at}.{k}"))?,
                (None, None) => {}
            }
        }
    }
    for sub in s
        .get("allOf")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        validate(sub, v, at)?;
    }
    if let Some(any) = s.get("anyOf").and_then(Value::as_array) {
        if !any.iter().any(|sub| validate(sub, v, at).is_ok()) {
            return fail("matches no anyOf branch".into());
        }
    }
    if let Some(one) = s.get("oneOf").and_then(Value::as_array) {
        let n = one
            .iter()
            .filter(|sub| validate(sub, v, at).is_ok())
            .count();
        if n != 1 {
            return fail(format!("matches {n} oneOf branches, not 1"));
        }
    }
    Ok(())
}

/// The schemas that apply to `v` under `schema`: itself, its `allOf`, and
/// the `oneOf`/`anyOf` branches `v` is valid against.
fn applicable<'a>(schema: &'a Value, v: &Value) -> Vec<&'a Value> {
    let s = resolve(schema);
    let mut out = vec![s];
    for sub in s
        .get("allOf")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        out.extend(applicable(sub, v));
    }
    for key in ["oneOf", "anyOf"] {
        for sub in s.get(key).and_then(Value::as_array).into_iter().flatten() {
            if validate(sub, v, "").is_ok() {
                out.extend(applicable(sub, v));
            }
        }
    }
    out
}

/// The properties `schema` declares for the object `v` (through `$ref`,
/// `allOf` and the branches that apply).
pub(super) fn declared<'a>(schema: &'a Value, v: &Value) -> BTreeMap<String, &'a Value> {
    let mut out = BTreeMap::new();
    for s in applicable(schema, v) {
        for (k, p) in s
            .get("properties")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            out.entry(k.clone()).or_insert(p);
        }
    }
    out
}

/// The union of the `required` lists that apply to `v` under `schema`.
pub(super) fn required(schema: &Value, v: &Value) -> BTreeSet<String> {
    applicable(schema, v)
        .into_iter()
        .flat_map(|s| {
            s.get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
        })
        .map(|r| r.as_str().unwrap().to_owned())
        .collect()
}

/// Checks that every key of `v`, at every depth, is declared by `schema`:
/// a frame the crate sends carries no field the document does not describe.
pub(super) fn check_declared(schema: &Value, v: &Value, at: &str) {
    let schemas = applicable(schema, v);
    match v {
        Value::Object(obj) => {
            let props = declared(schema, v);
            let extra = schemas
                .iter()
                .find_map(|s| s.get("additionalProperties").filter(|a| a.is_object()));
            for (k, x) in obj {
                match (props.get(k), extra) {
                    (Some(p), _) => check_declared(p, x, &format!("{at}.{k}")),
                    (None, Some(e)) => check_declared(e, x, &format!("{at}.{k}")),
                    (None, None) => panic!("{at}: {k} is not declared in asyncapi.json ({v})"),
                }
            }
        }
        Value::Array(items) => {
            if let Some(item) = schemas.iter().find_map(|s| s.get("items")) {
                for (i, x) in items.iter().enumerate() {
                    check_declared(item, x, &format!("{at}[{i}]"));
                }
            }
        }
        _ => {}
    }
}

#[test]
fn the_validator_rejects_what_it_should() {
    let s = json!({"type": "object", "required": ["a"], "properties": {
        "a": {"type": "integer", "minimum": 1},
        "b": {"oneOf": [{"type": "string", "maxLength": 2}, {"type": "null"}]}
    }});
    assert!(validate(&s, &json!({"a": 1, "b": "xy"}), "").is_ok());
    assert!(validate(&s, &json!({"a": 1, "b": null}), "").is_ok());
    for bad in [
        json!({}),
        json!({"a": 0}),
        json!({"a": 1.5}),
        json!({"a": 1, "b": "xyz"}),
        json!([]),
    ] {
        assert!(validate(&s, &bad, "").is_err(), "{bad}");
    }
}
