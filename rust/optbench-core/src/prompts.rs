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
    fn prompts_are_reproducible_from_the_seed() {
        let a = block_on(synthetic_prompts(&TokenCounter::Estimate, 3, 50, 9, 1)).unwrap();
        let b = block_on(synthetic_prompts(&TokenCounter::Estimate, 3, 50, 9, 3)).unwrap();
        let c = block_on(synthetic_prompts(&TokenCounter::Estimate, 3, 50, 10, 1)).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }
}
