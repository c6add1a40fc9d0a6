//! Where each field sits in the YAML text: an index from field paths
//! (`routes[1].scopes[0]`, `plans.free.limits[0].window`) to 1-based
//! line:column, built from yaml-rust2's marked event stream. serde forgets
//! positions once a value is deserialized; this index lets every semantic
//! error point at the line a user must edit. It also finds duplicate mapping
//! keys, which serde silently resolves to the last one for maps (a second
//! `free:` plan would otherwise replace the first without a word).
//!
//! The index runs on every text before serde sees it, so it must stay cheap
//! on any text: it pulls events one at a time (yaml-rust2's `load` recurses
//! once per nesting level, and `- - - … x` a few hundred thousand levels deep
//! overflowed the stack), stops indexing below [`MAX_DEPTH`] levels or
//! beyond [`MAX_PATH_LEN`] bytes of path (every descendant would copy the
//! path: memory quadratic in the depth), and checks for repeated keys with
//! a hash lookup per ancestor (a scan of every duplicate found so far took
//! minutes on a file of 40 000 repeated keys).

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// A 1-based position in the config text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Location {
    pub line: usize,
    pub column: usize,
}

/// Field path -> position. A mapping entry is located at its key, a sequence
/// item at its value (for an item that is a mapping, at its first key).
///
/// Paths join keys with `.` and indexes with `[n]`, the same shape as
/// `serde_path_to_error` prints: `store.redis.timeout`, `routes[2].path`.
/// Keys are used verbatim, so `scopes.implies.admin:all` is a valid path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Locations {
    positions: HashMap<String, Location>,
    duplicates: Vec<(String, Location)>,
    /// Where a second YAML document starts, if the text has one.
    second_document: Option<Location>,
    /// Where and why yaml-rust2 could not read the first document.
    syntax_error: Option<(Location, String)>,
}

/// Nesting deeper than this is not indexed. serde_yaml refuses documents
/// nested deeper than 128 levels anyway; keyward's config needs about 6.
const MAX_DEPTH: usize = 128;

/// Paths longer than this (in bytes) are not indexed, nor is anything below
/// them: no config field has one, and copying such a path into each of its
/// descendants would make the index quadratic in the text's size.
const MAX_PATH_LEN: usize = 1024;

impl Locations {
    /// Indexes the first YAML document of `text`. A text yaml-rust2 cannot
    /// parse gives the part indexed before the problem (serde reports the
    /// syntax error itself).
    pub fn index(text: &str) -> Locations {
        let mut builder = Builder::default();
        let mut parser = Parser::new_from_str(text);
        // Events one at a time, not `parser.load` (see the module doc). A
        // scan error ends the walk; what was indexed so far stays useful.
        let mut first_ended = false;
        loop {
            let next = parser.next_token();
            if first_ended {
                // Whatever follows the first document's end is a second one:
                // an event (after `---` or `...`) or text that cannot start
                // a document (a key indented less than the document's own).
                let mark = match &next {
                    Ok((Event::StreamEnd, _)) => break,
                    Ok((_, mark)) => *mark,
                    Err(error) => *error.marker(),
                };
                builder.locations.second_document = Some(line_start(text, location(mark).line));
                break;
            }
            match next {
                Ok((Event::StreamEnd, _)) => break,
                Err(error) => {
                    let at = location(*error.marker());
                    builder.locations.syntax_error = Some((at, error.info().to_owned()));
                    break;
                }
                Ok((Event::DocumentEnd, _)) => first_ended = true,
                Ok((event, mark)) => builder.on_event(event, mark),
            }
        }
        builder.locations
    }

    /// The position of exactly this field, if the file wrote it.
    pub fn get(&self, field_path: &str) -> Option<Location> {
        self.positions.get(field_path).copied()
    }

