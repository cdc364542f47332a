//! Synthetic load-test prompts of a target length in the server's tokens.
//!
//! Each prompt is a different seeded sequence of common English words (so no two prompts share
//! more than a handful of leading tokens and a prefix cache cannot serve them for free),
//! trimmed by binary search on the word count to the longest text whose token count does not
//! exceed the target.

use futures_util::stream::{self, StreamExt, TryStreamExt};
use rand::seq::IndexedRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::error::{CoreError, Result};
use crate::tokens::TokenCounter;

/// Common English words; each is one or two tokens in typical BPE vocabularies.
const WORDS: &[&str] = &[
    "time",
    "year",
    "people",
    "way",
    "day",
    "man",
    "thing",
    "woman",
    "life",
    "child",
    "world",
    "school",
    "state",
    "family",
    "student",
    "group",
    "country",
    "problem",
    "hand",
    "part",
    "place",
    "case",
    "week",
    "company",
    "system",
    "program",
    "question",
    "work",
    "government",
    "number",
    "night",
    "point",
    "home",
    "water",
    "room",
    "mother",
    "area",
    "money",
    "story",
    "fact",
    "month",
    "lot",
    "right",
    "study",
    "book",
    "eye",
    "job",
    "word",
    "business",
    "issue",
    "side",
    "kind",
    "head",
    "house",
    "service",
    "friend",
    "father",
    "power",
    "hour",
    "game",
    "line",
    "end",
    "member",
    "law",
    "car",
    "city",
    "community",
    "name",
    "president",
    "team",
    "minute",
    "idea",
    "kid",
    "body",
    "information",
    "back",
    "parent",
    "face",
    "others",
    "level",
    "office",
    "door",
    "health",
    "person",
    "art",
    "war",
    "history",
    "party",
    "result",
    "change",
    "morning",
    "reason",
    "research",
    "girl",
    "guy",
    "moment",
    "air",
    "teacher",
    "force",
    "education",
    "river",
    "garden",
    "bridge",
    "window",
    "market",
    "village",
    "mountain",
    "forest",
    "ocean",
    "island",
    "train",
    "station",
    "letter",
    "music",
    "picture",
    "paper",
    "table",
    "chair",
    "kitchen",
    "street",
    "road",
    "field",
    "farm",
    "season",
    "summer",
    "winter",
    "spring",
    "autumn",
    "light",
    "sound",
    "voice",
    "color",
    "stone",
    "glass",
    "metal",
    "wood",
    "bread",
    "apple",
    "coffee",
    "tea",
    "letter",
    "engine",
    "machine",
    "signal",
    "cloud",
    "storm",
    "rain",
    "snow",
    "wind",
    "fire",
    "earth",
    "star",
    "moon",
    "sun",
    "planet",
    "animal",
    "bird",
    "horse",
    "dog",
    "cat",
    "fish",
    "tree",
    "flower",
    "grass",
    "leaf",
    "seed",
    "plan",
    "answer",
    "method",
    "theory",
    "model",
    "value",
    "price",
    "cost",
    "trade",
    "bank",
    "report",
    "record",
    "memory",
    "dream",
    "sense",
    "feeling",
    "choice",
    "chance",
    "danger",
    "safety",
    "journey",
    "travel",
    "visit",
    "guest",
    "crowd",
    "player",
    "artist",
    "writer",
    "doctor",
    "nurse",
    "farmer",
    "driver",
    "pilot",
    "captain",
    "soldier",
    "judge",
    "lawyer",
    "painter",
    "runs",
    "walks",
    "builds",
    "writes",
    "reads",
    "opens",
    "closes",
    "carries",
    "finds",
    "gives",
    "takes",
    "makes",
    "keeps",
    "holds",
    "brings",
    "learns",
    "teaches",
    "changes",
    "moves",
    "follows",
    "turns",
    "starts",
    "shows",
    "hears",
    "plays",
    "grows",
    "stands",
    "sits",
    "waits",
    "watches",
    "paints",
    "sings",
    "counts",
    "draws",
    "measures",
    "explains",
    "remembers",
    "quick",
    "slow",
    "bright",
    "dark",
    "quiet",
    "loud",
    "warm",
    "cold",
    "early",
    "late",
    "small",
    "large",
    "young",
    "old",
    "new",
    "simple",
    "clear",
    "strong",
    "gentle",
    "careful",
    "happy",
    "calm",
    "busy",
    "green",
    "blue",
    "red",
    "yellow",
    "white",
    "black",
    "golden",
    "silver",
    "narrow",
    "wide",
    "deep",
    "high",
    "low",
    "near",
    "far",
    "open",
    "free",
    "full",
    "the",
    "a",
    "of",
    "and",
    "to",
    "in",
    "on",
    "with",
    "near",
    "after",
    "before",
    "under",
    "over",
    "through",
    "between",
    "across",
    "behind",
    "around",
    "because",
    "while",
    "when",
    "then",
    "also",
    "again",
    "often",
    "never",
    "always",
    "sometimes",
    "today",
    "tomorrow",
];

