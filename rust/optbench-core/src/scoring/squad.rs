//! SQuAD v2 exact match and F1, equal to the official evaluation script
//! (`evaluate-v2.0.py`) with Python's string semantics kept:
//!
//! - `str.lower()`: full Unicode lower-casing (Rust's `to_lowercase` applies the same mappings,
//!   final sigma included);
//! - punctuation removal deletes only the 32 ASCII characters of `string.punctuation`;
//! - articles are removed with `re.sub(r"\b(a|an|the)\b", " ", text)` under `re.UNICODE`: a
//!   match is a whole run of Python word characters (letters `L*`, numbers `N*`, `_`);
//! - whitespace is Python's `str.split()` set: Unicode `White_Space` plus `\x1c`..`\x1f`;
//! - gold answers whose normal form is empty are dropped; a question with none left (an
//!   unanswerable one) has the single gold answer `""`; scores are the max over gold answers.

use unicode_general_category::{get_general_category, GeneralCategory as Gc};

/// `string.punctuation`.
const PUNCTUATION: &str = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~";

/// Python's `str.isspace()` (what `str.split()` splits on).
pub fn is_python_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python `re`'s `\w` for `str` patterns: alphanumeric (`str.isalnum()`) or `_`.
fn is_python_word(c: char) -> bool {
    if c == '_' {
        return true;
    }
    matches!(
        get_general_category(c),
        Gc::UppercaseLetter
            | Gc::LowercaseLetter
            | Gc::TitlecaseLetter
            | Gc::ModifierLetter
            | Gc::OtherLetter
            | Gc::DecimalNumber
            | Gc::LetterNumber
            | Gc::OtherNumber
    )
}

/// ASCII bytes deleted by punctuation removal (`string.punctuation`).
const ASCII_PUNCT: [bool; 128] = {
    let mut t = [false; 128];
    let p = PUNCTUATION.as_bytes();
    let mut i = 0;
    while i < p.len() {
        t[p[i] as usize] = true;
        i += 1;
    }
    t
};

/// Python's `str.isspace()` for an ASCII byte: `\t\n\x0b\x0c\r`, `\x1c`..`\x1f` and space.
fn is_ascii_python_space(b: u8) -> bool {
    matches!(b, b'\t'..=b'\r' | 0x1c..=0x20)
}

fn is_article(word: &[u8]) -> bool {
    matches!(word, b"a" | b"an" | b"the")
}

/// Builds a normal form into `out` one character at a time: runs of word characters that are
/// articles become separators, whitespace runs become one space, no leading or trailing space
/// (the same string as the official replace-then-`" ".join(text.split())`).
struct NormalFormWriter<'a> {
    out: &'a mut String,
    /// A separator is due before the next emitted character.
    pending_space: bool,
    /// Where the current word run starts in `out` (before its separator), if in one.
    run_mark: Option<usize>,
    /// Where the current word run's own characters start in `out`.
    run_start: usize,
}

impl<'a> NormalFormWriter<'a> {
    fn new(out: &'a mut String) -> Self {
        out.clear();
        NormalFormWriter { out, pending_space: false, run_mark: None, run_start: 0 }
    }

    fn emit(&mut self, c: char) {
        if self.pending_space && !self.out.is_empty() {
            self.out.push(' ');
        }
        self.pending_space = false;
        self.out.push(c);
    }

    fn word_char(&mut self, c: char) {
        if self.run_mark.is_none() {
            let mark = self.out.len();
            self.run_mark = Some(mark);
            self.emit(c);
            self.run_start = self.out.len() - c.len_utf8();
        } else {
            self.out.push(c);
        }
    }

    /// Ends a word run, if in one: an article is replaced by a separator.
    fn end_run(&mut self) {
        if let Some(mark) = self.run_mark.take() {
            if is_article(&self.out.as_bytes()[self.run_start..]) {
                self.out.truncate(mark);
                self.pending_space = true;
            }
        }
    }

