//! Every key `docklet.toml` accepts, read from the configuration types' own `Deserialize`
//! (the field lists serde's derive hands to the deserializer), so that the documentation of
//! the file (the template, docklet.toml(5)) can be checked against the code.

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, IntoDeserializer, MapAccess, Visitor};

use super::Config;

/// Every key the file accepts, in declaration order; a table's keys are dotted
/// (`etcd.endpoints`), the table itself is not listed.
pub fn keys() -> Vec<String> {
    let mut out = Vec::new();
    collect(&mut Vec::new(), &mut out);
    out
}

/// The keys of the table at `path` (a struct's fields), or `None` when `path` names a value.
fn fields_at(path: &[&'static str]) -> Option<&'static [&'static str]> {
    let mut found = None;
    // The probe fails the deserialization once it has what it came for (or when the path
    // leads to a value, not a table): the error is expected and says nothing.
    let _ = Config::deserialize(Probe {
        path,
        found: &mut found,
    });
    found
}

fn collect(path: &mut Vec<&'static str>, out: &mut Vec<String>) {
    for &field in fields_at(path).unwrap_or_default() {
        path.push(field);
        if fields_at(path).is_some() {
            collect(path, out);
        } else {
            out.push(path.join("."));
        }
        path.pop();
    }
}

/// A deserializer that walks down `path`, one key per table, and records the field list of
/// the struct it ends on.
struct Probe<'a> {
    path: &'a [&'static str],
    found: &'a mut Option<&'static [&'static str]>,
}

fn stop() -> de::value::Error {
    de::Error::custom("probe stops here")
}

impl<'de> Deserializer<'de> for Probe<'_> {
    type Error = de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(stop())
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        match self.path.split_first() {
            None => {
                *self.found = Some(fields);
                Err(stop())
            }
            Some((key, rest)) => visitor.visit_map(OneKey {
                key: Some(key),
                rest,
                found: self.found,
            }),
        }
    }

    // An optional table is a table all the same.
    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_some(self)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any
    }
}

/// A table holding the one key the probe goes down.
struct OneKey<'a> {
    key: Option<&'static str>,
    rest: &'a [&'static str],
    found: &'a mut Option<&'static [&'static str]>,
}

impl<'de> MapAccess<'de> for OneKey<'_> {
    type Error = de::value::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Self::Error> {
        self.key
            .take()
            .map(|key| seed.deserialize(key.into_deserializer()))
            .transpose()
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, Self::Error> {
        seed.deserialize(Probe {
            path: self.rest,
            found: &mut *self.found,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_the_fields_with_tables_dotted() {
        let keys = keys();
        for key in [
            "cluster_name",
            "proxy_port",
            "portal_url",
            "overcommit.cpu",
            "overcommit.disk",
            "etcd.endpoints",
            "etcd.key_file",
        ] {
            assert!(keys.contains(&key.to_owned()), "{key}: {keys:?}");
        }
        assert!(!keys.contains(&"etcd".to_owned()), "{keys:?}");
        assert_eq!(keys.first().map(String::as_str), Some("cluster_name"));
        // Every key is accepted by the parser, and nothing else is.
        let toml_table = |key: &str| match key.split_once('.') {
            Some((table, leaf)) => format!("[{table}]\n{leaf} = 0"),
            None => format!("{key} = 0"),
        };
        for key in &keys {
            let err = Config::parse("x".as_ref(), &toml_table(key))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(!err.contains("unknown field"), "{key}: {err}");
        }
        let err = Config::parse("x".as_ref(), &toml_table("etcd.nope")).unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }

    /// The template documents every key, with its default (set, or commented out when it has
    /// none), under its table.
    #[test]
    fn the_template_has_every_key() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/docklet.toml.template");
        let text = std::fs::read_to_string(path).unwrap();
        let mut table = String::new();
        let mut present = Vec::new();
        for line in text.lines() {
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                table = format!("{name}.");
            } else if let Some((key, _)) = line.trim_start_matches("# ").split_once(" = ") {
                present.push(format!("{table}{key}"));
            }
        }
        let missing: Vec<String> = keys()
            .into_iter()
            .filter(|k| !present.contains(k))
            .collect();
        assert!(
            missing.is_empty(),
            "not in conf/docklet.toml.template: {missing:?}"
        );
    }
}
