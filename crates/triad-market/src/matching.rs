//! "Semantic" capability matching: the specialty a task's text reads as, for tasks that name
//! none (docs/market.md).
//!
//! The shipped method is deliberately small and deterministic: a TF-IDF nearest-centroid
//! classifier over words and word pairs, built from `data/specialties.tsv` (a labelled set in
//! the repository). The same text always gets the same answer on every node and in every
//! replay, it needs no model download, and it runs in microseconds on the routing path. An
//! embedding model can replace it behind [`SpecialtyClassifier`].

use std::collections::{BTreeMap, HashMap};

use crate::{Error, Result};

/// The labelled set shipped with the project: `split<TAB>specialty<TAB>text` rows.
pub const LABELLED_SET: &str = include_str!("../data/specialties.tsv");

/// The classifier built from [`LABELLED_SET`], once per process (routing and estimates share
/// it). None only if the compiled-in set does not parse, which its tests rule out.
pub fn shared() -> Option<&'static TfIdfClassifier> {
    static SHARED: std::sync::OnceLock<Option<TfIdfClassifier>> = std::sync::OnceLock::new();
    SHARED
        .get_or_init(|| TfIdfClassifier::embedded().ok())
        .as_ref()
}

/// A prompt template without its `{task.output}` references: the task's own instruction,
/// which is what gets classified. Dependency outputs are data, not the ask — "Translate:
/// {answer.output}" is a translation whatever the answer talks about — and leaving them out
/// makes the estimate at submission and the router at run time read the same text.
pub fn instruction(template: &str) -> String {
    let mut bare = template.to_owned();
    for r in triad_workflow::references(template).iter().rev() {
        let end = r.offset + r.task.len() + ".output".len() + 2;
        if end <= bare.len() {
            bare.replace_range(r.offset..end, " ");
        }
    }
    bare
}

/// A classifier's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Inference {
    pub specialty: String,
    /// Cosine similarity to the specialty's centroid, in (0, 1].
    pub score: f64,
}

/// Reads a task's text as one specialty; None when nothing in it is recognised.
pub trait SpecialtyClassifier: Send + Sync + std::fmt::Debug {
    fn classify(&self, text: &str) -> Option<Inference>;
}

/// One row of the labelled set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    pub held_out: bool,
    pub specialty: String,
    pub text: String,
}

/// Parses `split<TAB>specialty<TAB>text` rows; `#` lines and blank lines are comments.
pub fn parse_labelled(tsv: &str) -> Result<Vec<Example>> {
    let mut out = Vec::new();
    for (i, line) in tsv.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |message: &str| Error::LabelledSet {
            line: i + 1,
            message: message.to_owned(),
        };
        let mut parts = line.splitn(3, '\t');
        let (Some(split), Some(specialty), Some(text)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(bad("expected split<TAB>specialty<TAB>text"));
        };
        let held_out = match split {
            "train" => false,
            "test" => true,
            _ => return Err(bad("the split must be train or test")),
        };
        if specialty.is_empty() || text.trim().is_empty() {
            return Err(bad("empty specialty or text"));
        }
        out.push(Example {
            held_out,
            specialty: specialty.to_owned(),
            text: text.to_owned(),
        });
    }
    Ok(out)
}

/// Words that say nothing about the kind of task.
const STOPWORDS: &[&str] = &[
    "a", "about", "an", "and", "are", "as", "at", "be", "by", "do", "does", "for", "from", "give",
    "how", "i", "in", "into", "is", "it", "its", "me", "my", "of", "on", "or", "should", "that",
    "the", "their", "them", "these", "this", "to", "us", "we", "what", "when", "which", "who",
    "why", "with", "you", "your",
];

/// Lower-case words with a plural `s` dropped, numbers as `#num` and arithmetic operators as
/// `#op`, stop words removed.
fn words(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut Vec<String>| {
        if word.is_empty() {
            return;
        }
        let w = std::mem::take(word);
        if w.chars().all(|c| c.is_ascii_digit()) {
            out.push("#num".to_owned());
        } else if !STOPWORDS.contains(&w.as_str()) {
            let stem = match w.strip_suffix('s') {
                Some(s) if s.len() > 2 && !s.ends_with('s') => s.to_owned(),
                _ => w,
            };
            out.push(stem);
        }
    };
    for c in text.chars() {
        if c.is_alphanumeric() || c == '_' {
            word.extend(c.to_lowercase());
        } else {
            flush(&mut word, &mut out);
            if matches!(c, '+' | '*' | '/' | '=' | '^' | '%' | '×' | '÷') {
                out.push("#op".to_owned());
            }
        }
    }
    flush(&mut word, &mut out);
    out
}

/// Words and adjacent word pairs, with counts.
fn features(text: &str) -> BTreeMap<String, u32> {
    let ws = words(text);
    let mut counts = BTreeMap::new();
    for w in &ws {
        *counts.entry(w.clone()).or_insert(0) += 1;
    }
    for pair in ws.windows(2) {
        *counts
            .entry(format!("{} {}", pair[0], pair[1]))
            .or_insert(0) += 1;
    }
    counts
}