    fn space(&mut self) {
        self.end_run();
        self.pending_space = true;
    }

    fn other(&mut self, c: char) {
        self.end_run();
        self.emit(c);
    }

    fn finish(mut self) {
        self.end_run();
    }
}

/// [`normalize_answer`] into a reused buffer.
pub fn normalize_answer_into(s: &str, out: &mut String) {
    if s.is_ascii() {
        // ASCII: lower-casing is per byte, word characters are the alphanumerics (`_` is
        // punctuation, deleted before the article step), spaces are Python's ASCII spaces.
        let mut w = NormalFormWriter::new(out);
        for &b in s.as_bytes() {
            let b = b.to_ascii_lowercase();
            if ASCII_PUNCT[b as usize] {
                continue;
            }
            if b.is_ascii_alphanumeric() {
                w.word_char(b as char);
            } else if is_ascii_python_space(b) {
                w.space();
            } else {
                w.other(b as char);
            }
        }
        w.finish();
        return;
    }
    let lowered = s.to_lowercase();
    let mut w = NormalFormWriter::new(out);
    for c in lowered.chars() {
        if c.is_ascii() && ASCII_PUNCT[c as usize] {
            continue;
        }
        if is_python_word(c) {
            w.word_char(c);
        } else if is_python_space(c) {
            w.space();
        } else {
            w.other(c);
        }
    }
    w.finish();
}

/// The official `normalize_answer`: lower, remove punctuation, remove articles, fix whitespace.
pub fn normalize_answer(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    normalize_answer_into(s, &mut out);
    out
}

/// The official `get_tokens`: `[]` for an empty string, else the normal form split on whitespace.
pub fn get_tokens(s: &str) -> Vec<String> {
    if s.is_empty() {
        return Vec::new();
    }
    normalize_answer(s).split(' ').filter(|t| !t.is_empty()).map(str::to_string).collect()
}

/// The official `compute_exact`: 1.0 when the normal forms are equal.
pub fn compute_exact(gold: &str, pred: &str) -> f64 {
    f64::from(u8::from(normalize_answer(gold) == normalize_answer(pred)))
}

/// The tokens of a normal form, sorted (for counting common tokens by merging).
fn sorted_tokens(normal: &str) -> Vec<&str> {
    let mut toks: Vec<&str> = if normal.is_empty() { Vec::new() } else { normal.split(' ').collect() };
    toks.sort_unstable();
    toks
}

/// F1 of two sorted token lists, as the official `compute_f1` computes it.
fn f1_of_sorted(gold: &[&str], pred: &[&str]) -> f64 {
    if gold.is_empty() || pred.is_empty() {
        return f64::from(u8::from(gold.len() == pred.len()));
    }
    // The multiset intersection size: sum over tokens of min(count in gold, count in pred).
    let (mut i, mut j, mut num_same) = (0, 0, 0usize);
    while i < gold.len() && j < pred.len() {
        match gold[i].cmp(pred[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                num_same += 1;
                i += 1;
                j += 1;
            }
        }
    }
    if num_same == 0 {
        return 0.0;
    }
    let precision = num_same as f64 / pred.len() as f64;
    let recall = num_same as f64 / gold.len() as f64;
    (2.0 * precision * recall) / (precision + recall)
}

/// The official `compute_f1`: token-overlap F1 of the normal forms (1 when both are empty).
pub fn compute_f1(gold: &str, pred: &str) -> f64 {
    let (g, p) = (normalize_answer(gold), normalize_answer(pred));
    f1_of_sorted(&sorted_tokens(&g), &sorted_tokens(&p))
}

/// One question's scores.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SquadScore {
    /// Exact match, 0 or 1.
    pub exact: f64,
    /// F1 in 0..=1.
    pub f1: f64,
    /// The question has at least one gold answer (the official `qid_to_has_ans`).
    pub has_answer: bool,
}

