//! The rules for names that become etcd key segments, unit names, paths and machine names,
//! and the error a request field that breaks a rule gets.

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("{field} {value:?} is invalid: {reason}")]
    Invalid {
        field: &'static str,
        value: String,
        reason: String,
    },
    #[error("{field} {value} is out of range: {reason}")]
    OutOfRange {
        field: &'static str,
        value: u64,
        reason: String,
    },
}

pub(crate) fn invalid(field: &'static str, value: &str, reason: impl Into<String>) -> SpecError {
    SpecError::Invalid {
        field,
        value: value.to_owned(),
        reason: reason.into(),
    }
}

/// Lower-case letters, digits and inner dashes; `max` characters at most. Such names are safe
/// as etcd key segments, unit names, paths and machine names.
pub(crate) fn check_name(field: &'static str, value: &str, max: usize) -> Result<(), SpecError> {
    if value.is_empty() || value.len() > max {
        return Err(invalid(
            field,
            value,
            format!("must be 1 to {max} characters"),
        ));
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(invalid(field, value, "may only contain a-z, 0-9 and '-'"));
    }
    if value.starts_with('-') || value.ends_with('-') {
        return Err(invalid(field, value, "must not start or end with '-'"));
    }
    Ok(())
}
