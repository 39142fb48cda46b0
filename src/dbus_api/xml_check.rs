//! The installed interface XML (`dbus/*.xml`) against what zbus introspects from the served
//! interface, for the daemons' unit tests. With `DOCKLET_WRITE_DBUS_XML=1` the files are
//! written instead of checked: that is how they are regenerated after an interface changes,
//!
//! ```text
//! DOCKLET_WRITE_DBUS_XML=1 CARGO_TARGET_DIR=... cargo test --release --lib introspection
//! ```

use std::path::PathBuf;

use zbus::object_server::Interface;

/// Set to regenerate the files.
pub const WRITE_VAR: &str = "DOCKLET_WRITE_DBUS_XML";

/// The whole document for `dbus/<name>.xml`: the DOCTYPE, a header comment, and the node with
/// the interface as the object server introspects it.
pub fn document(interface: &impl Interface, header: &str) -> String {
    let mut body = String::new();
    interface.introspect_to_writer(&mut body, 2);
    format!(
        "<!DOCTYPE node PUBLIC \"-//freedesktop//DTD D-BUS Object Introspection 1.0//EN\"\n \
         \"http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd\">\n{header}<node>\n\
         {body}</node>\n"
    )
}

/// Lines with runs of whitespace made one space, blank lines dropped: indentation and line
/// ends are not the contract.
fn normalise(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|l| !l.is_empty())
        .collect()
}

/// Where `committed` first differs from `served`, as a few lines of a diff; `None` when they
/// agree.
pub fn difference(committed: &str, served: &str) -> Option<String> {
    let (old, new) = (normalise(committed), normalise(served));
    let first = (0..old.len().max(new.len())).find(|&i| old.get(i) != new.get(i))?;
    let mut out = format!("first difference at normalised line {}:\n", first + 1);
    for line in old.iter().skip(first).take(4) {
        out.push_str(&format!("- {line}\n"));
    }
    for line in new.iter().skip(first).take(4) {
        out.push_str(&format!("+ {line}\n"));
    }
    Some(out)
}

/// A doc comment with a double hyphen would make the XML ill-formed (zbus copies doc
/// comments into XML comments verbatim).
fn comments_are_well_formed(xml: &str) -> Result<(), String> {
    for comment in xml.split("<!--").skip(1) {
        let body = comment.split("-->").next().unwrap_or("");
        if body.contains("--") {
            return Err(format!("a comment holds \"--\": {}", body.trim()));
        }
    }
    Ok(())
}

/// Checks (or with [`WRITE_VAR`] set, writes) `dbus/<name>.xml`.
pub fn check(name: &str, served: &str) {
    if let Err(e) = comments_are_well_formed(served) {
        panic!("the {name} interface's XML would be ill-formed: {e}");
    }
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("dbus/{name}.xml"));
    if std::env::var_os(WRITE_VAR).is_some() {
        std::fs::write(&path, served).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    if let Some(diff) = difference(&committed, served) {
        panic!(
            "{} does not match the interface the daemon serves (- file, + served).\n{diff}\
             Regenerate it with `{WRITE_VAR}=1 cargo test --release --lib introspection` and \
             commit the change.",
            path.display()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whitespace_is_not_a_difference_and_the_first_one_is_shown() {
        assert_eq!(
            difference("<a>\n  <b/>\n\n</a>", "<a>\n<b/>  \n</a>\n"),
            None
        );
        let diff = difference("<a>\n<b/>\n</a>", "<a>\n<c/>\n</a>").unwrap();
        assert!(diff.contains("line 2"), "{diff}");
        assert!(diff.contains("- <b/>") && diff.contains("+ <c/>"), "{diff}");
        assert!(difference("<a>", "<a>\n</a>").is_some());
    }

    #[test]
    fn a_double_hyphen_in_a_comment_is_caught() {
        assert!(comments_are_well_formed("<!-- a - b --><x/><!-- c -->").is_ok());
        assert!(comments_are_well_formed("<!-- run it --release -->").is_err());
    }
}
