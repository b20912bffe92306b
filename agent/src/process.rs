//! `dataProcessingOptions`: the Kinesis Agent's record converters, applied in order.
//!
//! ```text
//!   record ─► SINGLELINE ─► CSVTOJSON | LOGTOJSON ─► ADDMETADATA | ADDEC2METADATA ─► key ─► producer
//! ```
//!
//! Same names, options and output as the Kinesis Agent, with one deliberate difference: a line
//! that LOGTOJSON cannot parse is sent unchanged (and counted), where the Kinesis Agent drops it
//! silently (its issue #92).

use std::sync::Arc;

use regex::Regex;
use serde_json::{Map, Value};

use crate::config::ConfigError;

/// Log formats LOGTOJSON knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Apache common log format.
    CommonApacheLog,
    /// Apache combined log format.
    CombinedApacheLog,
    /// Apache error log.
    ApacheErrorLog,
    /// RFC 3164 syslog.
    Syslog,
    /// Syslog with RFC 3339 timestamps.
    Rfc3339Syslog,
}

impl LogFormat {
    fn pattern(self) -> &'static str {
        match self {
            Self::CommonApacheLog => r#"^(\S+) (\S+) (\S+) \[([^\]]+)\] "([^"]*)" (\S+) (\S+)$"#,
            Self::CombinedApacheLog => {
                r#"^(\S+) (\S+) (\S+) \[([^\]]+)\] "([^"]*)" (\S+) (\S+) "([^"]*)" "([^"]*)"$"#
            }
            Self::ApacheErrorLog => {
                r"^\[([^\]]+)\] \[(?:([^:\]]+):)?([^\]]+)\] (?:\[pid (\d+)(?::tid (\d+))?\] )?(?:\[client ([^\]]+)\] )?(.*)$"
            }
            Self::Syslog => {
                r"^(\w{3} +\d{1,2} \d{2}:\d{2}:\d{2}) (\S+) ([^\[:\s]+)(?:\[(\d+)\])?: (.*)$"
            }
            Self::Rfc3339Syslog => {
                r"^(\d{4}-\d{2}-\d{2}T\S+) (\S+) ([^\[:\s]+)(?:\[(\d+)\])?: (.*)$"
            }
        }
    }

    fn fields(self) -> &'static [&'static str] {
        match self {
            Self::CommonApacheLog => &[
                "host", "ident", "authuser", "datetime", "request", "response", "bytes",
            ],
            Self::CombinedApacheLog => &[
                "host", "ident", "authuser", "datetime", "request", "response", "bytes", "referer",
                "agent",
            ],
            Self::ApacheErrorLog => &[
                "timestamp",
                "module",
                "severity",
                "processid",
                "threadid",
                "client",
                "message",
            ],
            Self::Syslog | Self::Rfc3339Syslog => {
                &["timestamp", "hostname", "program", "processid", "message"]
            }
        }
    }

    fn is_apache(self) -> bool {
        matches!(
            self,
            Self::CommonApacheLog | Self::CombinedApacheLog | Self::ApacheErrorLog
        )
    }
}

/// A pattern the regex engine refused, as a configuration error's reason: the construct named
/// when it is one of Java's that the engine (Rust `regex`: linear time, no backtracking) does not
/// have — look-around, back-references, atomic groups, possessive quantifiers — with the way out.
pub(crate) fn regex_reason(pattern: &str, e: &regex::Error) -> String {
    let text = e.to_string();
    let detail = text
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with("error:"))
        .map_or(text.as_str(), |l| {
            l.trim_start().trim_start_matches("error:").trim()
        })
        .to_owned();
    let java = if pattern.contains("(?=")
        || pattern.contains("(?!")
        || pattern.contains("(?<=")
        || pattern.contains("(?<!")
    {
        Some("look-around ((?=...), (?!...), (?<=...), (?<!...))")
    } else if pattern.contains("(?>") {
        Some("an atomic group ((?>...))")
    } else if text.contains("backreference") || pattern.contains("\\1") {
        Some("a back-reference (\\1 ...)")
    } else {
        None
    };
    match java {
        Some(what) => format!(
            "{pattern:?} uses {what}, a Java regular-expression construct this agent's engine does not have (it matches in linear time, without backtracking); rewrite the pattern without it ({detail})"
        ),
        None => format!("{pattern:?}: {detail}"),
    }
}

