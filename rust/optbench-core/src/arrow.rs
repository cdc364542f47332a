//! Per-request records as one Arrow record batch (read by pandas, pyarrow and polars without
//! copies through the Arrow PyCapsule interface).

use std::sync::Arc;

use arrow_array::builder::{Float64Builder, Int64Builder, ListBuilder, UInt32Builder};
use arrow_array::{
    ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray, UInt16Array, UInt32Array,
};
use arrow_schema::{ArrowError, DataType, Field, Schema};

use crate::record::RequestRecord;

/// Column names and types of [`records_to_batch`], in order. Times are nanoseconds since the
/// run's start; `*_ms` and `*tokens_per_s` are the derived metrics of each request. The
/// reasoning columns (after `server_timings`) are null (and `reasoning_text` empty) for
/// requests without reasoning; `first_answer_token_ns` and `ttft_answer_ms` are filled for every
/// request with an answer.
pub fn records_schema() -> Schema {
    let list =
        |name: &str, item: DataType| Field::new(name, DataType::List(Arc::new(Field::new("item", item, true))), false);
    Schema::new(vec![
        Field::new("request_id", DataType::UInt32, false),
        Field::new("warmup", DataType::Boolean, false),
        Field::new("success", DataType::Boolean, false),
        Field::new("error_kind", DataType::Utf8, true),
        Field::new("error_message", DataType::Utf8, true),
        Field::new("http_status", DataType::UInt16, true),
        Field::new("scheduled_ns", DataType::Int64, false),
        Field::new("base_url_index", DataType::UInt32, false),
        Field::new("session_id", DataType::UInt32, true),
        Field::new("turn", DataType::UInt32, true),
        Field::new("sent_ns", DataType::Int64, true),
        Field::new("first_byte_ns", DataType::Int64, true),
        Field::new("first_token_ns", DataType::Int64, true),
        Field::new("last_token_ns", DataType::Int64, true),
        Field::new("done_ns", DataType::Int64, true),
        Field::new("ttft_ms", DataType::Float64, true),
        Field::new("e2e_ms", DataType::Float64, true),
        Field::new("tokens_per_s", DataType::Float64, true),
        Field::new("tpot_ms", DataType::Float64, true),
        Field::new("queue_delay_ms", DataType::Float64, true),
        Field::new("output_tokens", DataType::UInt32, true),
        Field::new("token_count_source", DataType::Utf8, true),
        Field::new("prompt_tokens", DataType::UInt32, true),
        Field::new("cached_tokens", DataType::UInt32, true),
        Field::new("finish_reason", DataType::Utf8, true),
        Field::new("num_chunks", DataType::UInt32, false),
        list("chunk_times_ns", DataType::Int64),
        list("chunk_text_bytes", DataType::UInt32),
        list("chunk_tokens", DataType::UInt32),
        Field::new("chunk_tokens_source", DataType::Utf8, true),
        list("itl_ms", DataType::Float64),
        list("chunk_gap_ms", DataType::Float64),
        Field::new("output_text", DataType::Utf8, false),
        Field::new("server_timings", DataType::Utf8, true),
        Field::new("first_reasoning_token_ns", DataType::Int64, true),
        Field::new("last_reasoning_token_ns", DataType::Int64, true),
        Field::new("first_answer_token_ns", DataType::Int64, true),
        Field::new("ttft_reasoning_ms", DataType::Float64, true),
        Field::new("ttft_answer_ms", DataType::Float64, true),
        Field::new("reasoning_tokens", DataType::UInt32, true),
        Field::new("answer_tokens", DataType::UInt32, true),
        Field::new("reasoning_token_source", DataType::Utf8, true),
        Field::new("reasoning_tokens_per_s", DataType::Float64, true),
        Field::new("answer_tokens_per_s", DataType::Float64, true),
        Field::new("reasoning_text", DataType::Utf8, false),
    ])
}

