//! The `fields` system parameter (partial responses): `name,status`, `items(name,status)`,
//! `items/name,nextPageToken`, and `*` for every key of an object, as in an aggregated list's
//! `items/*/instances(name,zone)`.

use serde_json::{Map, Value};

/// A parsed field selection: each entry selects a key and, optionally, what to keep below it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection(Vec<(String, Option<Selection>)>);

/// Why a `fields` value was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("Invalid field selection {0}")]
pub struct FieldsError(pub String);

impl Selection {
    /// Parses a `fields` value.
    pub fn parse(text: &str) -> Result<Selection, FieldsError> {
        let chars: Vec<char> = text.chars().filter(|c| !c.is_whitespace()).collect();
        let mut pos = 0;
        let selection =
            parse_list(&chars, &mut pos, 0).map_err(|_| FieldsError(text.to_string()))?;
        if pos != chars.len() {
            return Err(FieldsError(text.to_string()));
        }
        Ok(selection)
    }

    /// Keeps only the selected parts of `value` (arrays are filtered element by element).
    pub fn apply(&self, value: &Value) -> Value {
        match value {
            Value::Array(items) => {
                Value::Array(items.iter().map(|item| self.apply(item)).collect())
            }
            Value::Object(map) => {
                let mut out = Map::new();
                let keep = |found: &Value, sub: &Option<Selection>| match sub {
                    Some(sub) => sub.apply(found),
                    None => found.clone(),
                };
                for (key, sub) in &self.0 {
                    if key == "*" {
                        // Every key of the object (a map such as an aggregated list's `items`).
                        for (name, found) in map {
                            merge(&mut out, name, keep(found, sub));
                        }
                    } else if let Some(found) = map.get(key) {
                        merge(&mut out, key, keep(found, sub));
                    }
                }
                Value::Object(out)
            }
            other => other.clone(),
        }
    }
}

fn merge(out: &mut Map<String, Value>, key: &str, value: Value) {
    match (out.get_mut(key), value) {
        (Some(Value::Object(existing)), Value::Object(more)) => {
            for (k, v) in more {
                merge(existing, &k, v);
            }
        }
        (_, value) => {
            out.insert(key.to_string(), value);
        }
    }
}

fn parse_list(chars: &[char], pos: &mut usize, depth: usize) -> Result<Selection, ()> {
    if depth > 16 {
        return Err(());
    }
    let mut entries = Vec::new();
    loop {
        let start = *pos;
        while *pos < chars.len()
            && (chars[*pos].is_ascii_alphanumeric() || matches!(chars[*pos], '_' | '/' | '*'))
        {
            *pos += 1;
        }
        let path: String = chars[start..*pos].iter().collect();
        if path.split('/').any(str::is_empty) {
            return Err(());
        }
        let mut sub = None;
        if *pos < chars.len() && chars[*pos] == '(' {
            *pos += 1;
            sub = Some(parse_list(chars, pos, depth + 1)?);
            if *pos >= chars.len() || chars[*pos] != ')' {
                return Err(());
            }
            *pos += 1;
        }
        // `a/b/c(sub)` is `a(b(c(sub)))`.
        let mut segments: Vec<&str> = path.split('/').collect();
        let last = segments.pop().ok_or(())?;
        let mut entry = (last.to_string(), sub);
        while let Some(parent) = segments.pop() {
            entry = (parent.to_string(), Some(Selection(vec![entry])));
        }
        entries.push(entry);
        if *pos < chars.len() && chars[*pos] == ',' {
            *pos += 1;
            continue;
        }
        return Ok(Selection(entries));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn selects_partial_responses() {
        let instance = json!({"kind": "compute#instance", "name": "se-1", "status": "RUNNING", "networkInterfaces": [{"networkIP": "10.0.0.1", "name": "nic0"}]});
        let selection = Selection::parse("name,status").unwrap();
        assert_eq!(
            selection.apply(&instance),
            json!({"name": "se-1", "status": "RUNNING"})
        );
        let nested = Selection::parse("networkInterfaces/networkIP").unwrap();
        assert_eq!(
            nested.apply(&instance),
            json!({"networkInterfaces": [{"networkIP": "10.0.0.1"}]})
        );
        let list = json!({"kind": "k", "items": [{"name": "a", "x": 1}, {"name": "b", "x": 2}], "nextPageToken": "t"});
        let selection = Selection::parse("items(name),nextPageToken").unwrap();
        assert_eq!(
            selection.apply(&list),
            json!({"items": [{"name": "a"}, {"name": "b"}], "nextPageToken": "t"})
        );
    }

    #[test]
    fn star_selects_every_key_of_a_map() {
        let aggregated = json!({
            "kind": "compute#instanceAggregatedList",
            "id": "projects/p/aggregated/instances",
            "items": {
                "zones/z-a": {"instances": [
                    {"name": "a", "zone": "z-a", "status": "RUNNING", "id": "1"},
                    {"name": "b", "zone": "z-a", "status": "TERMINATED", "id": "2"},
                ]},
                "zones/z-b": {"warning": {"code": "NO_RESULTS_ON_PAGE", "message": "m"}},
            },
            "nextPageToken": "t",
            "selfLink": "s",
        });
        let selection =
            Selection::parse("items/*/instances(name,zone,status),nextPageToken").unwrap();
        assert_eq!(
            selection.apply(&aggregated),
            json!({
                "items": {
                    "zones/z-a": {"instances": [
                        {"name": "a", "zone": "z-a", "status": "RUNNING"},
                        {"name": "b", "zone": "z-a", "status": "TERMINATED"},
                    ]},
                    "zones/z-b": {},
                },
                "nextPageToken": "t",
            })
        );
        // The parenthesised form, a wildcard next to a named key, and `*` alone.
        let both = Selection::parse("items(*(warning/code,instances/name)),kind").unwrap();
        assert_eq!(
            both.apply(&aggregated),
            json!({
                "kind": "compute#instanceAggregatedList",
                "items": {
                    "zones/z-a": {"instances": [{"name": "a"}, {"name": "b"}]},
                    "zones/z-b": {"warning": {"code": "NO_RESULTS_ON_PAGE"}},
                },
            })
        );
        let ids = Selection::parse("items/*/instances/id").unwrap();
        assert_eq!(
            ids.apply(&aggregated),
            json!({"items": {
                "zones/z-a": {"instances": [{"id": "1"}, {"id": "2"}]},
                "zones/z-b": {},
            }})
        );
        assert_eq!(
            Selection::parse("*").unwrap().apply(&aggregated),
            aggregated
        );
    }

    #[test]
    fn refuses_malformed_selections() {
        for bad in ["", "a,", "a(b", "a)", "/a", "a//b", "a(b))"] {
            assert!(Selection::parse(bad).is_err(), "{bad}");
        }
    }
}