/// Java's possessive quantifiers (`a*+`, `a++`, `a?+`, `a{2}+`), which Rust's `regex` accepts
/// with another meaning (a repeated repetition: `(a*)+`) instead of refusing: a pattern written
/// for the Kinesis Agent would then match what it was meant not to. Outside classes and escapes.
pub(crate) fn has_possessive_quantifier(pattern: &str) -> bool {
    let mut chars = pattern.chars().peekable();
    let mut in_class = false;
    let mut prev_quantifier = false;
    let mut prev_open_paren = false;
    while let Some(c) = chars.next() {
        if c == '\\' {
            chars.next();
            prev_quantifier = false;
            prev_open_paren = false;
            continue;
        }
        if in_class {
            if c == ']' {
                in_class = false;
            }
            continue;
        }
        if c == '+' && prev_quantifier {
            return true;
        }
        // `?` right after `(` opens a group's flags, not a quantifier.
        prev_quantifier = matches!(c, '*' | '+' | '}') || (c == '?' && !prev_open_paren);
        prev_open_paren = c == '(';
        if c == '[' {
            in_class = true;
        }
    }
    false
}

/// Compiles a pattern from the configuration, refusing Java-only constructs with
/// [`regex_reason`]'s message.
pub(crate) fn check_java_only(pattern: &str) -> Result<(), String> {
    if has_possessive_quantifier(pattern) {
        return Err(format!(
            "{pattern:?} uses a possessive quantifier (*+, ++, ?+), a Java regular-expression construct this agent's engine does not have (it reads it as a repeated repetition, which matches other lines); rewrite the pattern without it"
        ));
    }
    Ok(())
}

/// Fetches what converters need before records flow (ADDEC2METADATA's instance metadata, as
/// the Kinesis Agent reads it when the converter is made).
pub async fn prepare(flows: &[crate::config::Flow]) {
    for p in flows.iter().flat_map(|f| &f.processors) {
        if let Processor::AddEc2Metadata(m) = p {
            m.prepare().await;
        }
    }
}

/// One converter.
#[derive(Debug, Clone)]
pub enum Processor {
    /// Joins a multi-line record into one line.
    SingleLine {
        /// Keep leading/trailing spaces of each line (`parseOptions: NO_TRIM`).
        trim: bool,
        /// Join with a literal `\n` (`ESCAPE_NEW_LINE`) instead of nothing.
        escape_new_line: bool,
    },
    /// Splits on a delimiter and names the columns.
    CsvToJson {
        /// Column names.
        fields: Vec<String>,
        /// Delimiter (a regex, as the Java agent).
        delimiter: Regex,
        /// Pretty-printed JSON.
        pretty: bool,
    },
    /// Parses a known log format (or a custom pattern) into JSON.
    LogToJson {
        /// The format (for field names and `-` handling).
        format: LogFormat,
        /// The pattern used.
        pattern: Regex,
        /// Field names.
        fields: Vec<String>,
        /// Pretty-printed JSON.
        pretty: bool,
    },
    /// Merges the instance's EC2 metadata into a JSON record (see [`crate::ec2meta`]).
    AddEc2Metadata(Arc<crate::ec2meta::Ec2Metadata>),
    /// Wraps the record with metadata: `{"ts"?, "metadata", "data"}`.
    AddMetadata {
        /// Add an ISO-8601 UTC timestamp.
        timestamp: bool,
        /// The configured metadata object.
        metadata: Arc<Value>,
    },
}

fn json_out(v: &Value, pretty: bool) -> Vec<u8> {
    if pretty {
        serde_json::to_vec_pretty(v)
    } else {
        serde_json::to_vec(v)
    }
    .unwrap_or_default()
}

/// The record without its one final newline, if it has one.
fn body(data: &[u8]) -> &[u8] {
    data.strip_suffix(b"\n").unwrap_or(data)
}

/// Ends a converted record with a newline, as the Kinesis Agent's converters do.
fn line(mut out: Vec<u8>) -> Vec<u8> {
    out.push(b'\n');
    out
}