/// The words of prompt `index` of a run seeded with `seed` (enough for `max_words`).
fn prompt_words(seed: u64, index: usize, max_words: usize) -> Vec<&'static str> {
    // Each prompt has its own stream, so prompt i is the same whatever the count.
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    (0..max_words).map(|_| *WORDS.choose(&mut rng).expect("word list is not empty")).collect()
}

/// Synthetic prompts of `input_tokens` tokens (as `counter` counts, specials included), at most
/// `concurrency` tokenize calls at once. Deterministic for a given seed and counter.
pub async fn synthetic_prompts(
    counter: &TokenCounter,
    num_prompts: usize,
    input_tokens: usize,
    seed: u64,
    concurrency: usize,
) -> Result<Vec<String>> {
    if input_tokens == 0 {
        return Err(CoreError::config("input_tokens must be at least 1"));
    }
    stream::iter(0..num_prompts)
        .map(|i| fit_prompt(counter, seed, i, input_tokens))
        .buffered(concurrency.max(1))
        .try_collect()
        .await
}

async fn fit_prompt(counter: &TokenCounter, seed: u64, index: usize, target: usize) -> Result<String> {
    // Every word is at least one token, so `target` words are always enough.
    let words = prompt_words(seed, index, target);
    let text = |n: usize| words[..n].join(" ");
    // Largest n with count(text(n)) <= target; n = 1 is accepted even if it is over.
    let (mut lo, mut hi) = (1usize, target);
    if counter.count(&text(hi), true).await? <= target {
        return Ok(text(hi));
    }
    while hi - lo > 1 {
        let mid = (lo + hi) / 2;
        if counter.count(&text(mid), true).await? <= target {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Ok(text(lo))
}

/// A shared-prefix workload: `prefixes` different prefixes, each followed by each of
/// `suffixes` different suffixes (see [`prefix_prompts`]).
#[derive(Debug, Clone, PartialEq)]
pub struct PrefixPrompts {
    /// Prompt `p * suffixes + s`: prefix `p`, a space, suffix `s`.
    pub texts: Vec<String>,
    /// Tokens of each prefix alone (specials included): what a prefix cache can reuse.
    pub prefix_tokens: Vec<usize>,
    /// Tokens of each prompt (specials included), in the order of `texts`.
    pub prompt_tokens: Vec<usize>,
}

/// The words of prefix or suffix `index` of a kind (`salt`), led by `label` and `index`, so that
/// two prefixes (or two suffixes) differ from their first word on and a prefix cache reuses
/// exactly the shared prefix.
fn marked_words(seed: u64, salt: u64, label: &str, index: usize, max_words: usize) -> Vec<String> {
    let mut words = vec![format!("{label}{index}")];
    let stream = seed ^ salt.wrapping_mul(0xD1B5_4A32_D192_ED03);
    words.extend(prompt_words(stream, index, max_words.saturating_sub(1)).into_iter().map(str::to_string));
    words
}

/// Largest `n` in `1..=words.len()` with `count(head + words[..n]) <= target` (1 if none).
async fn fit_words(
    counter: &TokenCounter,
    head: &str,
    words: &[String],
    target: usize,
    special: bool,
) -> Result<usize> {
    let text = |n: usize| format!("{head}{}", words[..n].join(" "));
    let (mut lo, mut hi) = (1usize, words.len().max(1));
    if counter.count(&text(hi), special).await? <= target {
        return Ok(hi);
    }
    while hi - lo > 1 {
        let mid = (lo + hi) / 2;
        if counter.count(&text(mid), special).await? <= target {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Ok(lo)
}

/// A shared-prefix workload in the server's tokens: prefix `p` is `prefix_tokens` long (as
/// `counter` counts it, specials included), suffix `s` adds `suffix_tokens` to prefix 0 (the same
/// suffix text follows every prefix). Prefixes differ from their first word, and so do suffixes,
/// so a prefix cache can reuse exactly a prompt's prefix. Every prefix and every whole prompt is
/// counted, so [`PrefixPrompts`] holds exact token counts. At most `concurrency` counts at once;
/// deterministic for a given seed and counter.
pub async fn prefix_prompts(
    counter: &TokenCounter,
    prefixes: usize,
    prefix_tokens: usize,
    suffixes: usize,
    suffix_tokens: usize,
    seed: u64,
    concurrency: usize,
) -> Result<PrefixPrompts> {
    if prefixes == 0 || suffixes == 0 || prefix_tokens == 0 || suffix_tokens == 0 {
        return Err(CoreError::config("prefixes, suffixes and their token lengths must be at least 1"));
    }
    let concurrency = concurrency.max(1);
    let prefix_texts: Vec<String> = stream::iter(0..prefixes)
        .map(|p| async move {
            let words = marked_words(seed, 1, "", p, prefix_tokens);
            let n = fit_words(counter, "", &words, prefix_tokens, true).await?;
            Ok::<_, CoreError>(words[..n].join(" "))
        })
        .buffered(concurrency)
        .try_collect()
        .await?;
    let prefix_counts: Vec<usize> =
        stream::iter(&prefix_texts).map(|t| counter.count(t, true)).buffered(concurrency).try_collect().await?;
    let head = format!("{} ", prefix_texts[0]);
    let head = &head;
    let suffix_target = prefix_counts[0] + suffix_tokens;
    let suffix_texts: Vec<String> = stream::iter(0..suffixes)
        .map(|s| async move {
            let words = marked_words(seed, 2, "", s, suffix_tokens);
            let n = fit_words(counter, head, &words, suffix_target, true).await?;
            Ok::<_, CoreError>(words[..n].join(" "))
        })
        .buffered(concurrency)
        .try_collect()
        .await?;
    let texts: Vec<String> =
        prefix_texts.iter().flat_map(|p| suffix_texts.iter().map(move |s| format!("{p} {s}"))).collect();
    let prompt_tokens: Vec<usize> =
        stream::iter(&texts).map(|t| counter.count(t, true)).buffered(concurrency).try_collect().await?;
    Ok(PrefixPrompts { texts, prefix_tokens: prefix_counts, prompt_tokens })
}

/// One prompt of a replayed trace: `input_tokens` long, starting with prefix `prefix` (an index
/// into the prefixes of [`trace_prompts`]) or with nothing shared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TracePrompt {
    /// The shared prefix it starts with, if any.
    pub prefix: Option<usize>,
    /// Its whole length (the prefix included), as the counter counts it with specials.
    pub input_tokens: usize,
}

/// Prompts of a replayed trace: prefix `k` is `prefix_tokens[k]` tokens long (specials included)
/// and shared, text and all, by every prompt that names it; each prompt is filled to its
/// `input_tokens` with words of its own (led by `q` and its index, so prompts differ right after
/// their prefix and never share a first word with a prefix). Returns the texts and the prefixes' exact counts. At most `concurrency` counts at
/// once; deterministic for a given seed and counter.
pub async fn trace_prompts(
    counter: &TokenCounter,
    prefix_tokens: &[usize],
    prompts: &[TracePrompt],
    seed: u64,
    concurrency: usize,
) -> Result<(Vec<String>, Vec<usize>)> {
    let concurrency = concurrency.max(1);
    if let Some(i) =
        prompts.iter().position(|p| p.input_tokens == 0 || p.prefix.is_some_and(|k| k >= prefix_tokens.len()))
    {
        return Err(CoreError::config(format!("trace prompt {i}: no tokens, or a prefix that does not exist")));
    }
    let prefix_texts: Vec<String> = stream::iter(prefix_tokens.iter().enumerate())
        .map(|(k, &n)| async move {
            let words = marked_words(seed, 1, "", k, n.max(1));
            let fit = fit_words(counter, "", &words, n.max(1), true).await?;
            Ok::<_, CoreError>(words[..fit].join(" "))
        })
        .buffered(concurrency)
        .try_collect()
        .await?;
    let prefix_counts: Vec<usize> =
        stream::iter(&prefix_texts).map(|t| counter.count(t, true)).buffered(concurrency).try_collect().await?;
    let prefix_texts = &prefix_texts;
    let texts = stream::iter(prompts.iter().enumerate())
        .map(|(i, p)| async move {
            let head = p.prefix.map_or(String::new(), |k| format!("{} ", prefix_texts[k]));
            let words = marked_words(seed, 3, "q", i, p.input_tokens);
            let fit = fit_words(counter, &head, &words, p.input_tokens, true).await?;
            Ok::<_, CoreError>(format!("{head}{}", words[..fit].join(" ")))
        })
        .buffered(concurrency)
        .try_collect()
        .await?;
    Ok((texts, prefix_counts))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
    }

    #[test]
    fn estimated_prompts_hit_the_target_and_differ() {
        let p = block_on(synthetic_prompts(&TokenCounter::Estimate, 5, 200, 1, 2)).unwrap();
        for text in &p {
            let n = block_on(TokenCounter::Estimate.count(text, true)).unwrap();
            // The next word would pass the target, so the text is within one word of it.
            assert!((190..=200).contains(&n), "{n} tokens");
        }
        for i in 0..p.len() {
            for j in i + 1..p.len() {
                assert_ne!(p[i][..40], p[j][..40], "prompts {i} and {j} share a prefix");
            }
        }
    }

    #[test]
    fn prefix_prompts_share_exactly_their_prefix() {
        let w = block_on(prefix_prompts(&TokenCounter::Estimate, 3, 100, 4, 30, 5, 2)).unwrap();
        assert_eq!(w.texts.len(), 12);
        assert_eq!(w.prompt_tokens.len(), 12);
        for p in 0..3 {
            assert!((90..=100).contains(&w.prefix_tokens[p]), "prefix {p}: {} tokens", w.prefix_tokens[p]);
            for s in 0..4 {
                let text = &w.texts[p * 4 + s];
                let words: Vec<&str> = text.split(' ').collect();
                assert_eq!(words[0], p.to_string());
                let extra = w.prompt_tokens[p * 4 + s] - w.prefix_tokens[p];
                assert!((20..=31).contains(&extra), "prompt {p}/{s}: {extra} suffix tokens");
            }
            // Same prefix text, then suffixes that differ from their first word.
            let a: Vec<&str> = w.texts[p * 4].split(' ').collect();
            let b: Vec<&str> = w.texts[p * 4 + 1].split(' ').collect();
            let common = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
            assert_eq!(
                &w.texts[p * 4][..a[..common].join(" ").len()],
                &w.texts[p * 4 + 1][..b[..common].join(" ").len()]
            );
            assert!(w.texts[p * 4 + 1].starts_with(&(a[..common].join(" ") + " 1 ")));
        }
        assert_ne!(w.texts[0].split(' ').nth(1), w.texts[4].split(' ').nth(1));
    }

    #[test]
    fn trace_prompts_share_their_prefix_and_fit_their_length() {
        let specs = [
            TracePrompt { prefix: Some(0), input_tokens: 80 },
            TracePrompt { prefix: None, input_tokens: 40 },
            TracePrompt { prefix: Some(0), input_tokens: 120 },
        ];
        let (texts, counts) = block_on(trace_prompts(&TokenCounter::Estimate, &[50], &specs, 3, 2)).unwrap();
        let prefix = texts[0][..texts[0].len().min(texts[2].len())]
            .chars()
            .zip(texts[2].chars())
            .take_while(|(a, b)| a == b)
            .count();
        assert!(prefix >= 4 * (counts[0] - 1), "shared {prefix} characters for a {}-token prefix", counts[0]);
        for (text, spec) in texts.iter().zip(&specs) {
            let n = block_on(TokenCounter::Estimate.count(text, true)).unwrap();
            assert!(n <= spec.input_tokens && n + 12 >= spec.input_tokens, "{n} tokens for {}", spec.input_tokens);
        }
        assert!(block_on(trace_prompts(&TokenCounter::Estimate, &[], &specs, 3, 2)).is_err());
    }

    #[test]
    fn prompts_are_reproducible_from_the_seed() {
        let a = block_on(synthetic_prompts(&TokenCounter::Estimate, 3, 50, 9, 1)).unwrap();
        let b = block_on(synthetic_prompts(&TokenCounter::Estimate, 3, 50, 9, 3)).unwrap();
        let c = block_on(synthetic_prompts(&TokenCounter::Estimate, 3, 50, 10, 1)).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }
}
