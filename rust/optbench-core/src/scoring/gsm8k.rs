//! GSM8K final-answer extraction and checking, in four named modes:
//!
//! - `marked-or-last`: the number after `####`, else after "answer is", else the last number
//!   in the text; commas, `$` and a trailing period removed; compared numerically with a
//!   relative tolerance of 1e-6. (`default` is its former name, still accepted.)
//! - `official` (openai/grade-school-math `extract_answer`): the first `#### (\-?[0-9\.\,]+)`,
//!   stripped, commas removed, else `[invalid]`; compared as strings.
//! - `lmeval-strict` / `lmeval-flexible` (lm-evaluation-harness `gsm8k.yaml` filters): strict is
//!   the first `#### (\-?[0-9\.\,]+)`; flexible is the last match of
//!   `(-?[$0-9.,]{2,})|(-?[0-9]+)`; `[invalid]` when nothing matches. Compared with the task's
//!   `exact_match` settings: the regexes `,`, `\$`, `(?s).*#### `, `\.$` are deleted from
//!   prediction and target, then lower-cased, then compared as strings.

use std::sync::OnceLock;

use regex::Regex;

use crate::error::{CoreError, Result};

/// What lm-evaluation-harness and the official script return when nothing matches.
pub const INVALID: &str = "[invalid]";

/// An extraction mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gsm8kMode {
    /// `####`, then "answer is", then the last number; numeric comparison.
    MarkedOrLast,
    /// The GSM8K repository's grader.
    Official,
    /// lm-evaluation-harness `strict-match`.
    LmevalStrict,
    /// lm-evaluation-harness `flexible-extract`.
    LmevalFlexible,
}

impl Gsm8kMode {
    /// Parses `marked-or-last`, `official`, `lmeval-strict` or `lmeval-flexible` (and
    /// `default`, the former name of `marked-or-last`).
    pub fn parse(name: &str) -> Result<Gsm8kMode> {
        match name {
            "marked-or-last" | "default" => Ok(Gsm8kMode::MarkedOrLast),
            "official" => Ok(Gsm8kMode::Official),
            "lmeval-strict" => Ok(Gsm8kMode::LmevalStrict),
            "lmeval-flexible" => Ok(Gsm8kMode::LmevalFlexible),
            other => Err(CoreError::config(format!(
                "gsm8k mode must be 'marked-or-last', 'official', 'lmeval-strict' or 'lmeval-flexible', got {other:?}"
            ))),
        }
    }
}

fn re(cell: &'static OnceLock<Regex>, pattern: &str) -> &'static Regex {
    cell.get_or_init(|| Regex::new(pattern).expect("valid regex"))
}

fn hash_answer() -> &'static Regex {
    static R: OnceLock<Regex> = OnceLock::new();
    re(&R, r"#### (\-?[0-9\.\,]+)")
}

/// A number as people write it: optional sign and `$`, digits with thousands commas, decimals.
const NUMBER: &str = r"-?\$?(?:[0-9][0-9,]*(?:\.[0-9]+)?|\.[0-9]+)";

fn default_hash() -> &'static Regex {
    static R: OnceLock<Regex> = OnceLock::new();
    re(&R, &format!(r"####\s*({NUMBER})"))
}

fn default_answer_is() -> &'static Regex {
    static R: OnceLock<Regex> = OnceLock::new();
    re(&R, &format!(r"(?i)answer is\s*:?\s*({NUMBER})"))
}

fn default_number() -> &'static Regex {
    static R: OnceLock<Regex> = OnceLock::new();
    re(&R, NUMBER)
}

fn flexible() -> &'static Regex {
    static R: OnceLock<Regex> = OnceLock::new();
    re(&R, r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
}

fn clean_default(s: &str) -> String {
    let s: String = s.chars().filter(|c| *c != ',' && *c != '$').collect();
    s.strip_suffix('.').unwrap_or(&s).to_string()
}

/// Extracts the final answer of `text` in `mode` (`[invalid]` when the mode finds none).
pub fn gsm8k_extract(text: &str, mode: Gsm8kMode) -> String {
    match mode {
        Gsm8kMode::MarkedOrLast => {
            let found = default_hash()
                .captures(text)
                .or_else(|| default_answer_is().captures_iter(text).last())
                .map(|c| c[1].to_string())
                .or_else(|| default_number().find_iter(text).last().map(|m| m.as_str().to_string()));
            found.map(|s| clean_default(&s)).unwrap_or_else(|| INVALID.to_string())
        }
        Gsm8kMode::Official => match hash_answer().captures(text) {
            Some(c) => c[1].trim().replace(',', ""),
            None => INVALID.to_string(),
        },
        Gsm8kMode::LmevalStrict => match hash_answer().captures(text) {
            Some(c) => c[1].to_string(),
            None => INVALID.to_string(),
        },
        Gsm8kMode::LmevalFlexible => match flexible().captures_iter(text).last() {
            // findall with groups yields tuples; the filter keeps the first non-empty group.
            Some(c) => c.get(1).or_else(|| c.get(2)).map(|m| m.as_str().to_string()).unwrap_or_default(),
            None => INVALID.to_string(),
        },
    }
}