impl Processor {
    /// Applies the converter. As in the Kinesis Agent, the record's final newline is set aside
    /// before converting and the result ends with a newline.
    pub fn apply(&self, data: Vec<u8>) -> Vec<u8> {
        match self {
            Self::SingleLine {
                trim,
                escape_new_line,
            } => {
                let text = String::from_utf8_lossy(body(&data));
                let parts: Vec<&str> = text
                    .split('\n')
                    .map(|l| if *trim { l.trim() } else { l })
                    .collect();
                line(
                    parts
                        .join(if *escape_new_line { "\\n" } else { "" })
                        .into_bytes(),
                )
            }
            Self::CsvToJson {
                fields,
                delimiter,
                pretty,
            } => {
                let text = String::from_utf8_lossy(body(&data));
                let cols: Vec<&str> = delimiter.split(&text).collect();
                let mut m = Map::new();
                for (i, f) in fields.iter().enumerate() {
                    m.insert(
                        f.clone(),
                        cols.get(i)
                            .map_or(Value::Null, |c| Value::String((*c).to_string())),
                    );
                }
                line(json_out(&Value::Object(m), *pretty))
            }
            Self::LogToJson {
                format,
                pattern,
                fields,
                pretty,
            } => {
                let text = String::from_utf8_lossy(body(&data));
                let Some(caps) = pattern.captures(&text) else {
                    metrics::counter!("agent_lines_unparsed_total").increment(1);
                    tracing::debug!(
                        message = "Line does not match the log format; sent unchanged."
                    );
                    return data;
                };
                let mut m = Map::new();
                for (i, f) in fields.iter().enumerate() {
                    let v = match caps.get(i + 1).map(|c| c.as_str()) {
                        None => Value::Null,
                        Some("-") if format.is_apache() => Value::Null,
                        Some(s) => Value::String(s.to_string()),
                    };
                    m.insert(f.clone(), v);
                }
                line(json_out(&Value::Object(m), *pretty))
            }
            Self::AddEc2Metadata(meta) => {
                let fields = meta.current();
                if fields.is_empty() {
                    return data;
                }
                match crate::ec2meta::Ec2Metadata::merge(&fields, &data) {
                    Some(out) => out,
                    None => {
                        metrics::counter!("agent_records_not_json_total", "processor" => "ADDEC2METADATA").increment(1);
                        tracing::debug!(
                            message = "Record is not a JSON object; sent without EC2 metadata."
                        );
                        data
                    }
                }
            }
            Self::AddMetadata {
                timestamp,
                metadata,
            } => {
                let mut m = Map::new();
                if *timestamp {
                    m.insert("ts".into(), Value::String(iso8601_now()));
                }
                m.insert("metadata".into(), (**metadata).clone());
                m.insert(
                    "data".into(),
                    Value::String(String::from_utf8_lossy(body(&data)).into_owned()),
                );
                line(json_out(&Value::Object(m), false))
            }
        }
    }
}