type Vector = HashMap<String, f64>;

fn normalise(v: &mut Vector) {
    let norm = v.values().map(|x| x * x).sum::<f64>().sqrt();
    if norm > 0.0 {
        for x in v.values_mut() {
            *x /= norm;
        }
    }
}

/// The TF-IDF nearest-centroid classifier (module docs).
#[derive(Debug, Clone)]
pub struct TfIdfClassifier {
    idf: HashMap<String, f64>,
    /// Specialty → unit centroid, sorted by specialty so ties break the same way everywhere.
    centroids: BTreeMap<String, Vector>,
    /// Below this similarity the text is not recognised.
    min_score: f64,
}

impl TfIdfClassifier {
    /// Built from the shipped labelled set's training rows.
    pub fn embedded() -> Result<Self> {
        let examples = parse_labelled(LABELLED_SET)?;
        Ok(Self::train(examples.iter().filter(|e| !e.held_out)))
    }

    /// Built from labelled examples.
    pub fn train<'a>(examples: impl IntoIterator<Item = &'a Example>) -> Self {
        let docs: Vec<(&str, BTreeMap<String, u32>)> = examples
            .into_iter()
            .map(|e| (e.specialty.as_str(), features(&e.text)))
            .collect();
        let n = docs.len() as f64;
        let mut df: HashMap<String, u32> = HashMap::new();
        for (_, f) in &docs {
            for term in f.keys() {
                *df.entry(term.clone()).or_insert(0) += 1;
            }
        }
        // Smoothed IDF: every term keeps a positive weight, rarer terms weigh more.
        let idf: HashMap<String, f64> = df
            .into_iter()
            .map(|(t, d)| (t, ((1.0 + n) / (1.0 + f64::from(d))).ln() + 1.0))
            .collect();
        let mut sums: BTreeMap<String, Vector> = BTreeMap::new();
        for (label, f) in &docs {
            let v = weigh(&idf, f);
            let sum = sums.entry((*label).to_owned()).or_default();
            for (t, x) in v {
                *sum.entry(t).or_insert(0.0) += x;
            }
        }
        for v in sums.values_mut() {
            normalise(v);
        }
        Self {
            idf,
            centroids: sums,
            min_score: 0.05,
        }
    }

    /// The specialties it knows.
    pub fn specialties(&self) -> impl Iterator<Item = &str> {
        self.centroids.keys().map(String::as_str)
    }

    /// Correct answers on `examples` (e.g. the held-out rows), and how many there were.
    pub fn accuracy<'a>(&self, examples: impl IntoIterator<Item = &'a Example>) -> (usize, usize) {
        let mut right = 0;
        let mut total = 0;
        for e in examples {
            total += 1;
            if self
                .classify(&e.text)
                .is_some_and(|i| i.specialty == e.specialty)
            {
                right += 1;
            }
        }
        (right, total)
    }
}

/// Sub-linear term frequency × IDF, as a unit vector; terms never seen in training are
/// dropped (they cannot point anywhere).
fn weigh(idf: &HashMap<String, f64>, f: &BTreeMap<String, u32>) -> Vector {
    let mut v: Vector = f
        .iter()
        .filter_map(|(t, &c)| {
            idf.get(t)
                .map(|w| (t.clone(), (1.0 + f64::from(c).ln()) * w))
        })
        .collect();
    normalise(&mut v);
    v
}

impl SpecialtyClassifier for TfIdfClassifier {
    fn classify(&self, text: &str) -> Option<Inference> {
        let v = weigh(&self.idf, &features(text));
        if v.is_empty() {
            return None;
        }
        let mut best: Option<Inference> = None;
        for (label, c) in &self.centroids {
            let score: f64 = v.iter().filter_map(|(t, x)| c.get(t).map(|y| x * y)).sum();
            // Strictly greater: on a tie the first label in sorted order stays.
            if best.as_ref().is_none_or(|b| score > b.score) {
                best = Some(Inference {
                    specialty: label.clone(),
                    score,
                });
            }
        }
        best.filter(|b| b.score >= self.min_score)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_fold_case_plurals_numbers_and_operators() {
        assert_eq!(words("What is 2+2?"), ["#num", "#op", "#num"]);
        assert_eq!(
            words("Generate Questions about kinds of glass"),
            ["generate", "question", "kind", "glass"]
        );
    }

    #[test]
    fn labelled_set_errors_name_the_line() {
        let err = parse_labelled("# c\ntrain\tcode\tok\nvalid\tcode\tx\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "labelled set line 3: the split must be train or test"
        );
        assert!(parse_labelled("train\tcode\n").is_err());
    }

    #[test]
    fn unknown_text_is_not_recognised_and_answers_are_deterministic() {
        let c = TfIdfClassifier::embedded().unwrap();
        assert_eq!(c.classify("zzqx wqpl"), None);
        assert_eq!(c.classify(""), None);
        let a = c.classify("Translate this into French").unwrap();
        assert_eq!(a.specialty, "translation");
        assert_eq!(c.classify("Translate this into French"), Some(a));
    }
}
