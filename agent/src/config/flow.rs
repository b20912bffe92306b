//! One flow of `agent.json` (`flows[N]`): its destination, file pattern, parsing options and
//! the Kinesis Agent's batching, retry and polling keys, each checked with its path.

use super::*;

pub(super) fn flow(v: &Value, i: usize, warnings: &mut Vec<String>) -> Result<Flow, ConfigError> {
    let p = |k: &str| format!("flows[{i}].{k}");
    let obj = v
        .as_object()
        .ok_or_else(|| err(format!("flows[{i}]"), "must be an object"))?;
    for k in obj.keys() {
        if !FLOW_KEYS.contains(&k.as_str()) {
            warnings.push(format!("{}: unknown key, ignored", p(k)));
        }
    }
    let file_pattern = string(
        obj.get("filePattern")
            .ok_or_else(|| err(p("filePattern"), "is required"))?,
        &p("filePattern"),
    )?
    .to_string();
    if file_pattern.is_empty() || glob::Pattern::new(&file_pattern).is_err() {
        return Err(err(
            p("filePattern"),
            format!("{file_pattern:?} is not a valid glob"),
        ));
    }
    let (kind, stream) = match (obj.get("kinesisStream"), obj.get("deliveryStream")) {
        (Some(k), None) => {
            let stream = string(k, &p("kinesisStream"))?.to_string();
            kinesis_core::StreamRef::parse(&stream)
                .map_err(|e| err(p("kinesisStream"), e.to_string()))?;
            (DestinationKind::KinesisStream, stream)
        }
        (None, Some(d)) => {
            let name = string(d, &p("deliveryStream"))?.to_string();
            check_delivery_stream_name(&name).map_err(|r| err(p("deliveryStream"), r))?;
            (DestinationKind::DeliveryStream, name)
        }
        (Some(_), Some(_)) => {
            return Err(err(
                format!("flows[{i}]"),
                "has both kinesisStream and deliveryStream; a flow ships to one destination \
                 (make two flows of the same filePattern to ship to both)",
            ));
        }
        (None, None) => {
            return Err(err(
                format!("flows[{i}]"),
                "needs a destination: kinesisStream (a Kinesis data stream) or deliveryStream \
                 (an Amazon Data Firehose delivery stream)",
            ));
        }
    };
    let firehose = kind == DestinationKind::DeliveryStream;
    if firehose {
        for k in ["partitionKeyOption", "partitionKeyField"] {
            if obj.contains_key(k) {
                warnings.push(format!(
                    "{}: delivery streams have no partition keys; ignored",
                    p(k)
                ));
            }
        }
    }
    let partition_key = match obj
        .get("partitionKeyOption")
        .map(|v| string(v, &p("partitionKeyOption")))
        .transpose()?
    {
        None | Some("RANDOM") => match obj.get("partitionKeyField") {
            Some(f) => PartitionKeyRule::JsonField(string(f, &p("partitionKeyField"))?.to_string()),
            None => PartitionKeyRule::Random,
        },
        Some("DETERMINISTIC") => PartitionKeyRule::Deterministic,
        Some(other) => {
            return Err(err(
                p("partitionKeyOption"),
                format!("{other:?}: expected RANDOM or DETERMINISTIC"),
            ));
        }
    };
    let initial_position = match obj
        .get("initialPosition")
        .map(|v| string(v, &p("initialPosition")))
        .transpose()?
    {
        None | Some("END_OF_FILE") => InitialPosition::EndOfFile,
        Some("START_OF_FILE") => InitialPosition::StartOfFile,
        Some(other) => {
            return Err(err(
                p("initialPosition"),
                format!("{other:?}: expected START_OF_FILE or END_OF_FILE"),
            ));
        }
    };
    let max_buffer_age = match obj.get("maxBufferAgeMillis") {
        Some(v) => Duration::from_millis(number(v, &p("maxBufferAgeMillis"), 1_000, 900_000)?),
        None => Duration::from_millis(100),
    };
    let tuning = tuning(obj, i, firehose)?;
    let multi_line_start_pattern = match obj.get("multiLineStartPattern") {
        Some(v) => {
            let s = string(v, &p("multiLineStartPattern"))?;
            crate::process::check_java_only(s).map_err(|r| err(p("multiLineStartPattern"), r))?;
            regex::bytes::Regex::new(s).map_err(|e| {
                err(
                    p("multiLineStartPattern"),
                    crate::process::regex_reason(s, &e),
                )
            })?;
            Some(s.to_string())
        }
        None => None,
    };
    let skip_header_lines = match obj.get("skipHeaderLines") {
        Some(v) => usize::try_from(number(v, &p("skipHeaderLines"), 0, 1_000_000)?).unwrap_or(0),
        None => 0,
    };
    let truncated_record_terminator = match obj.get("truncatedRecordTerminator") {
        Some(v) => string(v, &p("truncatedRecordTerminator"))?.to_string(),
        None => "\n".to_string(),
    };
    // A Kinesis record: 1 MiB by default, up to 10 MiB (data + key); a Firehose record:
    // 1,000 KiB (the Kinesis Agent's FirehoseConstants.MAX_RECORD_SIZE_BYTES).
    let record_limit = if firehose {
        kinesis_producer::firehose::FIREHOSE_MAX_RECORD_BYTES
    } else {
        10 * 1024 * 1024
    };
    let default_record = if firehose {
        kinesis_producer::firehose::FIREHOSE_MAX_RECORD_BYTES
    } else {
        1024 * 1024
    };
    let max_record_bytes = match obj.get("maxRecordBytes") {
        Some(v) => usize::try_from(number(v, &p("maxRecordBytes"), 1024, record_limit as u64)?)
            .unwrap_or(default_record),
        None => default_record,
    };
    let partial_line_timeout = match obj.get("partialLineTimeoutMillis") {
        Some(v) => Duration::from_millis(number(v, &p("partialLineTimeoutMillis"), 10, 3_600_000)?),
        None => Duration::from_secs(5),
    };
    let identity = match obj
        .get("fileIdentity")
        .map(|v| string(v, &p("fileIdentity")))
        .transpose()?
    {
        None | Some("CONTENT") => FileIdentity::Content,
        Some("DEVINODE") => FileIdentity::DevInode,
        Some(other) => {
            return Err(err(
                p("fileIdentity"),
                format!("{other:?}: expected CONTENT or DEVINODE"),
            ));
        }
    };
    let oversized = match obj
        .get("oversizedRecords")
        .map(|v| string(v, &p("oversizedRecords")))
        .transpose()?
    {
        None | Some("TRUNCATE") => Oversized::Truncate,
        Some("SPLIT") => Oversized::Split,
        Some(other) => {
            return Err(err(
                p("oversizedRecords"),
                format!("{other:?}: expected TRUNCATE or SPLIT"),
            ));
        }
    };
    let processors = match obj.get("dataProcessingOptions") {
        Some(dp) => crate::process::parse(dp, i)?,
        None => Vec::new(),
    };
    Ok(Flow {
        file_pattern,
        stream,
        kind,
        tuning,
        partition_key,
        initial_position,
        max_buffer_age,
        multi_line_start_pattern,
        skip_header_lines,
        truncated_record_terminator,
        oversized,
        max_record_bytes,
        partial_line_timeout,
        processors,
        identity,
    })
}