/// Now as `YYYY-MM-DDTHH:MM:SS.sssZ` (UTC), without a date-time dependency.
fn iso8601_now() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let (secs, ms) = (d.as_secs(), d.subsec_millis());
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let (year, month, day) = civil(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Year, month, day of `days` since 1970-01-01 (Howard Hinnant's algorithm).
pub(crate) fn civil(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Reads `dataProcessingOptions` of flow `i`.
pub fn parse(options: &Value, i: usize) -> Result<Vec<Processor>, ConfigError> {
    let path = |j: usize, k: &str| format!("flows[{i}].dataProcessingOptions[{j}].{k}");
    let err = |p: String, r: String| ConfigError { path: p, reason: r };
    let list = options.as_array().ok_or_else(|| {
        err(
            format!("flows[{i}].dataProcessingOptions"),
            "must be a list".into(),
        )
    })?;
    let mut out = Vec::new();
    for (j, o) in list.iter().enumerate() {
        let name = o.get("optionName").and_then(Value::as_str).unwrap_or("");
        let pretty = o.get("jsonFormat").and_then(Value::as_str) == Some("PRETTYPRINT");
        let names = |key: &str| -> Result<Option<Vec<String>>, ConfigError> {
            match o.get(key) {
                None => Ok(None),
                Some(Value::Array(a)) => a
                    .iter()
                    .map(|v| {
                        v.as_str()
                            .map(str::to_owned)
                            .ok_or_else(|| err(path(j, key), "must be a list of strings".into()))
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map(Some),
                Some(_) => Err(err(path(j, key), "must be a list of strings".into())),
            }
        };
        out.push(match name {
            "SINGLELINE" => {
                let opts: Vec<String> = names("parseOptions")?.unwrap_or_default();
                Processor::SingleLine {
                    trim: !opts.iter().any(|o| o == "NO_TRIM"),
                    escape_new_line: opts.iter().any(|o| o == "ESCAPE_NEW_LINE"),
                }
            }
            "CSVTOJSON" => {
                let fields = names("customFieldNames")?.ok_or_else(|| err(path(j, "customFieldNames"), "is required for CSVTOJSON".into()))?;
                let d = o.get("delimiter").and_then(Value::as_str).unwrap_or(",");
                check_java_only(d).map_err(|r| err(path(j, "delimiter"), r))?;
                let delimiter = Regex::new(d).map_err(|e| err(path(j, "delimiter"), regex_reason(d, &e)))?;
                Processor::CsvToJson { fields, delimiter, pretty }
            }
            "LOGTOJSON" => {
                let format = match o.get("logFormat").and_then(Value::as_str) {
                    Some("COMMONAPACHELOG") => LogFormat::CommonApacheLog,
                    Some("COMBINEDAPACHELOG") => LogFormat::CombinedApacheLog,
                    Some("APACHEERRORLOG") => LogFormat::ApacheErrorLog,
                    Some("SYSLOG") => LogFormat::Syslog,
                    Some("RFC3339SYSLOG") => LogFormat::Rfc3339Syslog,
                    other => {
                        return Err(err(
                            path(j, "logFormat"),
                            format!("{other:?}: expected COMMONAPACHELOG, COMBINEDAPACHELOG, APACHEERRORLOG, SYSLOG or RFC3339SYSLOG"),
                        ));
                    }
                };
                let pattern_text = o.get("matchPattern").and_then(Value::as_str).unwrap_or(format.pattern());
                check_java_only(pattern_text).map_err(|r| err(path(j, "matchPattern"), r))?;
                let pattern = Regex::new(pattern_text).map_err(|e| err(path(j, "matchPattern"), regex_reason(pattern_text, &e)))?;
                let fields = names("customFieldNames")?
                    .unwrap_or_else(|| format.fields().iter().map(|s| (*s).to_string()).collect());
                Processor::LogToJson { format, pattern, fields, pretty }
            }
            "ADDEC2METADATA" => {
                // Seconds, default 3600 (the Kinesis Agent's); `logFormat`, which its
                // constructor reads and never uses, is accepted and ignored.
                let ttl = match o.get("metadataTTL") {
                    None => 3600,
                    Some(v) => match v.as_u64().or_else(|| v.as_str().and_then(|s| s.trim().parse().ok())) {
                        Some(n) if (1..=86_400 * 7).contains(&n) => n,
                        _ => {
                            return Err(err(
                                path(j, "metadataTTL"),
                                format!("{v}: must be whole seconds, 1..=604800"),
                            ));
                        }
                    },
                };
                Processor::AddEc2Metadata(crate::ec2meta::Ec2Metadata::new(std::time::Duration::from_secs(ttl)))
            }
            "ADDMETADATA" => Processor::AddMetadata {
                // The Kinesis Agent wants the string "true".
                timestamp: matches!(o.get("timestamp"), Some(Value::String(s)) if s == "true") || o.get("timestamp") == Some(&Value::Bool(true)),
                metadata: Arc::new(o.get("metadata").cloned().unwrap_or(Value::Object(Map::new()))),
            },
            other => {
                return Err(err(
                    path(j, "optionName"),
                    format!("{other:?} is not supported (SINGLELINE, CSVTOJSON, LOGTOJSON, ADDMETADATA, ADDEC2METADATA); refusing rather than shipping unprocessed data"),
                ));
            }
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[allow(clippy::needless_pass_by_value)] // tests read better with json!(..) passed directly
    /// Runs the converters on `line` as read from a file (newline included); checks that the
    /// result ends with a newline and returns it without.
    fn run(opts: Value, line: &str) -> String {
        let ps = parse(&opts, 0).unwrap();
        let out = ps
            .iter()
            .fold(format!("{line}\n").into_bytes(), |d, p| p.apply(d));
        let out = String::from_utf8(out).unwrap();
        out.strip_suffix('\n')
            .unwrap_or_else(|| panic!("{out:?} does not end with a newline"))
            .to_string()
    }

    #[test]
    fn a_record_without_newline_gets_one() {
        let o = json!([{"optionName": "CSVTOJSON", "customFieldNames": ["a"]}]);
        let ps = parse(&o, 0).unwrap();
        assert_eq!(ps[0].apply(b"x".to_vec()), b"{\"a\":\"x\"}\n".to_vec());
    }

    #[test]
    fn singleline() {
        assert_eq!(
            run(json!([{"optionName": "SINGLELINE"}]), "a \n  b\n c "),
            "abc"
        );
        assert_eq!(
            run(
                json!([{"optionName": "SINGLELINE", "parseOptions": ["ESCAPE_NEW_LINE"]}]),
                "a\nb"
            ),
            "a\\nb"
        );
    }

    #[test]
    fn csv_to_json() {
        let o = json!([{"optionName": "CSVTOJSON", "customFieldNames": ["id", "name", "city"]}]);
        assert_eq!(
            run(o.clone(), "1,ann,paris"),
            r#"{"id":"1","name":"ann","city":"paris"}"#
        );
        assert_eq!(run(o, "2,bob"), r#"{"id":"2","name":"bob","city":null}"#);
        let tabs = json!([{"optionName": "CSVTOJSON", "customFieldNames": ["a", "b"], "delimiter": "\\t"}]);
        assert_eq!(run(tabs, "x\ty"), r#"{"a":"x","b":"y"}"#);
    }

    #[test]
    fn log_to_json_fixtures() {
        let common = json!([{"optionName": "LOGTOJSON", "logFormat": "COMMONAPACHELOG"}]);
        assert_eq!(
            run(
                common.clone(),
                r#"127.0.0.1 - frank [10/Oct/2000:13:55:36 -0700] "GET /apache_pb.gif HTTP/1.0" 200 2326"#
            ),
            r#"{"host":"127.0.0.1","ident":null,"authuser":"frank","datetime":"10/Oct/2000:13:55:36 -0700","request":"GET /apache_pb.gif HTTP/1.0","response":"200","bytes":"2326"}"#
        );
        let combined = json!([{"optionName": "LOGTOJSON", "logFormat": "COMBINEDAPACHELOG"}]);
        let out = run(
            combined,
            r#"10.0.0.1 - - [10/Oct/2000:13:55:36 -0700] "GET / HTTP/1.1" 304 - "http://x/" "Mozilla/5.0""#,
        );
        assert!(
            out.contains(r#""bytes":null"#) && out.contains(r#""agent":"Mozilla/5.0""#),
            "{out}"
        );
        let err = json!([{"optionName": "LOGTOJSON", "logFormat": "APACHEERRORLOG"}]);
        let out = run(
            err,
            "[Fri Sep 09 10:42:29.902022 2011] [core:error] [pid 35708:tid 4328636416] [client 72.15.99.187] File does not exist: /x",
        );
        assert!(
            out.contains(r#""module":"core""#)
                && out.contains(r#""severity":"error""#)
                && out.contains(r#""processid":"35708""#),
            "{out}"
        );
        let syslog = json!([{"optionName": "LOGTOJSON", "logFormat": "SYSLOG"}]);
        assert_eq!(
            run(
                syslog,
                "Mar 12 12:00:08 server2 rcd[308]: Loaded 12 packages in 'ximian-red-carpet|351'"
            ),
            r#"{"timestamp":"Mar 12 12:00:08","hostname":"server2","program":"rcd","processid":"308","message":"Loaded 12 packages in 'ximian-red-carpet|351'"}"#
        );
        let rfc = json!([{"optionName": "LOGTOJSON", "logFormat": "RFC3339SYSLOG"}]);
        let out = run(rfc, "2026-11-22T06:00:00.123Z host7 sshd: accepted key");
        assert!(
            out.contains(r#""hostname":"host7""#) && out.contains(r#""processid":null"#),
            "{out}"
        );
        // Unparseable: sent unchanged, not dropped.
        assert_eq!(
            run(common, "not an access log line"),
            "not an access log line"
        );
    }

    #[test]
    fn add_metadata_and_chains() {
        let o = json!([{"optionName": "SINGLELINE"}, {"optionName": "ADDMETADATA", "timestamp": "true", "metadata": {"env": "prod"}}]);
        let out: Value = serde_json::from_str(&run(o, "a\nb")).unwrap();
        assert_eq!(out["data"], "ab");
        assert_eq!(out["metadata"]["env"], "prod");
        let ts = out["ts"].as_str().unwrap();
        assert!(
            ts.len() == 24 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T',
            "{ts}"
        );
    }

    #[test]
    fn bad_options_name_their_key() {
        let cases = [
            (
                json!([{"optionName": "CSVTOJSON"}]),
                "flows[0].dataProcessingOptions[0].customFieldNames",
            ),
            (
                json!([{"optionName": "LOGTOJSON", "logFormat": "NGINX"}]),
                "flows[0].dataProcessingOptions[0].logFormat",
            ),
            (
                json!([{"optionName": "LOGTOJSON", "logFormat": "SYSLOG", "matchPattern": "("}]),
                "flows[0].dataProcessingOptions[0].matchPattern",
            ),
            (
                json!([{"optionName": "ADDEC2METADATA", "metadataTTL": 0}]),
                "flows[0].dataProcessingOptions[0].metadataTTL",
            ),
            (
                json!([{"optionName": "ADDEC2METADATA", "metadataTTL": "an hour"}]),
                "flows[0].dataProcessingOptions[0].metadataTTL",
            ),
            (
                json!([{"optionName": "ADDBRACKETS"}]),
                "flows[0].dataProcessingOptions[0].optionName",
            ),
        ];
        for (o, p) in cases {
            assert_eq!(parse(&o, 0).unwrap_err().path, p);
        }
    }
}