/// Scores one prediction against its raw gold answer texts (empty for an unanswerable question).
/// `no_answer_phrase`: a prediction whose normal form equals this phrase's is read as the empty
/// answer (for prompts that ask the model to say e.g. "unanswerable").
///
/// Each text is normalised once (the official script normalises each several times; the
/// results are the same).
pub fn score_squad_v2(prediction: &str, gold_answers: &[String], no_answer_phrase: Option<&str>) -> SquadScore {
    let mut pred = normalize_answer(prediction);
    if let Some(phrase) = no_answer_phrase {
        if !phrase.is_empty() && pred == normalize_answer(phrase) {
            pred.clear(); // the empty answer's normal form
        }
    }
    let pred_toks = sorted_tokens(&pred);
    let (mut exact, mut f1, mut any_gold) = (0.0f64, 0.0f64, false);
    let mut gold = String::new();
    for answer in gold_answers {
        normalize_answer_into(answer, &mut gold);
        if gold.is_empty() {
            continue; // dropped, as the official script drops answers with an empty normal form
        }
        any_gold = true;
        exact = exact.max(f64::from(u8::from(gold == pred)));
        f1 = f1.max(f1_of_sorted(&sorted_tokens(&gold), &pred_toks));
    }
    if !any_gold {
        // Unanswerable (or only empty answers): the single gold answer "".
        exact = f64::from(u8::from(pred.is_empty()));
        f1 = exact;
    }
    SquadScore { exact, f1, has_answer: !gold_answers.is_empty() }
}

/// The official script's summary, in percent (`exact`, `f1`, `total`, and `HasAns_*` /
/// `NoAns_*` when such questions exist).
#[derive(Debug, Clone, PartialEq)]
pub struct SquadSummary {
    /// 100 × mean exact match.
    pub exact: f64,
    /// 100 × mean F1.
    pub f1: f64,
    /// Number of questions.
    pub total: usize,
    /// (exact, f1, count) over answerable questions.
    pub has_ans: Option<(f64, f64, usize)>,
    /// (exact, f1, count) over unanswerable questions.
    pub no_ans: Option<(f64, f64, usize)>,
}

