//! docklet.toml(5): the man page of the configuration file, made from
//! conf/docklet.toml.template, which documents every key with the comment above it and its
//! default (a key set in the template has that default; a commented-out one is unset, shown
//! with an example value).

use clap_mangen::roff::{Inline, Roff, bold, roman};

/// The template the page is made from, as this build's source has it.
const TEMPLATE: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/conf/docklet.toml.template"
));

/// One key's line in the template.
struct Key {
    /// Its name within its table.
    name: String,
    /// Its value as written.
    value: String,
    /// Set in the template (its default), not commented out (unset by default; an example).
    set: bool,
}

/// Keys the template documents together (`tls_cert` and `tls_key`), with the comment above
/// them; a comment followed by no key is a paragraph of its own.
struct Entry {
    text: Vec<String>,
    keys: Vec<Key>,
}

/// The keys outside any table (`name` None), or one `[table]` with the comment above it.
struct Table {
    name: Option<String>,
    text: Vec<String>,
    entries: Vec<Entry>,
}

struct Template {
    /// The header comment, less its first line (the file's name).
    intro: Vec<String>,
    tables: Vec<Table>,
}

/// A comment line's text.
fn uncomment(line: &str) -> String {
    line.trim_start_matches('#').trim().to_owned()
}

/// A line setting one of the keys the configuration accepts (`known`, dotted for tables),
/// possibly commented out. Other commented `a = b` lines are prose.
fn key_line(line: &str, table: Option<&str>, known: &[String]) -> Option<Key> {
    let (set, rest) = match line.strip_prefix('#') {
        Some(rest) => (false, rest.trim_start()),
        None => (true, line),
    };
    let (name, value) = rest.split_once(" = ")?;
    let dotted = match table {
        Some(table) => format!("{table}.{name}"),
        None => name.to_owned(),
    };
    known.contains(&dotted).then(|| Key {
        name: name.to_owned(),
        value: value.trim().to_owned(),
        set,
    })
}

fn parse(template: &str, known: &[String]) -> Template {
    let mut lines = template.lines();
    let intro = lines
        .by_ref()
        .take_while(|line| !line.trim().is_empty())
        .skip(1)
        .map(uncomment)
        .collect();
    let mut tables = vec![Table {
        name: None,
        text: Vec::new(),
        entries: Vec::new(),
    }];
    let mut prose: Vec<String> = Vec::new();
    let mut open: Option<Entry> = None;
    fn close(tables: &mut [Table], open: &mut Option<Entry>, prose: &mut Vec<String>) {
        let table = tables.last_mut().expect("the top level");
        table.entries.extend(open.take());
        if !prose.is_empty() {
            table.entries.push(Entry {
                text: std::mem::take(prose),
                keys: Vec::new(),
            });
        }
    }
    for line in lines {
        let line = line.trim_end();
        if line.is_empty() {
            close(&mut tables, &mut open, &mut prose);
        } else if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            // The comment above a table header is the table's.
            let text = std::mem::take(&mut prose);
            close(&mut tables, &mut open, &mut prose);
            tables.push(Table {
                name: Some(name.to_owned()),
                text,
                entries: Vec::new(),
            });
        } else if let Some(key) =
            key_line(line, tables.last().and_then(|t| t.name.as_deref()), known)
        {
            open.get_or_insert_with(|| Entry {
                text: std::mem::take(&mut prose),
                keys: Vec::new(),
            })
            .keys
            .push(key);
        } else if line.starts_with('#') {
            // A comment after keys starts the next entry.
            if let Some(entry) = open.take() {
                tables
                    .last_mut()
                    .expect("the top level")
                    .entries
                    .push(entry);
            }
            prose.push(uncomment(line));
        }
    }
    close(&mut tables, &mut open, &mut prose);
    Template { intro, tables }
}

/// Comment text as roff: one paragraph, `code` in bold.
fn prose(lines: &[String]) -> Vec<Inline> {
    lines
        .join(" ")
        .split('`')
        .enumerate()
        .filter(|(_, part)| !part.is_empty())
        .map(|(i, part)| if i % 2 == 1 { bold(part) } else { roman(part) })
        .collect()
}

fn default_line(key: &Key) -> Vec<Inline> {
    let line = bold(format!("{} = {}", key.name, key.value));
    if key.set {
        vec![roman("Default: "), line]
    } else {
        vec![roman("Unset by default; for example: "), line]
    }
}