/// lm-evaluation-harness's `exact_match` normalisation for gsm8k.
fn lmeval_normalize(s: &str) -> String {
    static UPTO_HASH: OnceLock<Regex> = OnceLock::new();
    let mut out: String = s.replace([',', '$'], "");
    out = re(&UPTO_HASH, r"(?s)^.*#### ").replace(&out, "").into_owned();
    // Python's `\.$` also matches a period right before a final newline.
    if out.ends_with(".\n") {
        out.remove(out.len() - 2);
    } else if out.ends_with('.') {
        out.pop();
    }
    out.to_lowercase()
}

/// Parses a cleaned number; `None` when it is not one.
fn parse_number(s: &str) -> Option<f64> {
    let cleaned = clean_default(s.trim());
    cleaned.parse::<f64>().ok().filter(|v| v.is_finite())
}

/// Whether `prediction` (a model's output) answers like `gold` (the final answer string, e.g.
/// GSM8K's text after `####`, or the whole GSM8K solution).
pub fn gsm8k_correct(prediction: &str, gold: &str, mode: Gsm8kMode) -> bool {
    let extracted = gsm8k_extract(prediction, mode);
    match mode {
        Gsm8kMode::MarkedOrLast => {
            let gold_value =
                if gold.contains("####") { gsm8k_extract(gold, Gsm8kMode::MarkedOrLast) } else { gold.to_string() };
            match (parse_number(&extracted), parse_number(&gold_value)) {
                (Some(p), Some(g)) => (p - g).abs() <= 1e-6 * g.abs().max(1.0),
                _ => false,
            }
        }
        Gsm8kMode::Official => {
            let gold_value = if gold.contains("####") {
                gsm8k_extract(gold, Gsm8kMode::Official)
            } else {
                gold.trim().replace(',', "")
            };
            extracted != INVALID && extracted == gold_value
        }
        Gsm8kMode::LmevalStrict | Gsm8kMode::LmevalFlexible => {
            // The task's target is `answer.split('####')[-1].strip()`.
            let target = gold.rsplit("####").next().unwrap_or(gold).trim();
            lmeval_normalize(&extracted) == lmeval_normalize(target)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Gsm8kMode::*;

    #[test]
    fn marked_or_last_chain() {
        assert_eq!(gsm8k_extract("so 3+4=7\n#### 1,234", MarkedOrLast), "1234");
        assert_eq!(gsm8k_extract("The answer is $1,000.", MarkedOrLast), "1000");
        assert_eq!(gsm8k_extract("answer is 5 but the answer is -3.5.", MarkedOrLast), "-3.5");
        assert_eq!(gsm8k_extract("I got 12 apples and 7 pears, so 19.", MarkedOrLast), "19");
        assert_eq!(gsm8k_extract("no digits here", MarkedOrLast), INVALID);
        assert!(gsm8k_correct("It costs $18.", "18", MarkedOrLast));
        assert!(gsm8k_correct("#### 18.0", "18", MarkedOrLast));
        assert!(gsm8k_correct("total: 0.5", "0.50", MarkedOrLast));
        assert!(!gsm8k_correct("total: 17", "18", MarkedOrLast));
        assert!(gsm8k_correct("x #### -4", "Janet... \n#### -4", MarkedOrLast));
        assert!(!gsm8k_correct("nothing", "18", MarkedOrLast));
    }

    #[test]
    fn official_grader() {
        assert_eq!(gsm8k_extract("blah\n#### 1,234", Official), "1234");
        assert_eq!(gsm8k_extract("#### 3 then #### 4", Official), "3");
        assert_eq!(gsm8k_extract("The answer is 7", Official), INVALID);
        assert!(gsm8k_correct("#### 18", "x\n#### 18", Official));
        // String comparison: 18.0 is not 18 for the official grader.
        assert!(!gsm8k_correct("#### 18.0", "18", Official));
    }

    #[test]
    fn lmeval_filters_and_exact_match() {
        assert_eq!(gsm8k_extract("#### -1,5.", LmevalStrict), "-1,5.");
        assert_eq!(gsm8k_extract("The answer is 42", LmevalStrict), INVALID);
        assert_eq!(gsm8k_extract("I have 3 cats and $1,200.50 dollars.", LmevalFlexible), "$1,200.50");
        assert_eq!(gsm8k_extract("a 5 b 6", LmevalFlexible), "6");
        assert_eq!(gsm8k_extract("x", LmevalFlexible), INVALID);
        assert!(gsm8k_correct("so #### 1,234.", "... #### 1234", LmevalStrict));
        assert!(gsm8k_correct("The total is $18.", "#### 18", LmevalFlexible));
        assert!(!gsm8k_correct("The total is 18.0", "#### 18", LmevalFlexible));
        assert!(!gsm8k_correct("no hash 18", "#### 18", LmevalStrict));
        assert!(Gsm8kMode::parse("loose").is_err());
    }
}