/// Aggregates per-question scores as the official `make_eval_dict` does (na_prob threshold 1.0,
/// i.e. no threshold applied).
pub fn summarize_squad(scores: &[SquadScore]) -> SquadSummary {
    let agg = |sel: &dyn Fn(&SquadScore) -> bool| -> Option<(f64, f64, usize)> {
        let chosen: Vec<&SquadScore> = scores.iter().filter(|s| sel(s)).collect();
        if chosen.is_empty() {
            return None;
        }
        let n = chosen.len() as f64;
        Some((
            100.0 * chosen.iter().map(|s| s.exact).sum::<f64>() / n,
            100.0 * chosen.iter().map(|s| s.f1).sum::<f64>() / n,
            chosen.len(),
        ))
    };
    let (exact, f1, total) = agg(&|_| true).unwrap_or((0.0, 0.0, 0));
    SquadSummary { exact, f1, total, has_ans: agg(&|s| s.has_answer), no_ans: agg(&|s| !s.has_answer) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gold(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn normalisation_follows_the_official_steps() {
        assert_eq!(normalize_answer("The  Cat, a dog & AN emu!"), "cat dog emu");
        // Punctuation inside words is deleted, joining the parts.
        assert_eq!(normalize_answer("rock'n'roll"), "rocknroll");
        assert_eq!(normalize_answer("U.S.A."), "usa");
        // Articles only as whole words; digits are word characters; `_` is punctuation here.
        assert_eq!(normalize_answer("theatre another the_a a1 the2"), "theatre another thea a1 the2");
        // Punctuation goes first, so "a-team" is one word, not an article.
        assert_eq!(normalize_answer("a-team"), "ateam");
        // Non-ASCII punctuation is kept; accents stay; Unicode lower-casing.
        assert_eq!(normalize_answer("«Élan» – Ärger"), "«élan» – ärger");
        // Non-breaking and ideographic spaces split; \x1c..\x1f are spaces to Python.
        assert_eq!(normalize_answer("a\u{a0}b\u{3000}c\u{1f}d"), "b c d");
        // A combining accent is not a word character in Python: "the" before it is a word.
        assert_eq!(normalize_answer("the\u{301} end"), "\u{301} end");
        // Python's lower() applies the final-sigma rule, as Rust's does.
        assert_eq!(normalize_answer("ΟΔΟΣ ΣΟΦΟΣ"), "\u{3bf}\u{3b4}\u{3bf}\u{3c2} \u{3c3}\u{3bf}\u{3c6}\u{3bf}\u{3c2}");
    }

    #[test]
    fn ascii_and_unicode_paths_agree() {
        // Articles next to non-word, non-space characters become separators.
        assert_eq!(normalize_answer("x\x01a\x01y"), "x\x01 \x01y");
        assert_eq!(normalize_answer("«a»"), "« »");
        assert_eq!(normalize_answer("  The  "), "");
        assert_eq!(normalize_answer("a an the"), "");
        assert_eq!(normalize_answer("\x1cthe\x1dcat\x1e"), "cat");
        for s in ["x\x01a\x01y é", "The cat\tsat é", "an apple é", "theé a é"] {
            let ascii = s.trim_end_matches(" é");
            assert_eq!(normalize_answer(s), format!("{} é", normalize_answer(ascii)).trim_start(), "{s:?}");
        }
    }

    #[test]
    fn f1_edge_cases() {
        assert_eq!(compute_f1("", ""), 1.0);
        assert_eq!(compute_f1("", "something"), 0.0);
        assert_eq!(compute_f1("the", ""), 1.0, "both normalise to no tokens");
        assert_eq!(compute_f1("cat sat", "dog ran"), 0.0);
        // Repeated tokens count with multiplicity.
        let f1 = compute_f1("x x y", "x");
        assert!((f1 - 0.5).abs() < 1e-15, "{f1}"); // p = 1, r = 1/3 -> 0.5
        let f1 = compute_f1("x y", "x x x");
        assert!((f1 - 0.4).abs() < 1e-15, "{f1}"); // common 1: p = 1/3, r = 1/2 -> 0.4
    }

    #[test]
    fn max_over_golds_and_unanswerable_questions() {
        let s = score_squad_v2("Denver Broncos", &gold(&["Broncos", "Denver Broncos"]), None);
        assert_eq!((s.exact, s.f1, s.has_answer), (1.0, 1.0, true));
        // Unanswerable: gold is "", so only an empty prediction scores.
        let s = score_squad_v2("", &[], None);
        assert_eq!((s.exact, s.f1, s.has_answer), (1.0, 1.0, false));
        let s = score_squad_v2("Paris", &[], None);
        assert_eq!((s.exact, s.f1), (0.0, 0.0));
        // "unanswerable" maps to the empty answer only when asked.
        assert_eq!(score_squad_v2("Unanswerable.", &[], Some("unanswerable")).exact, 1.0);
        assert_eq!(score_squad_v2("Unanswerable.", &[], None).exact, 0.0);
        // A gold answer that normalises to nothing is dropped.
        let s = score_squad_v2("", &gold(&["the"]), None);
        assert_eq!((s.exact, s.has_answer), (1.0, true));
    }

    #[test]
    fn summary_splits_has_and_no_answer() {
        let scores = [
            SquadScore { exact: 1.0, f1: 1.0, has_answer: true },
            SquadScore { exact: 0.0, f1: 0.5, has_answer: true },
            SquadScore { exact: 1.0, f1: 1.0, has_answer: false },
        ];
        let s = summarize_squad(&scores);
        assert_eq!(s.total, 3);
        assert!((s.exact - 200.0 / 3.0).abs() < 1e-12);
        assert!((s.f1 - 250.0 / 3.0).abs() < 1e-12);
        assert_eq!(s.has_ans, Some((50.0, 75.0, 2)));
        assert_eq!(s.no_ans, Some((100.0, 100.0, 1)));
    }
}