/// A Firehose delivery stream name: 1 to 64 of `a-zA-Z0-9_.-` (the API's pattern).
fn check_delivery_stream_name(name: &str) -> Result<(), String> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a delivery stream name (1 to 64 of a-z, A-Z, 0-9, _ . -)"
        ))
    }
}

/// The Kinesis Agent's per-flow batching, retry and polling keys.
fn tuning(
    obj: &serde_json::Map<String, Value>,
    i: usize,
    firehose: bool,
) -> Result<FlowTuning, ConfigError> {
    let p = |k: &str| format!("flows[{i}].{k}");
    let mut t = FlowTuning::default();
    let size = |k: &str, min: u64, max: u64| -> Result<Option<usize>, ConfigError> {
        obj.get(k)
            .map(|v| number(v, &p(k), min, max).map(|n| usize::try_from(n).unwrap_or(usize::MAX)))
            .transpose()
    };
    let millis = |k: &str, min: u64, max: u64| -> Result<Option<Duration>, ConfigError> {
        obj.get(k)
            .map(|v| number(v, &p(k), min, max).map(Duration::from_millis))
            .transpose()
    };
    if let Some(n) = size("maxBufferSizeRecords", 1, 500)? {
        t.max_buffer_size_records = n;
    }
    // The Kinesis Agent's maxima: a PutRecords (5 MiB) or a PutRecordBatch (4 MiB).
    let max_bytes = if firehose { 4 } else { 5 } * 1024 * 1024;
    t.max_buffer_size_bytes = size("maxBufferSizeBytes", 1, max_bytes)?;
    t.retry_initial_backoff = millis("retryInitialBackoffMillis", 1, 60_000)?;
    t.retry_max_backoff = millis("retryMaxBackoffMillis", 1, 600_000)?;
    if let (Some(a), Some(b)) = (t.retry_initial_backoff, t.retry_max_backoff)
        && a > b
    {
        return Err(err(
            p("retryInitialBackoffMillis"),
            format!(
                "must not exceed retryMaxBackoffMillis ({} > {})",
                a.as_millis(),
                b.as_millis()
            ),
        ));
    }
    if let Some(n) = size("publishQueueCapacity", 1, 10_000)? {
        t.publish_queue_capacity = n;
    }
    t.min_time_between_file_polls = millis("minTimeBetweenFilePollsMillis", 1, 60_000)?;
    if let Some(v) = obj.get("fileFooterPattern") {
        let s = string(v, &p("fileFooterPattern"))?;
        crate::process::check_java_only(s).map_err(|r| err(p("fileFooterPattern"), r))?;
        t.file_footer_pattern = Some(
            regex::bytes::Regex::new(s)
                .map_err(|e| err(p("fileFooterPattern"), crate::process::regex_reason(s, &e)))?,
        );
    }
    if let Some(n) = size(
        "aggregatedRecordSizeBytes",
        0,
        kinesis_producer::firehose::FIREHOSE_MAX_RECORD_BYTES as u64,
    )? {
        if !firehose {
            return Err(err(
                p("aggregatedRecordSizeBytes"),
                "is for deliveryStream flows only, as in the Kinesis Agent (records to a \
                 kinesisStream are KPL-aggregated by the producer anyway)",
            ));
        }
        t.aggregated_record_size_bytes = n;
    }
    Ok(t)
}
