//! The rule table: per metric name, the least level it is published at and the dimension sets
//! (roll-ups) it is published with. Pure functions, run once per metric key.
//!
//! ```text
//!   key: ErrorsByCode{StreamName=s, ShardId=shardId-1, ErrorCode=Throttled, Attempt=3}
//!   rule: ErrorsByCode, Summary, Rollup::per_stream_and_shard(&["ErrorCode"])
//!     Global ─► {ErrorCode}
//!     Stream ─► {ErrorCode, StreamName}
//!     Shard  ─► {ErrorCode, ShardId, StreamName}
//!   (+ the static dimensions for every datum; `Attempt` is in no roll-up: dropped)
//! ```

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::config::{DimensionScope, MetricsConfig, MetricsLevel, StaticDimension, Unlisted};
use crate::{Granularity, MAX_DIMENSIONS};

/// The KPL's stream dimension.
pub const STREAM_NAME: &str = "StreamName";
/// The KPL's and KCL's shard dimension.
pub const SHARD_ID: &str = "ShardId";

/// Longest metric name, dimension name and namespace: 255 characters (CloudWatch API reference,
/// `MetricDatum`, `Dimension`, `PutMetricData`).
pub(crate) const MAX_NAME_CHARS: usize = 255;
/// Longest dimension value: 1,024 characters (CloudWatch API reference, `Dimension`).
pub(crate) const MAX_VALUE_CHARS: usize = 1024;

/// One dimension set a metric is published with.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Rollup {
    /// The granularity it belongs to: published when the configured granularity is this or
    /// finer. Metrics of components without stream or shard breakdowns use `Global`.
    pub granularity: Granularity,
    /// Its dimensions, taken from the metric's labels of these names (or from a
    /// [`WhereListed`](crate::DimensionScope::WhereListed) static dimension). A metric missing
    /// one of them is not published with this set.
    pub dimensions: Vec<String>,
}

impl Rollup {
    /// A set published at every granularity.
    pub fn global(dimensions: &[&str]) -> Self {
        Self::at(Granularity::Global, dimensions)
    }

    /// A set published at `granularity` or finer.
    pub fn at(granularity: Granularity, dimensions: &[&str]) -> Self {
        Self {
            granularity,
            dimensions: dimensions.iter().map(|d| (*d).to_owned()).collect(),
        }
    }

    /// The KPL's three sets: `extra` alone (`Global`), with `StreamName` (`Stream`), and with
    /// `StreamName` and `ShardId` (`Shard`). `extra` is what every set keeps, e.g.
    /// `["ErrorCode"]` for `ErrorsByCode`.
    pub fn per_stream_and_shard(extra: &[&str]) -> Vec<Self> {
        fn with<'a>(more: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
            let mut d = more.to_vec();
            d.extend_from_slice(extra);
            d
        }
        vec![
            Self::at(Granularity::Global, extra),
            Self::at(Granularity::Stream, &with(&[STREAM_NAME], extra)),
            Self::at(Granularity::Shard, &with(&[STREAM_NAME, SHARD_ID], extra)),
        ]
    }
}

/// Which metric a rule is for, the least level it is published at, and its dimension sets.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MetricRule {
    /// The metric's name as recorded (`metrics::counter!("UserRecordsPut")`), also its
    /// CloudWatch name.
    pub name: String,
    /// [`Summary`](MetricsLevel::Summary): published at summary and detailed;
    /// [`Detailed`](MetricsLevel::Detailed): at detailed only; [`None`](MetricsLevel::None):
    /// never (a way to silence one metric).
    pub level: MetricsLevel,
    /// The dimension sets, at least one. Labels in none of them are dropped, so no label
    /// becomes a dimension unless listed here.
    pub rollups: Vec<Rollup>,
}

impl MetricRule {
    /// A rule for `name`.
    pub fn new(name: impl Into<String>, level: MetricsLevel, rollups: Vec<Rollup>) -> Self {
        Self {
            name: name.into(),
            level,
            rollups,
        }
    }
}

/// A published metric's identity: name and dimensions (sorted by name), shared by every
/// statistic set of it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct DatumKey {
    pub(crate) name: Arc<str>,
    pub(crate) dimensions: Box<[(Arc<str>, Arc<str>)]>,
}

