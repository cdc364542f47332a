//! One streamed chunk's JSON: the fields optbench reads, and a fast reader for the usual chunk.
//!
//! [`parse`] gives what `serde_json` gives for every input. Most chunks are small objects
//! without escapes, and `serde_json` spends most of its time on them checking and skipping
//! the fields optbench does not read (`id`, `object`, `created`, `model`, ...): a tenth of the
//! client's CPU per token at concurrency 256 (`benches/floor.py`). So [`parse`] first tries
//! [`fast`], a reader of a strict subset of JSON, that gives up (`None`) on anything outside it
//! (any `\`, a control character in a string, a number it does not check as JSON does, a
//! repeated key optbench reads, `error` or `timings`, an array where an object is expected, deep
//! nesting) and `serde_json` reads the chunk instead. Where `fast` answers, its answer equals
//! `serde_json`'s (`fast_equals_serde_json_*` below, on generated and hand-written chunks).

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

#[derive(Deserialize, Debug, Default)]
pub(crate) struct StreamChunk<'a> {
    #[serde(default, borrow)]
    pub choices: Vec<Choice<'a>>,
    #[serde(default)]
    pub usage: Option<Usage>,
    #[serde(default, borrow)]
    pub timings: Option<&'a RawValue>,
    #[serde(default, borrow)]
    pub error: Option<&'a RawValue>,
}

#[derive(Deserialize, Debug, Default, PartialEq)]
pub(crate) struct Choice<'a> {
    #[serde(default, borrow)]
    pub text: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub delta: Option<Delta<'a>>,
    #[serde(default, borrow)]
    pub finish_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize, Debug, Default, PartialEq)]
pub(crate) struct Delta<'a> {
    #[serde(default, borrow)]
    pub content: Option<Cow<'a, str>>,
    /// The thinking of a reasoning model: `reasoning_content` (vLLM before 0.10, SGLang,
    /// llama.cpp's `--reasoning-format`) or `reasoning` (newer vLLM).
    #[serde(default, borrow)]
    pub reasoning_content: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub reasoning: Option<Cow<'a, str>>,
}

#[derive(Deserialize, Debug, Default, PartialEq)]
pub(crate) struct Usage {
    #[serde(default)]
    pub completion_tokens: Option<u32>,
    #[serde(default)]
    pub prompt_tokens: Option<u32>,
    #[serde(default)]
    pub completion_tokens_details: Option<CompletionTokensDetails>,
    #[serde(default)]
    pub prompt_tokens_details: Option<PromptTokensDetails>,
}

#[derive(Deserialize, Debug, Default, PartialEq)]
pub(crate) struct CompletionTokensDetails {
    #[serde(default)]
    pub reasoning_tokens: Option<u32>,
}

/// `usage.prompt_tokens_details` (OpenAI's; vLLM with `--enable-prompt-tokens-details`).
#[derive(Deserialize, Debug, Default, PartialEq)]
pub(crate) struct PromptTokensDetails {
    #[serde(default)]
    pub cached_tokens: Option<u32>,
}

/// The chunk in `data`, as `serde_json` reads it.
pub(crate) fn parse(data: &str) -> Result<StreamChunk<'_>, serde_json::Error> {
    match fast(data) {
        Some(chunk) => Ok(chunk),
        None => serde_json::from_str(data),
    }
}

/// Deepest nesting [`fast`] follows (`serde_json` allows 128).
const MAX_DEPTH: usize = 32;

/// The chunk when `data` is in the subset this reader checks, else `None` (see the module).
pub(crate) fn fast(data: &str) -> Option<StreamChunk<'_>> {
    if memchr::memchr(b'\\', data.as_bytes()).is_some() {
        return None;
    }
    let mut r = Reader { text: data, at: 0 };
    let mut chunk = StreamChunk::default();
    let (mut choices, mut usage) = (false, false);
    r.object(|r, key| match key {
        "choices" if !choices => {
            choices = true;
            r.array(|r| {
                chunk.choices.push(r.choice()?);
                Some(())
            })
        }
        "usage" if !usage => {
            usage = true;
            chunk.usage = r.nullable(Reader::usage)?;
            Some(())
        }
        "choices" | "usage" | "error" | "timings" => None,
        _ => r.skip(0),
    })?;
    r.ws();
    (r.at == data.len()).then_some(chunk)
}