fn entries(roff: &mut Roff, entries: &[Entry]) {
    for entry in entries {
        if entry.keys.is_empty() {
            roff.control("PP", []).text(prose(&entry.text));
            continue;
        }
        let mut tag = Vec::new();
        for (i, key) in entry.keys.iter().enumerate() {
            if i > 0 {
                tag.push(roman(", "));
            }
            tag.push(bold(key.name.as_str()));
        }
        roff.control("TP", []).text(tag);
        if !entry.text.is_empty() {
            roff.text(prose(&entry.text)).control("IP", []);
        }
        for (i, key) in entry.keys.iter().enumerate() {
            if i > 0 {
                roff.control("br", []);
            }
            roff.text(default_line(key));
        }
    }
}

/// docklet.toml(5), dated `date` (YYYY-MM-DD).
pub(crate) fn page(date: &str) -> String {
    let template = parse(TEMPLATE, &docklet::config::keys());
    let source = format!("Docklet {}", docklet::VERSION);
    let path = docklet::config::DEFAULT_PATH;
    let mut roff = Roff::new();
    roff.control("TH", ["DOCKLET.TOML", "5", date, source.as_str()])
        .control("SH", ["NAME"])
        .text([roman("docklet.toml - configuration of the Docklet daemons")])
        .control("SH", ["SYNOPSIS"])
        .text([bold(path)])
        .control("SH", ["DESCRIPTION"])
        .text([
            bold("docklet.toml"),
            roman(" is the one configuration file of "),
            bold("docklet-master"),
            roman("(8) and "),
            bold("docklet-worker"),
            roman("(8), in TOML; "),
            bold("--config"),
            roman(" or "),
            bold("DOCKLET_CONFIG"),
            roman(
                " names another. Every key has a default that works on a single host, so an \
                 empty file is a valid configuration.",
            ),
        ])
        .control("PP", [])
        .text(prose(&template.intro));
    roff.control("SH", ["KEYS"]);
    let tables: Vec<String> = template
        .tables
        .iter()
        .filter_map(|t| t.name.as_deref())
        .map(|name| format!("[{name}]"))
        .collect();
    roff.text([roman(format!(
        "Keys outside any table come first in the file; then the tables {}, each key under \
         its table's header.",
        tables.join(" and ")
    ))]);
    for table in &template.tables {
        if let Some(name) = &table.name {
            roff.control("SS", [format!("[{name}]").as_str()]);
            if !table.text.is_empty() {
                roff.text(prose(&table.text));
            }
        }
        entries(&mut roff, &table.entries);
    }
    roff.control("SH", ["FILES"])
        .control("TP", [])
        .text([bold(path)])
        .text([roman("The configuration file.")])
        .control("TP", [])
        .text([bold("/usr/share/doc/docklet/docklet.toml.template")])
        .text([roman(
            "Every key with its default, as this page lists them.",
        )])
        .control("SH", ["SEE ALSO"])
        .text([
            bold("docklet-master"),
            roman("(8), "),
            bold("docklet-worker"),
            roman("(8), "),
            bold("docklet-admin"),
            roman("(8)"),
        ]);
    roff.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_go_with_the_keys_below_them() {
        let known = docklet::config::keys();
        let template = parse(TEMPLATE, &known);
        assert!(
            template.intro[0].starts_with("An unknown key"),
            "{:?}",
            template.intro
        );
        let top = &template.tables[0];
        let tls = top
            .entries
            .iter()
            .find(|e| e.keys.iter().any(|k| k.name == "tls_cert"))
            .unwrap();
        let names: Vec<&str> = tls.keys.iter().map(|k| k.name.as_str()).collect();
        assert_eq!(names, ["tls_cert", "tls_key"]);
        assert!(!tls.keys[0].set);
        assert!(tls.text[0].starts_with("The portal's certificate chain"));
        let cluster_name = &top.entries[0];
        assert_eq!(cluster_name.keys[0].name, "cluster_name");
        assert_eq!(cluster_name.keys[0].value, "\"docklet\"");
        assert!(cluster_name.keys[0].set);
        let overcommit = &template.tables[1];
        assert_eq!(overcommit.name.as_deref(), Some("overcommit"));
        assert!(overcommit.text[0].starts_with("How far the scheduler"));
        // Every comment belongs to a key: no stray paragraph.
        for table in &template.tables {
            for entry in &table.entries {
                assert!(!entry.keys.is_empty(), "{:?}", entry.text);
            }
        }
    }
}