/// Why a name or value cannot be a CloudWatch name, dimension name or dimension value: the
/// rules of the API reference (ASCII only, no control characters, at least one non-whitespace
/// character, the length limits; dimension names not starting with `:`).
fn check_text(text: &str, max: usize) -> Result<(), &'static str> {
    if text.trim().is_empty() {
        Err("must have a character other than whitespace")
    } else if !text.is_ascii() {
        Err("must be ASCII")
    } else if text.bytes().any(|b| b.is_ascii_control()) {
        Err("must have no control characters")
    } else if text.len() > max {
        Err("is too long")
    } else {
        Ok(())
    }
}

pub(crate) fn check_namespace(ns: &str) -> Result<(), &'static str> {
    check_text(ns, MAX_NAME_CHARS)?;
    if ns.starts_with("AWS/") {
        return Err("AWS/ is reserved for AWS services");
    }
    Ok(())
}

fn check_metric_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("must not be empty");
    }
    check_text(name, MAX_NAME_CHARS)
}

fn check_dimension_name(name: &str) -> Result<(), &'static str> {
    check_text(name, MAX_NAME_CHARS)?;
    if name.starts_with(':') {
        return Err("must not start with ':'");
    }
    Ok(())
}

fn check_dimension_value(value: &str) -> Result<(), &'static str> {
    check_text(value, MAX_VALUE_CHARS)
}

pub(crate) fn check_static_dimensions(dims: &[StaticDimension]) -> Result<(), String> {
    let mut seen = std::collections::HashSet::new();
    for d in dims {
        check_dimension_name(&d.name)
            .map_err(|e| format!("static dimension name {:?} {e}", d.name))?;
        // The value is not shown: it may be anything the caller put there.
        check_dimension_value(&d.value)
            .map_err(|e| format!("static dimension {:?}: value {e}", d.name))?;
        if !seen.insert(d.name.as_str()) {
            return Err(format!("static dimension {:?} given twice", d.name));
        }
    }
    let every = dims
        .iter()
        .filter(|d| d.scope == DimensionScope::Every)
        .count();
    if every > MAX_DIMENSIONS {
        return Err(format!(
            "{every} static dimensions for every datum: at most {MAX_DIMENSIONS}"
        ));
    }
    Ok(())
}

pub(crate) fn check_rules(rules: &[MetricRule], statics: &[StaticDimension]) -> Result<(), String> {
    let mut seen = std::collections::HashSet::new();
    for r in rules {
        check_metric_name(&r.name).map_err(|e| format!("rule name {:?} {e}", r.name))?;
        if !seen.insert(r.name.as_str()) {
            return Err(format!("two rules for {:?}", r.name));
        }
        if r.rollups.is_empty() {
            return Err(format!(
                "rule {:?} has no roll-up (Rollup::global(&[]) publishes the metric alone)",
                r.name
            ));
        }
        for rollup in &r.rollups {
            let mut names = std::collections::HashSet::new();
            for d in &rollup.dimensions {
                check_dimension_name(d)
                    .map_err(|e| format!("rule {:?}: dimension {d:?} {e}", r.name))?;
                if !names.insert(d.as_str()) {
                    return Err(format!(
                        "rule {:?}: dimension {d:?} twice in a roll-up",
                        r.name
                    ));
                }
            }
            let extra = statics
                .iter()
                .filter(|s| s.scope == DimensionScope::Every && !names.contains(s.name.as_str()))
                .count();
            if names.len() + extra > MAX_DIMENSIONS {
                return Err(format!(
                    "rule {:?}: a roll-up of {} dimensions with {extra} static ones: at most {MAX_DIMENSIONS}",
                    r.name,
                    names.len()
                ));
            }
        }
    }
    Ok(())
}

/// The rule table compiled for lookups: what the recorder asks once per new metric key.
#[derive(Debug)]
pub(crate) struct Planner {
    level: MetricsLevel,
    granularity: Granularity,
    unlisted: Unlisted,
    rules: HashMap<String, MetricRule>,
    every: Vec<(Arc<str>, Arc<str>)>,
    where_listed: HashMap<String, Arc<str>>,
}