/// A cursor over the chunk's text (which holds no `\`).
struct Reader<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Reader<'a> {
    fn bytes(&self) -> &'a [u8] {
        self.text.as_bytes()
    }

    fn peek(&self) -> Option<u8> {
        self.bytes().get(self.at).copied()
    }

    /// Skips JSON whitespace.
    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.at += 1;
        }
    }

    /// Skips whitespace, then takes `byte`.
    fn eat(&mut self, byte: u8) -> Option<()> {
        self.ws();
        (self.peek() == Some(byte)).then(|| self.at += 1)
    }

    /// A string (no escapes here); `None` on a control character, as JSON forbids them.
    fn string(&mut self) -> Option<&'a str> {
        self.eat(b'"')?;
        let start = self.at;
        let len = memchr::memchr(b'"', &self.bytes()[start..])?;
        let s = &self.text[start..start + len];
        if s.bytes().any(|b| b < 0x20) {
            return None;
        }
        self.at = start + len + 1;
        Some(s)
    }

    /// `null` (taken, `true`) or not (nothing taken, `false`).
    fn null(&mut self) -> bool {
        self.ws();
        let is_null = self.bytes()[self.at..].starts_with(b"null");
        if is_null {
            self.at += 4;
        }
        is_null
    }

    /// `null` as `None`, else what `read` reads.
    fn nullable<T>(&mut self, read: impl FnOnce(&mut Self) -> Option<T>) -> Option<Option<T>> {
        if self.null() {
            Some(None)
        } else {
            read(self).map(Some)
        }
    }

    /// An object, calling `field` for each key with the cursor before its value.
    fn object(&mut self, mut field: impl FnMut(&mut Self, &'a str) -> Option<()>) -> Option<()> {
        self.eat(b'{')?;
        if self.eat(b'}').is_some() {
            return Some(());
        }
        loop {
            let key = self.string()?;
            self.eat(b':')?;
            field(self, key)?;
            self.ws();
            match self.peek()? {
                b',' => self.at += 1,
                b'}' => {
                    self.at += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// An array, calling `item` with the cursor before each element.
    fn array(&mut self, mut item: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        self.eat(b'[')?;
        if self.eat(b']').is_some() {
            return Some(());
        }
        loop {
            item(self)?;
            self.ws();
            match self.peek()? {
                b',' => self.at += 1,
                b']' => {
                    self.at += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// A whole number in `u32` written as JSON writes it (no sign, fraction, exponent or
    /// leading zero); `None` otherwise.
    fn u32(&mut self) -> Option<u32> {
        self.ws();
        let digits = self.bytes()[self.at..].iter().take_while(|b| b.is_ascii_digit()).count();
        let s = &self.text[self.at..self.at + digits];
        if digits == 0 || (digits > 1 && s.starts_with('0')) {
            return None;
        }
        // What follows must end the number (a `.`, `e` or `E` would make it a float).
        if matches!(self.bytes().get(self.at + digits), Some(b'.' | b'e' | b'E')) {
            return None;
        }
        self.at += digits;
        s.parse().ok()
    }

    fn text_field(&mut self, seen: &mut bool) -> Option<Option<Cow<'a, str>>> {
        if std::mem::replace(seen, true) {
            return None;
        }
        self.nullable(|r| r.string().map(Cow::Borrowed))
    }

    fn count_field(&mut self, seen: &mut bool) -> Option<Option<u32>> {
        if std::mem::replace(seen, true) {
            return None;
        }
        self.nullable(Reader::u32)
    }

    fn choice(&mut self) -> Option<Choice<'a>> {
        let mut choice = Choice::default();
        let mut seen = [false; 3];
        self.object(|r, key| {
            match key {
                "text" => choice.text = r.text_field(&mut seen[0])?,
                "finish_reason" => choice.finish_reason = r.text_field(&mut seen[1])?,
                "delta" if !seen[2] => {
                    seen[2] = true;
                    choice.delta = r.nullable(Reader::delta)?;
                }
                "delta" => return None,
                _ => r.skip(0)?,
            }
            Some(())
        })?;
        Some(choice)
    }

    fn delta(&mut self) -> Option<Delta<'a>> {
        let mut delta = Delta::default();
        let mut seen = [false; 3];
        self.object(|r, key| {
            match key {
                "content" => delta.content = r.text_field(&mut seen[0])?,
                "reasoning_content" => delta.reasoning_content = r.text_field(&mut seen[1])?,
                "reasoning" => delta.reasoning = r.text_field(&mut seen[2])?,
                _ => r.skip(0)?,
            }
            Some(())
        })?;
        Some(delta)
    }

    fn usage(&mut self) -> Option<Usage> {
        let mut usage = Usage::default();
        let mut seen = [false; 4];
        self.object(|r, key| {
            match key {
                "completion_tokens" => usage.completion_tokens = r.count_field(&mut seen[0])?,
                "prompt_tokens" => usage.prompt_tokens = r.count_field(&mut seen[1])?,
                "completion_tokens_details" if !seen[2] => {
                    seen[2] = true;
                    usage.completion_tokens_details = r.nullable(|r| {
                        let mut details = CompletionTokensDetails::default();
                        let mut seen = false;
                        r.object(|r, key| match key {
                            "reasoning_tokens" => {
                                details.reasoning_tokens = r.count_field(&mut seen)?;
                                Some(())
                            }
                            _ => r.skip(0),
                        })?;
                        Some(details)
                    })?;
                }
                "prompt_tokens_details" if !seen[3] => {
                    seen[3] = true;
                    usage.prompt_tokens_details = r.nullable(|r| {
                        let mut details = PromptTokensDetails::default();
                        let mut seen = false;
                        r.object(|r, key| match key {
                            "cached_tokens" => {
                                details.cached_tokens = r.count_field(&mut seen)?;
                                Some(())
                            }
                            _ => r.skip(0),
                        })?;
                        Some(details)
                    })?;
                }
                "completion_tokens_details" | "prompt_tokens_details" => return None,
                _ => r.skip(0)?,
            }
            Some(())
        })?;
        Some(usage)
    }

    /// Skips any value, checked as JSON checks it; `None` where this reader cannot tell.
    fn skip(&mut self, depth: usize) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.ws();
        match self.peek()? {
            b'"' => self.string().map(|_| ()),
            b'{' => self.object(|r, _| r.skip(depth + 1)),
            b'[' => self.array(|r| r.skip(depth + 1)),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            _ => self.number(),
        }
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        self.bytes()[self.at..].starts_with(word).then(|| self.at += word.len())
    }

    /// A JSON number: `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`.
    fn number(&mut self) -> Option<()> {
        let b = self.bytes();
        let mut i = self.at;
        if b.get(i) == Some(&b'-') {
            i += 1;
        }
        let int = b[i..].iter().take_while(|c| c.is_ascii_digit()).count();
        if int == 0 || (int > 1 && b[i] == b'0') {
            return None;
        }
        i += int;
        if b.get(i) == Some(&b'.') {
            let frac = b[i + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
            if frac == 0 {
                return None;
            }
            i += 1 + frac;
        }
        if matches!(b.get(i), Some(b'e' | b'E')) {
            i += 1;
            if matches!(b.get(i), Some(b'+' | b'-')) {
                i += 1;
            }
            let exp = b[i..].iter().take_while(|c| c.is_ascii_digit()).count();
            if exp == 0 {
                return None;
            }
            i += exp;
        }
        self.at = i;
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// The parts of a chunk that can be compared (`RawValue` has no equality).
    fn view<'a>(c: &'a StreamChunk<'a>) -> (&'a [Choice<'a>], &'a Option<Usage>, Option<&'a str>, Option<&'a str>) {
        (&c.choices, &c.usage, c.timings.map(RawValue::get), c.error.map(RawValue::get))
    }

    /// Where `fast` answers, it answers what `serde_json` answers; returns whether it answered.
    fn check(data: &str) -> bool {
        let Some(fast) = fast(data) else { return false };
        match serde_json::from_str::<StreamChunk>(data) {
            Ok(serde) => assert_eq!(view(&fast), view(&serde), "{data}"),
            Err(e) => panic!("fast read {data:?}, serde_json failed: {e}"),
        }
        true
    }

    #[test]
    fn fast_equals_serde_json_on_what_servers_send() {
        // vLLM completions with continuous usage, llama.cpp chat, SGLang chat with reasoning,
        // the usage-only last chunk, a role-only first chunk and whitespace everywhere.
        let chunks = [
            r#"{"id":"cmpl-1","object":"text_completion","created":1764650000,"model":"m","choices":[{"index":0,"text":" tok17","logprobs":null,"finish_reason":null,"stop_reason":null}],"usage":{"prompt_tokens":256,"total_tokens":273,"completion_tokens":17}}"#,
            r#"{"choices":[{"finish_reason":null,"index":0,"delta":{"content":" Hello"}}],"created":1764650000,"id":"chatcmpl-x","model":"smollm2","system_fingerprint":"b1-abc","object":"chat.completion.chunk"}"#,
            r#"{"id":"1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"role":null,"content":null,"reasoning_content":"Let me","tool_calls":null},"logprobs":null,"finish_reason":null,"matched_stop":null}],"usage":null}"#,
            r#"{"id":"1","choices":[],"usage":{"prompt_tokens":4,"completion_tokens":9,"total_tokens":13,"completion_tokens_details":{"reasoning_tokens":6},"prompt_tokens_details":{"cached_tokens":2}}}"#,
            r#"{"choices":[{"delta":{"role":"assistant","content":""},"index":0,"finish_reason":null}]}"#,
            " { \"choices\" : [ { \"text\" : \"a b\" , \"finish_reason\" : \"length\" } ] ,\n\t\"usage\" : { \"completion_tokens\" : 0 } } ",
            r#"{"choices":[{"text":"x","extra":{"a":[1,-2.5e-3,true,false,null,{"b":[]}]}},{"text":"y"}],"n":-0.0}"#,
        ];
        for c in chunks {
            assert!(check(c), "the fast reader gave up on {c}");
        }
    }

    #[test]
    fn fast_gives_up_where_it_cannot_tell() {
        for c in [
            r#"{"choices":[{"text":"a\"b"}]}"#,                 // an escape
            "{\"choices\":[{\"text\":\"a\u{1}b\"}]}",           // a control character (invalid)
            r#"{"choices":[{"text":"a"}],"choices":[]}"#,       // a repeated key (invalid)
            r#"{"usage":{"completion_tokens":1.0}}"#,           // a float where a count goes (invalid)
            r#"{"usage":{"completion_tokens":-1}}"#,            // a negative count (invalid)
            r#"{"usage":{"completion_tokens":4294967296}}"#,    // past u32 (invalid)
            r#"{"usage":{"completion_tokens":01}}"#,            // a leading zero (invalid)
            r#"{"error":{"message":"boom"}}"#,                  // an error chunk
            r#"{"choices":[],"timings":{"predicted_ms":1.5}}"#, // llama.cpp's timings
            r#"{"choices":[["a",null,null]]}"#,                 // a choice as an array
            r#"{"choices":[{"text":"a"}]} x"#,                  // trailing bytes (invalid)
            r#"{"choices":[{"text":"a"}],}"#,                   // a trailing comma (invalid)
            r#"{"n":1.}"#,                                      // a bad number (invalid)
        ] {
            assert!(fast(c).is_none(), "{c}");
            // `parse` still answers as serde_json does.
            assert_eq!(parse(c).is_ok(), serde_json::from_str::<StreamChunk>(c).is_ok(), "{c}");
        }
    }

    /// Whether `chunk` is an object without `error` or `timings` whose `choices` are objects,
    /// each `delta` and `usage` (and its details) an object or null: serde_json also reads an
    /// array there (a struct's fields in order), the fast reader gives those up.
    fn objects_where_read(chunk: &serde_json::Value) -> bool {
        use serde_json::Value;
        let object_or_null = |v: Option<&Value>| v.is_none_or(|v| v.is_object() || v.is_null());
        let Some(top) = chunk.as_object() else { return false };
        let choices_ok = top
            .get("choices")
            .and_then(Value::as_array)
            .is_none_or(|choices| choices.iter().all(|c| c.is_object() && object_or_null(c.get("delta"))));
        let usage = top.get("usage");
        let usage_ok = object_or_null(usage)
            && usage.and_then(Value::as_object).is_none_or(|u| {
                object_or_null(u.get("completion_tokens_details")) && object_or_null(u.get("prompt_tokens_details"))
            });
        !top.contains_key("error") && !top.contains_key("timings") && choices_ok && usage_ok
    }

    /// `{"k":v,...}` from (key, value) pairs, keys possibly repeated, with odd whitespace.
    fn object_of(fields: Vec<(&str, String, &str)>) -> String {
        let body: Vec<String> = fields.iter().map(|(k, v, w)| format!("\"{k}\"{w}:{w}{v}")).collect();
        format!("{{{}}}", body.join(","))
    }

    fn leaf() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("null".to_string()),
            Just("true".to_string()),
            Just("0".to_string()),
            Just("17".to_string()),
            Just("017".to_string()),
            Just("-3".to_string()),
            Just("-0".to_string()),
            Just("1.5".to_string()),
            Just("2e3".to_string()),
            Just("1.".to_string()),
            Just("4294967295".to_string()),
            Just("4294967296".to_string()),
            Just("\"\"".to_string()),
            Just("\" tok7\"".to_string()),
            Just("\"é ✓\"".to_string()),
            Just("\"a\\nb\"".to_string()),
            Just("[]".to_string()),
            Just("{}".to_string()),
            "[a-z ]{0,6}".prop_map(|s| format!("\"{s}\"")),
        ]
    }

    /// Chunks as servers shape them (choices, delta, usage and its details), every value drawn
    /// from [`leaf`] (valid or not), keys repeated at times.
    fn shaped_chunk() -> impl Strategy<Value = String> {
        let ws = prop_oneof![Just(""), Just(""), Just(""), Just(" "), Just("\n ")];
        let field = |keys: Vec<&'static str>, value: BoxedStrategy<String>, ws: BoxedStrategy<&'static str>| {
            (proptest::sample::select(keys), value, ws)
        };
        let ws = ws.boxed();
        let delta = proptest::collection::vec(
            field(vec!["content", "reasoning_content", "reasoning", "role"], leaf().boxed(), ws.clone()),
            0..4,
        )
        .prop_map(object_of);
        let details = |key: &'static str, ws: BoxedStrategy<&'static str>| {
            proptest::collection::vec(field(vec![key, "x"], leaf().boxed(), ws), 0..3).prop_map(object_of)
        };
        let choice = proptest::collection::vec(
            prop_oneof![
                field(vec!["text", "finish_reason", "index", "logprobs"], leaf().boxed(), ws.clone()),
                field(vec!["delta"], prop_oneof![delta.clone(), leaf()].boxed(), ws.clone()),
            ],
            0..4,
        )
        .prop_map(object_of);
        let usage = proptest::collection::vec(
            prop_oneof![
                field(vec!["completion_tokens", "prompt_tokens", "total_tokens"], leaf().boxed(), ws.clone()),
                field(
                    vec!["completion_tokens_details"],
                    prop_oneof![details("reasoning_tokens", ws.clone()), leaf()].boxed(),
                    ws.clone()
                ),
                field(
                    vec!["prompt_tokens_details"],
                    prop_oneof![details("cached_tokens", ws.clone()), leaf()].boxed(),
                    ws.clone()
                ),
            ],
            0..5,
        )
        .prop_map(object_of);
        let choices = proptest::collection::vec(prop_oneof![4 => choice, 1 => leaf()], 0..3)
            .prop_map(|items| format!("[{}]", items.join(",")));
        proptest::collection::vec(
            prop_oneof![
                field(vec!["choices"], prop_oneof![4 => choices, 1 => leaf()].boxed(), ws.clone()),
                field(vec!["usage"], prop_oneof![4 => usage, 1 => leaf()].boxed(), ws.clone()),
                field(vec!["id", "model", "created", "error", "timings"], leaf().boxed(), ws.clone()),
            ],
            0..5,
        )
        .prop_map(object_of)
    }

    /// Text shaped like chunks, including what serde_json refuses: protocol keys and others,
    /// values of every kind and some that are not JSON, repeated keys, odd whitespace.
    fn chunk_text() -> impl Strategy<Value = String> {
        let key = prop_oneof![
            Just("choices"),
            Just("usage"),
            Just("text"),
            Just("delta"),
            Just("content"),
            Just("reasoning_content"),
            Just("reasoning"),
            Just("finish_reason"),
            Just("completion_tokens"),
            Just("prompt_tokens"),
            Just("completion_tokens_details"),
            Just("reasoning_tokens"),
            Just("prompt_tokens_details"),
            Just("cached_tokens"),
            Just("id"),
            Just("x"),
        ];
        let leaf = prop_oneof![
            Just("null".to_string()),
            Just("true".to_string()),
            Just("false".to_string()),
            Just("0".to_string()),
            Just("17".to_string()),
            Just("017".to_string()),
            Just("-3".to_string()),
            Just("1.5".to_string()),
            Just("2e3".to_string()),
            Just("1.".to_string()),
            Just("4294967295".to_string()),
            Just("4294967296".to_string()),
            Just("\"\"".to_string()),
            Just("\"tok 7\"".to_string()),
            Just("\"é ✓\"".to_string()),
            Just("nul".to_string()),
            "[a-z ]{0,6}".prop_map(|s| format!("\"{s}\"")),
        ];
        let ws = prop_oneof![Just(""), Just(""), Just(" "), Just("\n"), Just("\t ")];
        leaf.prop_recursive(4, 40, 5, move |inner| {
            let ws = ws.clone();
            prop_oneof![
                (proptest::collection::vec((ws.clone(), inner.clone()), 0..4)).prop_map(|items| format!(
                    "[{}]",
                    items.iter().map(|(w, v)| format!("{w}{v}")).collect::<Vec<_>>().join(",")
                )),
                (proptest::collection::vec((key.clone(), ws.clone(), inner), 0..5)).prop_map(|fields| format!(
                    "{{{}}}",
                    fields.iter().map(|(k, w, v)| format!("\"{k}\"{w}:{v}")).collect::<Vec<_>>().join(",")
                )),
            ]
        })
    }

    /// The generated chunks reach both sides: many that the fast reader reads, many it gives
    /// up on (a generator that only reached one side would prove nothing).
    #[test]
    fn generated_chunks_reach_both_sides() {
        use proptest::strategy::ValueTree;
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        let (mut read, mut serde_ok, total) = (0, 0, 2000);
        for _ in 0..total {
            let text = prop_oneof![chunk_text(), shaped_chunk()].new_tree(&mut runner).unwrap().current();
            read += usize::from(check(&text));
            serde_ok += usize::from(serde_json::from_str::<StreamChunk>(&text).is_ok());
        }
        assert!(read > total / 10 && total - read > total / 10, "fast read {read} of {total}");
        assert!(serde_ok > read, "serde_json read {serde_ok}, fast {read}");
    }

    proptest! {
        // A fixed seed, as the other property tests (CI replays the same cases every run).
        #![proptest_config(ProptestConfig {
            cases: 2048,
            rng_seed: proptest::test_runner::RngSeed::Fixed(0x0c4_0ce),
            ..ProptestConfig::default()
        })]

        /// Any chunk-like text: where the fast reader answers, serde_json answers the same.
        #[test]
        fn fast_equals_serde_json_on_generated_chunks(text in prop_oneof![chunk_text(), shaped_chunk()]) {
            check(&text);
        }

        /// The same on serde_json's own rendering of generated chunks (the fast reader must
        /// answer there unless the text holds an escape).
        #[test]
        fn fast_reads_serde_jsons_own_chunks(text in prop_oneof![chunk_text(), shaped_chunk()]) {
            if let Ok(value) = serde_json::from_str::<serde_json::Value>(&text) {
                let rendered = value.to_string();
                let read = check(&rendered);
                // Whatever serde_json reads and renders without escapes, with objects where optbench
                // reads objects, the fast reader reads.
                if serde_json::from_str::<StreamChunk>(&rendered).is_ok() && !rendered.contains('\\') && objects_where_read(&value) {
                    prop_assert!(read, "gave up on {}", rendered);
                }
            }
        }
    }
}
