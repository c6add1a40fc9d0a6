//! Where each field sits in the YAML text: an index from field paths
//! (`routes[1].scopes[0]`, `plans.free.limits[0].window`) to 1-based
//! line:column, built from yaml-rust2's marked event stream. serde forgets
//! positions once a value is deserialized; this index lets every semantic
//! error point at the line a user must edit. It also finds duplicate mapping
//! keys, which serde silently resolves to the last one for maps (a second
//! `free:` plan would otherwise replace the first without a word).

use std::collections::hash_map::Entry;
use std::collections::HashMap;

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
}

impl Locations {
    /// Indexes the first YAML document of `text`. A text yaml-rust2 cannot
    /// parse gives the part indexed before the problem (serde reports the
    /// syntax error itself).
    pub fn index(text: &str) -> Locations {
        let mut builder = Builder::default();
        let mut parser = Parser::new_from_str(text);
        // A scan error ends the walk; what was indexed so far stays useful.
        let _ = parser.load(&mut builder, false);
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

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
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
    /// A node that cannot have a path (a mapping used as a key): count
    /// nesting until it ends.
    Skip {
        depth: usize,
    },
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    locations: Locations,
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
        let inside_duplicate = self.locations.duplicates.iter().any(|(dup, _)| {
            path.strip_prefix(dup.as_str()).is_some_and(|rest| rest.starts_with(['.', '[']))
        });
        match self.locations.positions.entry(path) {
            Entry::Occupied(mut seen) => {
                if !inside_duplicate {
                    self.locations.duplicates.push((seen.key().clone(), at));
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
}