    /// The position of this field, or of its closest enclosing field that
    /// the file wrote (a defaulted `store.redis.timeout` falls back to
    /// `store.redis`, then `store`).
    pub fn nearest(&self, field_path: &str) -> Option<Location> {
        let mut path = field_path;
        loop {
            if let Some(found) = self.get(path) {
                return Some(found);
            }
            path = parent(path)?;
        }
    }

    /// Mapping keys written twice, each at its second (ignored) occurrence.
    pub fn duplicates(&self) -> &[(String, Location)] {
        &self.duplicates
    }

    /// Where a second YAML document begins (its `---`, its first node after
    /// a `...`, or text that cannot continue the first), if the text holds
    /// more than one.
    pub fn second_document(&self) -> Option<Location> {
        self.second_document
    }

    /// Where and why yaml-rust2 could not read the first document (serde's
    /// libyaml reports syntax errors itself; this is for where they differ).
    pub fn syntax_error(&self) -> Option<(Location, &str)> {
        self.syntax_error.as_ref().map(|(at, why)| (*at, why.as_str()))
    }

    /// Number of indexed paths.
    pub fn len(&self) -> usize {
        self.positions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.positions.is_empty()
    }

    /// Records a position by hand (for code that builds configs without text).
    pub fn insert(&mut self, field_path: impl Into<String>, location: Location) {
        self.positions.insert(field_path.into(), location);
    }
}

/// `a.b[2]` -> `a.b`, `a.b` -> `a`, `a` -> none.
fn parent(path: &str) -> Option<&str> {
    let cut = path.rfind(['.', '['])?;
    Some(&path[..cut])
}

