//! Fuzz target: the config loader and validator (`Config::from_yaml`), then
//! what `check-config` and a (re)load do with a valid config: compile the
//! route table, list its warnings, print the summary.
//!
//! Input: the bytes of a config file (read as UTF-8 lossily; `Config::load`
//! refuses non-UTF-8 files before parsing).
//!
//! Checked, beyond "never panics" (and, through libFuzzer's `-timeout` and
//! `-rss_limit_mb`, never hangs or blows up on YAML bombs):
//! - a refused config gives at least one error, each naming the file, with
//!   a position inside the text or (line 0) a field that says what is wrong,
//!   and a message;
//! - the errors are in file order;
//! - loading is deterministic: the same text gives the same result twice.
#![no_main]

use std::path::Path;

use keyward::config::{Config, ConfigErrors, Overrides};
use keyward::routes::RouteTable;
use libfuzzer_sys::fuzz_target;

const SOURCE: &str = "fuzz.yaml";

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let source = Path::new(SOURCE);
    let overrides = Overrides::default();
    let loaded = Config::from_yaml(&text, source, &overrides);
    match &loaded {
        Err(errors) => check_errors(&text, errors),
        Ok(config) => {
            assert_eq!(config.source, source);
            match RouteTable::compile(config) {
                Ok(table) => {
                    for warning in table.warnings(config) {
                        assert!(warning.starts_with(SOURCE), "{warning}");
                    }
                    assert_eq!(table.routes().len(), config.routes.len());
                }
                Err(errors) => check_errors(&text, &errors),
            }
            assert!(!config.summary().is_empty());
        }
    }
    let again = Config::from_yaml(&text, source, &overrides);
    assert_eq!(loaded, again, "loading the same text twice gave different results");
});

fn check_errors(text: &str, errors: &ConfigErrors) {
    assert!(!errors.is_empty(), "refused without an error");
    // YAML breaks lines at `\n`, `\r\n` and a lone `\r`. An error at the end
    // of the input sits on the line after the last break; libyaml first
    // adds a break if the text does not end with one (its STREAM-END).
    let breaks = text.bytes().filter(|&b| b == b'\n').count()
        + text.as_bytes().windows(2).filter(|w| w[0] == b'\r' && w[1] != b'\n').count()
        + usize::from(text.ends_with('\r'));
    let unterminated = !text.is_empty() && !text.ends_with(['\n', '\r']);
    let lines = breaks + 1 + usize::from(unterminated);
    let mut previous = (0, 0);
    for e in errors {
        let shown = e.to_string();
        assert_eq!(e.file, Path::new(SOURCE), "{shown}");
        assert!(shown.starts_with(SOURCE), "{shown}");
        assert!(!e.message.trim().is_empty(), "an error without a message: {shown}");
        if e.line == 0 {
            assert!(!e.field.is_empty(), "an error with neither position nor field: {shown}");
        } else {
            assert!(e.line <= lines, "{shown}: line past the end ({lines} lines)");
            assert!(e.column >= 1, "{shown}: column 0");
        }
        assert!((e.line, e.column) >= previous, "errors out of file order: {errors}");
        previous = (e.line, e.column);
    }
}