/// Converts records into one record batch with [`records_schema`].
pub fn records_to_batch(records: &[RequestRecord]) -> Result<RecordBatch, ArrowError> {
    fn col<T, A: arrow_array::Array + 'static>(
        records: &[RequestRecord],
        f: impl Fn(&RequestRecord) -> T,
        make: impl FnOnce(Vec<T>) -> A,
    ) -> ArrayRef {
        Arc::new(make(records.iter().map(f).collect()))
    }
    let mut chunk_times = ListBuilder::new(Int64Builder::new());
    let mut chunk_bytes = ListBuilder::new(UInt32Builder::new());
    let mut chunk_tokens = ListBuilder::new(UInt32Builder::new());
    let mut itl = ListBuilder::new(Float64Builder::new());
    let mut chunk_gap = ListBuilder::new(Float64Builder::new());
    for r in records {
        chunk_times.values().append_slice(&r.chunk_times_ns);
        chunk_times.append(true);
        chunk_bytes.values().append_slice(&r.chunk_text_bytes);
        chunk_bytes.append(true);
        let tokens: Vec<u32> = (0..r.chunk_times_ns.len()).map(|i| r.tokens_of_chunk(i)).collect();
        chunk_tokens.values().append_slice(&tokens);
        chunk_tokens.append(true);
        itl.values().append_slice(&r.itl_ms());
        itl.append(true);
        chunk_gap.values().append_slice(&r.chunk_gap_ms());
        chunk_gap.append(true);
    }
    let columns: Vec<ArrayRef> = vec![
        col(records, |r| r.request_id, UInt32Array::from),
        col(records, |r| r.warmup, BooleanArray::from),
        col(records, |r| r.is_success(), BooleanArray::from),
        col(records, |r| r.error_kind.map(|k| k.as_str()), StringArray::from),
        col(records, |r| r.error_message.clone(), StringArray::from),
        col(records, |r| r.http_status, UInt16Array::from),
        col(records, |r| r.scheduled_ns, Int64Array::from),
        col(records, |r| r.base_url_index, UInt32Array::from),
        col(records, |r| r.session_id, UInt32Array::from),
        col(records, |r| r.turn, UInt32Array::from),
        col(records, |r| r.sent_ns, Int64Array::from),
        col(records, |r| r.first_byte_ns, Int64Array::from),
        col(records, |r| r.first_token_ns, Int64Array::from),
        col(records, |r| r.last_token_ns, Int64Array::from),
        col(records, |r| r.done_ns, Int64Array::from),
        col(records, |r| r.ttft_ms(), Float64Array::from),
        col(records, |r| r.e2e_ms(), Float64Array::from),
        col(records, |r| r.tokens_per_s(), Float64Array::from),
        col(records, |r| r.tpot_ms(), Float64Array::from),
        col(records, |r| r.queue_delay_ms(), Float64Array::from),
        col(records, |r| r.output_tokens, UInt32Array::from),
        col(records, |r| r.token_count_source.map(|s| s.as_str()), StringArray::from),
        col(records, |r| r.prompt_tokens, UInt32Array::from),
        col(records, |r| r.cached_tokens, UInt32Array::from),
        col(records, |r| r.finish_reason.clone(), StringArray::from),
        col(records, |r| r.chunk_times_ns.len() as u32, UInt32Array::from),
        Arc::new(chunk_times.finish()),
        Arc::new(chunk_bytes.finish()),
        Arc::new(chunk_tokens.finish()),
        col(records, |r| r.chunk_tokens_source.map(|s| s.as_str()), StringArray::from),
        Arc::new(itl.finish()),
        Arc::new(chunk_gap.finish()),
        col(records, |r| r.output_text.clone(), StringArray::from),
        col(records, |r| r.server_timings.clone(), StringArray::from),
        col(records, |r| r.first_reasoning_token_ns, Int64Array::from),
        col(records, |r| r.last_reasoning_token_ns, Int64Array::from),
        col(records, |r| r.first_answer_token_ns, Int64Array::from),
        col(records, |r| r.ttft_reasoning_ms(), Float64Array::from),
        col(records, |r| r.ttft_answer_ms(), Float64Array::from),
        col(records, |r| r.reasoning_tokens, UInt32Array::from),
        col(records, |r| r.answer_tokens, UInt32Array::from),
        col(records, |r| r.reasoning_token_source.map(|s| s.as_str()), StringArray::from),
        col(records, |r| r.reasoning_tokens_per_s(), Float64Array::from),
        col(records, |r| r.answer_tokens_per_s(), Float64Array::from),
        col(records, |r| r.reasoning_text.clone(), StringArray::from),
    ];
    RecordBatch::try_new(Arc::new(records_schema()), columns)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::ErrorKind;
    use arrow_array::Array;

    #[test]
    fn one_row_per_record_with_derived_metrics() {
        let ok = RequestRecord {
            request_id: 0,
            sent_ns: Some(0),
            first_token_ns: Some(10_000_000),
            last_token_ns: Some(30_000_000),
            chunk_times_ns: vec![10_000_000, 20_000_000, 30_000_000],
            chunk_text_bytes: vec![1, 2, 3],
            output_tokens: Some(3),
            output_text: "abbccc".into(),
            ..Default::default()
        };
        let mut bad = RequestRecord { request_id: 1, ..Default::default() };
        bad.fail(ErrorKind::Connect, "refused");
        let batch = records_to_batch(&[ok, bad]).unwrap();
        assert_eq!(batch.num_rows(), 2);
        assert_eq!(batch.schema().as_ref(), &records_schema());
        let ttft = batch.column_by_name("ttft_ms").unwrap();
        let ttft = ttft.as_any().downcast_ref::<Float64Array>().unwrap();
        assert_eq!(ttft.value(0), 10.0);
        assert!(ttft.is_null(1));
        let kind = batch.column_by_name("error_kind").unwrap();
        let kind = kind.as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!(kind.value(1), "connect");
    }
}