/// `a.b[2]` -> `a.b`, `a`.
fn ancestors(path: &str) -> impl Iterator<Item = &str> {
    std::iter::successors(parent(path), |p| parent(p))
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

/// Where the text of 1-based `line` starts: yaml-rust2 marks an implicit
/// document start, or a scan error, past the token it was reading. Lines
/// end as YAML ends them: `\n`, `\r\n` or a lone `\r`.
fn line_start(text: &str, line: usize) -> Location {
    let indent = yaml_lines(text).nth(line.saturating_sub(1)).map_or(0, indentation);
    Location { line, column: indent + 1 }
}

fn yaml_lines(text: &str) -> impl Iterator<Item = &str> {
    text.split('\n').flat_map(|l| l.strip_suffix('\r').unwrap_or(l).split('\r'))
}

fn indentation(line: &str) -> usize {
    line.len() - line.trim_start_matches([' ', '\t']).len()
}

/// Where a second document starts by the text's document markers: a `---`
/// after the first document's content, or the first content after a `...`.
/// YAML reserves both at the start of a line, even inside a quoted scalar,
/// so this holds where the two YAML parsers disagree about the content.
pub(crate) fn second_document_marker(text: &str) -> Option<Location> {
    let marker = |line: &str, m: &str| {
        line.strip_prefix(m).is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t']))
    };
    let is_content = |rest: &str| {
        let rest = rest.trim_start_matches([' ', '\t']);
        !rest.is_empty() && !rest.starts_with('#')
    };
    let (mut content, mut ended) = (false, false);
    for (i, line) in yaml_lines(text).enumerate() {
        let at = Location { line: i + 1, column: indentation(line) + 1 };
        // A `%` line before any content is a directive (`%YAML 1.2`).
        let directive = !content && line.starts_with('%');
        if marker(line, "---") {
            if content || ended {
                return Some(at);
            }
            content = is_content(&line[3..]);
        } else if marker(line, "...") {
            ended = true;
        } else if is_content(line) && !directive {
            if ended {
                return Some(at);
            }
            content = true;
        }
    }
    None
}

/// yaml-rust2 markers have 1-based lines and 0-based columns.
fn location(mark: Marker) -> Location {
    Location { line: mark.line(), column: mark.col() + 1 }
}

enum Frame {
    /// Inside a mapping at `path`; `key` is the full path of the entry whose
    /// value comes next, or `None` when a key comes next.
    Map {
        path: String,
        key: Option<String>,
        /// A sequence item that is this mapping, waiting for its first key to
        /// give it a position.
        pending_item: Option<(String, Location)>,
    },
    Seq {
        path: String,
        next: usize,
    },
    /// A node that cannot have a path (a mapping used as a key), or is not
    /// indexed (below [`MAX_DEPTH`] or [`MAX_PATH_LEN`]): count nesting
    /// until it ends.
    Skip {
        depth: usize,
    },
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    locations: Locations,
    /// The paths in `locations.duplicates`, for a lookup per ancestor.
    duplicate_paths: HashSet<String>,
}

enum Node {
    Scalar(String),
    Alias,
    MappingStart,
    SequenceStart,
}

impl Builder {
    fn record(&mut self, path: String, at: Location) {
        // Inside the value of a repeated key, paths repeat too: that is the
        // one duplicate already reported, not more.
        let inside_duplicate = ancestors(&path).any(|a| self.duplicate_paths.contains(a));
        match self.locations.positions.entry(path) {
            Entry::Occupied(mut seen) => {
                if !inside_duplicate {
                    self.locations.duplicates.push((seen.key().clone(), at));
                    self.duplicate_paths.insert(seen.key().clone());
                }
                // serde keeps the last value of a repeated map key, so errors
                // about that value point at its last occurrence.
                seen.insert(at);
            }
            Entry::Vacant(slot) => {
                slot.insert(at);
            }
        }
    }

    fn open(&mut self, node: &Node, path: String, item: Option<(String, Location)>) {
        let starts = matches!(node, Node::MappingStart | Node::SequenceStart);
        if starts && (self.stack.len() >= MAX_DEPTH || path.len() > MAX_PATH_LEN) {
            self.stack.push(Frame::Skip { depth: 1 });
            return;
        }
        match node {
            Node::MappingStart => {
                self.stack.push(Frame::Map { path, key: None, pending_item: item })
            }
            Node::SequenceStart => {
                if let Some((item, at)) = item {
                    self.record(item, at);
                }
                self.stack.push(Frame::Seq { path, next: 0 });
            }
            Node::Scalar(_) | Node::Alias => {
                if let Some((item, at)) = item {
                    self.record(item, at);
                }
            }
        }
    }

    fn node(&mut self, node: Node, at: Location) {
        let starts = matches!(node, Node::MappingStart | Node::SequenceStart);
        match self.stack.last_mut() {
            None => self.open(&node, String::new(), None),
            Some(Frame::Skip { depth }) => {
                if starts {
                    *depth += 1;
                }
            }
            Some(Frame::Seq { path, next }) => {
                let item = format!("{path}[{next}]");
                *next += 1;
                self.open(&node, item.clone(), Some((item, at)));
            }
            Some(Frame::Map { path, key, pending_item }) => match key.take() {
                // This node is a key.
                None => {
                    let pending = pending_item.take();
                    let full = match &node {
                        Node::Scalar(name) => join(path, name),
                        Node::Alias | Node::MappingStart | Node::SequenceStart => join(path, "?"),
                    };
                    *key = Some(full.clone());
                    if let Some((item, _)) = pending {
                        self.record(item, at);
                    }
                    if starts {
                        self.stack.push(Frame::Skip { depth: 1 });
                    } else if matches!(node, Node::Scalar(_)) {
                        self.record(full, at);
                    }
                }
                // This node is the value of `full`, already located at its key.
                Some(full) => self.open(&node, full, None),
            },
        }
    }

    fn end(&mut self) {
        match self.stack.pop() {
            Some(Frame::Skip { depth }) if depth > 1 => {
                self.stack.push(Frame::Skip { depth: depth - 1 });
            }
            Some(Frame::Map { pending_item: Some((item, start)), .. }) => {
                // An empty mapping as a sequence item: locate it where it opened.
                self.record(item, start);
            }
            _ => {}
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, event: Event, mark: Marker) {
        let at = location(mark);
        match event {
            Event::Scalar(value, ..) => self.node(Node::Scalar(value), at),
            Event::Alias(_) => self.node(Node::Alias, at),
            Event::MappingStart(..) => self.node(Node::MappingStart, at),
            Event::SequenceStart(..) => self.node(Node::SequenceStart, at),
            Event::MappingEnd | Event::SequenceEnd => self.end(),
            Event::Nothing
            | Event::StreamStart
            | Event::StreamEnd
            | Event::DocumentStart
            | Event::DocumentEnd => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(line: usize, column: usize) -> Option<Location> {
        Some(Location { line, column })
    }

    const DOC: &str = "\
listen: x
store:
  redis:
    timeout: 50ms
routes:
  - path: /a
    scopes: [jobs:read, jobs:write]
  - path: /b
    scopes:
      - queues:write
  - {path: /c, methods: [GET]}
plans:
  free: {limits: [{window: 1m, max: 1}]}
";

    #[test]
    fn mapping_entries_are_located_at_their_key_one_based() {
        let index = Locations::index(DOC);
        assert_eq!(index.get("listen"), at(1, 1));
        assert_eq!(index.get("store"), at(2, 1));
        assert_eq!(index.get("store.redis"), at(3, 3));
        assert_eq!(index.get("store.redis.timeout"), at(4, 5));
    }

    #[test]
    fn sequence_items_are_located_at_their_value() {
        let index = Locations::index(DOC);
        assert_eq!(index.get("routes[0]"), at(6, 5));
        assert_eq!(index.get("routes[0].path"), at(6, 5));
        assert_eq!(index.get("routes[0].scopes[1]"), at(7, 25));
        assert_eq!(index.get("routes[1].scopes"), at(9, 5));
        assert_eq!(index.get("routes[1].scopes[0]"), at(10, 9));
        assert_eq!(index.get("routes[2]"), at(11, 6));
        assert_eq!(index.get("routes[2].methods[0]"), at(11, 26));
        assert_eq!(index.get("routes[3]"), None);
    }

    #[test]
    fn flow_mappings_inside_maps_are_indexed() {
        let index = Locations::index(DOC);
        assert_eq!(index.get("plans.free"), at(13, 3));
        assert_eq!(index.get("plans.free.limits[0]"), at(13, 20));
        assert_eq!(index.get("plans.free.limits[0].window"), at(13, 20));
        assert_eq!(index.get("plans.free.limits[0].max"), at(13, 32));
    }

    #[test]
    fn nearest_falls_back_to_the_closest_written_ancestor() {
        let index = Locations::index(DOC);
        assert_eq!(index.nearest("store.redis.url"), at(3, 3));
        assert_eq!(index.nearest("routes[1].methods"), at(8, 5));
        assert_eq!(index.nearest("keys.prefix"), None);
    }

    #[test]
    fn duplicate_keys_are_reported_at_the_second_occurrence() {
        let index = Locations::index("plans:\n  free: {a: 1}\n  free: {a: 2}\n");
        // The last occurrence is the one serde keeps.
        assert_eq!(index.get("plans.free"), at(3, 3));
        assert_eq!(index.get("plans.free.a"), at(3, 10));
        assert_eq!(
            index.duplicates(),
            &[("plans.free".to_owned(), Location { line: 3, column: 3 })]
        );
    }

    #[test]
    fn complex_keys_and_broken_text_do_not_derail_the_index() {
        let index = Locations::index("? [a, b]\n: 1\nafter: 2\n");
        assert_eq!(index.get("after"), at(3, 1));
        let broken = Locations::index("a: 1\nb: [\n");
        assert_eq!(broken.get("a"), at(1, 1));
        assert!(Locations::index("").is_empty());
    }

    #[test]
    fn a_second_document_is_located_where_it_begins() {
        assert_eq!(Locations::index("a: 1\n---\nb: 2\n").second_document(), at(2, 1));
        assert_eq!(Locations::index("---\na: 1\n...\nb: 2\n").second_document(), at(4, 1));
        assert_eq!(Locations::index("---\na: 1\n...\n").second_document(), None);
        assert_eq!(Locations::index("a: 1\n").second_document(), None);
        // A mapping indented by two, then a key at column 1: libyaml (serde)
        // calls it a second document, yaml-rust2 a syntax error.
        assert_eq!(Locations::index("  a: 1\nb: 2\n").second_document(), at(2, 1));
        // Lines end at a lone `\r` too.
        assert_eq!(Locations::index("a: 1\r---\r  b: 2\r").second_document(), at(2, 1));
        assert_eq!(Locations::index("a: 1\r\n...\r\n  b: 2\r\n").second_document(), at(3, 3));
    }

    #[test]
    fn document_markers_show_where_a_second_document_starts() {
        let marker = second_document_marker;
        assert_eq!(marker("a: 1\n---\nb: 2\n"), at(2, 1));
        assert_eq!(marker("# c\n---\na: 1\n--- # two\nb: 2\n"), at(4, 1));
        assert_eq!(marker("--- {a: 1}\n---\n"), at(2, 1));
        assert_eq!(marker("%YAML 1.2\n---\na: 1\n...\n# c\n  b: 2\n"), at(6, 3));
        assert_eq!(marker("a: \"x\n--- y\"\n"), at(2, 1));
        assert_eq!(marker("a: 1\r---\r"), at(2, 1));
        // Not markers: inside a line, or followed by more than a space.
        assert_eq!(marker("---\na: ---\nb: |\n  ---\n----\n...x\n"), None);
        assert_eq!(marker("a: 1\n...\n# only a comment\n"), None);
    }

    #[test]
    fn nesting_hundreds_of_thousands_deep_neither_overflows_the_stack_nor_is_indexed() {
        // `- - - … x`: one nesting level per two bytes. yaml-rust2's
        // recursive `load` overflowed an 8 MB stack on 100 000 levels.
        let text = format!("{}x", "- ".repeat(300_000));
        let index = std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || Locations::index(&text))
            .unwrap()
            .join()
            .expect("indexing a deep document overflowed a 256 KiB stack");
        // A sequence item is located at its value.
        assert_eq!(index.get("[0]"), at(1, 3));
        assert_eq!(index.get("[0][0]"), at(1, 5));
        assert!(index.len() <= MAX_DEPTH + 1, "{} paths indexed", index.len());
    }

    #[test]
    fn long_paths_are_not_copied_into_every_descendant() {
        // YAML caps a key at 1024 characters; two keys make a longer path.
        let key = "k".repeat(600);
        let long = format!("{key}.{key}");
        let children: String = (0..1000).map(|i| format!("    c{i}: 1\n")).collect();
        let index = Locations::index(&format!("{key}:\n  {key}:\n{children}short: 1\n"));
        assert_eq!(index.get(&long), at(2, 3));
        assert_eq!(index.get(&format!("{long}.c0")), None);
        assert_eq!(index.nearest(&format!("{long}.c0")), at(2, 3));
        assert_eq!(index.get("short"), at(1003, 1));
        assert_eq!(index.len(), 3);
    }

    #[test]
    fn many_repeated_keys_are_found_in_linear_time() {
        // Each repetition used to be checked against every one found before
        // it: 40 000 took minutes. 200 000 now take well under a second.
        let text = "a: {b: 1}\n".repeat(200_000);
        let started = crate::clock::now();
        let index = Locations::index(&text);
        let took = started.elapsed();
        assert_eq!(index.duplicates().len(), 199_999);
        assert_eq!(index.duplicates()[0], ("a".to_owned(), Location { line: 2, column: 1 }));
        // The values' own keys repeat too, but only as part of their parent.
        assert!(index.duplicates().iter().all(|(path, _)| path == "a"));
        assert!(took < std::time::Duration::from_secs(20), "indexing took {took:?}");
    }
}
