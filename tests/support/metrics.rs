//! Reads the Prometheus text exposition format (SPEC §9 `/metrics`), enough
//! for tests to assert on counters and gauges by name and labels.

/// One sample line.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// Every sample in `text` (comments and unparsable lines are skipped).
pub fn samples(text: &str) -> Vec<Sample> {
    text.lines().filter_map(parse_line).collect()
}

/// Sum of the samples named `name` whose labels include all of `labels`
/// (`None` when no sample matches, so "absent" differs from "zero").
pub fn sum(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let matching: Vec<f64> = samples(text)
        .into_iter()
        .filter(|s| s.name == name && labels.iter().all(|(k, v)| s.label(k) == Some(*v)))
        .map(|s| s.value)
        .collect();
    if matching.is_empty() {
        None
    } else {
        Some(matching.iter().sum())
    }
}

/// Whether any sample (or `# TYPE`/`# HELP` line) mentions metric `name`.
pub fn has_metric(text: &str, name: &str) -> bool {
    text.lines().any(|line| {
        let line =
            line.strip_prefix("# TYPE ").or_else(|| line.strip_prefix("# HELP ")).unwrap_or(line);
        line.strip_prefix(name).is_some_and(|rest| rest.starts_with([' ', '{']))
    })
}

fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (name, labels, rest) = match line.find('{') {
        Some(open) if line.find(' ').map_or(true, |sp| open < sp) => {
            let name = &line[..open];
            let (labels, used) = parse_labels(&line[open + 1..])?;
            (name, labels, &line[open + 1 + used..])
        }
        _ => {
            let (name, rest) = line.split_once(' ')?;
            (name, Vec::new(), rest)
        }
    };
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample { name: name.to_owned(), labels, value })
}

/// Parses `k="v",k2="v2"}`; returns the labels and the bytes used (through `}`).
fn parse_labels(s: &str) -> Option<(Vec<(String, String)>, usize)> {
    let bytes: Vec<char> = s.chars().collect();
    let mut labels = Vec::new();
    let mut i = 0;
    let mut used = 0;
    loop {
        while i < bytes.len() && (bytes[i] == ',' || bytes[i] == ' ') {
            used += bytes[i].len_utf8();
            i += 1;
        }
        if i >= bytes.len() {
            return None;
        }
        if bytes[i] == '}' {
            return Some((labels, used + 1));
        }
        let mut key = String::new();
        while i < bytes.len() && bytes[i] != '=' {
            key.push(bytes[i]);
            used += bytes[i].len_utf8();
            i += 1;
        }
        // '=' and the opening quote.
        if i + 1 >= bytes.len() || bytes[i + 1] != '"' {
            return None;
        }
        used += 2;
        i += 2;
        let mut value = String::new();
        loop {
            let c = *bytes.get(i)?;
            used += c.len_utf8();
            i += 1;
            match c {
                '"' => break,
                '\\' => {
                    let e = *bytes.get(i)?;
                    used += e.len_utf8();
                    i += 1;
                    value.push(if e == 'n' { '\n' } else { e });
                }
                c => value.push(c),
            }
        }
        labels.push((key.trim().to_owned(), value));
    }
}