impl Planner {
    pub(crate) fn new(config: &MetricsConfig) -> Self {
        let statics = |scope| {
            config
                .static_dimensions
                .iter()
                .filter(move |d| d.scope == scope)
        };
        Self {
            level: config.level,
            granularity: config.granularity,
            unlisted: config.unlisted,
            rules: config
                .rules
                .iter()
                .map(|r| (r.name.clone(), r.clone()))
                .collect(),
            every: statics(DimensionScope::Every)
                .map(|d| (Arc::from(d.name.as_str()), Arc::from(d.value.as_str())))
                .collect(),
            where_listed: statics(DimensionScope::WhereListed)
                .map(|d| (d.name.clone(), Arc::from(d.value.as_str())))
                .collect(),
        }
    }

    /// Whether anything can be published at all.
    pub(crate) fn publishes_anything(&self) -> bool {
        self.level != MetricsLevel::None
    }

    /// The datums a metric with this name and these labels feeds: one per dimension set,
    /// deduplicated, sorted. Empty when it is not published. Logs (once per key: the recorder
    /// plans a key once) why a metric or one of its sets is left out, naming labels but never
    /// their values.
    pub(crate) fn plan(&self, name: &str, labels: &[(&str, &str)]) -> Vec<DatumKey> {
        if self.level == MetricsLevel::None {
            return Vec::new();
        }
        if let Err(why) = check_metric_name(name) {
            tracing::warn!(
                message = "Metric not published: its name is not valid for CloudWatch.",
                metric = name,
                why
            );
            return Vec::new();
        }
        let name_arc: Arc<str> = Arc::from(name);
        let label = |n: &str| labels.iter().rev().find(|(k, _)| *k == n).map(|(_, v)| *v);
        let mut sets: Vec<BTreeMap<Arc<str>, Arc<str>>> = Vec::new();
        match self.rules.get(name) {
            Some(rule) => {
                if rule.level == MetricsLevel::None || rule.level > self.level {
                    return Vec::new();
                }
                'rollups: for rollup in rule
                    .rollups
                    .iter()
                    .filter(|r| r.granularity <= self.granularity)
                {
                    let mut set = BTreeMap::new();
                    for d in &rollup.dimensions {
                        let value: Arc<str> = match (label(d), self.where_listed.get(d.as_str())) {
                            (Some(v), _) => {
                                if let Err(why) = check_dimension_value(v) {
                                    tracing::warn!(
                                        message = "Metric not published with a dimension set: a label's value is not valid for CloudWatch.",
                                        metric = name,
                                        label = d.as_str(),
                                        why
                                    );
                                    continue 'rollups;
                                }
                                Arc::from(v)
                            }
                            (None, Some(v)) => Arc::clone(v),
                            (None, None) => {
                                tracing::debug!(
                                    message = "Metric not published with a dimension set: it lacks the label.",
                                    metric = name,
                                    label = d.as_str()
                                );
                                continue 'rollups;
                            }
                        };
                        set.insert(Arc::from(d.as_str()), value);
                    }
                    sets.push(set);
                }
            }
            None => match self.unlisted {
                Unlisted::Drop => {
                    tracing::debug!(
                        message = "Metric not published: no rule names it.",
                        metric = name
                    );
                    return Vec::new();
                }
                Unlisted::Publish if self.level < MetricsLevel::Detailed => return Vec::new(),
                Unlisted::Publish => {
                    let mut set = BTreeMap::new();
                    for (k, v) in self
                        .where_listed
                        .iter()
                        .map(|(k, v)| (k.as_str(), &**v))
                        .chain(labels.iter().copied())
                    {
                        if let Err(why) =
                            check_dimension_name(k).and_then(|()| check_dimension_value(v))
                        {
                            tracing::warn!(
                                message =
                                    "Metric not published: a label is not valid for CloudWatch.",
                                metric = name,
                                label = k,
                                why
                            );
                            return Vec::new();
                        }
                        set.insert(Arc::from(k), Arc::from(v));
                    }
                    sets.push(set);
                }
            },
        }
        let mut keys: Vec<DatumKey> = sets
            .into_iter()
            .filter_map(|mut set| {
                for (k, v) in &self.every {
                    set.entry(Arc::clone(k)).or_insert_with(|| Arc::clone(v));
                }
                if set.len() > MAX_DIMENSIONS {
                    tracing::warn!(
                        message =
                            "Metric not published with a dimension set: more than 30 dimensions.",
                        metric = name,
                        dimensions = set.len()
                    );
                    return None;
                }
                Some(DatumKey {
                    name: Arc::clone(&name_arc),
                    dimensions: set.into_iter().collect(),
                })
            })
            .collect();
        keys.sort();
        keys.dedup();
        keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MetricsConfig;

    fn kpl_rules() -> Vec<MetricRule> {
        use MetricsLevel::{Detailed, Summary};
        vec![
            MetricRule::new("UserRecordsPut", Summary, Rollup::per_stream_and_shard(&[])),
            MetricRule::new(
                "ErrorsByCode",
                Summary,
                Rollup::per_stream_and_shard(&["ErrorCode"]),
            ),
            MetricRule::new(
                "RetriesPerRecord",
                Detailed,
                Rollup::per_stream_and_shard(&[]),
            ),
            MetricRule::new("Silenced", MetricsLevel::None, vec![Rollup::global(&[])]),
        ]
    }

    fn config(level: MetricsLevel, granularity: Granularity) -> MetricsConfig {
        MetricsConfig {
            level,
            granularity,
            rules: kpl_rules(),
            ..MetricsConfig::kpl()
        }
    }

    type Sets = Vec<Vec<(&'static str, &'static str)>>;
    type Labels<'a> = &'a [(&'a str, &'a str)];

    fn sets(c: &MetricsConfig, name: &str, labels: &[(&str, &str)]) -> Vec<Vec<(String, String)>> {
        c.dimension_sets(name, labels)
    }

    fn owned(s: Sets) -> Vec<Vec<(String, String)>> {
        s.into_iter()
            .map(|set| {
                set.into_iter()
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect()
            })
            .collect()
    }

    const SHARD_LABELS: [(&str, &str); 2] = [("StreamName", "s"), ("ShardId", "shardId-1")];

    #[test]
    fn granularity_picks_the_rollups() {
        use Granularity::*;
        use MetricsLevel::*;
        let all: Sets = vec![
            vec![],
            vec![("ShardId", "shardId-1"), ("StreamName", "s")],
            vec![("StreamName", "s")],
        ];
        let table: [(MetricsLevel, Granularity, Sets); 6] = [
            (Detailed, Shard, all.clone()),
            (Detailed, Stream, vec![vec![], vec![("StreamName", "s")]]),
            (Detailed, Global, vec![vec![]]),
            (Summary, Shard, all),
            (Summary, Global, vec![vec![]]),
            (None, Shard, vec![]),
        ];
        for (level, granularity, want) in table {
            let c = config(level, granularity);
            assert_eq!(
                sets(&c, "UserRecordsPut", &SHARD_LABELS),
                owned(want),
                "{level:?} {granularity:?}"
            );
        }
    }

    #[test]
    fn level_filters_metrics() {
        use MetricsLevel::*;
        // (level, metric, published?)
        let table = [
            (Detailed, "UserRecordsPut", true),
            (Detailed, "RetriesPerRecord", true),
            (Summary, "UserRecordsPut", true),
            (Summary, "RetriesPerRecord", false),
            (None, "UserRecordsPut", false),
            (Detailed, "Silenced", false),
            (Detailed, "NoRuleForThis", false),
        ];
        for (level, metric, published) in table {
            let c = config(level, Granularity::Global);
            assert_eq!(
                !sets(&c, metric, &SHARD_LABELS).is_empty(),
                published,
                "{level:?} {metric}"
            );
        }
    }

    #[test]
    fn labels_outside_the_rollups_are_dropped_and_missing_ones_skip_a_set() {
        let c = config(MetricsLevel::Detailed, Granularity::Shard);
        let table: [(Labels<'_>, Sets); 4] = [
            // A stray label (never a dimension).
            (
                &[
                    ("StreamName", "s"),
                    ("ShardId", "shardId-1"),
                    ("ErrorCode", "Throttled"),
                    ("secret", "hunter2"),
                ],
                vec![
                    vec![("ErrorCode", "Throttled")],
                    vec![
                        ("ErrorCode", "Throttled"),
                        ("ShardId", "shardId-1"),
                        ("StreamName", "s"),
                    ],
                    vec![("ErrorCode", "Throttled"), ("StreamName", "s")],
                ],
            ),
            // No shard label: the shard set is skipped.
            (
                &[("StreamName", "s"), ("ErrorCode", "Throttled")],
                vec![
                    vec![("ErrorCode", "Throttled")],
                    vec![("ErrorCode", "Throttled"), ("StreamName", "s")],
                ],
            ),
            // No ErrorCode: every set needs it.
            (&SHARD_LABELS, vec![]),
            // A value CloudWatch refuses (not ASCII): only that set is skipped.
            (
                &[
                    ("StreamName", "s"),
                    ("ShardId", "shard-é"),
                    ("ErrorCode", "E"),
                ],
                vec![
                    vec![("ErrorCode", "E")],
                    vec![("ErrorCode", "E"), ("StreamName", "s")],
                ],
            ),
        ];
        for (labels, want) in table {
            assert_eq!(sets(&c, "ErrorsByCode", labels), owned(want), "{labels:?}");
        }
    }

    #[test]
    fn static_dimensions_by_scope() {
        let c = MetricsConfig {
            static_dimensions: vec![
                StaticDimension::every("Instance", "i-1"),
                StaticDimension::where_listed("WorkerIdentifier", "w-1"),
            ],
            rules: vec![
                MetricRule::new(
                    "CurrentLeases",
                    MetricsLevel::Summary,
                    vec![Rollup::global(&["Operation", "WorkerIdentifier"])],
                ),
                MetricRule::new(
                    "RecordsProcessed",
                    MetricsLevel::Summary,
                    vec![Rollup::global(&["Operation", "ShardId"])],
                ),
            ],
            ..MetricsConfig::kcl("app")
        };
        let table: [(&str, Labels<'_>, Sets); 4] = [
            (
                "CurrentLeases",
                &[("Operation", "RenewAllLeases")],
                vec![vec![
                    ("Instance", "i-1"),
                    ("Operation", "RenewAllLeases"),
                    ("WorkerIdentifier", "w-1"),
                ]],
            ),
            // A label of the same name wins over the where-listed value.
            (
                "CurrentLeases",
                &[("Operation", "RenewAllLeases"), ("WorkerIdentifier", "w-2")],
                vec![vec![
                    ("Instance", "i-1"),
                    ("Operation", "RenewAllLeases"),
                    ("WorkerIdentifier", "w-2"),
                ]],
            ),
            // Where-listed only where listed; Instance everywhere.
            (
                "RecordsProcessed",
                &[("Operation", "ProcessTask"), ("ShardId", "shardId-7")],
                vec![vec![
                    ("Instance", "i-1"),
                    ("Operation", "ProcessTask"),
                    ("ShardId", "shardId-7"),
                ]],
            ),
            // A label named like an every-datum static dimension keeps its own value.
            (
                "RecordsProcessed",
                &[
                    ("Operation", "ProcessTask"),
                    ("ShardId", "shardId-7"),
                    ("Instance", "x"),
                ],
                vec![vec![
                    ("Instance", "i-1"),
                    ("Operation", "ProcessTask"),
                    ("ShardId", "shardId-7"),
                ]],
            ),
        ];
        for (name, labels, want) in table {
            assert_eq!(sets(&c, name, labels), owned(want), "{name} {labels:?}");
        }
    }

    #[test]
    fn unlisted_metrics_by_policy() {
        let labels = [("StreamName", "s"), ("op", "x")];
        let drop = config(MetricsLevel::Detailed, Granularity::Shard);
        assert!(sets(&drop, "Other", &labels).is_empty());
        let publish = MetricsConfig {
            unlisted: Unlisted::Publish,
            static_dimensions: vec![StaticDimension::every("Instance", "i-1")],
            ..drop
        };
        assert_eq!(
            sets(&publish, "Other", &labels),
            owned(vec![vec![
                ("Instance", "i-1"),
                ("StreamName", "s"),
                ("op", "x")
            ]])
        );
        // Published at detailed only.
        let summary = MetricsConfig {
            level: MetricsLevel::Summary,
            ..publish.clone()
        };
        assert!(sets(&summary, "Other", &labels).is_empty());
        // Over 30 dimensions: not published.
        let many: Vec<(String, String)> =
            (0..30).map(|i| (format!("d{i}"), "v".to_owned())).collect();
        let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert!(
            sets(&publish, "Other", &many).is_empty(),
            "30 labels + Instance"
        );
        assert_eq!(sets(&publish, "Other", &many[..29])[0].len(), 30);
        // A rule still wins over the policy.
        assert_eq!(sets(&publish, "UserRecordsPut", &labels).len(), 2);
    }

    #[test]
    fn identical_rollups_give_one_datum() {
        let c = MetricsConfig {
            rules: vec![MetricRule::new(
                "X",
                MetricsLevel::Summary,
                vec![
                    Rollup::global(&[]),
                    Rollup::at(Granularity::Shard, &["ShardId"]),
                    Rollup::global(&[]),
                ],
            )],
            ..MetricsConfig::kpl()
        };
        // Without the label the shard set is skipped, and the two global ones are one.
        assert_eq!(sets(&c, "X", &[]), owned(vec![vec![]]));
    }

    #[test]
    fn validation_table() {
        let ok = config(MetricsLevel::Detailed, Granularity::Shard);
        ok.validate().unwrap();
        let long = "x".repeat(256);
        let cases: Vec<(&str, MetricsConfig)> = vec![
            (
                "empty namespace",
                MetricsConfig {
                    namespace: String::new(),
                    ..ok.clone()
                },
            ),
            (
                "AWS/ namespace",
                MetricsConfig {
                    namespace: "AWS/Kinesis".into(),
                    ..ok.clone()
                },
            ),
            (
                "long namespace",
                MetricsConfig {
                    namespace: long.clone(),
                    ..ok.clone()
                },
            ),
            (
                "zero interval",
                MetricsConfig {
                    flush_interval: std::time::Duration::ZERO,
                    ..ok.clone()
                },
            ),
            (
                "interval over a minute",
                MetricsConfig {
                    flush_interval: std::time::Duration::from_secs(61),
                    ..ok.clone()
                },
            ),
            (
                "zero queue",
                MetricsConfig {
                    queue_size: 0,
                    ..ok.clone()
                },
            ),
            (
                "duplicate rule",
                MetricsConfig {
                    rules: [kpl_rules(), kpl_rules()].concat(),
                    ..ok.clone()
                },
            ),
            (
                "no rollup",
                MetricsConfig {
                    rules: vec![MetricRule::new("X", MetricsLevel::Summary, vec![])],
                    ..ok.clone()
                },
            ),
            (
                "bad dimension name",
                MetricsConfig {
                    rules: vec![MetricRule::new(
                        "X",
                        MetricsLevel::Summary,
                        vec![Rollup::global(&[":x"])],
                    )],
                    ..ok.clone()
                },
            ),
            (
                "long dimension name",
                MetricsConfig {
                    rules: vec![MetricRule::new(
                        "X",
                        MetricsLevel::Summary,
                        vec![Rollup::global(&[&long])],
                    )],
                    ..ok.clone()
                },
            ),
            (
                "duplicate static",
                MetricsConfig {
                    static_dimensions: vec![
                        StaticDimension::every("A", "1"),
                        StaticDimension::where_listed("A", "2"),
                    ],
                    ..ok.clone()
                },
            ),
            (
                "bad static value",
                MetricsConfig {
                    static_dimensions: vec![StaticDimension::every("A", " ")],
                    ..ok.clone()
                },
            ),
            (
                "31 dimensions with statics",
                MetricsConfig {
                    static_dimensions: (0..29)
                        .map(|i| StaticDimension::every(format!("s{i}"), "v"))
                        .collect(),
                    rules: vec![MetricRule::new(
                        "X",
                        MetricsLevel::Summary,
                        vec![Rollup::global(&["a", "b"])],
                    )],
                    ..ok.clone()
                },
            ),
        ];
        for (what, c) in cases {
            assert!(
                matches!(c.validate(), Err(crate::Error::Config(_))),
                "{what} accepted"
            );
        }
        // 30 is fine.
        let thirty = MetricsConfig {
            static_dimensions: (0..28)
                .map(|i| StaticDimension::every(format!("s{i}"), "v"))
                .collect(),
            rules: vec![MetricRule::new(
                "X",
                MetricsLevel::Summary,
                vec![Rollup::global(&["a", "b"])],
            )],
            ..ok
        };
        thirty.validate().unwrap();
        // A static value that fails is not echoed in the error.
        let secret = MetricsConfig {
            static_dimensions: vec![StaticDimension::every("Token", "sécret")],
            ..MetricsConfig::kpl()
        };
        let msg = secret.validate().unwrap_err().to_string();
        assert!(!msg.contains("sécret") && msg.contains("Token"), "{msg}");
    }
}
