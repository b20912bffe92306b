//! The configuration's tests: agent.json as the Kinesis Agent reads it, key by key.

use super::*;

fn parse(s: &str) -> Result<Loaded, ConfigError> {
    from_value(&serde_json::from_str(s).unwrap())
}

#[test]
fn flows_of_agent_d_files_are_appended_and_a_broken_one_is_named() {
    let d = std::env::temp_dir().join(format!("agentd-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    let dir = d.join("agent.d");
    std::fs::create_dir_all(&dir).unwrap();
    let main = d.join("agent.json");
    // The main file may have no flows when agent.d has them, as in the Kinesis Agent.
    std::fs::write(
        &main,
        r#"{"checkpointFile": "/tmp/cp", "kinesis.region": "eu-west-1"}"#,
    )
    .unwrap();
    std::fs::write(
        dir.join("20-web.json"),
        r#"{"flows": [{"filePattern": "/var/log/web/*.log", "kinesisStream": "web"}]} // comment"#,
    )
    .unwrap();
    std::fs::write(
        dir.join("10-app.json"),
        r#"{"kinesis.region": "us-east-1", "flows": [{"filePattern": "/var/log/app.log", "kinesisStream": "app"}]}"#,
    )
    .unwrap();
    std::fs::write(dir.join("10-app.json~"), "garbage").unwrap();
    let l = load_with_dirs(&main, &[dir.clone(), d.join("missing")]).unwrap();
    let streams: Vec<&str> = l.config.flows.iter().map(|f| f.stream.as_str()).collect();
    assert_eq!(streams, ["app", "web"], "in file-name order");
    assert_eq!(
        l.config.kinesis_region.as_deref(),
        Some("eu-west-1"),
        "only flows from agent.d"
    );
    assert!(
        l.warnings
            .iter()
            .any(|w| w.contains("kinesis.region") && w.contains("ignored")),
        "{:?}",
        l.warnings
    );
    assert!(
        l.warnings
            .iter()
            .any(|w| w.contains("10-app.json~") && w.contains("skipped")),
        "{:?}",
        l.warnings
    );

    // A bad flow in a drop-in file: its file and its place in it.
    std::fs::write(
        dir.join("30-bad.json"),
        r#"{"flows": [{"filePattern": "/x", "kinesisStream": "s", "maxBufferAgeMillis": 1}]}"#,
    )
    .unwrap();
    let e = load_with_dirs(&main, std::slice::from_ref(&dir)).unwrap_err();
    assert!(
        e.path.ends_with("30-bad.json: flows[0].maxBufferAgeMillis"),
        "{e}"
    );
    // A file that does not parse stops the load (the Kinesis Agent skips it, shipping none
    // of its flows, with a warning in a log).
    std::fs::write(dir.join("30-bad.json"), "{ not json").unwrap();
    let e = load_with_dirs(&main, &[dir]).unwrap_err();
    assert!(e.path.ends_with("30-bad.json"), "{e}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn java_only_regex_constructs_are_refused_naming_the_key_and_the_construct() {
    let flow = |key: &str, pattern: &str| {
        let mut f = serde_json::json!({"filePattern": "/a", "kinesisStream": "s"});
        if key == "matchPattern" {
            f["dataProcessingOptions"] = serde_json::json!([{"optionName": "LOGTOJSON", "logFormat": "SYSLOG", "matchPattern": pattern}]);
        } else {
            f[key] = serde_json::json!(pattern);
        }
        from_value(&serde_json::json!({"flows": [f]})).unwrap_err()
    };
    // (key, pattern, the construct named)
    let table = [
        ("multiLineStartPattern", r"^(?<=\[)\d", "look-around"),
        ("multiLineStartPattern", r"^(?!\s)", "look-around"),
        ("multiLineStartPattern", r"^(\w)\1", "back-reference"),
        ("multiLineStartPattern", r"^(?>a|ab)c", "atomic group"),
        ("matchPattern", r"^(\S+) (?=x)", "look-around"),
        ("matchPattern", r"^a*+b", "possessive"),
        ("multiLineStartPattern", r"^\d{4}+-", "possessive"),
    ];
    for (key, pattern, what) in table {
        let e = flow(key, pattern);
        assert!(e.path.ends_with(key), "{pattern}: {e}");
        assert!(
            e.reason.contains(what) && e.reason.contains("Java"),
            "{pattern}: {e}"
        );
    }
    // A plain mistake stays a plain message; lazy quantifiers, escaped pluses, pluses in a
    // class and group flags are not possessive.
    let e = flow("multiLineStartPattern", "^(unclosed");
    assert!(!e.reason.contains("Java"), "{e}");
    for fine in [r"^a*?b", r"^\++x", r"^[*+]+", r"^(?i)a+", r"^\d{4}-"] {
        assert!(!crate::process::has_possessive_quantifier(fine), "{fine}");
    }
}

#[test]
fn shutdown_timeout_millis_sets_the_stop_deadline() {
    let base = r#""flows": [{"filePattern": "/a", "kinesisStream": "s"}]"#;
    let l = parse(&format!("{{{base}}}")).unwrap();
    assert_eq!(
        l.config.shutdown_timeout,
        Duration::from_secs(10),
        "the Kinesis Agent's default"
    );
    let l = parse(&format!(r#"{{{base}, "shutdownTimeoutMillis": "30000"}}"#)).unwrap();
    assert_eq!(l.config.shutdown_timeout, Duration::from_secs(30));
    assert!(l.warnings.is_empty(), "{:?}", l.warnings);
    let e = parse(&format!(r#"{{{base}, "shutdownTimeoutMillis": 10}}"#)).unwrap_err();
    assert_eq!(e.path, "shutdownTimeoutMillis", "{e}");
}

#[test]
fn comments_are_accepted_as_the_kinesis_agent_accepts_them() {
    // The commented example in the repository loads, with both flows.
    let v = parse_json(include_str!("../../../examples/agent.json")).unwrap();
    let l = from_value(&v).unwrap();
    assert_eq!(l.config.flows.len(), 2);
    // An unterminated comment is an error saying where.
    let e = parse_json("{\n  \"flows\": [] /* oops\n}").unwrap_err();
    assert!(e.contains("line 2"), "{e}");
    // Not JSON after the comments: still an error.
    assert!(
        parse_json("{'flows': []}")
            .unwrap_err()
            .contains("not valid JSON")
    );
}

#[test]
fn the_kinesis_agent_sample_config_is_accepted() {
    let l = parse(
        r#"{
          "cloudwatch.emitMetrics": true,
          "kinesis.endpoint": "https://kinesis.us-east-1.amazonaws.com",
          "flows": [
            { "filePattern": "/tmp/app.log*", "kinesisStream": "yourkinesisstream",
              "partitionKeyOption": "RANDOM", "maxBufferAgeMillis": "1000" },
            { "filePattern": "/var/log/x/*.log", "kinesisStream": "s2", "initialPosition": "START_OF_FILE",
              "multiLineStartPattern": "^\\d{4}-", "skipHeaderLines": 1, "partitionKeyOption": "DETERMINISTIC" }
          ]
        }"#,
    )
    .unwrap();
    assert_eq!(l.config.flows.len(), 2);
    assert_eq!(
        l.config.flows[0].max_buffer_age,
        Duration::from_secs(1),
        "numbers as strings"
    );
    assert_eq!(
        l.config.flows[1].partition_key,
        PartitionKeyRule::Deterministic
    );
    assert_eq!(
        l.config.flows[1].initial_position,
        InitialPosition::StartOfFile
    );
    assert!(l.warnings.is_empty(), "{:?}", l.warnings);
    assert_eq!(l.config.cloudwatch, CloudWatchConfig::default());
}

#[test]
fn cloudwatch_keys_are_read_with_the_kinesis_agents_defaults() {
    let l = parse(r#"{"flows": [{"filePattern": "/a", "kinesisStream": "s"}]}"#).unwrap();
    let c = &l.config.cloudwatch;
    assert!(c.emit_metrics && !c.tag_instance);
    assert_eq!(c.namespace, "AWSKinesisAgent");
    assert_eq!(c.buffer_time, Duration::from_secs(30));
    assert_eq!(c.queue_size, 10_000);
    assert_eq!(c.endpoint, None);
    let l = parse(
        r#"{"flows": [{"filePattern": "/a", "kinesisStream": "s"}],
            "cloudwatch.emitMetrics": "false", "cloudwatch.tagInstance": true,
            "cloudwatch.namespace": "Mine", "cloudwatch.endpoint": "http://127.0.0.1:5000",
            "cloudwatch.metricsBufferTimeMillis": "10000", "cloudwatch.metricsQueueSize": 5}"#,
    )
    .unwrap();
    assert!(l.warnings.is_empty(), "{:?}", l.warnings);
    assert_eq!(
        l.config.cloudwatch,
        CloudWatchConfig {
            emit_metrics: false,
            endpoint: Some("http://127.0.0.1:5000".into()),
            namespace: "Mine".into(),
            buffer_time: Duration::from_secs(10),
            queue_size: 5,
            tag_instance: true,
        }
    );
}

#[test]
fn bad_cloudwatch_keys_name_the_key() {
    let cases = [
        (
            r#""cloudwatch.emitMetrics": "yes""#,
            "cloudwatch.emitMetrics",
        ),
        (r#""cloudwatch.emitMetrics": 1"#, "cloudwatch.emitMetrics"),
        (
            r#""cloudwatch.tagInstance": [true]"#,
            "cloudwatch.tagInstance",
        ),
        (r#""cloudwatch.namespace": 7"#, "cloudwatch.namespace"),
        (
            r#""cloudwatch.namespace": "AWS/Kinesis""#,
            "cloudwatch.namespace",
        ),
        (r#""cloudwatch.namespace": """#, "cloudwatch.namespace"),
        (
            r#""cloudwatch.endpoint": "monitoring""#,
            "cloudwatch.endpoint",
        ),
        (r#""cloudwatch.endpoint": false"#, "cloudwatch.endpoint"),
        (
            r#""cloudwatch.metricsBufferTimeMillis": -1000"#,
            "cloudwatch.metricsBufferTimeMillis",
        ),
        (
            r#""cloudwatch.metricsBufferTimeMillis": 120000"#,
            "cloudwatch.metricsBufferTimeMillis",
        ),
        (
            r#""cloudwatch.metricsBufferTimeMillis": "soon""#,
            "cloudwatch.metricsBufferTimeMillis",
        ),
        (
            r#""cloudwatch.metricsQueueSize": 0"#,
            "cloudwatch.metricsQueueSize",
        ),
        (
            r#""cloudwatch.metricsQueueSize": 1.5"#,
            "cloudwatch.metricsQueueSize",
        ),
    ];
    for (key, path) in cases {
        let text =
            format!(r#"{{"flows": [{{"filePattern": "/a", "kinesisStream": "s"}}], {key}}}"#);
        let e = parse(&text).unwrap_err();
        assert_eq!(e.path, path, "{text}: {e}");
    }
}

#[test]
fn broken_configs_name_the_key_and_the_reason() {
    let cases = [
        (r#"{}"#, "flows"),
        (r#"{"flows": []}"#, "flows"),
        (
            r#"{"flows": [{"kinesisStream": "s"}]}"#,
            "flows[0].filePattern",
        ),
        (
            r#"{"flows": [{"filePattern": "/a", "kinesisStream": "bad name"}]}"#,
            "flows[0].kinesisStream",
        ),
        (
            r#"{"flows": [{"filePattern": "/a", "kinesisStream": "s", "maxBufferAgeMillis": 5}]}"#,
            "flows[0].maxBufferAgeMillis",
        ),
        (
            r#"{"flows": [{"filePattern": "/a", "kinesisStream": "s", "maxBufferAgeMillis": "soon"}]}"#,
            "flows[0].maxBufferAgeMillis",
        ),
        (
            r#"{"flows": [{"filePattern": "/a", "kinesisStream": "s", "partitionKeyOption": "X"}]}"#,
            "flows[0].partitionKeyOption",
        ),
        (
            r#"{"flows": [{"filePattern": "/a", "kinesisStream": "s", "oversizedRecords": "DROP"}]}"#,
            "flows[0].oversizedRecords",
        ),
        (
            r#"{"flows": [{"filePattern": "/a", "kinesisStream": "s", "multiLineStartPattern": "("}]}"#,
            "flows[0].multiLineStartPattern",
        ),
        (
            r#"{"flows": [{"filePattern": "/a", "deliveryStream": "bad name"}]}"#,
            "flows[0].deliveryStream",
        ),
        (
            r#"{"flows": [{"filePattern": "/a", "deliveryStream": 7}]}"#,
            "flows[0].deliveryStream",
        ),
        (
            r#"{"flows": [{"filePattern": "/a", "kinesisStream": "s", "dataProcessingOptions": [{"optionName": "USINGPLUGGIN"}]}]}"#,
            "flows[0].dataProcessingOptions[0].optionName",
        ),
        (
            r#"{"flows": [{"filePattern": "/a", "kinesisStream": "s"}, {"filePattern": "/a", "kinesisStream": "s"}]}"#,
            "flows[1]",
        ),
    ];
    for (text, path) in cases {
        let e = parse(text).unwrap_err();
        assert_eq!(e.path, path, "{text}: {e}");
    }
}

#[test]
fn a_flow_has_exactly_one_destination() {
    let l = parse(r#"{"flows": [{"filePattern": "/a", "deliveryStream": "logs-to-s3"}], "firehose.endpoint": "http://127.0.0.1:4573"}"#).unwrap();
    assert!(l.warnings.is_empty(), "{:?}", l.warnings);
    let f = &l.config.flows[0];
    assert_eq!(f.kind, DestinationKind::DeliveryStream);
    assert_eq!(f.destination_label(), "deliveryStream logs-to-s3");
    assert_eq!(
        f.key().destination,
        "fh:logs-to-s3",
        "the Kinesis Agent's flow id"
    );
    assert_eq!(f.max_record_bytes, 1000 * 1024, "Firehose's record limit");
    assert_eq!(f.max_batch_bytes(), 4 * 1024 * 1024);
    assert_eq!(
        l.config.firehose_endpoint.as_deref(),
        Some("http://127.0.0.1:4573")
    );
    // (flow, path, words of the reason)
    let cases = [
        (
            r#"{"filePattern": "/a", "kinesisStream": "s", "deliveryStream": "d"}"#,
            "flows[0]",
            "both kinesisStream and deliveryStream",
        ),
        (
            r#"{"filePattern": "/a"}"#,
            "flows[0]",
            "kinesisStream (a Kinesis data stream) or deliveryStream",
        ),
        (
            r#"{"filePattern": "/a", "kinesisStream": "s", "aggregatedRecordSizeBytes": 100}"#,
            "flows[0].aggregatedRecordSizeBytes",
            "deliveryStream flows only",
        ),
        (
            r#"{"filePattern": "/a", "deliveryStream": "d", "aggregatedRecordSizeBytes": 2000000}"#,
            "flows[0].aggregatedRecordSizeBytes",
            "0..=1024000",
        ),
        (
            r#"{"filePattern": "/a", "deliveryStream": "d", "maxBufferSizeBytes": 5000000}"#,
            "flows[0].maxBufferSizeBytes",
            "1..=4194304",
        ),
        (
            r#"{"filePattern": "/a", "deliveryStream": "d", "maxRecordBytes": 2000000}"#,
            "flows[0].maxRecordBytes",
            "1024..=1024000",
        ),
    ];
    for (flow, path, words) in cases {
        let e = parse(&format!(r#"{{"flows": [{flow}]}}"#)).unwrap_err();
        assert_eq!(e.path, path, "{flow}: {e}");
        assert!(e.reason.contains(words), "{flow}: {e}");
    }
    // The same pattern to a stream and to a delivery stream: two flows, not a duplicate.
    let l = parse(r#"{"flows": [{"filePattern": "/a", "kinesisStream": "x"}, {"filePattern": "/a", "deliveryStream": "x"}]}"#).unwrap();
    assert_eq!(l.config.flows.len(), 2);
    // A partition key means nothing to a delivery stream: a warning.
    let l = parse(r#"{"flows": [{"filePattern": "/a", "deliveryStream": "d", "partitionKeyOption": "DETERMINISTIC"}]}"#).unwrap();
    assert!(
        l.warnings[0].contains("flows[0].partitionKeyOption") && l.warnings[0].contains("ignored"),
        "{:?}",
        l.warnings
    );
    let e = parse(r#"{"flows": [{"filePattern": "/a", "deliveryStream": "d"}], "firehose.endpoint": "firehose"}"#).unwrap_err();
    assert_eq!(e.path, "firehose.endpoint");
}

#[test]
fn the_kinesis_agents_flow_keys_are_honoured_with_its_defaults() {
    let l = parse(r#"{"flows": [{"filePattern": "/a", "kinesisStream": "s"}]}"#).unwrap();
    let t = &l.config.flows[0].tuning;
    assert_eq!(t.max_buffer_size_records, 500);
    assert_eq!(l.config.flows[0].max_batch_bytes(), 5 * 1024 * 1024);
    assert_eq!(t.publish_queue_capacity, 100);
    assert_eq!((t.retry_initial_backoff, t.retry_max_backoff), (None, None));
    assert!(t.file_footer_pattern.is_none() && t.min_time_between_file_polls.is_none());
    let l = parse(
        r#"{"flows": [{"filePattern": "/a", "kinesisStream": "s",
            "maxBufferSizeRecords": "100", "maxBufferSizeBytes": 65536,
            "retryInitialBackoffMillis": 200, "retryMaxBackoffMillis": 3000,
            "publishQueueCapacity": 7, "fileFooterPattern": "^END$",
            "minTimeBetweenFilePollsMillis": 250}]}"#,
    )
    .unwrap();
    assert!(l.warnings.is_empty(), "{:?}", l.warnings);
    let f = &l.config.flows[0];
    let t = &f.tuning;
    assert_eq!(t.max_buffer_size_records, 100);
    assert_eq!(f.max_batch_bytes(), 65536);
    assert_eq!(t.retry_initial_backoff, Some(Duration::from_millis(200)));
    assert_eq!(t.retry_max_backoff, Some(Duration::from_secs(3)));
    assert_eq!(t.publish_queue_capacity, 7);
    assert!(t.file_footer_pattern.as_ref().unwrap().is_match(b"END"));
    assert_eq!(
        t.min_time_between_file_polls,
        Some(Duration::from_millis(250))
    );
    // (key: value, path)
    let bad = [
        (
            r#""maxBufferSizeRecords": 0"#,
            "flows[0].maxBufferSizeRecords",
        ),
        (
            r#""maxBufferSizeRecords": 501"#,
            "flows[0].maxBufferSizeRecords",
        ),
        (
            r#""maxBufferSizeBytes": 6000000"#,
            "flows[0].maxBufferSizeBytes",
        ),
        (
            r#""retryInitialBackoffMillis": 0"#,
            "flows[0].retryInitialBackoffMillis",
        ),
        (
            r#""retryMaxBackoffMillis": "later""#,
            "flows[0].retryMaxBackoffMillis",
        ),
        (
            r#""retryInitialBackoffMillis": 5000, "retryMaxBackoffMillis": 1000"#,
            "flows[0].retryInitialBackoffMillis",
        ),
        (
            r#""publishQueueCapacity": 0"#,
            "flows[0].publishQueueCapacity",
        ),
        (r#""fileFooterPattern": "(""#, "flows[0].fileFooterPattern"),
        (
            r#""fileFooterPattern": "^(?!x)""#,
            "flows[0].fileFooterPattern",
        ),
        (r#""fileFooterPattern": 3"#, "flows[0].fileFooterPattern"),
        (
            r#""minTimeBetweenFilePollsMillis": 0"#,
            "flows[0].minTimeBetweenFilePollsMillis",
        ),
    ];
    for (kv, path) in bad {
        let text = format!(r#"{{"flows": [{{"filePattern": "/a", "kinesisStream": "s", {kv}}}]}}"#);
        let e = parse(&text).unwrap_err();
        assert_eq!(e.path, path, "{text}: {e}");
    }
}

#[test]
fn the_kinesis_agents_global_keys_are_honoured_with_its_defaults() {
    let base = r#""flows": [{"filePattern": "/a", "kinesisStream": "s"}]"#;
    let c = parse(&format!("{{{base}}}")).unwrap().config;
    assert_eq!(c.status_reporting_period, Duration::from_secs(30));
    assert!(!c.log_emit_metrics);
    assert_eq!(c.max_sending_threads, None);
    assert_eq!(c.firehose_endpoint, None);
    let l = parse(&format!(
        r#"{{{base}, "log.emitMetrics": "true", "log.statusReportingPeriodSeconds": 5, "maxSendingThreads": 4}}"#
    ))
    .unwrap();
    assert!(l.warnings.is_empty(), "{:?}", l.warnings);
    assert_eq!(l.config.status_reporting_period, Duration::from_secs(5));
    assert!(l.config.log_emit_metrics);
    assert_eq!(l.config.max_sending_threads, Some(4));
    let c = parse(&format!(r#"{{{base}, "statusReportingPeriodSeconds": 2}}"#))
        .unwrap()
        .config;
    assert_eq!(c.status_reporting_period, Duration::from_secs(2));
    for (kv, path) in [
        (r#""log.emitMetrics": 1"#, "log.emitMetrics"),
        (
            r#""log.statusReportingPeriodSeconds": 0"#,
            "log.statusReportingPeriodSeconds",
        ),
        (
            r#""statusReportingPeriodSeconds": "x""#,
            "statusReportingPeriodSeconds",
        ),
        (r#""maxSendingThreads": 0"#, "maxSendingThreads"),
    ] {
        let e = parse(&format!("{{{base}, {kv}}}")).unwrap_err();
        assert_eq!(e.path, path, "{kv}: {e}");
    }
}

#[test]
fn unknown_keys_warn() {
    let l = parse(
        r#"{"flows": [{"filePattern": "/a", "kinesisStream": "s", "colour": "red"}], "extra": 1}"#,
    )
    .unwrap();
    assert_eq!(l.warnings.len(), 2, "{:?}", l.warnings);
    // Keys this agent serves are not "unknown".
    let l = parse(r#"{"flows": [{"filePattern": "/a", "kinesisStream": "s"}], "httpListenAddress": "127.0.0.1:9110", "checkpointTimeToLiveDays": 3}"#).unwrap();
    assert!(l.warnings.is_empty(), "{:?}", l.warnings);
    assert_eq!(l.config.checkpoint_ttl, Duration::from_secs(3 * 86_400));
}
