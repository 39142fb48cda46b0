//! Reading `a{sv}` arguments strictly: every key known, every value of its declared type, and a
//! refusal naming the key otherwise. zbus's own decoding of a typed dictionary would refuse
//! the whole call with a generic error that names nothing, so patches arrive as plain
//! [`VariantDict`]s and are read here.

use std::collections::HashMap;

use serde::Serialize;
use serde::de::DeserializeOwned;
use zbus::wire::serialized::Context;
use zbus::wire::{LE, to_bytes};
use zbus::{OwnedVariant, Type};

use super::BusError;

/// An `a{sv}` as it arrives.
pub type VariantDict = HashMap<String, OwnedVariant>;

/// The entries of an `a{sv}` argument being read. `prefix` names a nested dictionary in
/// errors (`quota.vnodes`).
pub struct DictReader {
    prefix: String,
    entries: VariantDict,
}

impl DictReader {
    pub fn new(prefix: &str, entries: VariantDict) -> DictReader {
        DictReader {
            prefix: prefix.to_owned(),
            entries,
        }
    }

    fn name(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// The value of `key` when present; refused when it is not of type `T`.
    pub fn take<T: Type + DeserializeOwned>(&mut self, key: &str) -> Result<Option<T>, BusError> {
        match self.entries.remove(key) {
            None => Ok(None),
            Some(value) => decode(&self.name(key), &value).map(Some),
        }
    }

    /// A nested `a{sv}` under `key`, read with the key as its prefix.
    pub fn take_dict(&mut self, key: &str) -> Result<Option<DictReader>, BusError> {
        let prefix = format!("{}.", self.name(key));
        Ok(self
            .take::<VariantDict>(key)?
            .map(|entries| DictReader::new(&prefix, entries)))
    }

    /// Refuses the keys nobody took: a misspelt key must not be ignored silently.
    pub fn finish(self, known: &[&str]) -> Result<(), BusError> {
        let mut unknown: Vec<&String> = self.entries.keys().collect();
        unknown.sort();
        match unknown.first() {
            None => Ok(()),
            Some(key) => Err(BusError::InvalidArgument(format!(
                "unknown key {:?} (expected any of {})",
                self.name(key),
                known.join(", ")
            ))),
        }
    }
}

/// A variant's value as `T`, refused with the key's name when its type differs.
pub fn decode<T: Type + DeserializeOwned>(key: &str, value: &OwnedVariant) -> Result<T, BusError> {
    let actual = value.value_signature();
    if actual != T::SIGNATURE {
        return Err(BusError::InvalidArgument(format!(
            "{key}: expected a value of type {}, got {actual}",
            T::SIGNATURE
        )));
    }
    let invalid = |e: zbus::Error| BusError::InvalidArgument(format!("{key}: {e}"));
    // Re-encoding the variant is the one way zbus offers to read any `T` out of it.
    let bytes = to_bytes(Context::new(LE, 0), &**value).map_err(invalid)?;
    let (decoded, _): (zbus::as_variant::Deserialize<'_, T>, _) =
        bytes.deserialize().map_err(invalid)?;
    Ok(decoded.0)
}

/// A unit enum's name as the JSON API spells it (`normal`, `pam`, `running`).
pub fn enum_text<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(text)) => text,
        _ => String::new(),
    }
}

/// A unit enum from its name; refused with the key's name when unknown.
pub fn parse_enum<T: DeserializeOwned>(key: &str, text: &str) -> Result<T, BusError> {
    serde_json::from_value(serde_json::Value::String(text.to_owned()))
        .map_err(|e| BusError::InvalidArgument(format!("{key}: {e}")))
}

/// `""` for none: D-Bus has no optional values.
pub fn text_or_empty(value: Option<impl ToString>) -> String {
    value.map(|v| v.to_string()).unwrap_or_default()
}

/// The reverse of [`text_or_empty`], parsing what is there.
pub fn parse_non_empty<T: std::str::FromStr>(key: &str, text: &str) -> Result<Option<T>, BusError>
where
    T::Err: std::fmt::Display,
{
    if text.is_empty() {
        return Ok(None);
    }
    text.parse()
        .map(Some)
        .map_err(|e| BusError::InvalidArgument(format!("{key} {text:?}: {e}")))
}
