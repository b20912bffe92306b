"""Bridge to the reference KPL aggregator/deaggregator (PyPI aws-kinesis-agg) over JSON lines.

  python kpl_agg.py deaggregate   {"partition_key", "data": b64, ...} per line (a Kinesis record)
                                  -> {"partition_key", "explicit_hash_key", "data": b64,
                                      "sub_sequence_number", "aggregated"} per user record
  python kpl_agg.py aggregate MAX {"partition_key", "explicit_hash_key"?, "data": b64} per line
                                  -> {"partition_key", "explicit_hash_key", "data": b64} per
                                     aggregated record (the reference aggregator's packing)
"""
import base64
import datetime
import json
import sys

from aws_kinesis_agg.aggregator import RecordAggregator
from aws_kinesis_agg.deaggregator import iter_deaggregate_records


def deaggregate():
    for line in sys.stdin:
        if not line.strip():
            continue
        rec = json.loads(line)
        boto = {
            "SequenceNumber": rec.get("sequence_number", "0"),
            "PartitionKey": rec["partition_key"],
            "ApproximateArrivalTimestamp": datetime.datetime.now(),
            "Data": base64.b64decode(rec["data"]),
        }
        for user in iter_deaggregate_records([boto], data_format="Boto3"):
            k = user["kinesis"]
            data = k["data"]
            # Aggregated user records come back base64-encoded; plain ones raw.
            aggregated = bool(k.get("aggregated"))
            raw = base64.b64decode(data) if aggregated else data
            print(json.dumps({
                "partition_key": k["partitionKey"],
                "explicit_hash_key": k.get("explicitHashKey"),
                "data": base64.b64encode(raw).decode(),
                "sub_sequence_number": k.get("subSequenceNumber", 0),
                "aggregated": aggregated,
            }))


def aggregate(max_size):
    agg = RecordAggregator(max_size)

    def emit(rec):
        pk, ehk, data = rec.get_contents()
        print(json.dumps({"partition_key": pk, "explicit_hash_key": ehk,
                          "data": base64.b64encode(data).decode()}))

    for line in sys.stdin:
        if not line.strip():
            continue
        rec = json.loads(line)
        full = agg.add_user_record(rec["partition_key"], base64.b64decode(rec["data"]),
                                   rec.get("explicit_hash_key"))
        if full:
            emit(full)
    if agg.get_num_user_records() > 0:
        emit(agg.clear_and_get())


if __name__ == "__main__":
    if sys.argv[1] == "deaggregate":
        deaggregate()
    elif sys.argv[1] == "aggregate":
        aggregate(int(sys.argv[2]))
    else:
        sys.exit("usage: kpl_agg.py deaggregate | aggregate MAX_SIZE")
